"""One record per language of the toy world, and the registry that finds them.

A language is a ``Language`` record in ``languages/<code>.py`` (its words with their genders and agreement, how a
noun phrase is built, where a position goes, how two objects are joined, caption and zero-shot templates, digit
words). The ten built-in languages load in a fixed order (the order decides the random draws, so a world stays
byte-identical); ``register`` adds another one, checked for completeness first, so adding a language is one file.
"""

from __future__ import annotations

import importlib
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
SHAPES: tuple[str, ...] = ("circle", "ellipse", "square", "triangle", "star", "hexagon", "cross", "ring", "heart")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
CASES: tuple[str, ...] = ("nom", "acc", "dat")
BUILTIN: tuple[str, ...] = ("en", "zh", "ja", "ko", "fr", "de", "es", "ru", "ar", "hi")


@dataclass(frozen=True)
class Thing:
    """What a caption says about one object: colour and shape always; size and position only when mentioned."""

    colour: str
    shape: str
    size: str | None = None  # "small" | "large" | None (not mentioned)
    pos: str | None = None  # one of POSITIONS | None (not mentioned)


@dataclass(frozen=True)
class Language:
    """Everything the world needs to caption scenes and name eval classes in one language.

    Templates: shape captions are (one object, two objects) pairs with fields {np} (nominative), {acc}, {dat}; digit
    captions use {w} (number word) and {n} (numeral); class templates hold one {c}.
    """

    code: str
    prob: float  # share of training samples that carry a caption in this language
    noun_phrase: Callable[[Thing, str], str]  # one object, indefinite, in a case (nom/acc/dat), without position
    positions: Mapping[str, str]  # the phrase for each of POSITIONS
    located: str  # how a position attaches to a noun phrase: "{np} {pos}", "{pos}の{np}", ...
    join: str  # how two noun phrases are coordinated
    shape_templates: tuple[tuple[str, str], ...]
    digit_words: tuple[str, ...]  # 0..9
    digit_templates: tuple[str, ...]
    shape_class_templates: tuple[str, ...]
    digit_class_name: str  # with {w}
    digit_class_templates: tuple[str, ...]
    shape_class_name: Callable[[Thing], str] | None = None  # default: the noun phrase
    clause_templates: tuple[tuple[str, str], ...] | None = None  # for located scenes when positions are clauses
    clause_join: str | None = None  # joins located clauses (with clause_templates)
    finish: Callable[[str], str] | None = None  # a last spelling pass over a caption (e.g. Korean particles)


_REGISTRY: dict[str, Language] = {}


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_language(lang: Language) -> None:
    """Raise ValueError naming the language and the gap when a record cannot caption every scene of the world."""
    where = f"toy-world language {lang.code!r}"
    problems = []
    if not 0.0 < lang.prob <= 1.0:
        problems.append(f"prob {lang.prob} outside (0, 1]")
    if set(lang.positions) != set(POSITIONS):
        problems.append(f"positions must name exactly {POSITIONS}, got {sorted(lang.positions)}")
    if len(lang.digit_words) != 10:
        problems.append(f"digit_words needs 10 words, got {len(lang.digit_words)}")
    if not lang.shape_templates or any(not _fields(one) | _fields(two) <= {"np", "acc", "dat"} or not _fields(one)
                                       for one, two in lang.shape_templates):  # fmt: skip
        problems.append("shape_templates need (one, two) pairs using only {np}, {acc}, {dat}")
    if not lang.digit_templates or any(not _fields(t) or not _fields(t) <= {"w", "n"} for t in lang.digit_templates):
        problems.append("digit_templates need {w} or {n} and nothing else")
    for name in ("shape_class_templates", "digit_class_templates"):
        if not getattr(lang, name) or any(_fields(t) != {"c"} for t in getattr(lang, name)):
            problems.append(f"{name} need exactly one {{c}} each")
    if _fields(lang.digit_class_name) != {"w"}:
        problems.append("digit_class_name needs exactly one {w}")
    if (lang.clause_templates is None) != (lang.clause_join is None):
        problems.append("clause_templates and clause_join come together")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    _check_phrases(lang, where)


def _check_phrases(lang: Language, where: str) -> None:
    """Every colour, shape, size and case must make a noun phrase (a missing word fails here, not mid-world)."""
    for colour in COLOURS:
        for shape in SHAPES:
            for size in (None, *SIZES):
                for case in CASES:
                    try:
                        phrase = lang.noun_phrase(Thing(colour, shape, size), case)
                    except (KeyError, IndexError) as exc:
                        raise ValueError(f"{where}: no words for {colour} {shape} ({size}, {case}): {exc!r}") from exc
                    if not phrase.strip():
                        raise ValueError(f"{where}: empty noun phrase for {colour} {shape} ({size}, {case})")


def register(lang: Language) -> Language:
    """Add a language (checked for completeness); it joins every world generated after, after the built-in ones."""
    check_language(lang)
    if lang.code in _REGISTRY and _REGISTRY[lang.code] is not lang:
        raise ValueError(f"toy-world language {lang.code!r} is already registered")
    _REGISTRY[lang.code] = lang
    return lang


def unregister(code: str) -> None:
    """Remove a language added with ``register`` (built-in languages stay)."""
    if code in BUILTIN:
        raise ValueError(f"{code!r} is a built-in toy-world language")
    _REGISTRY.pop(code, None)


def _load_builtin() -> None:
    for code in BUILTIN:
        if code not in _REGISTRY:
            register(importlib.import_module(f"dcclip.data.world.languages.{code}").LANGUAGE)


def language_codes() -> tuple[str, ...]:
    """Codes of every language, the built-in ten first in their fixed order, then added ones in registration order."""
    _load_builtin()
    return (*BUILTIN, *(code for code in _REGISTRY if code not in BUILTIN))


def language(code: str) -> Language:
    """The record of ``code``; ValueError listing the known ones otherwise."""
    _load_builtin()
    if code not in _REGISTRY:
        raise ValueError(f"lang must be one of {', '.join(language_codes())}; got {code!r}")
    return _REGISTRY[code]
