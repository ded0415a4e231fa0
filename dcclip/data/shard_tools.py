"""Build, validate and inspect shard sets: the library side of `dcclip shards build|validate|inspect`.

``build_shards`` turns a folder, CSV or JSONL of image-caption pairs into WebDataset shards; every input it cannot
use is skipped with a reason recorded in the manifest, never a crash and never half a shard. ``validate_shards``
decodes every image and caption of a shard set and lists what is broken; ``inspect_shards`` summarises one and can
draw a contact sheet.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, ImageDraw, ImageFont, ImageOps

from dcclip.data.shards import (
    IMAGE_EXTENSIONS,
    MANIFEST_NAME,
    ShardError,
    ShardSetWriter,
    image_field,
    iter_tar_samples,
    parse_meta,
    read_manifest,
    safe_key,
    shard_paths,
)

log = logging.getLogger(__name__)

SOURCE_KINDS = ("folder", "csv", "jsonl")
# Stored image formats and their field names; anything else PIL can decode is re-encoded as JPEG.
_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_ENCODE_ARGS: dict[str, dict[str, Any]] = {"JPEG": {"quality": 90}, "PNG": {}, "WEBP": {"quality": 90}}
# A language code such as en, yue, pt-BR, zh_Hant (BCP 47-like, either separator).
_LANG_CODE = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")
# Short column names that match the language pattern but are common non-caption columns; pass `langs` to use them.
_NOT_LANGUAGES = frozenset(
    {"id", "ids", "idx", "uid", "url", "uri", "src", "dir", "ext", "img", "md5", "sha", "cls", "tag", "row", "set"}
)
_RESERVED_COLUMNS = frozenset({"key", "source_lang", "captions"})
# Scripts written without spaces between words: word counts are meaningless there.
_NO_SPACE_LANGS = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"})

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------------- build


class _Skip(Exception):
    """A sample that cannot go into the shards: ``category`` groups the summary, ``reason`` says what to fix."""

    def __init__(self, category: str, detail: str):
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.reason = f"{category}: {detail}"


@dataclass
class _Candidate:
    """One input sample as read from the source, before its image is checked."""

    key: str
    source: str
    image: Path | None = None
    captions: dict[str, str] = field(default_factory=dict)
    source_lang: str = "en"
    problem: _Skip | None = None


def build_shards(
    source_kind: str,
    src: Path,
    out_dir: Path,
    max_count: int = 1000,
    max_size_mb: float = 256.0,
    max_side: int | None = None,
    source_lang: str = "en",
    langs: Sequence[str] | None = None,
    image_column: str = "image",
    progress: bool = True,
) -> dict:
    """Write WebDataset shards from a folder, CSV or JSONL of image-caption pairs; returns the manifest.

    Unusable samples (missing or undecodable image, no caption in ``source_lang``, bad text, duplicate key) are listed
    in the manifest's ``skipped`` with a reason; ``max_side`` shrinks larger images (aspect kept) to save space.
    """
    src, out_dir = Path(src), Path(out_dir)
    _check_source(source_kind, src)
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    total, candidates = _read_source(source_kind, src, source_lang, langs, image_column)
    categories: Counter = Counter()
    accepted: dict[str, str] = {}
    extra = {"source": str(src), "source_kind": source_kind, "max_side": max_side}
    with ShardSetWriter(out_dir, max_count=max_count, max_size_mb=max_size_mb) as writer:
        for candidate in _progress(candidates, total, progress, "shards build"):
            _build_one(writer, candidate, max_side, accepted, categories)
        manifest = writer.close(extra)
    _log_summary(manifest, categories, out_dir)
    _warn_stale_shards(out_dir, manifest)
    return manifest


def _check_source(source_kind: str, src: Path) -> None:
    """Fail early, naming the problem, when the source kind is unknown or the source is missing or the wrong type."""
    if source_kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {source_kind!r}; expected one of {', '.join(SOURCE_KINDS)}")
    if not src.exists():
        raise ValueError(f"{source_kind} source {src} does not exist")
    if source_kind == "folder" and not src.is_dir():
        raise ValueError(f"folder source {src} is not a directory")
    if source_kind != "folder" and not src.is_file():
        raise ValueError(f"{source_kind} source {src} is not a file")


def _read_source(
    kind: str, src: Path, source_lang: str, langs: Sequence[str] | None, image_column: str
) -> tuple[int, Iterator[_Candidate]]:
    """Number of candidates (for the progress bar) and the candidates of a source, read lazily where possible."""
    wanted = tuple(langs) if langs else None
    if kind == "folder":
        images = _folder_images(src)
        return len(images), (_folder_candidate(src, image, source_lang, wanted) for image in images)
    if kind == "csv":
        header, rows = _csv_rows(src, image_column, wanted)
        if wanted is None:
            log.info("%s: caption columns %s", src, ", ".join(_language_columns(header, image_column)) or "(none)")
    else:
        rows = _jsonl_rows(src)
    return len(rows), (_table_candidate(src.parent, row, source_lang, wanted, image_column) for row in rows)


def _build_one(
    writer: ShardSetWriter, cand: _Candidate, max_side: int | None, accepted: dict[str, str], categories: Counter
) -> None:
    """Check one candidate and add it to the shards, or record why it was skipped."""
    key = cand.key
    try:
        key = _sample_key(cand.key)
        if cand.problem is not None:
            raise cand.problem
        _check_captions(cand)
        if key in accepted:
            raise _Skip("duplicate key", f"{key!r} is already used by {accepted[key]}; give each sample its own key")
        ext, data = _prepare_image(cand.image, max_side)
    except _Skip as skip:
        writer.skip(key, cand.source, skip.reason)
        categories[skip.category] += 1
        return
    writer.add(key, {ext: data}, {"captions": cand.captions, "source_lang": cand.source_lang})
    accepted[key] = cand.source


def _sample_key(name: str) -> str:
    """The WebDataset key for a sample name, as a skip when no usable key can be derived."""
    try:
        return safe_key(name)
    except ShardError as exc:
        raise _Skip("bad key", str(exc)) from exc


def _check_captions(cand: _Candidate) -> None:
    """A sample needs at least one caption, and one in its source language (the teacher embeds that one)."""
    if not cand.captions:
        raise _Skip("no caption", "no non-empty caption in any language")
    if cand.source_lang not in cand.captions:
        have = ", ".join(sorted(cand.captions))
        raise _Skip(
            "no source-language caption",
            f"no {cand.source_lang!r} caption (has {have}); add it or set source_lang to one of those",
        )


def _prepare_image(path: Path | None, max_side: int | None = None) -> tuple[str, bytes]:
    """Field name and bytes to store for an image file: original bytes when usable, else decoded and re-encoded.

    Decodes fully so a truncated or corrupt file is caught here rather than in training; raises ``_Skip``.
    """
    if path is None or not path.is_file():
        raise _Skip("missing image", f"image file {path} not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Skip("unreadable image", f"cannot read {path} ({exc})") from exc
    if not data:
        raise _Skip("empty image", f"image file {path} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt = img.format or ""
            if max_side is not None and max(img.size) > max_side:
                return _resized(img, fmt, max_side)
            if fmt not in _FORMAT_EXT:
                return "jpg", _encode(img.convert("RGB"), "JPEG")
    except Exception as exc:  # PIL raises many types for bad files (OSError, SyntaxError, ValueError, bomb errors)
        raise _Skip("unreadable image", f"{path} does not decode ({type(exc).__name__}: {exc})") from exc
    return _FORMAT_EXT[fmt], data


def _resized(img: Image.Image, fmt: str, max_side: int) -> tuple[str, bytes]:
    """Shrink so the longer side is ``max_side``: upright first (EXIF), RGB, then re-encoded in its own format."""
    img = ImageOps.exif_transpose(img).convert("RGB")
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.LANCZOS)
    fmt = fmt if fmt in _FORMAT_EXT else "JPEG"
    return _FORMAT_EXT[fmt], _encode(img, fmt)


def _encode(img: Image.Image, fmt: str) -> bytes:
    """Encode an image in one of the stored formats (JPEG and WebP at quality 90)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **_ENCODE_ARGS[fmt])
    return buf.getvalue()


def _log_summary(manifest: dict, categories: Counter, out_dir: Path) -> None:
    """One line saying what was built and why samples were left out."""
    skipped = len(manifest["skipped"])
    line = f"built {manifest['samples']} samples in {len(manifest['shards'])} shards, skipped {skipped}"
    if skipped:
        reasons = ", ".join(f"{count} {category}" for category, count in categories.most_common())
        log.warning("%s: %s (each listed under 'skipped' in %s)", line, reasons, out_dir / MANIFEST_NAME)
    else:
        log.info("%s (%s)", line, out_dir)


def _warn_stale_shards(out_dir: Path, manifest: dict) -> None:
    """Tar files from an earlier build are not in the new manifest; say so rather than deleting a user's files."""
    current = {s["name"] for s in manifest["shards"]}
    stale = sorted(p.name for p in out_dir.glob("*.tar") if p.name not in current)
    if stale:
        log.warning("%s holds %d tar files not in its manifest (an earlier build?): %s", out_dir, len(stale), stale)


# ------------------------------------------------------------------------------------------------- folder sources


def _folder_images(src: Path) -> list[Path]:
    """Every image file under ``src``, recursively, in sorted order."""
    return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)


def _folder_candidate(src: Path, image: Path, source_lang: str, langs: tuple[str, ...] | None) -> _Candidate:
    """Pair an image with ``x.json`` (captions by language) or ``x.txt`` (one caption in ``source_lang``)."""
    cand = _Candidate(key=image.relative_to(src).with_suffix("").as_posix(), source=str(image), image=image)
    try:
        cand.captions, cand.source_lang = _folder_captions(image, source_lang, langs)
    except _Skip as skip:
        cand.problem = skip
    return cand


def _folder_captions(image: Path, source_lang: str, langs: tuple[str, ...] | None) -> tuple[dict[str, str], str]:
    """Captions and source language for one image of a folder source; raises ``_Skip``."""
    json_path, txt_path = image.with_suffix(".json"), image.with_suffix(".txt")
    if json_path.is_file():
        obj = _parse_json(_read_utf8(json_path), json_path.name)
        return _object_captions(obj, source_lang, langs, json_path.name)
    if txt_path.is_file():
        return _clean_captions({source_lang: _read_utf8(txt_path)}, txt_path.name), source_lang
    raise _Skip("no caption", f"no {json_path.name} or {txt_path.name} beside the image")


def _read_utf8(path: Path) -> str:
    """Text of a caption file; a file that is not UTF-8 is a skip naming the first bad byte."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Skip("not UTF-8", f"{path.name} is not UTF-8 (bad byte at {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise _Skip("unreadable caption", f"cannot read {path} ({exc})") from exc


def _parse_json(text: str, origin: str) -> Any:
    """Parse JSON text, turning a syntax error into a skip with line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Skip("malformed JSON", f"{origin}: {exc}") from exc


def _object_captions(
    obj: Any, source_lang: str, langs: tuple[str, ...] | None, origin: str
) -> tuple[dict[str, str], str]:
    """Captions from ``{"captions": {...}, "source_lang": ...}`` or a flat ``{lang: text}`` object."""
    if not isinstance(obj, dict):
        raise _Skip("bad caption", f"{origin} must hold a JSON object, not {type(obj).__name__}")
    row_lang = obj.get("source_lang") or source_lang
    if not isinstance(row_lang, str):
        raise _Skip("bad caption", f"{origin}: source_lang must be a string, not {type(row_lang).__name__}")
    if "captions" in obj:
        raw = obj["captions"]
        if not isinstance(raw, dict):
            raise _Skip("bad caption", f"{origin}: 'captions' must be an object, not {type(raw).__name__}")
        columns = [lang for lang in raw if langs is None or lang in langs]
    else:
        raw = obj
        columns = list(langs) if langs is not None else [k for k in obj if _looks_like_language(k)]
    return _clean_captions({lang: raw.get(lang) for lang in columns}, origin), row_lang


def _clean_captions(raw: dict[str, Any], origin: str) -> dict[str, str]:
    """Keep non-empty caption strings (stripped); empty or null means no caption in that language."""
    captions = {}
    for lang, text in raw.items():
        if text is None:
            continue
        if not isinstance(text, str):
            raise _Skip("bad caption", f"{origin}: caption for {lang!r} is a {type(text).__name__}, not text")
        if text.strip():
            captions[lang] = text.strip()
    return captions


def _looks_like_language(name: str) -> bool:
    """Whether a column name reads as a language code (en, yue, pt-BR, zh_Hant) rather than an id or url column."""
    return bool(_LANG_CODE.match(name)) and name not in _NOT_LANGUAGES and name not in _RESERVED_COLUMNS


# -------------------------------------------------------------------------------------------------- table sources


@dataclass
class _Row:
    """One CSV/JSONL row: its cells, where it came from, and a problem found while reading it."""

    origin: str
    cells: dict[str, Any] = field(default_factory=dict)
    problem: _Skip | None = None


def _csv_rows(path: Path, image_column: str, langs: tuple[str, ...] | None) -> tuple[list[str], list[_Row]]:
    """Header and rows of a CSV, decoded per row so one non-UTF-8 row is skipped instead of the whole file."""
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name for name in (reader.fieldnames or []) if name is not None]
    _check_header(path, header, image_column, langs)
    rows: list[_Row] = []
    while True:
        origin = f"{path}:{reader.line_num + 1}"
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.append(_Row(origin, problem=_Skip("bad row", f"CSV parse error ({exc})")))
            continue
        rows.append(_csv_row(origin, cells))
    return header, rows


def _check_header(path: Path, header: list[str], image_column: str, langs: tuple[str, ...] | None) -> None:
    """A CSV whose header lacks the image column or a requested language is a usage error, not a per-row skip."""
    if not header:
        raise ValueError(f"{path}: empty CSV, expected a header row with an {image_column!r} column")
    if any(_has_surrogates(name) for name in header):
        raise ValueError(f"{path}: the header row is not UTF-8")
    if image_column not in header:
        raise ValueError(f"{path}: no {image_column!r} column (columns: {', '.join(header)}); set image_column")
    missing = [lang for lang in langs or () if lang not in header]
    if missing:
        raise ValueError(f"{path}: language columns {missing} not in the header (columns: {', '.join(header)})")


def _csv_row(origin: str, cells: dict[str | None, Any]) -> _Row:
    """A parsed CSV row; cells that held invalid UTF-8 make the whole row a skip naming those columns."""
    clean = {name: value for name, value in cells.items() if name is not None}
    bad = [name for name, value in clean.items() if isinstance(value, str) and _has_surrogates(value)]
    if bad:
        return _Row(origin, clean, _Skip("not UTF-8", f"row is not valid UTF-8 in column(s) {', '.join(bad)}"))
    return _Row(origin, clean)


def _has_surrogates(text: str) -> bool:
    """Whether text decoded with ``surrogateescape`` carried bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _language_columns(header: Iterable[str], image_column: str) -> list[str]:
    """Caption columns of a table when none are given: every column named like a language code."""
    return [name for name in header if name != image_column and _looks_like_language(name)]


def _jsonl_rows(path: Path) -> list[_Row]:
    """Rows of a JSONL file, each line decoded and parsed on its own so a bad line is skipped alone."""
    rows = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if raw.strip():
            rows.append(_jsonl_row(f"{path}:{number}", raw))
    return rows


def _jsonl_row(origin: str, raw: bytes) -> _Row:
    """One JSONL line as a row, or a row carrying the reason it cannot be read."""
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        return _Row(origin, problem=_Skip("not UTF-8", f"line is not UTF-8 (bad byte at offset {exc.start})"))
    try:
        obj = _parse_json(text, "line")
    except _Skip as skip:
        return _Row(origin, problem=skip)
    if not isinstance(obj, dict):
        return _Row(origin, problem=_Skip("bad row", f"line must be a JSON object, not {type(obj).__name__}"))
    return _Row(origin, obj)


def _table_candidate(
    base: Path, row: _Row, source_lang: str, langs: tuple[str, ...] | None, image_column: str
) -> _Candidate:
    """Turn a CSV/JSONL row into a candidate: image path (relative to the table's folder), key, captions."""
    cells = row.cells
    image_value = cells.get(image_column)
    image = _table_image(base, image_value)
    key = cells.get("key")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str) or not key.strip():
        key = Path(image_value).with_suffix("").as_posix() if isinstance(image_value, str) else row.origin
    cand = _Candidate(key=key.strip(), source=row.origin, image=image, problem=row.problem)
    if cand.problem is None:
        try:
            cand.captions, cand.source_lang = _row_captions(cells, source_lang, langs, image_column)
            if image is None:
                raise _Skip("missing image", f"no image path in column {image_column!r}")
        except _Skip as skip:
            cand.problem = skip
    return cand


def _table_image(base: Path, value: Any) -> Path | None:
    """Image path of a row: absolute as given, else relative to the folder holding the CSV/JSONL."""
    if not isinstance(value, str) or not value.strip():
        return None
    path = Path(value.strip())
    return path if path.is_absolute() else base / path


def _row_captions(
    cells: dict[str, Any], source_lang: str, langs: tuple[str, ...] | None, image_column: str
) -> tuple[dict[str, str], str]:
    """Captions of a row: a nested ``captions`` object, else the language columns; plus its source language."""
    if isinstance(cells.get("captions"), dict):
        return _object_captions(cells, source_lang, langs, "row")
    columns = list(langs) if langs is not None else _language_columns(cells, image_column)
    row_lang = cells.get("source_lang")
    row_lang = row_lang.strip() if isinstance(row_lang, str) and row_lang.strip() else source_lang
    return _clean_captions({lang: cells.get(lang) for lang in columns}, "row"), row_lang


# -------------------------------------------------------------------------------------------------------- validate


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a shard set: the shard, the sample key (``-`` for the shard as a whole) and why."""

    shard: str
    key: str
    reason: str


@dataclass
class ValidationReport:
    """What ``validate_shards`` checked and every problem it found."""

    shards: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every shard read to its end and every sample decoded."""
        return not self.problems

    def format_table(self) -> str:
        """Aligned table of shard, key and reason, closed by a totals line; just the totals line when all is well."""
        total = f"checked {self.shards} shards, {self.samples} samples: "
        if self.ok:
            return total + "all OK"
        rows = [("shard", "key", "reason")] + [(p.shard, p.key, p.reason) for p in self.problems]
        w_shard = max(len(r[0]) for r in rows)
        w_key = max(len(r[1]) for r in rows)
        lines = [f"{s:<{w_shard}}  {k:<{w_key}}  {r}" for s, k, r in rows]
        lines.insert(1, f"{'-' * w_shard}  {'-' * w_key}  {'-' * 6}")
        lines.append(total + f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def validate_shards(source: str | Path, progress: bool = True) -> ValidationReport:
    """Decode every image, parse every caption and read every tar to its end; report each problem with shard and key."""
    report = ValidationReport()
    expected = _manifest_counts(source)
    seen: dict[str, str] = {}
    for path in _progress(shard_paths(source), None, progress, "shards validate"):
        report.shards += 1
        count = _validate_shard(path, report, seen)
        name = Path(path).name
        if count is not None and name in expected and expected[name] != count:
            report.problems.append(Problem(path, "-", f"manifest lists {expected[name]} samples, shard has {count}"))
    return report


def _manifest_counts(source: str | Path) -> dict[str, int]:
    """Samples per shard name as the manifest records them, when the source is a shard-set directory with one."""
    path = Path(str(source))
    if "::" in str(source) or not (path / MANIFEST_NAME).is_file():
        return {}
    return {s["name"]: s["samples"] for s in read_manifest(path)["shards"]}


def _validate_shard(path: str, report: ValidationReport, seen: dict[str, str]) -> int | None:
    """Check one shard's samples into ``report``; returns how many it held, None when it could not be opened."""
    if "://" not in path and not Path(path).is_file():
        report.problems.append(Problem(path, "-", "shard file not found"))
        return None
    count = 0
    try:
        for sample in iter_tar_samples(path):
            count += 1
            report.samples += 1
            key = sample["__key__"]
            if key in seen:
                report.problems.append(Problem(path, key, f"duplicate key (also in {seen[key]})"))
            seen.setdefault(key, path)
            report.problems.extend(Problem(path, key, reason) for reason in sample_problems(sample))
    except (ShardError, OSError) as exc:
        report.problems.append(Problem(path, "-", str(exc).removeprefix(f"{path}: ")))
    return count


def sample_problems(sample: dict[str, Any]) -> list[str]:
    """Everything wrong with one raw sample: image that does not decode, bad captions, unreadable ``.npy`` fields."""
    problems = []
    ext = image_field(sample)
    if ext is None:
        problems.append(f"no image field ({'/'.join(IMAGE_EXTENSIONS)})")
    else:
        problems.extend(_image_problem(sample[ext], ext))
    try:
        parse_meta(sample)
    except ShardError as exc:
        problems.append(str(exc).removeprefix(f"sample {sample.get('__key__', '?')}: "))
    problems.extend(_npy_problems(sample))
    return problems


def _image_problem(data: bytes, ext: str) -> list[str]:
    """A one-item list with the reason the image bytes do not fully decode, or an empty list."""
    if not data:
        return [f"image .{ext} is empty (0 bytes)"]
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as exc:  # any decoder failure is a broken sample, whatever PIL calls it
        return [f"image .{ext} does not decode ({type(exc).__name__}: {exc})"]
    return []


def _npy_problems(sample: dict[str, Any]) -> list[str]:
    """Reasons any ``*.npy`` field (teacher features) cannot be loaded as a plain array."""
    import numpy as np

    problems = []
    for ext, data in sample.items():
        if ext.endswith("npy") and isinstance(data, bytes):
            try:
                np.load(io.BytesIO(data), allow_pickle=False)
            except Exception as exc:  # numpy raises ValueError/EOFError/OSError for damaged arrays
                problems.append(f".{ext} does not load ({type(exc).__name__}: {exc})")
    return problems


# --------------------------------------------------------------------------------------------------------- inspect


@dataclass
class _Range:
    """Running min / mean / max of a number stream."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, value: float) -> None:
        """Take one value into the running figures."""
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def to_dict(self) -> dict[str, float]:
        """``{"min", "mean", "max"}`` (mean to one decimal); zeros when nothing was added."""
        if not self.count:
            return {"min": 0, "mean": 0.0, "max": 0}
        return {"min": self.low, "mean": round(self.total / self.count, 1), "max": self.high}


@dataclass
class _Stats:
    """Accumulates what ``inspect_shards`` reports, one raw sample at a time."""

    langs: Counter = field(default_factory=Counter)
    chars: dict[str, _Range] = field(default_factory=dict)
    words: dict[str, _Range] = field(default_factory=dict)
    width: _Range = field(default_factory=_Range)
    height: _Range = field(default_factory=_Range)
    formats: Counter = field(default_factory=Counter)
    unreadable: int = 0

    def add(self, sample: dict[str, Any]) -> None:
        """Count one raw sample: image size and format, then each caption's language and length."""
        self._add_image(sample)
        try:
            captions = parse_meta(sample)["captions"]
        except ShardError:
            self.unreadable += 1
            return
        for lang, text in captions.items():
            self.langs[lang] += 1
            self.chars.setdefault(lang, _Range()).add(len(text))
            if _language_base(lang) not in _NO_SPACE_LANGS:
                self.words.setdefault(lang, _Range()).add(len(text.split()))

    def _add_image(self, sample: dict[str, Any]) -> None:
        """Image size and format from the header only, which is enough for statistics and much faster."""
        ext = image_field(sample)
        try:
            with Image.open(io.BytesIO(sample[ext])) as img:
                self.width.add(img.width)
                self.height.add(img.height)
                self.formats[img.format or "?"] += 1
        except Exception:  # a missing or broken image is counted, not fatal: inspect is for looking
            self.unreadable += 1


def _language_base(lang: str) -> str:
    """Primary subtag of a language code: ``zh`` for ``zh_Hant`` or ``zh-TW``."""
    return re.split(r"[-_]", lang, maxsplit=1)[0].lower()


def inspect_shards(source: str | Path, contact_sheet: Path | None = None, n: int = 16, seed: int = 0) -> dict:
    """Statistics of a shard set (counts, languages, caption lengths, image sizes and formats); optional contact sheet.

    The sheet shows ``n`` samples drawn by reservoir sampling with ``seed``, so the same set and seed give the same
    picture.
    """
    if n < 1:
        raise ValueError(f"a contact sheet needs n >= 1 samples, got {n}")
    paths = shard_paths(source)
    stats, rng, picks, errors, seen = _Stats(), random.Random(seed), [], [], 0
    for path in paths:
        try:
            for sample in iter_tar_samples(path):
                stats.add(sample)
                _reservoir(picks, (seen, sample), n, rng, seen)
                seen += 1
        except (ShardError, OSError) as exc:
            errors.append(str(exc))
    result = _stats_dict(source, paths, seen, stats, errors)
    if contact_sheet is not None:
        render_contact_sheet([s for _, s in sorted(picks, key=lambda p: p[0])], Path(contact_sheet))
        result["contact_sheet"] = str(contact_sheet)
    return result


def _reservoir(picks: list[T], item: T, n: int, rng: random.Random, index: int) -> None:
    """Algorithm R: keep a uniform sample of ``n`` items of a stream, deterministic for a seeded ``rng``."""
    if len(picks) < n:
        picks.append(item)
        return
    slot = rng.randrange(index + 1)
    if slot < n:
        picks[slot] = item


def _stats_dict(source: str | Path, paths: list[str], samples: int, stats: _Stats, errors: list[str]) -> dict:
    """The plain-dict form of the statistics, ready for JSON or ``format_inspect``."""
    size = sum(Path(p).stat().st_size for p in paths if "://" not in p and Path(p).is_file())
    langs = sorted(stats.langs, key=lambda lang: (-stats.langs[lang], lang))
    return {
        "source": str(source),
        "shards": len(paths),
        "samples": samples,
        "bytes": size,
        "langs": {lang: stats.langs[lang] for lang in langs},
        "caption_chars": {lang: stats.chars[lang].to_dict() for lang in langs},
        "caption_words": {lang: stats.words[lang].to_dict() for lang in langs if lang in stats.words},
        "image_width": stats.width.to_dict(),
        "image_height": stats.height.to_dict(),
        "image_formats": dict(stats.formats.most_common()),
        "unreadable": stats.unreadable,
        "errors": errors,
    }


def format_inspect(stats: dict) -> str:
    """Human-readable summary of ``inspect_shards`` output: totals, images, then one row per language."""
    width, height = stats["image_width"], stats["image_height"]
    formats = ", ".join(f"{fmt} {count}" for fmt, count in stats["image_formats"].items()) or "-"
    lines = [
        f"shard set {stats['source']}",
        f"  {stats['shards']} shards, {stats['samples']} samples, {_human_bytes(stats['bytes'])}",
        f"  image width  {_span(width)}   height {_span(height)}   formats: {formats}",
        "",
        *_language_table(stats),
    ]
    if stats["unreadable"]:
        lines.append(f"  {stats['unreadable']} unreadable images or captions (see `dcclip shards validate`)")
    lines.extend(f"  error: {error}" for error in stats["errors"])
    if "contact_sheet" in stats:
        lines.append(f"  contact sheet: {stats['contact_sheet']}")
    return "\n".join(lines)


def _human_bytes(size: float) -> str:
    """Byte count with a readable unit (B, KB, MB, GB, TB; powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _span(r: dict[str, float]) -> str:
    """``min / mean / max`` of a range dict."""
    return f"{r['min']:g} / {r['mean']:g} / {r['max']:g}"


def _language_table(stats: dict) -> list[str]:
    """Rows of samples and caption lengths per language, aligned."""
    rows = [("lang", "samples", "chars min/mean/max", "words min/mean/max")]
    for lang, count in stats["langs"].items():
        words = stats["caption_words"].get(lang)
        rows.append((lang, str(count), _span(stats["caption_chars"][lang]), _span(words) if words else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


# ---------------------------------------------------------------------------------------------------- contact sheet

_THUMB = 224
_PAD = 8
_FONT_SIZE = 13
_LINE = 16
_SHEET_LANGS = 3  # languages shown per sample
_LINES_PER_LANG = 3


def render_contact_sheet(samples: Sequence[dict[str, Any]], path: Path) -> Path:
    """Draw raw samples as a grid of thumbnails with key and a few wrapped captions; written atomically as PNG."""
    font = _load_font(_FONT_SIZE)
    cols = max(1, math.ceil(math.sqrt(len(samples))))
    rows = max(1, math.ceil(len(samples) / cols))
    cell_w = _THUMB + 2 * _PAD
    cell_h = _THUMB + 2 * _PAD + _LINE * (1 + _SHEET_LANGS * _LINES_PER_LANG)
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        x, y = (i % cols) * cell_w + _PAD, (i // cols) * cell_h + _PAD
        _draw_thumb(sheet, draw, sample, x, y, font)
        for j, line in enumerate(_caption_lines(sample, font, _THUMB)):
            _draw_text(draw, (x, y + _THUMB + 4 + j * _LINE), line, font)
    _save_png_atomic(sheet, path)
    return path


def _load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at ``size`` (Pillow >= 10.1); the fixed-size bitmap default on older Pillow."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _draw_thumb(sheet: Image.Image, draw: ImageDraw.ImageDraw, sample: dict, x: int, y: int, font: Any) -> None:
    """Paste the sample's image, upright and fitted into the thumbnail box; a grey box when it does not decode."""
    try:
        with Image.open(io.BytesIO(sample[image_field(sample)])) as img:
            thumb = ImageOps.exif_transpose(img).convert("RGB")
            thumb.thumbnail((_THUMB, _THUMB))
    except Exception:  # a broken sample still gets its cell, so the sheet shows it
        draw.rectangle((x, y, x + _THUMB - 1, y + _THUMB - 1), fill=(200, 200, 200))
        _draw_text(draw, (x + 4, y + 4), "unreadable image", font)
        return
    sheet.paste(thumb, (x + (_THUMB - thumb.width) // 2, y + (_THUMB - thumb.height) // 2))


def _caption_lines(sample: dict[str, Any], font: Any, width: int) -> list[str]:
    """Key line, then up to three languages (source first), each wrapped to a few lines."""
    lines = [sample.get("__key__", "?")]
    try:
        meta = parse_meta(sample)
    except ShardError:
        return [*lines, "(unreadable captions)"]
    captions, source = meta["captions"], meta.get("source_lang")
    order = sorted(captions, key=lambda lang: (lang != source, lang))[:_SHEET_LANGS]
    for lang in order:
        lines.extend(_wrap(f"{lang}: {captions[lang][:300]}", font, width, _LINES_PER_LANG))
    return lines


def _wrap(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to a pixel width; text without spaces (CJK) breaks between characters; long text ends in ...."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if _text_width(font, candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while _text_width(font, word) > width and len(word) > 1:
            cut = _fitting_prefix(word, font, width)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(1, len(lines[-1]) - 3)] + "..."
    return lines


def _fitting_prefix(word: str, font: Any, width: int) -> int:
    """Length of the longest prefix of ``word`` that fits ``width`` pixels (at least one character)."""
    cut = 1
    while cut < len(word) and _text_width(font, word[: cut + 1]) <= width:
        cut += 1
    return cut


def _text_width(font: Any, text: str) -> float:
    """Pixel width of text; text the font cannot encode is measured with its characters replaced."""
    try:
        return font.getlength(text)
    except UnicodeError:
        return font.getlength(_latin1(text))


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any) -> None:
    """Draw text; a bitmap font that only knows Latin-1 gets ``?`` for other characters instead of raising."""
    try:
        draw.text(xy, text, fill="black", font=font)
    except UnicodeError:
        draw.text(xy, _latin1(text), fill="black", font=font)


def _latin1(text: str) -> str:
    """Text with every character outside Latin-1 replaced by ``?``."""
    return text.encode("latin-1", "replace").decode("latin-1")


def _save_png_atomic(img: Image.Image, path: Path) -> None:
    """Save a PNG under a temporary name and rename it, so a reader never sees half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------- helpers


def _progress(items: Iterable[T], total: int | None, enabled: bool, desc: str) -> Iterable[T]:
    """Wrap an iterable in a tqdm bar when asked and tqdm is installed (it comes with the ``train`` extra)."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, unit="it")
