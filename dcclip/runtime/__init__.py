"""Torch-free inference over an exported bundle: onnxruntime, numpy, pillow and tokenizers only.

Names are resolved lazily, so ``import dcclip.runtime`` (or its preprocessing, which training shares) loads neither
onnxruntime nor anything heavier until a bundle is actually used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BundleModel": "bundle",
    "load_bundle_model": "bundle",
    "read_manifest": "bundle",
    "verify_bundle": "bundle",
    "ZeroShotClassifier": "classifier",
    "DEFAULT_TEMPLATES": "classifier",
    "ImageIndex": "index",
    "SearchHit": "index",
    "SearchIndexError": "errors",
    "search_text": "index",
    "Preprocess": "preprocess",
    "decode_image": "preprocess",
    "ImageDecodeError": "preprocess",
    "BundleError": "errors",
    "BundleIntegrityError": "errors",
    "BundleVersionError": "errors",
    "InvalidInputError": "errors",
    "InvalidImageError": "errors",
    "InvalidTextError": "errors",
    "EmptyLabelsError": "errors",
    "TooManyLabelsError": "errors",
    "InvalidLabelError": "errors",
    "InvalidTemplateError": "errors",
    "UnknownLanguageError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dcclip.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dcclip.runtime.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Module attributes plus the lazily exported names."""
    return sorted({*globals(), *_EXPORTS})
