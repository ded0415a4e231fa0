"""Exceptions of the torch-free runtime: one class per way a bundle or a request can be wrong, so callers (the HTTP
server, scripts) can map each to a precise answer instead of parsing messages."""

from __future__ import annotations

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
