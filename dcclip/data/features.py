"""Cached teacher features: the ``.npy`` fields beside each sample and the shard set's ``teacher.json``.

A student run compares the fingerprint recorded in ``teacher.json`` with the one its own config implies (computed by
``dcclip.models.teacher_spec.teacher_fingerprint``, without loading the teacher) and refuses features made by another.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from dcclip.data.shards import ShardError
from dcclip.io import write_json_atomic

TEACHER_JSON = "teacher.json"
IMG_EMB = "img_emb.npy"
IMG_FMAP = "img_fmap.npy"
TXT_EMB = "txt_emb.npy"
FEATURES_FORMAT = "dcclip-teacher-features"


class FeatureMismatchError(ShardError):
    """Cached features come from another teacher (or another teacher setting) than the run's config names."""


def npy_bytes(array: np.ndarray) -> bytes:
    """fp16 .npy bytes: half the size of fp32 and precise enough for distillation targets."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float16), allow_pickle=False)
    return buffer.getvalue()


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


def check_fingerprint(
    info: dict[str, Any], feature_dir: str, spec: str, text_spec: str, feature_map: bool, expected: str
) -> None:
    """Refuse features whose fingerprint is not ``expected`` (the run's teacher); the error names both teachers."""
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
