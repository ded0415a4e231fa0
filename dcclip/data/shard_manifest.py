"""The shard-set manifest as a typed schema: one definition of its fields, types and version, read and written here.

``manifest.json`` of a shard set lists its tars with per-shard counts, totals per language, bytes and every skipped
input; the writers (``ShardSetWriter``, ``dcclip shards translate``, cache-teacher) build it with
``build_manifest``, every reader loads it with ``read_manifest``, which checks each field it declares (a wrong type
is a ShardError naming the field). Keys it does not declare (the build's ``source``, a translation record) are kept.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from dcclip.data.sources import describe, is_local, join, local_path, read_bytes
from dcclip.runtime.constants import MANIFEST_FILE
from dcclip.runtime.manifest import Field, check_fields

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "SHARD_FIELDS",
    "SHARD_SET_FIELDS",
    "ShardError",
    "ShardInfo",
    "ShardSetManifest",
    "build_manifest",
    "check_shard_manifest",
    "read_manifest",
]

MANIFEST_NAME = MANIFEST_FILE
MANIFEST_FORMAT = "dcclip-shards"
MANIFEST_VERSION = 1


class ShardError(ValueError):
    """A shard set or one of its samples cannot be used; the message names the file and the key."""


@dataclass
class ShardInfo:
    """What one finished shard holds."""

    name: str
    samples: int = 0
    bytes: int = 0  # tar bytes written so far; the file size once the shard is finished
    langs: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        langs = dict(sorted(self.langs.items()))
        return {"name": self.name, "samples": self.samples, "bytes": self.bytes, "langs": langs}


class ShardSetManifest(TypedDict):
    """manifest.json of a shard set (version 1)."""

    format: str
    version: int
    samples: int
    bytes: int
    langs: dict[str, int]
    shards: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    source: NotRequired[str]
    source_kind: NotRequired[str]
    max_side: NotRequired[int | None]
    caption_format: NotRequired[dict[str, Any]]
    translation: NotRequired[dict[str, Any]]
    kind: NotRequired[str]  # 'teacher-features': a parallel set of teacher features (cache-teacher)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _counts(value: dict) -> bool:
    return all(isinstance(key, str) and _count(n) for key, n in value.items())


SHARD_SET_FIELDS = (
    Field("format", (str,), True, lambda v: v == MANIFEST_FORMAT, repr(MANIFEST_FORMAT)),
    Field("version", (int,), False, lambda v: v == MANIFEST_VERSION, str(MANIFEST_VERSION)),
    Field("shards", (list,), True, None, "a list of shard entries"),
    Field("samples", (int,), False, _count, "an integer >= 0"),
    Field("bytes", (int,), False, _count, "an integer >= 0"),
    Field("langs", (dict,), False, _counts, "an object {language: count}"),
    Field("skipped", (list,)),
    Field("source", (str,)),
    Field("source_kind", (str,)),
    Field("max_side", (int, type(None))),
    Field("caption_format", (dict,)),
    Field("translation", (dict,)),
    Field("kind", (str,)),
)
SHARD_FIELDS = (
    Field("name", (str,), True, lambda v: bool(v) and "/" not in v, "a tar file name"),
    Field("samples", (int,), True, _count, "an integer >= 0"),
    Field("bytes", (int,), False, _count, "an integer >= 0"),
    Field("langs", (dict,), False, _counts, "an object {language: count}"),
)


def check_shard_manifest(manifest: Any, where: Any) -> None:
    """Every declared field of a shard-set manifest, and of each shard entry, has its type (ShardError naming it)."""
    if not isinstance(manifest, Mapping) or manifest.get("format") != MANIFEST_FORMAT or "shards" not in manifest:
        raise ShardError(f"{where}: not a dcclip shard manifest")
    check_fields(manifest, SHARD_SET_FIELDS, where, ShardError)
    for index, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, Mapping):
            raise ShardError(f"{where}: manifest field shards[{index}] is {entry!r}; expected an object")
        check_fields(entry, SHARD_FIELDS, where, ShardError, prefix=f"shards[{index}].")


def build_manifest(
    shards: list[ShardInfo], skipped: list[dict[str, str]], extra: dict[str, Any] | None
) -> ShardSetManifest:
    """The manifest: shard list with per-shard counts, totals per language, bytes, and every skipped sample."""
    langs: Counter = Counter()
    for shard in shards:
        langs.update(shard.langs)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "samples": sum(s.samples for s in shards),
        "bytes": sum(s.bytes for s in shards),
        "langs": dict(sorted(langs.items())),
        "shards": [s.to_dict() for s in shards],
        "skipped": skipped,
    }
    if extra:
        manifest.update(extra)
    check_shard_manifest(manifest, "shard manifest being built")
    return manifest  # type: ignore[return-value]


def read_manifest(shard_dir: str | Path) -> ShardSetManifest:
    """Load ``manifest.json`` of a shard set (a local folder or a URL), checked, with an error naming the file."""
    path = join(shard_dir, MANIFEST_NAME)
    if is_local(path) and not local_path(path).is_file():
        raise ShardError(f"{path}: no manifest.json (build shards with `dcclip shards build`)")
    try:
        manifest = json.loads(read_bytes(path).decode("utf-8"))
    except OSError as exc:
        raise ShardError(f"{describe(path)}: cannot read the shard set's manifest ({exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{describe(path)}: not valid JSON ({exc})") from exc
    check_shard_manifest(manifest, describe(path))
    return manifest
