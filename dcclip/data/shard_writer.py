"""Writing shards: tar members sized before they are written, one shard written atomically, and ``ShardSetWriter``,
which fills count- and size-limited shards and writes the shard-set manifest (dcclip/data/shard_manifest.py) last.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dcclip.data.shard_manifest import MANIFEST_NAME, ShardError, ShardInfo, build_manifest
from dcclip.io import atomic_path, write_json_atomic

__all__ = [
    "BUILDING_MARKER",
    "ShardSetWriter",
    "add_sample",
    "escape_name",
    "tar_file_bytes",
    "tar_member_bytes",
    "write_shard",
]

BUILDING_MARKER = ".build-unfinished"  # present while a ShardSetWriter writes the directory
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_NAME_FIELD = 100  # longer member names need an extra GNU long-name header


def escape_name(name: str) -> str:
    """A file or member name that is not valid UTF-8 (Python holds its bytes as lone surrogates) with those bytes
    written as ``\\xff``: printable, and writable to JSON and logs, where the raw name made a whole build fail."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _padded(size: int) -> int:
    """Bytes a payload of ``size`` takes in a tar: rounded up to whole 512-byte blocks."""
    return -(-size // _BLOCK) * _BLOCK


def tar_member_bytes(name: str, size: int) -> int:
    """Bytes one member takes in a GNU tar: header, padded data, and a long-name header for names over 100 bytes."""
    name_len = len(name.encode("utf-8"))
    long_name = _BLOCK + _padded(name_len + 1) if name_len > _NAME_FIELD else 0
    return long_name + _BLOCK + _padded(size)


def tar_file_bytes(member_bytes: int) -> int:
    """Size of a finished tar holding ``member_bytes`` of members: end-of-archive blocks, padded to a 10 KiB record."""
    return -(-(member_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


def add_sample(tar: tarfile.TarFile, key: str, payload: dict[str, bytes]) -> None:
    """Append one sample's fields as ``KEY.ext`` members, sorted, with fixed metadata for reproducible bytes."""
    for ext, data in sorted(payload.items()):
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write one tar shard atomically (temporary name, then rename); returns the number of samples."""
    count = 0
    with atomic_path(path, tag="partial") as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, payload in samples:
            _check_fields(key, payload)
            add_sample(tar, key, payload)
            count += 1
    return count


class ShardSetWriter:
    """Write samples into size- and count-limited tar shards; a shard only gets its final name once complete.

    ``add`` takes the image bytes as they should be stored (already re-encoded if needed) and the JSON metadata;
    ``skip`` records a sample that could not be used. ``close`` writes ``manifest.json``. ``max_size_mb`` bounds the
    tar file itself (headers and padding included); a single sample bigger than that gets a shard of its own.
    An existing manifest is removed and a marker file written before the first shard: a rebuild killed half-way
    leaves no manifest that names the wrong samples, and readers refuse the unfinished set instead of mixing old and
    new tars. ``close`` writes the manifest, then removes the marker.
    """

    def __init__(self, out_dir: Path, max_count: int = 1000, max_size_mb: float = 256.0, prefix: str = "shard"):
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        if max_size_mb <= 0:
            raise ValueError(f"max_size_mb must be > 0, got {max_size_mb}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / MANIFEST_NAME).unlink(missing_ok=True)
        (self.out_dir / BUILDING_MARKER).write_text("a shard build started here and has not finished\n", "utf-8")
        self.max_count = max_count
        self.max_bytes = int(max_size_mb * 1024 * 1024)
        self.prefix = prefix
        self.shards: list[ShardInfo] = []
        self.skipped: list[dict[str, str]] = []
        self._keys: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._current: ShardInfo | None = None
        self._tmp_path: Path | None = None
        self._manifest: dict[str, Any] | None = None

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def has_key(self, key: str) -> bool:
        """Whether a sample with this key was already added (keys must be unique across the shard set)."""
        return key in self._keys

    def skip(self, key: str, source: str, reason: str) -> None:
        """Record a sample left out of the shards, with the reason a person can act on (names escaped to UTF-8)."""
        self.skipped.append({"key": escape_name(key), "source": escape_name(source), "reason": escape_name(reason)})

    def add(self, key: str, fields: dict[str, bytes], meta: dict[str, Any] | None = None) -> None:
        """Append one sample: ``fields`` maps extension (``jpg``, ``img_emb.npy``) to bytes; ``meta`` becomes .json."""
        if self._manifest is not None:
            raise ShardError(f"cannot add sample {key!r}: the shard set in {self.out_dir} is already closed")
        if key in self._keys:
            raise ShardError(f"duplicate sample key {key!r}")
        if not key or "." in key or "/" in key:
            raise ShardError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
        payload = dict(fields)
        if meta is not None:
            payload["json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
        _check_fields(key, payload)
        size = sum(tar_member_bytes(f"{key}.{ext}", len(data)) for ext, data in payload.items())
        self._roll_if_full(size)
        assert self._tar is not None and self._current is not None
        add_sample(self._tar, key, payload)
        self._keys.add(key)
        self._current.samples += 1
        self._current.bytes += size
        if meta is not None:
            self._current.langs.update(meta.get("captions", {}).keys())

    def _roll_if_full(self, incoming: int) -> None:
        current = self._current
        if current is not None and (
            current.samples >= self.max_count
            or (current.samples > 0 and tar_file_bytes(current.bytes + incoming) > self.max_bytes)
        ):
            self._finish_shard()
        if self._current is None:
            self._open_shard()

    def _open_shard(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp_path = self.out_dir / f".{name}.partial"
        self._tar = tarfile.open(self._tmp_path, "w", format=tarfile.GNU_FORMAT)  # noqa: SIM115 (closed in _finish_shard)
        self._current = ShardInfo(name)

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._current is not None and self._tmp_path is not None
        self._tar.close()
        final = self.out_dir / self._current.name
        os.replace(self._tmp_path, final)
        self._current.bytes = final.stat().st_size
        self.shards.append(self._current)
        self._tar, self._current, self._tmp_path = None, None, None

    def _abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._tmp_path is not None and self._tmp_path.exists():
            self._tmp_path.unlink()
        self._tar, self._current, self._tmp_path = None, None, None

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish the open shard and write the manifest; returns the manifest dict.

        Closing twice (``close(extra=...)`` inside a ``with`` block) returns the first manifest unchanged.
        """
        if self._manifest is not None:
            return self._manifest
        if self._current is not None and self._current.samples > 0:
            self._finish_shard()
        else:
            self._abort()
        manifest = build_manifest(self.shards, self.skipped, extra)
        write_json_atomic(self.out_dir / MANIFEST_NAME, manifest)
        (self.out_dir / BUILDING_MARKER).unlink(missing_ok=True)
        self._manifest = manifest
        return manifest


def _check_fields(key: str, payload: dict[str, Any]) -> None:
    """Reject a sample before any byte of it is written, so a bad field never leaves half a sample in the tar."""
    for ext, data in payload.items():
        if not isinstance(ext, str) or not ext or "/" in ext or ext.startswith("."):
            raise ShardError(f"sample {key}: bad field name {ext!r}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ShardError(f"sample {key}: field {ext!r} must be bytes, got {type(data).__name__}")
