"""Exceptions of the torch-free runtime: one class per way a bundle or a request can be wrong, so callers (the HTTP
server, scripts) can map each to a precise answer instead of parsing messages."""

from __future__ import annotations

import unicodedata

from dcclip.runtime.preprocess import ImageDecodeError

__all__ = [
    "BundleError",
    "BundleIntegrityError",
    "BundleVersionError",
    "EmptyLabelsError",
    "ImageDecodeError",
    "InvalidImageError",
    "InvalidInputError",
    "InvalidLabelError",
    "InvalidTemplateError",
    "InvalidTextError",
    "SearchIndexError",
    "TooManyLabelsError",
    "UnknownLanguageError",
]


class BundleError(Exception):
    """A bundle cannot be used: missing or malformed manifest, missing precision, unexpected graph inputs."""


class BundleIntegrityError(BundleError):
    """A bundle file is missing or does not match the sha256/size its manifest records; ``file`` names it."""

    def __init__(self, message: str, file: str) -> None:
        super().__init__(message)
        self.file = file


class BundleVersionError(BundleError):
    """The manifest's format_version is not one this runtime reads; ``version`` holds what the bundle says."""

    def __init__(self, message: str, version: object) -> None:
        super().__init__(message)
        self.version = version


class SearchIndexError(ValueError):
    """An index that cannot be used (missing, malformed, another bundle's) or a bad id; the message names the file."""


class InvalidInputError(ValueError):
    """A request the model cannot answer: bad images, texts, labels, templates or language."""


class InvalidImageError(InvalidInputError):
    """An image that is not a PIL image, bytes or a readable path, or that does not decode (cause attached)."""


class InvalidTextError(InvalidInputError):
    """Texts that are not a list of strings, or a string that is not valid Unicode (a lone surrogate)."""


def check_unicode(text: str, where: str, error: type[Exception] = InvalidTextError) -> None:
    """Raise ``error`` naming ``where`` when ``text`` holds a lone surrogate (from undecodable argv bytes or a JSON
    ``\\ud800`` escape): such a string has no UTF-8 form, so no tokenizer can read it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise error(
            f"{where} is not valid Unicode text: lone surrogate U+{ord(bad):04X} at character {exc.start} "
            "(undecodable bytes or a broken \\u escape)"
        ) from None


# Characters of one text, label, template or query, whoever asks (Python API, CLI, HTTP): the tokenizer reads a whole
# text before truncating it to the model's tokens, so a 10 MB query took 22 s and 1.3 GB.
MAX_TEXT_CHARS = 1000


def check_text(text: str, where: str, max_chars: int, error: type[Exception] = InvalidTextError) -> None:
    """Valid Unicode of at most ``max_chars`` characters (the runtime's one text limit), else ``error`` naming
    ``where``."""
    if len(text) > max_chars:
        raise error(f"{where} has {len(text)} characters, over the limit of {max_chars}")
    check_unicode(text, where, error)


# Categories of characters that show nothing on their own: separators, controls, format characters (U+200B, U+FEFF,
# soft hyphen, joiners), unassigned and private code points, and combining marks.
INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cn", "Co", "Cs", "Mn", "Mc", "Me"})


def has_visible(text: str) -> bool:
    """Whether ``text`` holds at least one letter, digit, punctuation mark or symbol."""
    return any(unicodedata.category(char) not in INVISIBLE_CATEGORIES for char in text)


class EmptyLabelsError(InvalidInputError):
    """classify was given no labels."""


class TooManyLabelsError(InvalidInputError):
    """More labels than the classifier's ``max_labels``."""


class InvalidLabelError(InvalidInputError):
    """A label that is not a non-empty string, or a duplicate."""


class InvalidTemplateError(InvalidInputError):
    """Templates that are not a non-empty list of strings each holding ``{c}``."""


class UnknownLanguageError(InvalidInputError):
    """A language the bundle was not trained for (only checked when the bundle lists its languages)."""
