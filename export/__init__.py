"""Export to an ONNX bundle (installed as dcclip.export): ONNX graphs, int8 quantisation, validation, bundle writing.

``export_bundle`` and ``ExportError`` are resolved lazily so that importing the package does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"export_bundle": "bundle", "ExportError": "errors"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dcclip.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dcclip.export.{module}"), name)
