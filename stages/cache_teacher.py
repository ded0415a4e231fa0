"""``dcclip cache-teacher``: run the teacher once over the shards and store its features in parallel shards.

Each data shard gets a feature shard of the same name holding ``img_emb`` (fp16), optional ``img_fmap`` (fp16) and
``txt_emb`` (fp16, the source caption) under the same keys. Ranks take disjoint shards; finished shards are kept, so
a restarted run only does the rest. ``teacher.json`` records the teacher and its fingerprint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dcclip.config import RunConfig
from dcclip.data.features import IMG_EMB, IMG_FMAP, TXT_EMB, npy_bytes, write_teacher_json
from dcclip.data.shards import (
    MANIFEST_NAME,
    ShardError,
    ShardInfo,
    build_manifest,
    chunked,
    decode_sample,
    iter_tar_samples,
    shard_paths,
    write_shard,
)
from dcclip.engine.distributed import DistEnv, all_reduce_sum_int, barrier, init_distributed, shutdown_distributed
from dcclip.io import write_json_atomic
from dcclip.models.teacher_spec import teacher_fingerprint
from dcclip.runtime.preprocess import ImageDecodeError

log = logging.getLogger(__name__)


def decoded_samples(url: str, teacher: Any, skipped: list[str]) -> Iterator[tuple[str, torch.Tensor, str]]:
    """(key, teacher pixels, source caption) of one shard; undecodable samples are skipped and named."""
    for sample in iter_tar_samples(url):
        key = sample["__key__"]
        try:
            meta, image = decode_sample(sample)
            pixels = torch.from_numpy(teacher.preprocess(image))
            source = meta["captions"][meta.get("source_lang") or next(iter(meta["captions"]))]
        except (ShardError, ImageDecodeError, KeyError, ValueError) as exc:
            log.warning("%s: skipping %s: %s", url, key, exc)
            skipped.append(key)
            continue
        yield key, pixels, source


@torch.no_grad()
def feature_samples(url: str, teacher: Any, batch_size: int, with_fmap: bool, skipped: list[str], device) -> Iterator:
    """Encode one shard batch by batch; yields (key, {field: fp16 npy bytes}) in the shard's order."""
    for batch in chunked(decoded_samples(url, teacher, skipped), batch_size):
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
        "shards": [Path(u).name for u in urls],
    }


def cache_features(cfg: RunConfig, out_dir: Path, env: DistEnv) -> dict[str, Any]:
    """Write feature shards for this rank's share of the data; rank 0 writes teacher.json and the manifest."""
    from tqdm import tqdm

    from dcclip.models.teachers import load_teacher

    urls = shard_paths(cfg.data.train)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(cfg.teacher.spec, cfg.teacher.text_spec, device=env.device)
    with_fmap = cfg.teacher.feature_map and teacher.fmap_channels is not None
    mine = urls[env.rank :: env.world_size]
    todo = [u for u in mine if not (out_dir / Path(u).name).is_file()]
    skipped: list[str] = []
    done = 0
    started = time.perf_counter()
    for url in tqdm(todo, desc="cache-teacher", unit="shard", disable=not env.is_main):
        samples = feature_samples(url, teacher, cfg.teacher.batch_size, with_fmap, skipped, env.device)
        done += write_shard(out_dir / Path(url).name, samples)
    seconds = time.perf_counter() - started
    done, n_skipped = all_reduce_sum_int(done, env.device), all_reduce_sum_int(len(skipped), env.device)
    barrier()
    if env.is_main:
        write_feature_manifest(out_dir, urls)
        write_teacher_json(out_dir, teacher_record(cfg, teacher, with_fmap, urls))
    summary = {
        "out": str(out_dir),
        "shards": len(urls),
        "shards_done_now": len(todo),
        "shards_reused": len(mine) - len(todo),
        "samples_encoded": done,
        "samples_skipped": n_skipped,
        "seconds": round(seconds, 2),
        "samples_per_s": round(done / seconds, 1) if seconds > 0 and done else None,
    }
    log.info("cached teacher features: %s", summary)
    return summary


def write_feature_manifest(out_dir: Path, urls: list[str]) -> None:
    """A manifest listing the feature shards in the data's order, so the reader pairs them shard by shard."""
    infos = []
    for url in urls:
        path = out_dir / Path(url).name
        count = sum(1 for _ in iter_tar_samples(path))
        infos.append(ShardInfo(path.name, samples=count, bytes=path.stat().st_size))
    manifest = build_manifest(infos, [], {"kind": "teacher-features"})
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)


def run(cfg: RunConfig, out_dir: str | Path) -> dict[str, Any]:
    """Entry point of ``dcclip cache-teacher`` (one process or a torchrun rank)."""
    if not cfg.teacher.spec:
        raise ValueError("teacher.spec is not set: nothing to cache")
    env = init_distributed(cfg.train.device)
    try:
        return cache_features(cfg, Path(out_dir), env)
    finally:
        shutdown_distributed()
