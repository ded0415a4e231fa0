"""Frozen CLIP teachers behind one interface, one module per backend: open_clip (``openclip``), Hugging Face CLIP /
AltCLIP / Chinese-CLIP (``hf``), Multilingual-CLIP text sides (``mclip``) and composites (``composite``).

A teacher is chosen by a spec string (``teacher.spec`` in the run config; forms in ``dcclip.models.teacher_spec``)
and loaded by ``registry.load_teacher``, the one entry point; ``teacher.text_spec`` (a text-only backend or any CLIP
spec) replaces the image teacher's text tower. ``base`` holds the interface, ``hub`` the shared hub/offline helpers.

Names are re-exported lazily (PEP 562), so importing the registry or the spec grammar needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKENDS": "registry",
    "Backend": "registry",
    "load_teacher": "registry",
    "Teacher": "base",
    "weights_digest": "base",
    "TeacherLoadError": "hub",
    "OpenClipTeacher": "openclip",
    "preprocess_from_openclip": "openclip",
    "HFClipTeacher": "hf",
    "preprocess_from_hf": "hf",
    "MClipTextEncoder": "mclip",
    "CompositeTeacher": "composite",
    "TeacherSpec": "dcclip.models.teacher_spec",
    "TeacherSpecError": "dcclip.models.teacher_spec",
    "parse_teacher_spec": "dcclip.models.teacher_spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(where if "." in where else f"{__name__}.{where}")
    return getattr(module, name)
