"""WebDataset shards of images and multilingual captions: writing, reading back, the shard-set manifest.

A shard set is a directory of ``PREFIX-000000.tar`` files plus ``manifest.json``. Each sample is ``KEY.<jpg|png|webp>``
and ``KEY.json`` with ``{"captions": {lang: text}, "source_lang": "en", ...}``; optional extra fields (teacher
features, ``cls``) sit beside them under the same key.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcclip.data.langcodes import normalise_lang
from dcclip.data.progress import progress_iter as progress_bar  # noqa: F401 (shard_build, shard_validate)
from dcclip.data.shard_manifest import (  # noqa: F401 (the manifest's owner, re-exported for its importers)
    MANIFEST_NAME,
    ShardError,
    ShardInfo,
    build_manifest,
    read_manifest,
)
from dcclip.data.shard_writer import (  # noqa: F401 (the writing half, re-exported for its importers)
    BUILDING_MARKER,
    ShardSetWriter,
    add_sample,
    escape_name,
    tar_file_bytes,
    tar_member_bytes,
    write_shard,
)
from dcclip.data.sources import (
    FinalSourceError,
    RemoteOptions,
    close_stream,
    describe,
    is_final,
    is_local,
    join,
    local_path,
    looks_like_set_directory,
    open_stream,
    transport_problem,
)
from dcclip.runtime.constants import SHARD_IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = SHARD_IMAGE_EXTENSIONS
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
# Bytes one tar member may hold once read (inflated, for a .tar.gz): a 3 MB gzip member claiming 3 GiB of zeros was
# read whole into memory. Images, captions and teacher features are far below it; DCCLIP_MAX_MEMBER_MB changes it.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MEMBER_LIMIT_ENV = "DCCLIP_MAX_MEMBER_MB"
_DRAIN_CHUNK = 16 * 1024 * 1024  # an oversized member is read past in chunks of this, never held
# A raw sample that must not be used carries why under ERROR_FIELD (every reader skips and counts it, parse_meta
# raises it); a sample whose key came before in the same shard also carries DUPLICATE_FIELD.
ERROR_FIELD = "__error__"
DUPLICATE_FIELD = "__duplicate__"


def max_member_bytes() -> int:
    """The member-size limit: DCCLIP_MAX_MEMBER_MB (megabytes) when set, else MAX_MEMBER_BYTES."""
    value = os.environ.get(MEMBER_LIMIT_ENV, "").strip()
    if not value:
        return MAX_MEMBER_BYTES
    try:
        megabytes = float(value)
    except ValueError:
        raise ShardError(f"{MEMBER_LIMIT_ENV}={value!r} is not a number of megabytes") from None
    if not megabytes > 0:
        raise ShardError(f"{MEMBER_LIMIT_ENV}={value!r} must be > 0")
    return int(megabytes * 1024 * 1024)


def safe_key(name: str) -> str:
    """Turn a file stem into a WebDataset key: no dots (they separate key and field) and no path characters."""
    key = _KEY_UNSAFE.sub("_", name)
    if not key:
        raise ShardError(f"empty sample key derived from {name!r}")
    return key


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of at most ``size`` consecutive items from any iterable, streamed (nothing held beyond one list)."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def set_directories(source: str | Path) -> list[str]:
    """The parts of a shard source that are shard-set folders with a manifest (local, or remote URLs of folders)."""
    parts = []
    for part in str(source).split("::"):
        local_set = is_local(part) and (local_path(part) / MANIFEST_NAME).is_file()
        if local_set or looks_like_set_directory(part):
            parts.append(part)
    return parts


def shard_paths(source: str | Path) -> list[str]:
    """Resolve a shard source to a list of tar paths/URLs.

    Accepts a shard-set directory (its manifest, or every ``*.tar`` when there is none), a single ``.tar`` file, or a
    brace-expanded pattern of paths or URLs such as ``data/shard-{000000..000009}.tar``,
    ``https://host/shard-{000000..000099}.tar`` or ``pipe:aws s3 cp s3://bucket/shard-{000..009}.tar -``. Several
    sources may be joined with ``::``. Remote entries are not checked here; a missing one fails when read.
    """
    import braceexpand

    paths: list[str] = []
    for part in str(source).split("::"):
        if is_local(part) and local_path(part).is_dir():
            paths.extend(_directory_shards(local_path(part)))
            continue
        if looks_like_set_directory(part):
            paths.extend(join(part, s["name"]) for s in read_manifest(part)["shards"])
            continue
        expanded = list(braceexpand.braceexpand(part))
        missing = [e for e in expanded if is_local(e) and not local_path(e).exists()]
        if missing:
            raise ShardError(f"{missing[0]}: no such shard file or directory")
        paths.extend(expanded)
    if not paths:
        raise ShardError(f"{source}: no shards found")
    return paths


def _directory_shards(p: Path) -> list[str]:
    """The tars of a local shard-set directory: those its manifest lists, else every ``*.tar`` in it."""
    if (p / BUILDING_MARKER).is_file():
        raise ShardError(
            f"{p}: a shard build into this directory did not finish (killed?); its tars may mix two builds. "
            "Run the build again"
        )
    if (p / MANIFEST_NAME).is_file():
        return [str(p / s["name"]) for s in read_manifest(p)["shards"]]
    return [str(t) for t in sorted(p.glob("*.tar"))]


def split_field_name(member_name: str) -> tuple[str, str]:
    """Split ``dir/KEY.ext.more`` into (KEY, ``ext.more``) the way WebDataset groups files into samples."""
    base = member_name.rsplit("/", 1)[-1]
    if "." not in base:
        return base, ""
    key, ext = base.split(".", 1)
    return key, ext


class _StrictTarInfo(tarfile.TarInfo):
    """A tar header reader that treats a short or garbled header after the first member as damage.

    Python's tarfile ends iteration silently there (a file cut off between members looks complete); only a zero
    end-of-archive block may end a shard.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError, tarfile.EmptyHeaderError) as exc:
            if tar.offset == 0:
                raise
            raise tarfile.SubsequentHeaderError(f"no end-of-archive marker at byte {tar.offset} ({exc})") from exc


def iter_tar_samples(url: str | Path, options: RemoteOptions | None = None) -> Iterator[dict[str, Any]]:
    """Yield raw samples of one tar shard as ``{"__key__", "__url__", ext: bytes}``, grouping consecutive members.

    The shard is read as a stream (local file, pipe, HTTP or fsspec URL). A truncated or corrupt tar raises
    ShardError naming the shard and the last member read whole, instead of ending early without a word; the sample in
    progress is dropped. A remote shard that fails is read again up to ``options.retries`` times with backoff, going
    on after the samples it already gave, before the error is raised.
    """
    if is_local(url):
        yield from _read_tar_once(url, options)
        return
    options = options or RemoteOptions()
    given = 0
    for attempt in range(options.retries + 1):
        try:
            for index, sample in enumerate(_read_tar_once(url, options)):
                if index >= given:
                    given += 1
                    yield sample
            return
        except ShardError as exc:
            if is_final(exc.__cause__) or is_final(exc):
                raise
            if attempt == options.retries:
                raise ShardError(f"{exc}; gave up after {attempt + 1} attempts") from exc
            delay = options.delay(attempt)
            log.warning("%s; attempt %d of %d, next in %.1f s", exc, attempt + 2, options.retries + 1, delay)
            time.sleep(delay)


def _read_tar_once(url: str | Path, options: RemoteOptions | None) -> Iterator[dict[str, Any]]:
    """One sequential pass over a tar shard; see ``iter_tar_samples``.

    Members group into samples by key, as WebDataset does, but two samples are never merged: a field that repeats
    within a group, or a key seen before in the shard, starts a new sample marked as a duplicate. A member over the
    member-size limit is read past in chunks, never held, and its sample is marked with the reason; a name that is not
    valid UTF-8 is escaped. Marked samples carry ERROR_FIELD, so every reader skips and counts them.
    """
    limit = max_member_bytes()
    name = describe(url)
    reader = _SampleGrouper(str(url), name, limit)
    try:
        stream = open_stream(url, options)
    except OSError as exc:
        raise ShardError(f"{name}: cannot open ({exc})") from exc
    finished = False
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for member in tar:
                if member.isfile():
                    yield from reader.add(member, tar)
        finished = True
        close_stream(stream, url, finished=True)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        last = reader.last_member
        after = f" after member {last!r}" if last is not None else ""
        reason = transport_problem(stream, url) or exc
        if is_final(reason):
            raise ShardError(f"{name}: cannot be read: {reason}") from FinalSourceError(str(reason))
        raise ShardError(f"{name}: tar is truncated or corrupt{after} ({reason})") from exc
    finally:
        if not finished:
            close_stream(stream, url, finished=False)
    yield from reader.flush()


class _SampleGrouper:
    """Groups the members of one tar into raw samples, marking duplicates and oversized members (see above)."""

    def __init__(self, url: str, name: str, limit: int) -> None:
        self.url, self.name, self.limit = url, name, limit
        self.current: dict[str, Any] | None = None
        self.keys: set[str] = set()
        self.last_member: str | None = None

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> Iterator[dict[str, Any]]:
        """Read one file member into the sample in progress; yields the previous sample once its key changes."""
        member_name = escape_name(member.name)
        key, ext = split_field_name(member_name)
        current = self.current
        if current is None or current["__key__"] != key or ext in current:
            yield from self.flush()
            current = self.current = {"__key__": key, "__url__": self.url}
            if key in self.keys:
                current[DUPLICATE_FIELD] = True
                current[ERROR_FIELD] = (
                    f"duplicate key {key!r} in {self.name}: a sample with this key came before in the shard "
                    "(samples are never merged; the first one is used)"
                )
            self.keys.add(key)
        data = _read_member(tar, member, self.limit)
        if data is None:
            current.setdefault(
                ERROR_FIELD,
                f"member {member_name!r} of {self.name} holds {member.size} bytes, over the limit of {self.limit} "
                f"bytes per member ({MEMBER_LIMIT_ENV} raises it)",
            )
        else:
            current[ext] = data
        self.last_member = member_name

    def flush(self) -> Iterator[dict[str, Any]]:
        """The sample in progress, if any."""
        if self.current is not None:
            sample, self.current = self.current, None
            yield sample


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes | None:
    """A member's bytes, or None (after reading past it in chunks) when its header claims more than ``limit``."""
    handle = tar.extractfile(member)
    if handle is None:
        return b""
    if member.size <= limit:
        return handle.read()
    while handle.read(_DRAIN_CHUNK):  # stream mode has no seek: inflate and drop, holding one chunk at a time
        pass
    return None


def iter_samples(source: str | Path, options: RemoteOptions | None = None) -> Iterator[dict[str, Any]]:
    """Yield every raw sample of a shard source, shard by shard, in order."""
    for path in shard_paths(source):
        yield from iter_tar_samples(path, options)


def image_field(sample: dict[str, Any]) -> str | None:
    """Name of the image field of a raw sample, or None when it has none."""
    return next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)


@dataclass(frozen=True)
class CaptionFormat:
    """Where a sample's captions are: dcclip's ``captions`` object in ``KEY.json``, or, for img2dataset output and
    other single-language WebDatasets, one ``KEY.txt`` caption whose language is read from the metadata field
    ``lang_field`` (e.g. laion2B-multi's ``LANGUAGE``) or, failing that, is ``caption_lang``.
    """

    caption_lang: str = ""
    lang_field: str = ""
    machine_captions: bool = True  # False: drop captions ``caption_sources`` marks as machine translations

    @property
    def single_caption(self) -> bool:
        """Whether samples with one ``.txt`` caption can be read (their language is given somehow)."""
        return bool(self.caption_lang or self.lang_field)


DCCLIP_CAPTIONS = CaptionFormat()
MACHINE = "machine"  # caption_sources kind of a machine-translated caption


def machine_langs(meta: dict[str, Any]) -> set[str]:
    """Languages of a sample's captions that a machine made, per its ``caption_sources``."""
    sources = meta.get("caption_sources") or {}
    return {lang for lang, src in sources.items() if isinstance(src, dict) and src.get("kind") == MACHINE}


def without_machine_captions(meta: dict[str, Any]) -> dict[str, Any]:
    """A copy of a sample's metadata keeping only the captions that came with the data (no machine translations)."""
    drop = machine_langs(meta)
    kept = {lang: text for lang, text in meta.get("captions", {}).items() if lang not in drop}
    rest = {key: value for key, value in meta.items() if key != "caption_sources"}
    return {**rest, "captions": kept}


def decode_sample(sample: dict[str, Any], fmt: CaptionFormat = DCCLIP_CAPTIONS) -> tuple[dict[str, Any], Any]:
    """A raw sample's checked metadata and decoded PIL image; raises ShardError / ImageDecodeError naming the key."""
    from dcclip.runtime.preprocess import decode_image

    meta = parse_meta(sample, fmt)
    ext = image_field(sample)
    if ext is None:
        raise ShardError(f"sample {sample.get('__key__', '?')}: no image field")
    return meta, decode_image(sample[ext])


def parse_meta(sample: dict[str, Any], fmt: CaptionFormat = DCCLIP_CAPTIONS) -> dict[str, Any]:
    """A sample's metadata with its captions as ``{"captions": {lang: text}, "source_lang": ...}``, checked.

    Raises ShardError naming the key and the problem.
    """
    key = sample.get("__key__", "?")
    if ERROR_FIELD in sample:
        raise ShardError(f"sample {key}: {sample[ERROR_FIELD]}")
    raw = sample.get("json")
    meta = _json_field(raw, key) if raw is not None else None
    if isinstance(meta, dict) and "captions" in meta:
        meta = meta if fmt.machine_captions else without_machine_captions(meta)
        return _check_captions(meta, key)
    if "txt" in sample and fmt.single_caption:
        return _single_caption(sample, meta if isinstance(meta, dict) else {}, fmt, key)
    if raw is None and "txt" not in sample:
        raise ShardError(f"sample {key}: no .json field")
    if "txt" in sample:
        raise ShardError(
            f"sample {key}: one .txt caption and no 'captions' object; give its language with data.caption_lang "
            "(e.g. en) or data.lang_field (e.g. LANGUAGE) to read single-language / img2dataset shards"
        )
    raise ShardError(f"sample {key}: .json has no 'captions' object")


def _json_field(raw: Any, key: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as exc:
        raise ShardError(f"sample {key}: .json is not UTF-8 ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ShardError(f"sample {key}: .json is not valid JSON ({exc})") from exc


def _check_captions(meta: dict[str, Any], key: str) -> dict[str, Any]:
    captions = meta.get("captions")
    if not isinstance(captions, dict) or not captions:
        raise ShardError(f"sample {key}: .json has no 'captions' object")
    for lang, text in captions.items():
        if not isinstance(text, str) or not text.strip():
            raise ShardError(f"sample {key}: caption for language {lang!r} is empty or not a string")
    source_lang = meta.get("source_lang")
    if source_lang is not None and source_lang not in captions:
        raise ShardError(f"sample {key}: source_lang {source_lang!r} has no caption")
    return meta


def _single_caption(sample: dict[str, Any], meta: dict[str, Any], fmt: CaptionFormat, key: str) -> dict[str, Any]:
    """dcclip metadata for a sample with one ``.txt`` caption; its language from ``fmt`` (unknown codes raise)."""
    lang = fmt.caption_lang
    if fmt.lang_field and meta.get(fmt.lang_field) is not None:
        label = meta[fmt.lang_field]
        lang = normalise_lang(label) or ""
        if not lang:
            raise ShardError(f"sample {key}: {fmt.lang_field}={label!r} is not a language code dcclip knows")
    if not lang:
        raise ShardError(f"sample {key}: no {fmt.lang_field!r} field in .json to give the caption's language")
    try:
        text = sample["txt"].decode("utf-8") if isinstance(sample["txt"], bytes) else str(sample["txt"])
    except UnicodeDecodeError as exc:
        raise ShardError(f"sample {key}: .txt is not UTF-8 ({exc})") from exc
    if not text.strip():
        raise ShardError(f"sample {key}: .txt caption is empty")
    return {**meta, "captions": {lang: text.strip()}, "source_lang": lang}


def iter_captions(
    source: str | Path, langs: Iterable[str] | None = None, fmt: CaptionFormat = DCCLIP_CAPTIONS
) -> Iterator[str]:
    """Yield every caption text of a shard source (optionally only some languages), e.g. to train a tokenizer.

    Samples whose captions cannot be read are passed over (``shards validate`` names them).
    """
    wanted = set(langs) if langs is not None else None
    for sample in iter_samples(source):
        try:
            captions = parse_meta(sample, fmt)["captions"]
        except ShardError:
            continue
        for lang, text in captions.items():
            if wanted is None or lang in wanted:
                yield text
