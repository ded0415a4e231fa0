"""Build an image index with a bundle's image tower, or add images to one; resumable, torch-free.

Inputs are embedded in parts of ``part_inputs`` consecutive inputs; each finished part is written atomically to
``INDEX/.parts/`` (float16 rows, then a JSON of its items that commits it), and every image's thumbnail goes straight
to ``thumbs/<id>.jpg`` (ids are known in advance: they follow the order of the inputs). A build killed at any point
runs again with the same arguments and skips the inputs of the committed parts. At the end the parts are joined onto
the index's files and the manifest is written last (see runtime/index.py for why that keeps readers consistent).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dcclip import __version__
from dcclip.data.progress import progress_bar
from dcclip.data.shard_validate import count_reasons, reason_kind
from dcclip.data.shards import chunked
from dcclip.data.sources import is_local, local_path
from dcclip.io import (
    atomic_path,
    remove_stale_temps,
    temp_name,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from dcclip.runtime.bundle import BundleModel
from dcclip.runtime.index import (
    ANN_FILE,
    EMBEDDINGS_FILE,
    INDEX_FORMAT,
    INDEX_VERSION,
    ITEMS_FILE,
    MANIFEST_FILE,
    PARTS_DIR,
    SKIPPED_FILE,
    THUMB_MAX_SIDE,
    THUMBS_DIR,
    SearchIndexError,
    build_ann,
    bundle_digest,
    import_faiss,
    read_embeddings,
    read_index_manifest,
    read_items,
    read_jsonl,
)
from dcclip.runtime.preprocess import to_rgb
from dcclip.search.inputs import IndexInput, check_source, count_inputs, iter_inputs
from dcclip.search.query import index_bundle

__all__ = ["PARTS_DIR", "add_to_index", "build_index", "thumbnail_jpeg"]

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
PART_INPUTS = 512
THUMB_QUALITY = 85
DECODE_THREADS = min(4, os.cpu_count() or 1)  # PIL decodes and resizes without the GIL
IN_MEMORY_FILE = re.compile(r" <_io\.BytesIO object at 0x[0-9a-f]+>")  # PIL names the buffer: noise in skipped.jsonl


@dataclass
class Base:
    """What the index holds before this run: nothing for a build, the manifest's rows for an add."""

    embeddings: np.ndarray
    items: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """Earlier runs: which folder or shard source gave which range of ids (every run appends one range)."""
        return list((self.manifest or {}).get("inputs", []))

    def sources_from(self, images: str) -> set[str]:
        """Sources already indexed from the same folder or shard source: a relative path means nothing across two."""
        ranges = [(run["first_id"], run["first_id"] + run["count"]) for run in self.inputs if run["images"] == images]
        return {self.items[i]["source"] for start, end in ranges for i in range(start, min(end, self.count))}


@dataclass
class Part:
    """One finished run of consecutive inputs: the embedded items (their rows) and the skipped inputs."""

    inputs: int
    items: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "items": self.items, "skipped": self.skipped}


# ------------------------------------------------------------------------------------------------- entry points


def build_index(
    bundle: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    precision: str = "fp32",
    batch_size: int = 32,
    progress: bool = True,
    ann: bool = False,
    part_inputs: int = PART_INPUTS,
    threads: int | None = None,
) -> dict[str, Any]:
    """Embed every image of a folder or shard source into a new index at ``out``; resumes an unfinished build.

    ``images`` is a folder, one image file or a shard source; ``threads`` sets onnxruntime's intra-op threads. Returns a
    summary: index, count, added, skipped, already_indexed, resumed (inputs an earlier run embedded), seconds,
    images_per_s, ann.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SearchIndexError(f"{out}: exists and is not a directory; give --out a new or empty directory")
    if (out / MANIFEST_FILE).is_file():
        raise SearchIndexError(f"{out}: already holds an image index; add images with `dcclip index add` or pick --out")
    if out.exists() and any(out.iterdir()) and not (out / PARTS_DIR / STATE_FILE).is_file():
        raise SearchIndexError(f"{out}: exists and is neither empty nor an unfinished index; pick another --out")
    try:
        check_source(images)
    except ValueError as exc:
        raise SearchIndexError(str(exc)) from exc
    if ann:
        import_faiss()  # fail before hours of embedding, not after
    model = BundleModel(bundle, precision, max_batch_size=batch_size, intra_op_num_threads=threads)
    base = Base(np.zeros((0, model.embed_dim), np.float16))
    return index_images(out, model, images, base, ann, batch_size, progress, part_inputs)


def add_to_index(
    index_dir: str | os.PathLike,
    images: str | os.PathLike,
    bundle: str | os.PathLike | None = None,
    precision: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
    ann: bool | None = None,
    part_inputs: int = PART_INPUTS,
    threads: int | None = None,
) -> dict[str, Any]:
    """Append the images of ``images`` not yet in the index (by source) after its last id; resumable like a build.

    ``bundle`` defaults to the one the index records; a bundle with another digest is refused. ``ann``: None keeps
    the approximate index if there is one (rebuilt over all rows), True builds one, False drops it.
    """
    index_dir = Path(index_dir)
    manifest = read_index_manifest(index_dir)
    precision = precision or manifest["precision"]
    if precision != manifest["precision"]:
        raise SearchIndexError(
            f"{index_dir / MANIFEST_FILE}: the index holds {manifest['precision']} embeddings; add with that precision"
        )
    ann = bool(manifest.get("ann")) if ann is None else ann
    if ann:
        import_faiss()
    bundle_dir = index_bundle(index_dir, manifest, bundle)
    model = BundleModel(bundle_dir, precision, max_batch_size=batch_size, intra_op_num_threads=threads)
    check_bundle(model, manifest, index_dir)
    base = read_base(index_dir, manifest)
    return index_images(index_dir, model, images, base, ann, batch_size, progress, part_inputs)


def check_bundle(model: BundleModel, manifest: dict[str, Any], index_dir: Path) -> None:
    """Refuse to add another bundle's embeddings to an index: they would not be comparable."""
    digest = bundle_digest(model.manifest)
    if digest != manifest["bundle_digest"]:
        raise SearchIndexError(
            f"{index_dir / MANIFEST_FILE}: this index was built with bundle {manifest.get('bundle_name', '?')!r} "
            f"(digest {manifest['bundle_digest'][:12]}…), not with {str(model.path)!r} (digest {digest[:12]}…); "
            "add with the index's bundle or build a new index"
        )


def read_base(index_dir: Path, manifest: dict[str, Any]) -> Base:
    """The rows the manifest vouches for (longer files are the remains of an add that did not finish)."""
    count = manifest["count"]
    return Base(
        embeddings=read_embeddings(index_dir, count, manifest["embed_dim"]),
        items=read_items(index_dir, count),
        skipped=read_jsonl(index_dir / SKIPPED_FILE, int(manifest.get("skipped", 0))),
        manifest=manifest,
    )


# ------------------------------------------------------------------------------------------------- the run


def index_images(
    out: Path,
    model: BundleModel,
    images: str | os.PathLike,
    base: Base,
    ann: bool,
    batch_size: int,
    progress: bool,
    part_inputs: int,
) -> dict[str, Any]:
    """Embed the inputs that neither the index nor a committed part holds, part by part, then join everything."""
    start = time.perf_counter()
    source = source_name(images)
    parts_dir = out / PARTS_DIR
    state = {"bundle_digest": bundle_digest(model.manifest), "precision": model.precision, "images": source}
    metas = resume_parts(parts_dir, {**state, "base_count": base.count})
    done = {row["source"] for m in metas for row in (*m["items"], *m["skipped"])}
    counts: Counter[str] = Counter()
    (out / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    with (
        progress_bar(count_inputs(images), "index", "img", progress, smoothing=0.1) as bar,
        ThreadPoolExecutor(DECODE_THREADS) as pool,
    ):
        todo = pending(iter_inputs(images), base.sources_from(source), done, counts, bar)
        for chunk in chunked(todo, part_inputs):
            first_id = base.count + sum(len(m["items"]) for m in metas)
            part = embed_part(model, chunk, first_id, out / THUMBS_DIR, batch_size, pool)
            commit_part(parts_dir, len(metas), part)
            metas.append(part.meta())
            counts["embedded"] += len(chunk)
            bar.update(len(chunk))
    refuse_nothing_indexed(out, source, base, metas, counts)
    manifest = consolidate(out, model, source, base, metas, ann)
    return summarise(out, manifest, base, metas, counts, time.perf_counter() - start)


def refuse_nothing_indexed(
    out: Path, source: str, base: Base, metas: list[dict[str, Any]], counts: Counter[str]
) -> None:
    """A run that found no image to embed, none of them already indexed, is an error (SearchIndexError): it names
    the source and counts the skipped inputs per reason; the index is left as it was (a build writes none)."""
    if counts["already"] or any(m["items"] for m in metas):
        return
    skipped = [row["reason"] for m in metas for row in m["skipped"]]
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    thumbs = out / THUMBS_DIR
    if base.manifest is None and thumbs.is_dir() and not any(thumbs.iterdir()):
        thumbs.rmdir()
    unchanged = "the index is unchanged" if base.manifest is not None else "no index was written"
    if not skipped:
        raise SearchIndexError(f"{source}: no images found (the source holds no samples); {unchanged}")
    reasons = count_reasons(reason_kind(reason) for reason in skipped)
    raise SearchIndexError(
        f"{source}: no image could be indexed, all {len(skipped)} inputs skipped ({reasons}); {unchanged}"
    )


def pending(
    inputs: Iterable[IndexInput], indexed: set[str], done: set[str], counts: Counter[str], bar: Any
) -> Iterator[IndexInput]:
    """The inputs still to embed, each source once; those already in the index or in a committed part are counted.

    Going by source rather than by position, a resumed run is right even if files were added to the folder meanwhile.
    """
    seen: set[str] = set()
    for item in inputs:
        if item.source in indexed:
            counts["already"] += 1
        elif item.source in done or item.source in seen:
            counts["resumed"] += 1
        else:
            seen.add(item.source)
            yield item
            continue
        bar.update(1)


def source_name(images: str | os.PathLike) -> str:
    """How the inputs are recorded: local paths absolute (a resume from another directory is the same build)."""
    text = str(images)
    return str(local_path(text).resolve()) if "::" not in text and is_local(text) else text


def resume_parts(parts_dir: Path, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The committed parts of an unfinished run with the same state; anything else is cleared to start afresh."""
    state_file = parts_dir / STATE_FILE
    if state_file.is_file():
        try:
            previous = json.loads(state_file.read_text("utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous != state:
            log.warning("%s: left by a run with other inputs or an index that changed since; starting over", parts_dir)
            shutil.rmtree(parts_dir)
    if not state_file.is_file():
        parts_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(state_file, state)
    metas: list[dict[str, Any]] = []
    while all((parts_dir / part_name(len(metas), ext)).is_file() for ext in ("npy", "json")):
        metas.append(json.loads((parts_dir / part_name(len(metas), "json")).read_text("utf-8")))
    if metas:
        log.info("resuming: %d parts (%d inputs) already embedded", len(metas), sum(m["inputs"] for m in metas))
    return metas


def part_name(number: int, ext: str) -> str:
    return f"part-{number:06d}.{ext}"


def embed_part(
    model: BundleModel,
    chunk: Sequence[IndexInput],
    first_id: int,
    thumbs: Path,
    batch_size: int,
    pool: ThreadPoolExecutor,
) -> Part:
    """Decode, thumbnail and embed one part's inputs; unusable ones go to ``skipped`` with the reason."""
    part = Part(inputs=len(chunk))
    usable = []
    for item in chunk:
        if item.problem is None:
            usable.append(item)
        else:
            part.skipped.append(skip_row(item, item.problem))
    for batch in chunked(usable, batch_size):
        decoded = list(zip(batch, pool.map(lambda item: decode(model, item), batch), strict=True))
        good = [(item, result) for item, result in decoded if not isinstance(result, str)]
        part.skipped += [skip_row(item, result) for item, result in decoded if isinstance(result, str)]
        if not good:
            continue
        part.rows.append(model.embed_pixels(np.stack([pixels for _, (pixels, _) in good])))
        for item, (_, thumb) in good:
            write_thumbnail(thumbs, first_id + len(part.items), thumb)
            part.items.append({"key": item.key, "source": item.source})
    return part


def skip_row(item: IndexInput, reason: str) -> dict[str, str]:
    return {"key": item.key, "source": item.source, "reason": reason}


def decode(model: BundleModel, item: IndexInput) -> tuple[np.ndarray, bytes] | str:
    """(model pixels, thumbnail JPEG) of one input, or why it cannot be used: untrusted files never stop a build."""
    try:
        image = model.load_image(item.read())
        return model.preprocess(image), thumbnail_jpeg(image)
    except Exception as exc:  # a corrupt file may fail anywhere in a decoder: it is listed, never fatal
        return f"{type(exc).__name__}: {IN_MEMORY_FILE.sub('', str(exc))}"


def thumbnail_jpeg(image: Image.Image, max_side: int = THUMB_MAX_SIDE) -> bytes:
    """A JPEG whose longest side is at most ``max_side`` pixels (the orientation already applied by decoding)."""
    small = to_rgb(image).copy()
    small.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=THUMB_QUALITY)
    return buffer.getvalue()


def write_thumbnail(thumbs: Path, item_id: int, data: bytes) -> None:
    """``thumbs/<id>.jpg`` under a temporary name, then renamed (no directory scan per file: there may be millions)."""
    final = thumbs / f"{item_id}.jpg"
    tmp = temp_name(final)
    tmp.write_bytes(data)
    os.replace(tmp, final)


def commit_part(parts_dir: Path, number: int, part: Part) -> None:
    """Rows first, then the JSON that makes the part count: a part is either whole or absent."""
    rows = normalised_float16(part.rows)
    buffer = io.BytesIO()
    np.save(buffer, rows, allow_pickle=False)
    write_bytes_atomic(parts_dir / part_name(number, "npy"), buffer.getvalue())
    write_json_atomic(parts_dir / part_name(number, "json"), part.meta())


def normalised_float16(rows: list[np.ndarray], dim: int | None = None) -> np.ndarray:
    """Concatenated rows, L2-normalised in float32, stored as float16."""
    if not rows:
        return np.zeros((0, dim or 0), np.float16)
    array = np.concatenate(rows).astype(np.float32)
    array /= np.maximum(np.linalg.norm(array, axis=1, keepdims=True), np.float32(1e-12))
    return array.astype(np.float16)


# ------------------------------------------------------------------------------------------------- joining the parts


def consolidate(
    out: Path, model: BundleModel, source: str, base: Base, metas: list[dict[str, Any]], ann: bool
) -> dict[str, Any]:
    """Join base and parts into the index files, the manifest last; then drop the parts."""
    parts_dir = out / PARTS_DIR
    new = [np.load(parts_dir / part_name(i, "npy"), allow_pickle=False) for i in range(len(metas))]
    embeddings = np.concatenate([np.asarray(base.embeddings), *[n.reshape(-1, model.embed_dim) for n in new]])
    items = base.items + [
        {"id": position, **item}
        for position, item in enumerate((item for m in metas for item in m["items"]), start=base.count)
    ]
    new_skipped = [{**row, "images": source} for m in metas for row in m["skipped"]]
    skipped = merge_skipped(base.skipped, new_skipped, source, items[base.count :])
    write_npy(out / EMBEDDINGS_FILE, embeddings)
    write_jsonl(out / ITEMS_FILE, items)
    write_jsonl(out / SKIPPED_FILE, skipped)
    ann_entry = write_ann(out, embeddings) if ann else None
    manifest = index_manifest(model, source, base, len(items), len(skipped), ann_entry)
    write_json_atomic(out / MANIFEST_FILE, manifest)
    if ann_entry is None:
        (out / ANN_FILE).unlink(missing_ok=True)
    shutil.rmtree(parts_dir, ignore_errors=True)
    remove_thumbnail_temps(out / THUMBS_DIR)
    return manifest


def merge_skipped(
    old: list[dict[str, Any]], new: list[dict[str, Any]], images: str, new_items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Earlier skipped rows, less those this run tried again (same folder or shard source), then this run's."""
    retried = {row["source"] for row in new} | {item["source"] for item in new_items}
    return [row for row in old if row.get("images") != images or row["source"] not in retried] + new


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_ann(out: Path, embeddings: np.ndarray) -> dict[str, Any] | None:
    """Build and write the approximate index over every row; None (exact search) for an empty index."""
    if len(embeddings) == 0:
        log.warning("%s: no images, so no approximate index", out)
        return None
    faiss = import_faiss()
    started = time.perf_counter()
    index, entry = build_ann(embeddings)
    with atomic_path(out / ANN_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    log.info("approximate index over %d images built in %.1f s", len(embeddings), time.perf_counter() - started)
    return entry


def remove_thumbnail_temps(thumbs: Path) -> None:
    """Temporaries of thumbnails whose writer was killed (hidden ``.ID.jpg.tmp-PID`` files)."""
    for stale in list(thumbs.glob(".*.jpg.tmp-*")):
        remove_stale_temps(thumbs / stale.name[1:].rsplit(".tmp-", 1)[0])


def index_manifest(
    model: BundleModel, source: str, base: Base, count: int, skipped: int, ann_entry: dict[str, Any] | None
) -> dict[str, Any]:
    """The index manifest: format, the bundle (name, path, digest), sizes, and what was indexed."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    previous = base.manifest or {}
    student = (model.manifest.get("source") or {}).get("student")
    name = model.path.resolve().name + (f" ({student})" if student else "")
    return {
        "format": INDEX_FORMAT,
        "format_version": INDEX_VERSION,
        "dcclip_version": __version__,
        "created": previous.get("created", now),
        "updated": now,
        "bundle_name": name,
        "bundle_path": str(model.path.resolve()),
        "bundle_digest": bundle_digest(model.manifest),
        "embed_dim": model.embed_dim,
        "precision": model.precision,
        "count": count,
        "skipped": skipped,
        "embeddings": {"file": EMBEDDINGS_FILE, "dtype": "float16", "normalized": True},
        "thumbnails": {"dir": THUMBS_DIR, "max_side": THUMB_MAX_SIDE, "format": "jpeg"},
        "ann": ann_entry,
        "inputs": [*base.inputs, {"images": source, "first_id": base.count, "count": count - base.count, "at": now}],
    }


def summarise(
    out: Path, manifest: dict[str, Any], base: Base, metas: list[dict[str, Any]], counts: Counter[str], seconds: float
) -> dict[str, Any]:
    """What this run did; warns with the count of skipped inputs and where they are listed."""
    skipped = sum(len(m["skipped"]) for m in metas)
    if skipped:
        log.warning("%d inputs could not be indexed (listed with the reason in %s)", skipped, out / SKIPPED_FILE)
    return {
        "index": str(out),
        "count": manifest["count"],
        "added": manifest["count"] - base.count,
        "skipped": skipped,
        "already_indexed": counts["already"],
        "resumed": counts["resumed"],
        "seconds": round(seconds, 2),
        "images_per_s": round(counts["embedded"] / seconds, 1) if seconds > 0 else 0.0,
        "ann": (manifest["ann"] or {}).get("kind"),
    }
