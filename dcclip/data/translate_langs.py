"""Target languages of ``dcclip shards translate``: ``LANG`` or ``LANG=CODE`` specs, the model codes of NLLB, M2M100
and multilingual Marian models, and the language pair a Marian model's name or tokenizer gives (read through
``dcclip.data.langcodes``, the one table of codes). Used by dcclip/data/translate.py."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from dcclip.data.langcodes import normalise_lang

log = logging.getLogger("dcclip.data.translate")  # the command's logger: its warnings read as translate's

# dcclip's ISO 639-1 codes -> FLORES-200 codes of NLLB (``LANG=CODE`` on the command line covers the rest).
NLLB_CODES = {
    "en": "eng_Latn", "zh": "zho_Hans", "ja": "jpn_Jpan", "ko": "kor_Hang", "ar": "arb_Arab", "hi": "hin_Deva",
    "ru": "rus_Cyrl", "es": "spa_Latn", "fr": "fra_Latn", "de": "deu_Latn", "it": "ita_Latn", "pt": "por_Latn",
    "nl": "nld_Latn", "pl": "pol_Latn", "tr": "tur_Latn", "uk": "ukr_Cyrl", "vi": "vie_Latn", "th": "tha_Thai",
    "id": "ind_Latn", "sv": "swe_Latn", "el": "ell_Grek", "he": "heb_Hebr", "fa": "pes_Arab", "bn": "ben_Beng",
}  # fmt: skip
_MARIAN_NAME = re.compile(r"opus-mt(?:-tc-big)?-([A-Za-z_]+)-([A-Za-z_]+)$")


class TranslateError(ValueError):
    """The model, the languages or the output directory cannot be used; the message says what to change."""


def lang_key(spec: str) -> str:
    """The caption key of a ``--langs`` entry: ``zh`` of ``zh`` or of ``zh=zho_Hant``."""
    return spec.split("=", 1)[0].strip()


def lang_override(spec: str) -> str | None:
    """The model code given explicitly in ``KEY=CODE``, else None."""
    return spec.split("=", 1)[1].strip() if "=" in spec else None


def check_langs(langs: Iterable[str], source_lang: str) -> tuple[str, ...]:
    """Non-empty, distinct target languages that differ from the source; the specs are returned unchanged."""
    specs = tuple(s.strip() for s in langs if s.strip())
    keys = [lang_key(s) for s in specs]
    if not specs:
        raise TranslateError("--langs is empty: name at least one target language, e.g. --langs zh,ja")
    if any(not k or "." in k or "/" in k for k in keys) or len(set(keys)) != len(keys):
        raise TranslateError(f"--langs {','.join(specs)}: languages must be distinct, non-empty codes")
    if lang_key(source_lang) in keys:
        raise TranslateError(f"--langs contains the source language {lang_key(source_lang)!r}")
    return specs


def nllb_code(spec: str) -> str:
    """FLORES-200 code of a language for NLLB; unknown ones fail with the table's languages."""
    code = lang_override(spec) or NLLB_CODES.get(lang_key(spec))
    if code is None:
        known = ", ".join(f"{k}={v}" for k, v in NLLB_CODES.items())
        raise TranslateError(f"no NLLB language code known for {spec!r}; known: {known}; or pass KEY=FLORES_CODE")
    return code


def m2m100_code(spec: str) -> str:
    """M2M100 uses ISO 639-1 codes itself (its ``__xx__`` tokens)."""
    return lang_override(spec) or lang_key(spec)


def model_token(family: str, code: str) -> str:
    """The vocabulary token that names a language for a model family."""
    return f"__{code}__" if family == "m2m100" else code


def marian_prefix(spec: str, prefixes: Iterable[str]) -> str:
    """The ``>>xxx<<`` target token of a multi-target Marian model for one language, or a clear error.

    ``KEY=NAME`` names the token; otherwise the token whose name langcodes reads as KEY, the plainest first: the key
    itself, then bare codes (``zho``), then ones with a script or region (``cmn_Hans`` before ``cmn_Hant``).
    """
    available = set(prefixes)
    override = lang_override(spec)
    if override:
        names = [override]
    else:
        key = lang_key(spec)
        names = [p[2:-2] for p in available if p.startswith(">>") and p.endswith("<<") and iso_of(p[2:-2]) == key]
        names.sort(key=lambda name: (name != key, "_" in name or "-" in name, name))
    for name in names:
        if f">>{name}<<" in available:
            return f">>{name}<<"
    shown = ", ".join(sorted(available)[:40]) + (" ..." if len(available) > 40 else "")
    raise TranslateError(f"this multi-target Marian model has no target token for {spec!r}; it has: {shown}")


def marian_pair(tokenizer: Any, model_ref: str) -> tuple[str | None, str | None]:
    """(source, target) language of a one-pair Marian model: tokenizer metadata, else the ``opus-mt-en-zh`` name."""
    source, target = getattr(tokenizer, "source_lang", None), getattr(tokenizer, "target_lang", None)
    match = _MARIAN_NAME.search(model_ref.rstrip("/"))
    if match and not (source and target):
        source, target = match.group(1), match.group(2)
    return iso_of(source), iso_of(target)


def iso_of(name: str | None) -> str | None:
    """dcclip's ISO 639-1 code for a Marian language name (``zho`` -> ``zh``); unknown names pass through."""
    if not name:
        return None
    return normalise_lang(name) or name


def is_iso_639_1(code: str | None) -> bool:
    """Whether a (normalised) language name is a two-letter ISO 639-1 code, not a group (``gem``) or ``mul``."""
    return bool(code) and len(code) == 2 and code.isalpha()


def check_marian_pair(specs: tuple[str, ...], source_lang: str, pair: tuple[str | None, str | None], ref: str) -> None:
    """A one-pair Marian model translates one direction: refuse any other source or any target but its own."""
    source, target = pair
    wanted = [lang_key(s) for s in specs]
    if is_iso_639_1(source) and source != lang_key(source_lang):  # "mul" and group names take any source
        raise TranslateError(f"{ref} translates from {source!r}, not from --source-lang {lang_key(source_lang)!r}")
    if target and wanted != [target]:
        raise TranslateError(f"{ref} translates {source or '?'} -> {target} only: pass --langs {target}")
    if not target and len(wanted) != 1:
        raise TranslateError(f"{ref} is a one-pair Marian model: pass exactly one target language in --langs")
    if not target:
        log.warning("%s: target language unknown (no target_lang in its tokenizer config); trusting --langs", ref)
