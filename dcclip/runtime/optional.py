"""Optional dependencies and the model hub's switch, one helper each: an import that names the extra to install, and
whether the Hugging Face hub is off (``HF_HUB_OFFLINE``), read the way huggingface_hub reads it."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["INDEX_HINT", "TRAIN_HINT", "hf_offline", "require"]

TRAIN_HINT = "pip install 'dcclip[train]'"
INDEX_HINT = "pip install 'dcclip[index]'"
_TRUE = frozenset({"1", "ON", "YES", "TRUE"})


def require(module: str, purpose: str, hint: str = TRAIN_HINT) -> ModuleType:
    """Import ``module``; when it is missing, an ImportError saying ``PURPOSE needs MODULE: HINT`` (cause chained)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs {module.split('.')[0]}: {hint}") from exc


def hf_offline() -> bool:
    """Whether the Hugging Face hub is switched off for this process (``HF_HUB_OFFLINE`` set to 1/on/yes/true)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE
