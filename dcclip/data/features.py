"""Cached teacher features: the ``.npy`` fields beside each sample and the shard set's ``teacher.json``.

A student run compares the fingerprint recorded in ``teacher.json`` with the one its own config implies (computed by
``dcclip.models.teacher_spec.teacher_fingerprint``, without loading the teacher) and refuses features made by another.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from dcclip.data.shards import ShardError
from dcclip.data.sources import (
    RemoteOptions,
    describe,
    is_local,
    join,
    local_path,
    looks_like_set_directory,
    read_bytes,
)

log = logging.getLogger(__name__)

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


def teacher_json(info: dict[str, Any]) -> dict[str, Any]:
    """The content of teacher.json: the teacher behind a feature shard set (spec, preprocessing, dims, fingerprint)."""
    return {"format": FEATURES_FORMAT, "version": 1, **info}


def read_teacher_json(feature_dir: str | Path) -> dict[str, Any] | None:
    """The teacher.json of a feature shard set (a local folder or a URL), or None when it has none."""
    path = join(feature_dir, TEACHER_JSON)
    if is_local(path):
        if not local_path(path).is_file():
            return None
        raw = local_path(path).read_bytes()
    else:
        try:
            raw = read_bytes(path, RemoteOptions(retries=0))
        except OSError as exc:
            log.info("%s: no teacher.json read (%s)", describe(path), exc)
            return None
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{describe(path)}: invalid JSON ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FEATURES_FORMAT:
        raise ShardError(f"{describe(path)}: not a dcclip teacher-feature file")
    return info


def find_cached_features(train: str, features: str) -> tuple[str, dict[str, Any]] | None:
    """Where cached features are for a run: ``data.features`` if set, else the training shards themselves."""
    for candidate in [features] if features else [train]:
        folder = local_path(candidate).is_dir() if is_local(candidate) else looks_like_set_directory(candidate)
        info = read_teacher_json(candidate) if folder else None
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
