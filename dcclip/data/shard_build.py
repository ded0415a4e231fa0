"""`dcclip shards build`: a folder, CSV or JSONL of image-caption pairs -> WebDataset shards.

Every input that cannot be used is skipped with a reason recorded in the manifest, never a crash and never half a
shard.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, ImageOps

from dcclip.data.shards import (
    DUPLICATE_FIELD,
    ERROR_FIELD,
    IMAGE_EXTENSIONS,
    MANIFEST_NAME,
    CaptionFormat,
    ShardError,
    ShardSetWriter,
    escape_name,
    image_field,
    iter_tar_samples,
    parse_meta,
    progress_bar,
    safe_key,
    shard_paths,
)
from dcclip.data.sources import describe, shard_name
from dcclip.runtime.constants import IMAGE_EXTENSIONS as ALL_IMAGE_EXTENSIONS
from dcclip.runtime.preprocess import ImageDecodeError, check_geometry, to_rgb

log = logging.getLogger(__name__)

# Image files every source accepts (GIF, BMP and TIFF are re-encoded as JPEG), and a folder's caption files.
SOURCE_IMAGE_EXTENSIONS = ALL_IMAGE_EXTENSIONS
CAPTION_EXTENSIONS = ("json", "txt")

SOURCE_KINDS = ("folder", "csv", "jsonl", "wds")
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
T = TypeVar("T")


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
    image_bytes: bytes | None = None  # a WebDataset source carries the encoded image itself
    source_meta: dict[str, Any] | None = None  # the source sample's own metadata (url, size, ...), kept as is


def build_shards(
    source_kind: str,
    src: Path | str,
    out_dir: Path,
    max_count: int = 1000,
    max_size_mb: float = 256.0,
    max_side: int | None = None,
    source_lang: str = "en",
    langs: Sequence[str] | None = None,
    image_column: str = "image",
    progress: bool = True,
    lang_field: str = "",
    max_samples: int | None = None,
) -> dict:
    """Write dcclip shards from a folder, CSV or JSONL of image-caption pairs, or any WebDataset; returns the manifest.

    Unusable samples (missing or undecodable image, no caption in ``source_lang``, bad text, duplicate key) are listed
    in the manifest's ``skipped`` with a reason; ``max_side`` shrinks larger images (aspect kept) to save space. A
    WebDataset source (``wds``: any shard source, local or remote) keeps dcclip captions as they are and reads a
    ``.txt`` caption as ``source_lang``, or as the language its ``.json`` field ``lang_field`` names.
    ``max_samples`` stops after that many samples are written (a dry-run subset). A build that wrote no sample is
    still returned (its manifest lists why); ``refuse_empty`` turns it into the error a command reports.
    """
    out_dir = Path(out_dir)
    if source_kind != "wds":
        src = Path(src)
        _check_source(source_kind, src)
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    if source_kind == "wds":
        total, candidates = None, _wds_candidates(str(src), CaptionFormat(source_lang, lang_field), langs)
    else:
        total, candidates = _read_source(source_kind, Path(src), source_lang, langs, image_column)
    categories: Counter = Counter()
    accepted: dict[str, str] = {}
    extra = {"source": describe(src), "source_kind": source_kind, "max_side": max_side}
    if source_kind == "wds":
        extra["caption_format"] = {"txt_lang": source_lang, "lang_field": lang_field}
    with ShardSetWriter(out_dir, max_count=max_count, max_size_mb=max_size_mb) as writer:
        for candidate in progress_bar(candidates, total, progress, "shards build"):
            _build_one(writer, candidate, max_side, accepted, categories)
            if max_samples is not None and len(accepted) >= max_samples:
                break
        manifest = writer.close(extra)
    _log_summary(manifest, categories, out_dir)
    _warn_stale_shards(out_dir, manifest)
    return manifest


def refuse_empty(manifest: dict, src: Path | str, out_dir: Path) -> None:
    """Zero usable samples is an error (ValueError): say why the first ones were skipped and where the list is."""
    if manifest["samples"]:
        return
    skipped = manifest["skipped"]
    if not skipped:
        raise ValueError(f"{describe(src)}: no samples found; nothing was written")
    reasons = "; ".join(f"{item['key']}: {item['reason']}" for item in skipped[:3])
    more = f" (all {len(skipped)} listed in {out_dir / MANIFEST_NAME})" if len(skipped) > 3 else ""
    raise ValueError(f"{describe(src)}: no usable sample, {len(skipped)} skipped: {reasons}{more}")


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
        images, others = _folder_files(src)
        candidates = itertools.chain(
            (_folder_candidate(src, image, source_lang, wanted) for image in images),
            (_unused_file(src, path) for path in others),
        )
        return len(images) + len(others), candidates
    from dcclip.data.shard_tables import csv_rows, jsonl_rows, language_columns, refuse_urls, table_candidate

    if kind == "csv":
        header, rows = csv_rows(src, image_column, wanted)
        if wanted is None:
            log.info("%s: caption columns %s", src, ", ".join(language_columns(header, image_column)) or "(none)")
    else:
        rows = jsonl_rows(src)
    refuse_urls(src, rows, image_column)
    return len(rows), (table_candidate(src.parent, row, source_lang, wanted, image_column) for row in rows)


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
        if cand.image_bytes is not None:
            ext, data = _prepare_image_bytes(cand.image_bytes, cand.source, max_side)
        else:
            ext, data = _prepare_image(cand.image, max_side)
    except _Skip as skip:
        writer.skip(key, cand.source, skip.reason)
        categories[skip.category] += 1
        return
    meta: dict[str, Any] = {"captions": cand.captions, "source_lang": cand.source_lang}
    if cand.source_meta:
        meta["source_meta"] = cand.source_meta
    writer.add(key, {ext: data}, meta)
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
    _check_image_format(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Skip("unreadable image", f"cannot read {path} ({exc})") from exc
    return _prepare_image_bytes(data, str(path), max_side)


def _prepare_image_bytes(data: bytes, origin: str, max_side: int | None) -> tuple[str, bytes]:
    """Field name and bytes to store for encoded image bytes (see ``_prepare_image``); ``origin`` names them."""
    if not data:
        raise _Skip("empty image", f"image {origin} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_geometry(img.width, img.height)
            img.load()
            fmt = img.format or ""
            if max_side is not None and max(img.size) > max_side:
                return _resized(img, fmt, max_side)
            if fmt not in _FORMAT_EXT:
                return "jpg", _encode(to_rgb(img), "JPEG")
    except ImageDecodeError as exc:
        raise _Skip("refused image", f"{origin}: {exc}") from exc
    except Exception as exc:  # PIL raises many types for bad files (OSError, SyntaxError, ValueError, bomb errors)
        raise _Skip("unreadable image", f"{origin} does not decode ({type(exc).__name__}: {exc})") from exc
    return _FORMAT_EXT[fmt], data


def _resized(img: Image.Image, fmt: str, max_side: int) -> tuple[str, bytes]:
    """Shrink so the longer side is ``max_side``: upright first (EXIF), RGB, then re-encoded in its own format."""
    img = to_rgb(ImageOps.exif_transpose(img))
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


def _check_image_format(path: Path) -> None:
    """The same image formats for every source: a row naming an .svg is refused like a folder's .svg."""
    if _suffix(path) not in SOURCE_IMAGE_EXTENSIONS:
        raise _Skip("not an image", f"{path.name}: .{_suffix(path) or '(none)'} is not an image format dcclip reads "
                    f"({', '.join(SOURCE_IMAGE_EXTENSIONS)})")  # fmt: skip


def _suffix(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def walk_folder(src: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(regular files, [(entry, why it is not read)]) under ``src``, recursively, sorted, hidden names left out.

    Symbolic links are never followed, to files or folders, inside the folder or out of it, dangling or not: a
    folder of images is read as the files it holds (a link to ``/etc/...`` is not indexed or served as a thumbnail).
    Links, FIFOs, sockets and devices are returned as skipped with the reason, so every one is counted.
    """
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for folder, dirs, names in os.walk(src, followlinks=False):
        base = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in [d for d in dirs if (base / d).is_symlink()]:
            dirs.remove(name)
            skipped.append((base / name, "symbolic link to a folder (links are not followed)"))
        for name in names:
            path = base / name
            if name.startswith("."):
                continue
            if path.is_symlink():
                target = "a dangling symbolic link" if not path.exists() else "a symbolic link"
                skipped.append((path, f"{target} (links are not followed)"))
            elif not path.is_file():
                skipped.append((path, "not a regular file (FIFO, socket or device)"))
            else:
                files.append(path)
    order = lambda item: item.relative_to(src).as_posix()  # noqa: E731
    return sorted(files, key=order), sorted(skipped, key=lambda entry: order(entry[0]))


def _folder_files(src: Path) -> tuple[list[Path], list[Path]]:
    """(image files, every other entry that is not an image's caption file) under ``src``, recursively, sorted.

    Hidden files and folders (``.DS_Store``, ``.git``) are not inputs. Every other entry is either used or listed
    (links and special files too: see ``walk_folder``).
    """
    files, special = walk_folder(src)
    images = [p for p in files if _suffix(p) in SOURCE_IMAGE_EXTENSIONS]
    stems = {p.with_suffix("") for p in images}
    others = [p for p in files if _suffix(p) not in SOURCE_IMAGE_EXTENSIONS
              and not (_suffix(p) in CAPTION_EXTENSIONS and p.with_suffix("") in stems)]  # fmt: skip
    return images, sorted([*others, *(path for path, _ in special)], key=lambda p: p.relative_to(src).as_posix())


def _unused_file(src: Path, path: Path) -> _Candidate:
    """A file of a folder source that is no sample: listed in the manifest's skipped with why."""
    key = escape_name(path.relative_to(src).as_posix())
    if path.is_symlink() or not path.is_file():
        why = "a symbolic link" if path.is_symlink() else "not a regular file (FIFO, socket or device)"
        problem = _Skip("not a file", f"{escape_name(path.name)} is {why}; links are not followed")
    elif _suffix(path) in CAPTION_EXTENSIONS:
        problem = _Skip("no image", f"{path.name} has no image beside it ({', '.join(SOURCE_IMAGE_EXTENSIONS)})")
    else:
        problem = _Skip("not an image", f"{path.name}: .{_suffix(path) or '(none)'} is not an image format dcclip "
                        f"reads ({', '.join(SOURCE_IMAGE_EXTENSIONS)})")  # fmt: skip
    return _Candidate(key=key, source=escape_name(str(path)), problem=problem)


def _folder_candidate(src: Path, image: Path, source_lang: str, langs: tuple[str, ...] | None) -> _Candidate:
    """Pair an image with ``x.json`` (captions by language) or ``x.txt`` (one caption in ``source_lang``)."""
    relative = escape_name(image.relative_to(src).with_suffix("").as_posix())
    cand = _Candidate(key=relative, source=escape_name(str(image)), image=image)
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


# ---------------------------------------------------------------------------------------------- WebDataset sources


def _wds_candidates(source: str, fmt: CaptionFormat, langs: Sequence[str] | None) -> Iterator[_Candidate]:
    """Candidates from any WebDataset (img2dataset output, another tool's shards, dcclip's own), shard by shard.

    A shard that cannot be read to its end keeps the samples read before the break; the break is a skip naming it.
    """
    wanted = set(langs) if langs else None
    for url in shard_paths(source):
        try:
            for sample in iter_tar_samples(url):
                yield _wds_candidate(sample, fmt, wanted, f"{describe(url)}#{sample['__key__']}")
        except ShardError as exc:
            yield _Candidate(key=shard_name(url), source=describe(url), problem=_Skip("unreadable shard", str(exc)))


def _flag_names(reason: str) -> str:
    """The reader's message names config keys; here the user typed flags, so name the flags."""
    return reason.replace("data.caption_lang", "--caption-lang").replace("data.lang_field", "--lang-field")


def _wds_candidate(sample: dict[str, Any], fmt: CaptionFormat, wanted: set[str] | None, origin: str) -> _Candidate:
    """One WebDataset sample as a candidate: its image bytes, its captions (in the wanted languages), its metadata."""
    cand = _Candidate(key=sample["__key__"], source=origin)
    if ERROR_FIELD in sample:
        category = "duplicate key" if DUPLICATE_FIELD in sample else "member too large"
        cand.problem = _Skip(category, sample[ERROR_FIELD])
        return cand
    ext = image_field(sample)
    if ext is None:
        cand.problem = _Skip("missing image", f"no image field ({', '.join(IMAGE_EXTENSIONS)})")
        return cand
    cand.image_bytes = sample[ext]
    try:
        meta = parse_meta(sample, fmt)
    except ShardError as exc:
        category = "unknown language" if "language code" in str(exc) else "no caption"
        cand.problem = _Skip(category, _flag_names(str(exc).removeprefix(f"sample {cand.key}: ")))
        return cand
    captions = {lang: text for lang, text in meta["captions"].items() if wanted is None or lang in wanted}
    cand.captions = _clean_captions(captions, origin) if captions else {}
    cand.source_lang = meta.get("source_lang") or next(iter(meta["captions"]))
    cand.source_meta = {k: v for k, v in meta.items() if k not in ("captions", "source_lang", "source_meta")} or None
    return cand
