"""``dcclip cache-teacher``: run the teacher once over the shards and store its features in parallel shards.

Each data shard gets a feature shard of the same name holding ``img_emb`` (fp16), optional ``img_fmap`` (fp16) and
``txt_emb`` (fp16, the source caption) under the same keys. Ranks take disjoint shards; finished shards are kept, so
a restarted run only does the rest. ``teacher.json`` records the teacher and its fingerprint, and what the features
cover: the data shards by name (``shards``), the samples with features (``samples``: the feature shards' keys) and
``max_samples`` of a dry run, whose shards cover their data shard only up to their last key.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dcclip.config import RunConfig
from dcclip.data.features import IMG_EMB, IMG_FMAP, TEACHER_JSON, TXT_EMB, npy_bytes, teacher_json
from dcclip.data.pipeline import caption_format
from dcclip.data.shard_validate import count_reasons, reason_kind
from dcclip.data.shards import (
    MANIFEST_NAME,
    CaptionFormat,
    ShardError,
    ShardInfo,
    build_manifest,
    chunked,
    decode_sample,
    iter_tar_samples,
    shard_paths,
    write_shard,
)
from dcclip.data.sources import describe, exists, is_local, join, local_path, shard_name, upload
from dcclip.engine.distributed import DistEnv, all_reduce_sum_int, barrier, init_distributed, shutdown_distributed
from dcclip.io import write_json_atomic
from dcclip.models.teacher_spec import teacher_fingerprint
from dcclip.runtime.preprocess import ImageDecodeError

log = logging.getLogger(__name__)


def decoded_samples(
    url: str, teacher: Any, skipped: list[str], fmt: CaptionFormat
) -> Iterator[tuple[str, torch.Tensor, str]]:
    """(key, teacher pixels, source caption) of one shard; undecodable samples are skipped, logged and their reason
    kept in ``skipped``."""
    for sample in iter_tar_samples(url):
        key = sample["__key__"]
        try:
            meta, image = decode_sample(sample, fmt)
            pixels = torch.from_numpy(teacher.preprocess(image))
            source = meta["captions"][meta.get("source_lang") or next(iter(meta["captions"]))]
        except (ShardError, ImageDecodeError, KeyError, ValueError) as exc:
            log.warning("%s: skipping %s: %s", url, key, exc)
            skipped.append(reason_kind(str(exc), key))
            continue
        yield key, pixels, source


@torch.no_grad()
def feature_samples(
    url: str, teacher: Any, batch_size: int, with_fmap: bool, skipped: list[str], device, fmt: CaptionFormat
) -> Iterator:
    """Encode one shard batch by batch; yields (key, {field: fp16 npy bytes}) in the shard's order."""
    for batch in chunked(decoded_samples(url, teacher, skipped, fmt), batch_size):
        keys, pixels, texts = zip(*batch, strict=True)
        img_emb, fmap = teacher.encode_image(torch.stack(pixels).to(device))
        txt_emb = teacher.encode_text(list(texts))
        for i, key in enumerate(keys):
            fields = {
                IMG_EMB: npy_bytes(img_emb[i].float().cpu().numpy()),
                TXT_EMB: npy_bytes(txt_emb[i].float().cpu().numpy()),
            }
            if with_fmap and fmap is not None:
                fields[IMG_FMAP] = npy_bytes(fmap[i].float().cpu().numpy())
            yield key, fields


def teacher_record(cfg: RunConfig, teacher: Any, with_fmap: bool, urls: list[str]) -> dict[str, Any]:
    """What teacher.json says: spec, fingerprint, preprocessing, dimensions, fields, source shards."""
    fields = [IMG_EMB, TXT_EMB] + ([IMG_FMAP] if with_fmap else [])
    return {
        "spec": cfg.teacher.spec,
        "text_spec": cfg.teacher.text_spec,
        "feature_map": cfg.teacher.feature_map,
        "fingerprint": teacher_fingerprint(cfg.teacher.spec, cfg.teacher.text_spec, cfg.teacher.feature_map),
        "weights_fingerprint": teacher.fingerprint(),
        "preprocess": teacher.preprocess.to_dict(),
        "embed_dim": teacher.embed_dim,
        "fmap_channels": teacher.fmap_channels if with_fmap else None,
        "fmap_grid": list(teacher.fmap_grid) if with_fmap and teacher.fmap_grid else None,
        "fields": fields,
        "source": cfg.data.train,
        "shards": [shard_name(u) for u in urls],
    }


def cache_features(cfg: RunConfig, out: str, env: DistEnv, max_samples: int | None = None) -> dict[str, Any]:
    """Write feature shards for this rank's share of the data; rank 0 writes teacher.json and the manifest.

    ``out`` is a local folder or an fsspec URL (shards are written locally, then uploaded whole). A data shard that
    cannot be read (after the remote retries) is logged, counted and left for the next run to redo. ``max_samples``
    (a dry run) encodes at most that many samples over all ranks: the shards read so far, the last one cut short;
    teacher.json records the limit and a later run into the same ``out`` must give the same one.
    """
    from tqdm import tqdm

    from dcclip.models.teachers import load_teacher

    urls = shard_paths(cfg.data.train)
    _check_unique_names(urls)
    _check_same_limit(out, max_samples)
    teacher = load_teacher(cfg.teacher.spec, cfg.teacher.text_spec, device=env.device)
    with_fmap = cfg.teacher.feature_map and teacher.fmap_channels is not None
    mine = urls[env.rank :: env.world_size]
    todo = [u for u in mine if not exists(join(out, shard_name(u)))]
    skipped: list[str] = []
    failed: list[str] = []
    written: list[str] = []
    done = 0
    started = time.perf_counter()
    fmt = caption_format(cfg.data)
    budget = -(-max_samples // env.world_size) if max_samples else None  # this rank's share, rounded up
    with OutputFolder(out) as folder:
        for url in tqdm(todo, desc="cache-teacher", unit="shard", disable=not env.is_main):
            if budget is not None and done >= budget:
                break
            samples = feature_samples(url, teacher, cfg.teacher.batch_size, with_fmap, skipped, env.device, fmt)
            if budget is not None:
                samples = itertools.islice(samples, budget - done)
            try:
                done += folder.write_shard(shard_name(url), samples)
                written.append(shard_name(url))
            except ShardError as exc:
                log.error("%s: shard left out, run cache-teacher again to redo it (%s)", describe(url), exc)
                failed.append(describe(url))
        seconds = time.perf_counter() - started
        done, n_skipped = all_reduce_sum_int(done, env.device), all_reduce_sum_int(len(skipped), env.device)
        n_failed = all_reduce_sum_int(len(failed), env.device)
        reused = all_reduce_sum_int(len(mine) - len(todo), env.device)
        if not (done or reused or n_failed):
            folder.discard(written)
            raise ValueError(nothing_cached(cfg.data.train, out, len(todo), n_skipped, skipped, folder.remote, written))
        barrier()
        if env.is_main and not n_failed:
            covered = [u for u in urls if exists(join(out, shard_name(u)))] if max_samples else urls
            manifest = feature_manifest(out, covered)
            folder.write_json(MANIFEST_NAME, manifest)
            record = teacher_record(cfg, teacher, with_fmap, covered)
            coverage = {"max_samples": max_samples, "samples": manifest["samples"]}
            folder.write_json(TEACHER_JSON, teacher_json({**record, **coverage}))
    summary = {
        "out": str(out),
        "shards": len(urls),
        "shards_done_now": len(todo) - len(failed),
        "shards_reused": len(mine) - len(todo),
        "shards_failed": n_failed,
        "failed_shards_here": failed,
        "samples_encoded": done,
        "samples_skipped": n_skipped,
        "seconds": round(seconds, 2),
        "samples_per_s": round(done / seconds, 1) if seconds > 0 and done else None,
    }
    log.info("cached teacher features: %s", summary)
    return summary


def nothing_cached(
    train: str, out: str, shards: int, n_skipped: int, reasons: list[str], remote: bool, written: list[str]
) -> str:
    """The error of a run that encoded no sample at all: the data, how many samples were skipped and why."""
    why = f"all {n_skipped} samples skipped ({count_reasons(reasons)})" if n_skipped else "the shards hold no samples"
    left = f"; remove {', '.join(written[:3])} from {out} before running again" if remote and written else ""
    return f"{describe(train)}: no sample could be encoded in {shards} shard(s), {why}; nothing was cached{left}"


def _check_same_limit(out: str, max_samples: int | None) -> None:
    """A dry-run cache (--max-samples) is partial: a later run must not take it for a finished one, nor the reverse."""
    path = join(out, TEACHER_JSON)
    if not exists(path) or not is_local(path):
        return
    import json

    earlier = json.loads(local_path(path).read_text(encoding="utf-8")).get("max_samples")
    if earlier != max_samples:
        said = f"--max-samples {earlier}" if earlier else "no --max-samples"
        raise ValueError(f"{out} was cached with {said}; give the same, or write this run to a fresh --out")


def _check_unique_names(urls: list[str]) -> None:
    """Feature shards are named after their data shards; two data shards of one name would overwrite each other."""
    names = [shard_name(u) for u in urls]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ShardError(f"data shards share file names {duplicates[:3]}; cache each shard set on its own")


class OutputFolder:
    """Where cache-teacher writes: a local folder (atomic renames) or an fsspec URL (local staging, then upload)."""

    def __init__(self, out: str):
        self.out = str(out)
        self.remote = not is_local(self.out)
        self._staging: tempfile.TemporaryDirectory | None = None
        self.local = local_path(self.out) if not self.remote else None

    def __enter__(self) -> OutputFolder:
        if self.remote:
            self._staging = tempfile.TemporaryDirectory(prefix="dcclip-features-")
            self.local = Path(self._staging.name)
        assert self.local is not None
        self.local.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._staging is not None:
            self._staging.cleanup()

    def write_shard(self, name: str, samples: Iterator) -> int:
        assert self.local is not None
        count = write_shard(self.local / name, samples)
        self._publish(name)
        return count

    def discard(self, names: list[str]) -> None:
        """Remove shards this run wrote locally (empty ones, so a later run does not take them as finished)."""
        if not self.remote and self.local is not None:
            for name in names:
                (self.local / name).unlink(missing_ok=True)

    def write_json(self, name: str, content: dict[str, Any]) -> None:
        assert self.local is not None
        write_json_atomic(self.local / name, content)
        self._publish(name)

    def _publish(self, name: str) -> None:
        if self.remote:
            assert self.local is not None
            upload(self.local / name, join(self.out, name))
            (self.local / name).unlink()


def feature_manifest(out: str, urls: list[str]) -> dict[str, Any]:
    """A manifest listing the feature shards in the data's order, so the reader pairs them shard by shard."""
    infos = []
    for url in urls:
        path = join(out, shard_name(url))
        count = sum(1 for _ in iter_tar_samples(path))
        size = local_path(path).stat().st_size if is_local(path) else 0
        infos.append(ShardInfo(shard_name(url), samples=count, bytes=size))
    return build_manifest(infos, [], {"kind": "teacher-features"})


def run(cfg: RunConfig, out_dir: str | Path, max_samples: int | None = None) -> dict[str, Any]:
    """Entry point of ``dcclip cache-teacher`` (one process or a torchrun rank); ``max_samples`` caps a dry run."""
    if not cfg.teacher.spec:
        raise ValueError("teacher.spec is not set: nothing to cache")
    env = init_distributed(cfg.train.device)
    try:
        return cache_features(cfg, str(out_dir), env, max_samples)
    finally:
        shutdown_distributed()
