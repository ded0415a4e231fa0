"""`dcclip shards validate`: decode every image and caption of a shard set and list what is broken."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from dcclip.data.shards import (
    DCCLIP_CAPTIONS,
    DUPLICATE_FIELD,
    ERROR_FIELD,
    IMAGE_EXTENSIONS,
    CaptionFormat,
    ShardError,
    image_field,
    iter_tar_samples,
    parse_meta,
    progress_bar,
    read_manifest,
    set_directories,
    shard_paths,
)
from dcclip.data.sources import is_local, local_path, shard_name


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a shard set: the shard, the sample key (``-`` for the shard as a whole) and why."""

    shard: str
    key: str
    reason: str


@dataclass
class ValidationReport:
    """What ``validate_shards`` checked and every problem it found; ``usable`` counts samples with no problem."""

    shards: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)
    usable: int = 0
    source: str = ""

    @property
    def ok(self) -> bool:
        """True when every shard read to its end and every sample decoded; a set with no usable sample never is."""
        return not self.problems and self.usable > 0

    def format_table(self) -> str:
        """Aligned table of shard, key and reason, closed by a totals line; just the totals line when all is well."""
        total = f"checked {self.shards} shards, {self.samples} samples: "
        if self.ok:
            return total + "all OK"
        lines = []
        if self.problems:
            rows = [("shard", "key", "reason")] + [(p.shard, p.key, p.reason) for p in self.problems]
            w_shard = max(len(r[0]) for r in rows)
            w_key = max(len(r[1]) for r in rows)
            lines = [f"{s:<{w_shard}}  {k:<{w_key}}  {r}" for s, k, r in rows]
            lines.insert(1, f"{'-' * w_shard}  {'-' * w_key}  {'-' * 6}")
        lines.append(total + f"{len(self.problems)} problem(s)")
        if not self.usable:
            lines.append(self.nothing_usable())
        return "\n".join(lines)

    def nothing_usable(self) -> str:
        """Why the set is unusable as a whole: no sample at all, or every one skipped, with counts per reason."""
        where = f"{self.source}: " if self.source else ""
        if not self.samples:
            return f"{where}no usable sample: the {self.shards} shard(s) hold no samples"
        first = {(p.shard, p.key): p.reason for p in reversed(self.problems) if p.key != "-"}  # one per sample
        reasons = count_reasons(reason_kind(reason, key) for (_, key), reason in first.items())
        return f"{where}no usable sample: all {self.samples} samples would be skipped ({reasons})"


def reason_kind(reason: str, key: str = "") -> str:
    """A skip reason without the sample's key or details (paths, decoder text), so that like causes count together."""
    text = reason.replace(f"sample {key}: ", "").replace(key, "KEY") if key else reason
    head, sep, _ = text.partition(": ")
    if sep and head.isidentifier():  # "UnidentifiedImageError: cannot identify image file ..."
        return head
    return text.split(" (", 1)[0]


def count_reasons(kinds: Iterable[str]) -> str:
    """``3 × no image field; 1 × UnidentifiedImageError``: how many inputs were skipped for each reason."""
    counts = Counter(kinds)
    return "; ".join(f"{n} × {kind}" for kind, n in counts.most_common()) or "no reason recorded"


def validate_shards(
    source: str | Path, progress: bool = True, fmt: CaptionFormat = DCCLIP_CAPTIONS
) -> ValidationReport:
    """Decode every image, parse every caption and read every tar to its end; report each problem with shard and key."""
    report = ValidationReport(source=str(source))
    expected = _manifest_counts(source)
    seen: dict[str, str] = {}
    for path in progress_bar(shard_paths(source), None, progress, "shards validate"):
        report.shards += 1
        count = _validate_shard(path, report, seen, fmt)
        name = shard_name(path)
        if count is not None and name in expected and expected[name] != count:
            report.problems.append(Problem(path, "-", f"manifest lists {expected[name]} samples, shard has {count}"))
    return report


def _manifest_counts(source: str | Path) -> dict[str, int]:
    """Samples per shard name as the manifest records them, when the source is a shard-set directory with one."""
    folders = set_directories(source)
    if "::" in str(source) or not folders:
        return {}
    return {s["name"]: s["samples"] for s in read_manifest(folders[0])["shards"]}


def _validate_shard(path: str, report: ValidationReport, seen: dict[str, str], fmt: CaptionFormat) -> int | None:
    """Check one shard's samples into ``report``; returns how many it held, None when it could not be opened."""
    if is_local(path) and not local_path(path).is_file():
        report.problems.append(Problem(path, "-", "shard file not found"))
        return None
    count = 0
    try:
        for sample in iter_tar_samples(path):
            count += 1
            report.samples += 1
            key = sample["__key__"]
            if key in seen and DUPLICATE_FIELD not in sample:  # a duplicate within the shard says so itself
                report.problems.append(Problem(path, key, f"duplicate key (also in {seen[key]})"))
            seen.setdefault(key, path)
            problems = sample_problems(sample, fmt)
            report.problems.extend(Problem(path, key, reason) for reason in problems)
            report.usable += not problems
    except (ShardError, OSError) as exc:
        report.problems.append(Problem(path, "-", str(exc).removeprefix(f"{path}: ")))
    return count


def sample_problems(sample: dict[str, Any], fmt: CaptionFormat = DCCLIP_CAPTIONS) -> list[str]:
    """Everything wrong with one raw sample: image that does not decode, bad captions, unreadable ``.npy`` fields; or
    why the reader marked it unusable (a duplicate key, a member over the size limit)."""
    if ERROR_FIELD in sample:
        return [sample[ERROR_FIELD]]
    problems = []
    ext = image_field(sample)
    if ext is None:
        problems.append(f"no image field ({'/'.join(IMAGE_EXTENSIONS)})")
    else:
        problems.extend(_image_problem(sample[ext], ext))
    try:
        parse_meta(sample, fmt)
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
