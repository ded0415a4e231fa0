"""The teacher backends, one line each, and ``load_teacher``: the one way a teacher is loaded.

A backend is a module with ``load(spec: TeacherSpec)``. Role ``clip``: it returns a ``Teacher`` (image and text).
Role ``text``: it returns the text side of a composite teacher (``teacher.text_spec``), a module with ``spec``,
``embed_dim`` and ``_text_forward(texts)``. Adding a backend is one new module and one line in ``BACKENDS``; the spec
grammar (``dcclip.models.teacher_spec``) reads names, roles and spec forms from here. Importing this needs no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from dcclip.models.teacher_spec import TeacherSpec
    from dcclip.models.teachers.base import Teacher

CLIP, TEXT = "clip", "text"  # roles: an image + text teacher, or a text side only
# How the part after ``NAME:`` is read: open_clip's forms, a local directory, or a local directory or a hub id.
OPENCLIP_FORM, DIRECTORY, DIRECTORY_OR_HUB = "openclip", "directory", "directory-or-hub"


@dataclass(frozen=True)
class Backend:
    """Where a backend's ``load`` lives, its role and the form of its specs."""

    module: str
    role: str = CLIP
    form: str = DIRECTORY


BACKENDS: dict[str, Backend] = {
    "openclip": Backend("dcclip.models.teachers.openclip", form=OPENCLIP_FORM),
    "hf": Backend("dcclip.models.teachers.hf", form=DIRECTORY_OR_HUB),
    "mclip": Backend("dcclip.models.teachers.mclip", role=TEXT),
}


def backend_names(role: str | None = None) -> tuple[str, ...]:
    """Names of the registered backends (of one role when given), in registration order."""
    return tuple(name for name, entry in BACKENDS.items() if role is None or entry.role == role)


def load_backend(spec: TeacherSpec) -> Any:
    """Import the spec's backend module and let it load the spec."""
    return importlib.import_module(BACKENDS[spec.backend].module).load(spec)


def load_teacher(spec: str, text_spec: str = "", device: str | torch.device = "cpu") -> Teacher:
    """Build the frozen teacher for ``spec`` (plus a separate text teacher for ``text_spec``) on ``device``."""
    import torch

    from dcclip.models.teachers.composite import CompositeTeacher

    teacher = _load_clip(spec)
    if text_spec:
        teacher = CompositeTeacher(teacher, _load_text_side(text_spec))
    return teacher.to(torch.device(device))


def _load_clip(spec: str) -> Teacher:
    """An image + text teacher from a spec of a ``clip`` backend."""
    from dcclip.models.teacher_spec import TeacherSpecError, parse_teacher_spec

    parsed = parse_teacher_spec(spec)
    if BACKENDS[parsed.backend].role != CLIP:
        raise TeacherSpecError(
            f"teacher spec {spec!r}: {parsed.backend}: is a text-only teacher; pass it as teacher.text_spec"
        )
    return load_backend(parsed)


def _load_text_side(text_spec: str) -> Any:
    """The text side of a composite teacher: a text-only backend (M-CLIP) or any CLIP teacher's text tower."""
    from dcclip.models.teacher_spec import parse_teacher_spec

    parsed = parse_teacher_spec(text_spec)
    if BACKENDS[parsed.backend].role == TEXT:
        return load_backend(parsed)
    return _load_clip(text_spec)
