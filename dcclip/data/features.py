"""Cached teacher features: the ``.npy`` fields beside each sample and the shard set's ``teacher.json``.

A student run compares the fingerprint recorded in ``teacher.json`` with the one its own config implies (computed by
``dcclip.models.teacher_spec.teacher_fingerprint``, without loading the teacher) and refuses features made by another.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcclip.data.shards import ShardError, read_manifest, set_directories, shard_paths
from dcclip.data.sources import (
    RemoteOptions,
    describe,
    is_local,
    join,
    local_path,
    looks_like_set_directory,
    read_bytes,
    shard_name,
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


@dataclass(frozen=True)
class FeatureCoverage:
    """The data shards a feature set covers, paired by name with their feature shards, in the data's order.

    ``cut`` holds the feature shards of a dry run (``cache-teacher --max-samples``): their data shard is covered only
    up to the feature shard's last key, so the reader stops there instead of dropping every later sample.
    """

    data_urls: tuple[str, ...]
    feature_urls: tuple[str, ...]
    cut: frozenset[str]
    samples: int | None  # samples with features (from the feature set's manifest); None when it has none
    data_shards: int

    @property
    def partial(self) -> bool:
        """True when the run can only train on part of its data: a dry-run set or fewer shards than the data."""
        return bool(self.cut) or len(self.data_urls) < self.data_shards

    def describe(self, data_samples: int | None) -> str:
        """One line for the run's log: how much of the data the features cover and what the run trains on."""
        covered = "?" if self.samples is None else str(self.samples)
        total = f"{data_samples}" if data_samples else "?"
        return (
            f"features cover {covered} of {total} samples in {len(self.data_urls)} of {self.data_shards} shards; "
            "training on the covered samples"
        )


def pair_features(data_urls: Sequence[str], feature_source: str, info: dict[str, Any]) -> FeatureCoverage:
    """Pair feature shards with data shards by name; refuse a feature shard with no data shard of its name, and a
    complete (not dry-run) feature set that leaves data shards out."""
    by_name = {shard_name(url): url for url in data_urls}
    if len(by_name) < len(data_urls):
        raise FeatureMismatchError("the training data's shards share file names: features are paired by name")
    features = {shard_name(url): url for url in shard_paths(feature_source)}
    for name in features:
        if name not in by_name:
            raise FeatureMismatchError(
                f"{feature_source}: feature shard {name} has no data shard of that name in the training data "
                f"({len(data_urls)} shards, e.g. {shard_name(data_urls[0])}); these features were cached from "
                f"{info.get('source', 'other data')}: point data.features at features of this data or re-run "
                "`dcclip cache-teacher`"
            )
    names = [name for name in by_name if name in features]
    missing = [name for name in by_name if name not in features]
    if missing and not info.get("max_samples"):
        raise FeatureMismatchError(
            f"{feature_source}: features for {len(names)} of {len(by_name)} data shards (no features for "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); run `dcclip cache-teacher` over the same "
            f"data with --out {feature_source} to cache the rest (finished shards are kept)"
        )
    if not names:
        raise FeatureMismatchError(f"{feature_source}: no feature shard matches a data shard")
    paired = tuple(features[name] for name in names)
    cut = frozenset(paired) if info.get("max_samples") else frozenset()
    samples = _feature_samples(feature_source)
    return FeatureCoverage(tuple(by_name[name] for name in names), paired, cut, samples, len(by_name))


def _feature_samples(feature_source: str) -> int | None:
    """Samples with features, as the feature set's manifest counts them; None without a manifest."""
    folders = set_directories(feature_source)
    return sum(read_manifest(folder)["samples"] for folder in folders) if folders else None
