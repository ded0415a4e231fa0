"""Language codes as data sets write them -> the ISO 639-1 codes dcclip keys captions by.

Datasets label languages in several schemes: ISO 639-1 (``en``), BCP 47 with region or script (``pt-BR``,
``zh_Hant``), ISO 639-2/3 (``eng``, ``zho``, ``cmn``), FLORES-200 as NLLB uses it (``zho_Hans``), CLD3's output as in
laion2B-multi's ``LANGUAGE`` column (legacy ``iw``, romanised ``ja-Latn``). ``normalise_lang`` maps them to one code,
or None when the label says nothing usable (``und``, empty) or names romanised text of a language that is written in
another script (``ja-Latn`` is Japanese in Latin letters, not the Japanese a student should learn from).
"""

from __future__ import annotations

import re

# Three-letter codes (ISO 639-2/B, 639-2/T, 639-3 macro-language members) for the languages most data sets carry.
_THREE_LETTER = {
    "eng": "en", "zho": "zh", "chi": "zh", "cmn": "zh", "jpn": "ja", "kor": "ko", "ara": "ar", "arb": "ar",
    "hin": "hi", "rus": "ru", "spa": "es", "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "ita": "it",
    "por": "pt", "nld": "nl", "dut": "nl", "pol": "pl", "tur": "tr", "vie": "vi", "tha": "th", "ind": "id",
    "ukr": "uk", "ces": "cs", "cze": "cs", "swe": "sv", "fin": "fi", "dan": "da", "nob": "nb", "nor": "no",
    "ell": "el", "gre": "el", "heb": "he", "fas": "fa", "per": "fa", "pes": "fa", "ben": "bn", "urd": "ur",
    "tam": "ta", "tel": "te", "mar": "mr", "msa": "ms", "zsm": "ms", "may": "ms", "ron": "ro", "rum": "ro",
    "hun": "hu", "bul": "bg", "cat": "ca", "hrv": "hr", "srp": "sr", "slk": "sk", "slo": "sk", "slv": "sl",
}  # fmt: skip
# Codes retired from ISO 639-1 that language identifiers (CLD3, old Java locales) still emit.
_LEGACY = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}
# Labels that mean "language not known".
_UNKNOWN = frozenset({"", "und", "unk", "unknown", "none", "null", "nan", "xx", "zxx", "mul"})
# Languages not written in Latin script: their text tagged "-Latn" is a romanisation.
_NON_LATIN = frozenset(
    {"zh", "ja", "ko", "ar", "hi", "ru", "uk", "bg", "sr", "el", "he", "fa", "bn", "ur", "ta", "te", "mr", "th"}
)
_CODE = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z0-9]{2,8}))*$")


def normalise_lang(label: object) -> str | None:
    """The ISO 639-1 code (or the base code as given, for languages outside the table) of a language label."""
    if not isinstance(label, str):
        return None
    text = label.strip()
    if text.lower() in _UNKNOWN or not _CODE.match(text):
        return None
    base, *subtags = re.split(r"[-_]", text)
    base = base.lower()
    if base in _UNKNOWN:
        return None
    base = _LEGACY.get(base, _THREE_LETTER.get(base, base))
    if base in _NON_LATIN and any(tag.lower() == "latn" for tag in subtags):
        return None
    return base
