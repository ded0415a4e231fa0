"""Cached teacher features: the ``.npy`` fields beside each sample and the shard set's ``teacher.json``.

A student run compares the fingerprint recorded in ``teacher.json`` with the one its own config implies, without
loading the teacher, and refuses features made by another teacher.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from dcclip.data.shards import ShardError, write_json_atomic

TEACHER_JSON = "teacher.json"
IMG_EMB = "img_emb.npy"
IMG_FMAP = "img_fmap.npy"
TXT_EMB = "txt_emb.npy"
FEATURES_FORMAT = "dcclip-teacher-features"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class FeatureMismatchError(ShardError):
    """Cached features come from another teacher (or another teacher setting) than the run's config names."""


def npy_bytes(array: np.ndarray) -> bytes:
    """fp16 .npy bytes: half the size of fp32 and precise enough for distillation targets."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float16), allow_pickle=False)
    return buffer.getvalue()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_path(spec_part: str) -> Path | None:
    """The local file or directory a spec names, if any (``openclip:/x.pt#ARCH``, ``hf:/dir``, ``mclip:/dir``)."""
    body = spec_part.split(":", 1)[1] if ":" in spec_part else spec_part
    body = body.removeprefix("local-dir:").split("#", 1)[0]
    path = Path(body)
    return path if path.exists() else None


def local_weights_digest(path: Path) -> dict[str, str]:
    """Content hashes of the weight files at a local path."""
    if path.is_file():
        return {path.suffix: _file_digest(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    return {str(p.relative_to(path)): _file_digest(p) for p in files}


def spec_identity(spec_part: str) -> dict[str, Any]:
    """What identifies a teacher spec: hub names as written; local paths by backend, architecture and weight bytes.

    Features cached on one machine stay valid when the same checkpoint sits at another path on the next.
    """
    if not spec_part:
        return {}
    path = _local_path(spec_part)
    if path is None:
        return {"spec": spec_part}
    backend = spec_part.split(":", 1)[0] if ":" in spec_part else ""
    arch = spec_part.split("#", 1)[1] if "#" in spec_part else ""
    return {"backend": backend, "arch": arch, "weights": local_weights_digest(path)}


def teacher_fingerprint(spec: str, text_spec: str = "", feature_map: bool = True) -> str:
    """What cached features depend on: the teacher (by identity, not path), the text teacher, the feature-map switch."""
    payload = {"image": spec_identity(spec), "text": spec_identity(text_spec), "feature_map": feature_map}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def write_teacher_json(out_dir: Path, info: dict[str, Any]) -> Path:
    """Record the teacher behind a feature shard set (spec, preprocessing, dims, fingerprint, fields)."""
    path = Path(out_dir) / TEACHER_JSON
    write_json_atomic(path, {"format": FEATURES_FORMAT, "version": 1, **info})
    return path


def read_teacher_json(feature_dir: str | Path) -> dict[str, Any] | None:
    """The teacher.json of a feature shard set, or None when the directory has none."""
    path = Path(feature_dir) / TEACHER_JSON
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: invalid JSON ({exc})") from exc
    if info.get("format") != FEATURES_FORMAT:
        raise ShardError(f"{path}: not a dcclip teacher-feature file")
    return info


def find_cached_features(train: str, features: str) -> tuple[str, dict[str, Any]] | None:
    """Where cached features are for a run: ``data.features`` if set, else the training shards themselves."""
    for candidate in [features] if features else [train]:
        info = read_teacher_json(candidate) if Path(candidate).is_dir() else None
        if info is not None:
            return candidate, info
    if features:
        raise ShardError(f"{features}: data.features is set but holds no {TEACHER_JSON} (run `dcclip cache-teacher`)")
    return None


def check_fingerprint(info: dict[str, Any], feature_dir: str, spec: str, text_spec: str, feature_map: bool) -> None:
    """Refuse features from another teacher; the error names both teachers and both fingerprints."""
    expected = teacher_fingerprint(spec, text_spec, feature_map)
    if info.get("fingerprint") != expected:
        raise FeatureMismatchError(
            f"cached features in {feature_dir} were made by teacher {info.get('spec')!r} "
            f"(text {info.get('text_spec')!r}, feature_map={info.get('feature_map')}, fingerprint "
            f"{str(info.get('fingerprint'))[:12]}) but this run's config names teacher {spec!r} (text {text_spec!r}, "
            f"feature_map={feature_map}, fingerprint {expected[:12]}); re-run `dcclip cache-teacher` or fix teacher.*"
        )


def feature_fields(info: dict[str, Any]) -> list[str]:
    """The per-sample fields a feature set holds, in the order the batch builder reads them."""
    return list(info.get("fields", [IMG_EMB, TXT_EMB]))
