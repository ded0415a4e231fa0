"""`dcclip shards inspect`: summarise a shard set (languages, caption lengths, image sizes) and draw a contact sheet."""

from __future__ import annotations

import io
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, ImageDraw, ImageFont, ImageOps

from dcclip.data.shard_validate import count_reasons
from dcclip.data.shards import (
    DCCLIP_CAPTIONS,
    DUPLICATE_FIELD,
    ERROR_FIELD,
    CaptionFormat,
    ShardError,
    image_field,
    iter_tar_samples,
    parse_meta,
    shard_paths,
)
from dcclip.io import atomic_path
from dcclip.runtime.preprocess import to_rgb

# Scripts written without spaces between words: word counts are meaningless there.
_NO_SPACE_LANGS = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"})

T = TypeVar("T")


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
    duplicates: int = 0  # samples whose key came before in the same shard (never merged with the first)
    oversized: int = 0  # samples with a member over the member-size limit (never read)
    usable: int = 0  # samples whose image header and captions read
    skips: Counter = field(default_factory=Counter)  # why the other samples are unusable, one reason each

    def add(self, sample: dict[str, Any], fmt: CaptionFormat = DCCLIP_CAPTIONS) -> None:
        """Count one raw sample: image size and format, then each caption's language and length."""
        if ERROR_FIELD in sample:
            self.duplicates += DUPLICATE_FIELD in sample
            self.oversized += DUPLICATE_FIELD not in sample
            self.skips["duplicate key" if DUPLICATE_FIELD in sample else "member over the size limit"] += 1
            return
        image_ok = self._add_image(sample)
        try:
            captions = parse_meta(sample, fmt)["captions"]
        except ShardError:
            self.unreadable += 1
            self.skips["image does not decode" if not image_ok else "captions unreadable"] += 1
            return
        if not image_ok:
            self.skips["image does not decode"] += 1
        self.usable += image_ok
        for lang, text in captions.items():
            self.langs[lang] += 1
            self.chars.setdefault(lang, _Range()).add(len(text))
            if _language_base(lang) not in _NO_SPACE_LANGS:
                self.words.setdefault(lang, _Range()).add(len(text.split()))

    def _add_image(self, sample: dict[str, Any]) -> bool:
        """Image size and format from the header only, which is enough for statistics and much faster; False when
        there is no image or its header does not read."""
        ext = image_field(sample)
        try:
            with Image.open(io.BytesIO(sample[ext])) as img:
                self.width.add(img.width)
                self.height.add(img.height)
                self.formats[img.format or "?"] += 1
        except Exception:  # a missing or broken image is counted, not fatal: inspect is for looking
            self.unreadable += 1
            return False
        return True


def _language_base(lang: str) -> str:
    """Primary subtag of a language code: ``zh`` for ``zh_Hant`` or ``zh-TW``."""
    return re.split(r"[-_]", lang, maxsplit=1)[0].lower()


def inspect_shards(
    source: str | Path,
    contact_sheet: Path | None = None,
    n: int = 16,
    seed: int = 0,
    fmt: CaptionFormat = DCCLIP_CAPTIONS,
) -> dict:
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
                stats.add(sample, fmt)
                _reservoir(picks, (seen, sample), n, rng, seen)
                seen += 1
        except (ShardError, OSError) as exc:
            errors.append(str(exc))
    if not seen:  # nothing to describe is an error, never an empty table and exit 0
        why = f": {errors[0]}" if errors else " (the tar files hold no samples)"
        raise ValueError(f"{source}: not a readable shard set, no sample could be read{why}")
    if not stats.usable:  # every sample unusable: described, but the command fails like validate does
        reasons = count_reasons(stats.skips.elements())
        errors.append(f"{source}: no usable sample: all {seen} samples are unreadable ({reasons})")
    result = _stats_dict(source, paths, seen, stats, errors)
    if contact_sheet is not None:
        render_contact_sheet([s for _, s in sorted(picks, key=lambda p: p[0])], Path(contact_sheet), fmt)
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
        "duplicates": stats.duplicates,
        "oversized": stats.oversized,
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
    if stats.get("duplicates"):
        lines.append(f"  {stats['duplicates']} samples repeat a key of their shard (not counted above; see validate)")
    if stats.get("oversized"):
        lines.append(f"  {stats['oversized']} samples have a member over the size limit (not read; see validate)")
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


def render_contact_sheet(samples: Sequence[dict[str, Any]], path: Path, fmt: CaptionFormat = DCCLIP_CAPTIONS) -> Path:
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
        for j, line in enumerate(_caption_lines(sample, font, _THUMB, fmt)):
            _draw_text(draw, (x, y + _THUMB + 4 + j * _LINE), line, font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
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
            thumb = to_rgb(ImageOps.exif_transpose(img))
            thumb.thumbnail((_THUMB, _THUMB))
    except Exception:  # a broken sample still gets its cell, so the sheet shows it
        draw.rectangle((x, y, x + _THUMB - 1, y + _THUMB - 1), fill=(200, 200, 200))
        _draw_text(draw, (x + 4, y + 4), "unreadable image", font)
        return
    sheet.paste(thumb, (x + (_THUMB - thumb.width) // 2, y + (_THUMB - thumb.height) // 2))


def _caption_lines(sample: dict[str, Any], font: Any, width: int, fmt: CaptionFormat) -> list[str]:
    """Key line, then up to three languages (source first), each wrapped to a few lines."""
    lines = [sample.get("__key__", "?")]
    try:
        meta = parse_meta(sample, fmt)
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
