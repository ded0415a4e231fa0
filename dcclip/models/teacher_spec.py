"""The teacher spec grammar, parsed in one place, and what identifies a teacher for cached features.

Forms: ``openclip:MODEL@TAG``, ``openclip:MODEL@random``, ``openclip:/path/ckpt.pt#ARCH``, ``openclip:/path/dir`` (or
open_clip's own ``local-dir:``), ``openclip:hf-hub:ORG/REPO``, ``hf:/path/dir``, ``hf:ORG/NAME`` and ``mclip:/path/dir``
(text side only). Backend names, roles and spec forms come from ``dcclip.models.teachers.registry`` (a new backend is
a module and one line there); loading lives in that package. This module needs no torch, so features, eval and the
CLI can reason about a spec without loading anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcclip.models.teachers.registry import BACKENDS as REGISTERED
from dcclip.models.teachers.registry import CLIP, DIRECTORY_OR_HUB, OPENCLIP_FORM, backend_names
from dcclip.runtime.tokenizer import HUB_ID_RE

OPENCLIP, HF, MCLIP = "openclip", "hf", "mclip"
BACKENDS = backend_names()  # the registered backends when this module was imported
PREFIXES = tuple(f"{backend}:" for backend in BACKENDS)
CLIP_PREFIXES = tuple(f"{backend}:" for backend in backend_names(CLIP))  # image + text teachers; the rest: text sides
RANDOM_TAG = "random"
OPENCLIP_HUB_PREFIX = "hf-hub:"
OPENCLIP_DIR_PREFIX = "local-dir:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
SPEC_FORMS = (
    "openclip:MODEL@TAG, openclip:MODEL@random, openclip:/path/ckpt.pt#ARCH, openclip:/path/dir, "
    "openclip:hf-hub:ORG/REPO, hf:/path/dir, hf:ORG/NAME, mclip:/path/dir (text side only)"
)


class TeacherSpecError(ValueError):
    """A teacher spec string that is malformed or names something that does not exist."""


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed teacher spec: backend, architecture / model location and where the weights come from."""

    backend: str  # "openclip" | "hf" | "mclip"
    model: str  # openclip: architecture name or JSON path ("" for dir / hub); hf, mclip: local dir or hub id
    pretrained: str = ""  # openclip: a pretrained tag, "random", a checkpoint file, a directory or "hf-hub:REPO"
    source: str = ""  # "tag" | "random" | "file" | "dir" | "hub": where the weights come from
    raw: str = ""  # the spec string as written

    @property
    def local(self) -> bool:
        """True when the weights come from the local file system (no hub access needed)."""
        return self.source in ("file", "dir", "random")

    @property
    def local_path(self) -> Path | None:
        """The checkpoint file or directory the weights are read from, when they are local."""
        if self.source not in ("file", "dir"):
            return None
        return Path(self.pretrained if self.backend == OPENCLIP else self.model)

    def identity(self) -> dict[str, Any]:
        """Hub and tag specs by their text; local ones by backend, architecture and weight bytes, so features
        cached on one machine stay valid when the same checkpoint sits at another path on the next."""
        path = self.local_path
        if path is None:
            return {"spec": self.raw}
        arch = self.model if self.source == "file" else ""
        return {"backend": self.backend, "arch": arch, "weights": local_weights_digest(path)}


def parse_teacher_spec(spec: str) -> TeacherSpec:
    """Split a spec string into a TeacherSpec; local paths must exist so that typos fail here, naming the spec."""
    spec = (spec or "").strip()
    backend, sep, body = spec.partition(":")
    if not spec or not sep or backend not in REGISTERED or not body:
        raise TeacherSpecError(f"invalid teacher spec {spec!r}: expected one of {SPEC_FORMS}")
    if REGISTERED[backend].form == OPENCLIP_FORM:
        return _parse_openclip(spec, body)
    return _parse_hf_like(spec, backend, body)


def _parse_openclip(spec: str, body: str) -> TeacherSpec:
    """Parse the part after ``openclip:`` (open_clip's own ``local-dir:`` schema is accepted too)."""
    if body.startswith(OPENCLIP_DIR_PREFIX):
        return TeacherSpec(OPENCLIP, "", str(_existing(spec, body[len(OPENCLIP_DIR_PREFIX) :], True)), "dir", spec)
    if body.startswith(OPENCLIP_HUB_PREFIX):
        return TeacherSpec(OPENCLIP, "", body, "hub", spec)
    if "#" in body:
        path, _, arch = body.rpartition("#")
        if not arch or not path:
            raise TeacherSpecError(f"invalid teacher spec {spec!r}: expected openclip:/path/ckpt.pt#ARCH")
        return TeacherSpec(OPENCLIP, arch, str(_existing(spec, path, want_dir=False)), "file", spec)
    model, at, tag = body.rpartition("@")
    if at and tag and "/" not in tag and (model.endswith(".json") or not _looks_like_path(model)):
        return TeacherSpec(OPENCLIP, model, tag, RANDOM_TAG if tag == RANDOM_TAG else "tag", spec)
    if _looks_like_path(body):
        path = _existing(spec, body, want_dir=None)
        if path.is_file():
            raise TeacherSpecError(
                f"teacher spec {spec!r} names a checkpoint file without its architecture: "
                f"write openclip:{body}#ARCH (an open_clip model name or a teacher JSON)"
            )
        return TeacherSpec(OPENCLIP, "", str(path), "dir", spec)
    raise TeacherSpecError(
        f"teacher spec {spec!r} names no weights: write openclip:{body}@TAG (a pretrained tag such as "
        f"'openai'), openclip:/path/ckpt.pt#{body}, or openclip:{body}@{RANDOM_TAG} for a random init"
    )


def _parse_hf_like(spec: str, backend: str, body: str) -> TeacherSpec:
    """Parse ``hf:`` / ``mclip:`` and other directory backends: an existing local directory first, else a hub id
    (backends whose form allows one, as ``hf:``)."""
    path = Path(body).expanduser()
    if path.is_dir():
        return TeacherSpec(backend, str(path), "", "dir", spec)
    if path.exists():
        raise TeacherSpecError(f"teacher spec {spec!r}: {path} is a file; expected a model directory")
    hub = REGISTERED[backend].form == DIRECTORY_OR_HUB
    if hub and HUB_ID_RE.match(body) and not body.startswith("."):
        return TeacherSpec(backend, body, "", "hub", spec)
    hint = "" if hub else f" ({backend} teachers load from a local directory: download it first)"
    if backend == "mclip":
        hint += "; convert a published M-CLIP checkpoint with `dcclip teacher convert-mclip`, or set "
        hint += "teacher.text_spec= for a dry run with the CLIP's own text tower"
    raise TeacherSpecError(f"teacher spec {spec!r}: directory {path} does not exist{hint}")


def _looks_like_path(text: str) -> bool:
    """Whether an openclip spec body is a path rather than ``MODEL@TAG`` (model names contain no slashes)."""
    return "/" in text or "\\" in text or text.startswith(("~", ".")) or text.endswith(CHECKPOINT_SUFFIXES)


def _existing(spec: str, path: str, want_dir: bool | None) -> Path:
    """Expand a path from a spec and check it exists (as a file or directory when asked), naming the spec."""
    resolved = Path(path).expanduser()
    kind = {True: "directory", False: "checkpoint file", None: "path"}[want_dir]
    ok = resolved.exists() if want_dir is None else (resolved.is_dir() if want_dir else resolved.is_file())
    if not ok:
        raise TeacherSpecError(f"teacher spec {spec!r}: {kind} {resolved} does not exist")
    return resolved


def local_weights_digest(path: Path) -> dict[str, str]:
    """sha256 of the weight files at a local checkpoint path (one file, or every weight file under a directory)."""
    if path.is_file():
        return {path.suffix: _file_digest(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    return {str(p.relative_to(path)): _file_digest(p) for p in files}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def spec_identity(spec: str) -> dict[str, Any]:
    """The identity of a spec string ({} for none); a spec that no longer parses is identified by its text."""
    if not spec:
        return {}
    try:
        return parse_teacher_spec(spec).identity()
    except TeacherSpecError:
        return {"spec": spec}


def teacher_fingerprint(spec: str, text_spec: str = "", feature_map: bool = True) -> str:
    """What cached features depend on: the teacher (by identity, not path), the text teacher, the feature-map switch."""
    payload = {"image": spec_identity(spec), "text": spec_identity(text_spec), "feature_map": feature_map}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
