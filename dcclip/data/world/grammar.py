"""Captions and eval class names in every language, built from the language records (``languages/<code>.py``)."""

from __future__ import annotations

import string
from collections.abc import Iterable

from dcclip.data.world.registry import (
    CASES,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Language,
    Thing,
    language,
    language_codes,
)

_TEMPLATE_CASES = {"np": "nom", "acc": "acc", "dat": "dat"}


def _check_thing(thing: Thing) -> None:
    """Reject a colour, shape, size or position the tables do not know, naming the field."""
    for name, value, known in (
        ("colour", thing.colour, COLOURS),
        ("shape", thing.shape, SHAPES),
        ("size", thing.size, (None, *SIZES)),
        ("pos", thing.pos, (None, *POSITIONS)),
    ):
        if value not in known:
            raise ValueError(f"unknown {name} {value!r}; expected one of {[k for k in known if k]}")


def noun_phrase(lang: str, thing: Thing, case: str = "nom") -> str:
    """One object as an indefinite noun phrase in ``lang`` and ``case`` (nom/acc/dat), without its position."""
    record = language(lang)
    _check_thing(thing)
    if case not in CASES:
        raise ValueError(f"case must be nom, acc or dat; got {case!r}")
    return record.noun_phrase(thing, case)


def _located(record: Language, thing: Thing, case: str) -> str:
    """The noun phrase with its position attached the way the language attaches it."""
    phrase = noun_phrase(record.code, thing, case)
    if thing.pos is None:
        return phrase
    return record.located.format(np=phrase, pos=record.positions[thing.pos])


def _template_fields(template: str) -> list[str]:
    """The named fields a template uses, e.g. ["acc"]."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _finish(record: Language, text: str) -> str:
    return record.finish(text) if record.finish else text


def describe_shapes(lang: str, things: Iterable[Thing], template: int = 0) -> str:
    """Caption a scene of one or two objects in ``lang`` with template number ``template`` (taken modulo the count)."""
    record = language(lang)
    things = list(things)
    if not 1 <= len(things) <= 2:
        raise ValueError(f"a scene has one or two objects; got {len(things)}")
    clauses = record.clause_templates is not None and any(t.pos for t in things)
    templates = record.clause_templates if clauses else record.shape_templates
    one, many = templates[template % len(templates)]
    text = one if len(things) == 1 else many
    join = record.clause_join if clauses else record.join
    fields = {f: join.join(_located(record, t, _TEMPLATE_CASES[f]) for t in things) for f in _template_fields(text)}
    return _finish(record, text.format(**fields))


def describe_digit(lang: str, digit: int, template: int = 0) -> str:
    """Caption a handwritten digit in ``lang`` with template number ``template`` (taken modulo the count)."""
    record = language(lang)
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be 0-9; got {digit}")
    templates = record.digit_templates
    return _finish(record, templates[template % len(templates)].format(w=record.digit_words[digit], n=digit))


def shape_class_name(lang: str, colour: str, shape: str) -> str:
    """Eval class name of a colour-shape pair, phrased so every zero-shot template of ``lang`` accepts it."""
    record = language(lang)
    thing = Thing(colour, shape)
    _check_thing(thing)
    return record.shape_class_name(thing) if record.shape_class_name else record.noun_phrase(thing, "nom")


def shape_classes() -> list[tuple[str, str]]:
    """Every (colour, shape) class of the shapes eval, in class-index order."""
    return [(c, s) for c in COLOURS for s in SHAPES]


def class_names(task: str) -> dict[str, list[str]]:
    """Class names per language for ``task`` ("shapes" or "digits"), in the same class order for every language."""
    if task == "shapes":
        return {lang: [shape_class_name(lang, c, s) for c, s in shape_classes()] for lang in language_codes()}
    if task == "digits":
        return {
            lang: [language(lang).digit_class_name.format(w=w) for w in language(lang).digit_words]
            for lang in language_codes()
        }
    raise ValueError(f"task must be 'shapes' or 'digits'; got {task!r}")


def class_attributes(task: str) -> dict[str, list[str]]:
    """What each class is made of, per attribute, for the eval's breakdown ({"colour": [...], "shape": [...]})."""
    if task == "shapes":
        return {"colour": [c for c, _ in shape_classes()], "shape": [s for _, s in shape_classes()]}
    if task == "digits":
        return {}
    raise ValueError(f"task must be 'shapes' or 'digits'; got {task!r}")


def class_templates(task: str) -> dict[str, list[str]]:
    """Zero-shot templates per language for ``task``; each has one ``{c}``."""
    field = {"shapes": "shape_class_templates", "digits": "digit_class_templates"}.get(task)
    if field is None:
        raise ValueError(f"task must be 'shapes' or 'digits'; got {task!r}")
    return {lang: list(getattr(language(lang), field)) for lang in language_codes()}
