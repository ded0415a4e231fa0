"""The streaming reader: shards -> raw samples -> shuffle -> batches of pixels, tokens and (cached) teacher features.

Built from WebDataset's pipeline stages plus small explicit callables. Ranks take disjoint shards (non-resampled) or
independent resampled streams with a fixed epoch length, so every rank sees the same number of batches. Samples are
shuffled and batched as raw bytes and only decoded afterwards: resuming skips finished batches without decoding them.
A corrupt sample is dropped, counted and logged with its key; it never stops a run.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dcclip.config import DataConfig
from dcclip.data.augment import augment_views
from dcclip.data.features import pair_features
from dcclip.data.shards import (
    CaptionFormat,
    ShardError,
    image_field,
    iter_tar_samples,
    parse_meta,
    read_manifest,
    set_directories,
    shard_paths,
)
from dcclip.data.sources import describe
from dcclip.runtime.preprocess import ImageDecodeError, Preprocess, decode_image

log = logging.getLogger(__name__)

FEATURE_FIELDS = ("img_emb.npy", "img_fmap.npy", "txt_emb.npy")


@dataclass(frozen=True)
class StreamPlan:
    """Everything a worker needs to reproduce its part of one epoch: shards, rank, seed, epoch, batches to skip."""

    urls: tuple[str, ...]
    feature_urls: tuple[str, ...] | None
    rank: int
    world_size: int
    seed: int
    epoch: int
    resampled: bool
    shuffle_buffer: int
    batch_size: int
    skip_batches: int = 0
    cut_features: frozenset[str] = frozenset()  # feature shards whose data shard is covered up to their last key


def worker_info() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker, (0, 1) in the main process."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def worker_skip(skip_batches: int, worker: int, num_workers: int) -> int:
    """Batches worker ``worker`` produced among the first ``skip_batches`` (DataLoader hands them out round-robin)."""
    return max(0, (skip_batches - worker + num_workers - 1) // num_workers)


def logical_worker(skip_batches: int) -> tuple[int, int]:
    """(logical worker id, number of workers) for this process.

    A fresh DataLoader asks worker 0 first, but after ``skip_batches`` the next batch belongs to stream
    ``skip_batches % num_workers``; rotating the ids keeps a resumed run on exactly the uninterrupted sequence.
    """
    worker, num_workers = worker_info()
    return (worker + skip_batches) % num_workers, num_workers


def shard_pairs(plan: StreamPlan, worker: int, num_workers: int) -> Iterator[tuple[str, str | None]]:
    """This worker's (shard, feature shard) sequence: disjoint slices per rank and worker, or a resampled stream."""
    indices = list(range(len(plan.urls)))
    rng = np.random.default_rng([plan.seed, plan.epoch, plan.rank, worker, 0x5EED])
    if plan.resampled:
        while True:  # infinite; the loader takes a fixed number of batches per epoch
            i = int(rng.integers(len(indices)))
            yield plan.urls[i], plan.feature_urls[i] if plan.feature_urls else None
    order = np.random.default_rng([plan.seed, plan.epoch]).permutation(indices).tolist()
    mine = order[plan.rank :: plan.world_size][worker::num_workers]
    for i in mine:
        yield plan.urls[i], plan.feature_urls[i] if plan.feature_urls else None


def merged_samples(
    pairs: Iterator[tuple[str, str | None]], stats: SkipStats, cut: frozenset[str] = frozenset(), distinct: int = 0
) -> Iterator[dict[str, Any]]:
    """Raw samples of each shard, joined key by key with the parallel feature shard when there is one; ``stats``
    learns when all ``distinct`` shards have been read through (so a stream with no usable sample can end)."""
    for url, feature_url in pairs:
        try:
            for sample in shard_samples(url, feature_url, feature_url in cut):
                stats.samples_read += 1
                yield sample
        except (OSError, EOFError, ShardError, ValueError) as exc:  # a broken tar loses its remaining samples only
            stats.record_shard(url, exc)
        stats.shard_done(url, distinct)


def shard_samples(url: str, feature_url: str | None, cut: bool) -> Iterator[dict[str, Any]]:
    """One shard's raw samples with their cached features; a ``cut`` feature shard (a dry-run cache) covers its data
    shard only up to its last key, so the shard ends there."""
    if feature_url is None:
        yield from iter_tar_samples(url)
        return
    features = iter_tar_samples(feature_url)
    pending = next(features, None)
    for sample in iter_tar_samples(url):
        # Feature shards hold the same keys in the same order, minus samples that failed when cached;
        # such a sample goes on without features and the batch builder drops and counts it.
        if pending is not None and pending["__key__"] == sample["__key__"]:
            sample.update({k: v for k, v in pending.items() if not k.startswith("__")})
            pending = next(features, None)
        elif pending is None and cut:
            return
        yield sample


SKIPS_ONLY = "skips_only"  # a stream record that only reports skipped samples, not a batch
NO_LANGUAGE = "one .txt caption and no 'captions' object"  # shards.parse_meta's reason for language-less captions
NO_LANGUAGE_FIX = (
    ". Single-language shards (img2dataset): add --caption-lang en (or --lang-field LANGUAGE) to the command, "
    "or data.caption_lang=en / data.lang_field=LANGUAGE to the config"
)


OBJECT_ADDRESS = re.compile(r" <[^<>]* at 0x[0-9a-fA-F]+>")  # PIL names the in-memory buffer, one per sample


def skip_kind(key: str, reason: str) -> str:
    """A reason without the sample's own key, so every sample skipped for the same cause maps to one warning."""
    text = OBJECT_ADDRESS.sub("", reason.replace(f"sample {key}: ", "").replace(key, "KEY"))
    return NO_LANGUAGE if NO_LANGUAGE in text else text


@dataclass
class SkipStats:
    """Samples dropped in this process since the last batch left it; reported with the next batch."""

    count: int = 0
    keys: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)  # URLs of shards that could not be read to the end
    warned: set[str] = field(default_factory=set)  # reasons already logged: each is said once, then counted
    kinds: dict[str, int] = field(default_factory=dict)  # samples skipped per reason, over the stream's life
    samples_read: int = 0  # raw samples the shards gave
    shards_read: set[str] = field(default_factory=set)  # shards read to their end (or to their damage)
    read_when_all_done: int | None = None  # samples_read when the last distinct shard was first read through

    def record(self, key: str, reason: str) -> None:
        """Count a skipped sample; its reason is logged the first time only (200 identical lines helped nobody)."""
        self.count += 1
        if len(self.keys) < 16:
            self.keys.append(key)
        kind = skip_kind(key, reason)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if kind in self.warned:
            log.debug("skipping sample %s: %s", key, reason)
            return
        self.warned.add(kind)
        log.warning("skipping sample %s: %s%s (said once; later samples skipped for this reason are only counted)",
                    key, reason, NO_LANGUAGE_FIX if kind == NO_LANGUAGE else "")  # fmt: skip

    def record_shard(self, url: str, exc: Exception) -> None:
        """A shard that failed (after its retries): counted as one skip, its URL kept for metrics.jsonl."""
        self.record(describe(url), f"shard unreadable, its remaining samples skipped: {exc}")
        self.shards.append(describe(url))

    def shard_done(self, url: str, distinct: int) -> None:
        """Note a shard read through; once all ``distinct`` shards are, remember how many samples that took."""
        self.shards_read.add(url)
        if self.read_when_all_done is None and len(self.shards_read) >= distinct:
            self.read_when_all_done = self.samples_read

    def take_shards(self) -> list[str]:
        out, self.shards = self.shards, []
        return out

    def take(self) -> tuple[int, list[str]]:
        out = (self.count, self.keys)
        self.count, self.keys = 0, []
        return out


def language_weights(langs: Sequence[str], counts: dict[str, int], mode: str, temperature: float) -> np.ndarray:
    """Sampling weight per language: equal (uniform) or frequency**temperature (temperature; <1 favours rare ones)."""
    if mode != "temperature" or not counts:
        return np.ones(len(langs))
    freq = np.array([max(counts.get(lang, 0), 1) for lang in langs], dtype=np.float64)
    return (freq / freq.sum()) ** temperature


def choose_captions(
    captions: dict[str, str], langs: Sequence[str], mode: str, weights: np.ndarray, rng: np.random.Generator
) -> list[tuple[int, str]]:
    """The (language id, text) pairs of one sample: every language in ``langs`` (all) or one drawn by weight."""
    available = [i for i, lang in enumerate(langs) if lang in captions]
    if not available:
        return []
    if mode == "all":
        return [(i, captions[langs[i]]) for i in available]
    w = weights[available] / weights[available].sum()
    i = int(rng.choice(available, p=w))
    return [(i, captions[langs[i]])]


class BatchBuilder:
    """Turn a list of raw samples into a training batch; drops (and counts) samples that do not decode."""

    def __init__(
        self,
        preprocess: Preprocess,
        tokenizer: Any,
        langs: Sequence[str],
        mode: str,
        weights: np.ndarray,
        max_text_len: int,
        feature_fields: Sequence[str] = (),
        teacher_preprocess: Preprocess | None = None,
        augment: str = "none",
        caption_format: CaptionFormat | None = None,
    ):
        self.augment = augment
        self.caption_format = caption_format or CaptionFormat()
        self.preprocess = preprocess
        self.teacher_preprocess = teacher_preprocess
        self.tokenizer = tokenizer
        self.langs = list(langs)
        self.mode = mode
        self.weights = weights
        self.max_text_len = max_text_len
        self.feature_fields = tuple(feature_fields)

    def decode(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """One raw sample -> pixels, chosen captions, source caption and features; raises on any defect."""
        key = sample["__key__"]
        meta = parse_meta(sample, self.caption_format)
        ext = image_field(sample)
        if ext is None:
            raise ShardError(f"sample {key}: no image field")
        image = decode_image(sample[ext])
        pixels = self.preprocess(image)
        captions = choose_captions(meta["captions"], self.langs, self.mode, self.weights, rng)
        if not captions:
            raise ShardError(f"sample {key}: no caption in languages {','.join(self.langs)}")
        source_lang = meta.get("source_lang") or next(iter(meta["captions"]))
        decoded = {"key": key, "pixels": pixels, "captions": captions, "source": meta["captions"][source_lang]}
        if self.teacher_preprocess is not None:
            decoded["teacher_pixels"] = self.teacher_preprocess(image)
        for name in self.feature_fields:
            if name not in sample:
                raise ShardError(f"sample {key}: cached feature {name} missing")
            decoded[name.removesuffix(".npy")] = load_npy(sample[name], key, name)
        return decoded

    def __call__(self, raw: list[dict[str, Any]], rng: np.random.Generator, stats: SkipStats) -> dict[str, Any] | None:
        good = []
        for sample in raw:
            try:
                good.append(self.decode(sample, rng))
            except (ShardError, ImageDecodeError, ValueError, KeyError) as exc:
                stats.record(sample.get("__key__", "?"), str(exc))
        if not good:
            return None
        return augment_views(self.collate(good, stats), self.augment, rng)

    def collate(self, good: list[dict[str, Any]], stats: SkipStats) -> dict[str, Any]:
        import torch

        texts, lang_ids, caption_image = [], [], []
        for image_index, item in enumerate(good):
            for lang_id, text in item["captions"]:
                texts.append(text)
                lang_ids.append(lang_id)
                caption_image.append(image_index)
        input_ids, attention_mask = self.tokenizer.encode(texts, self.max_text_len)
        n_skipped, skipped_keys = stats.take()
        batch = {
            "pixels": torch.from_numpy(np.stack([item["pixels"] for item in good])),
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "lang_ids": torch.tensor(lang_ids, dtype=torch.long),
            "caption_image": torch.tensor(caption_image, dtype=torch.long),
            "keys": [item["key"] for item in good],
            "texts": texts,
            "source_texts": [item["source"] for item in good],
            "n_skipped": n_skipped,
            "skipped_keys": skipped_keys,
            "failed_shards": stats.take_shards(),
        }
        if self.teacher_preprocess is not None:
            batch["teacher_pixels"] = torch.from_numpy(np.stack([item["teacher_pixels"] for item in good]))
        for name in self.feature_fields:
            short = name.removesuffix(".npy")
            batch[short] = torch.from_numpy(np.stack([item[short] for item in good]).astype(np.float32))
        return batch


def load_npy(data: bytes, key: str, name: str) -> np.ndarray:
    """Read a .npy field without pickle; errors name the sample and field."""
    import io

    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ShardError(f"sample {key}: field {name} is not a valid .npy array ({exc})") from exc


class EpochStream:
    """Iterable run inside each DataLoader worker: its shards -> shuffled raw batches -> decoded batches."""

    def __init__(self, plan: StreamPlan, builder: BatchBuilder):
        self.plan = plan
        self.builder = builder

    def raw_batches(self, stats: SkipStats) -> Iterator[list[dict[str, Any]]]:
        import webdataset as wds

        plan = self.plan
        worker, num_workers = logical_worker(plan.skip_batches)
        shuffle_seed = np.random.default_rng([plan.seed, plan.epoch, plan.rank, worker, 0x5F1E]).integers(2**62)
        shuffle_rng = random.Random(int(shuffle_seed))
        distinct = len(set(plan.urls))
        stages: list[Callable] = [
            lambda: merged_samples(shard_pairs(plan, worker, num_workers), stats, plan.cut_features, distinct)
        ]
        if plan.shuffle_buffer > 1:
            stages.append(wds.shuffle(plan.shuffle_buffer, initial=min(100, plan.shuffle_buffer), rng=shuffle_rng))
        stages.append(wds.batched(plan.batch_size, collation_fn=list, partial=not plan.resampled))
        return iter(wds.DataPipeline(*stages))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = self.plan
        worker, num_workers = logical_worker(plan.skip_batches)
        stats = SkipStats()
        raw = self.raw_batches(stats)
        for _ in range(worker_skip(plan.skip_batches, worker, num_workers)):
            if next(raw, None) is None:
                return
        index = worker_skip(plan.skip_batches, worker, num_workers)
        produced, decoded = index > 0, 0  # batches skipped on resume were usable the first time
        for raw_batch in raw:
            rng = np.random.default_rng([plan.seed, plan.epoch, plan.rank, worker, index])
            index += 1
            decoded += len(raw_batch)
            batch = self.builder(raw_batch, rng, stats)
            if batch is not None:
                produced = True
                yield batch
            elif not produced and plan.resampled and decoded >= (stats.read_when_all_done or math.inf):
                raise ShardError(no_usable_sample(plan, stats))  # a resampled stream would draw forever
        if stats.count:  # skips after the last batch (a trailing unreadable shard) are reported too
            n_skipped, skipped_keys = stats.take()
            yield {
                SKIPS_ONLY: True,
                "n_skipped": n_skipped,
                "skipped_keys": skipped_keys,
                "failed_shards": stats.take_shards(),
            }


def no_usable_sample(plan: StreamPlan, stats: SkipStats) -> str:
    """Why a stream ended before its first batch: every shard read through, every sample skipped, per reason."""
    reasons = "; ".join(f"{n} × {kind}" for kind, n in sorted(stats.kinds.items(), key=lambda item: -item[1]))
    shards = len(set(plan.urls))
    return (
        f"no usable sample in the {shards} training shard(s) ({describe(plan.urls[0])}{' ...' if shards > 1 else ''}):"
        f" all {sum(stats.kinds.values())} samples drawn were skipped ({reasons})"
    )


class _IterableAdapter:
    """Wrap EpochStream as a torch IterableDataset without importing torch at module import time."""

    def __new__(cls, stream: EpochStream):
        import torch.utils.data

        class _Dataset(torch.utils.data.IterableDataset):
            def __iter__(self):
                return iter(stream)

        return _Dataset()


class EpochPosition:
    """Where a loader stands (epoch, batches taken in it, samples skipped so far): what a checkpoint saves."""

    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_samples: int = 0

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "skipped_samples": self.skipped_samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.skipped_samples = int(state.get("skipped_samples", self.skipped_samples))


class ShardLoader(EpochPosition):
    """Batches for one rank, epoch after epoch, with a resumable position (epoch, batches taken in that epoch)."""

    def __init__(
        self,
        cfg: DataConfig,
        preprocess: Preprocess,
        tokenizer: Any,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        feature_fields: Sequence[str] = (),
        feature_source: str | None = None,
        teacher_preprocess: Preprocess | None = None,
        feature_info: dict[str, Any] | None = None,
    ):
        self.cfg = cfg
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.urls = tuple(shard_paths(cfg.train))
        counts = _manifest_counts(cfg.train)
        self.total_samples = counts["samples"]
        self.feature_urls: tuple[str, ...] | None = None
        self.cut_features: frozenset[str] = frozenset()
        if feature_source:
            self._pair_features(feature_source, feature_info or {})
        if not cfg.resampled and len(self.urls) < world_size:
            raise ShardError(f"{cfg.train}: {len(self.urls)} shards cannot be split over {world_size} ranks")
        self.langs = run_languages(cfg, counts["langs"])
        weights = language_weights(self.langs, counts["langs"], cfg.caption_sampling, cfg.temperature)
        self.builder = BatchBuilder(
            preprocess,
            tokenizer,
            self.langs,
            cfg.caption_sampling,
            weights,
            cfg.max_text_len,
            feature_fields,
            teacher_preprocess,
            cfg.augment,
            caption_format(cfg),
        )
        self.epoch = 0
        self.batch_in_epoch = 0
        self.skipped_samples = 0
        self.pending_failed_shards: list[str] = []  # from a worker's last record; reported with the next batch

    def _pair_features(self, feature_source: str, info: dict[str, Any]) -> None:
        """Read only the data shards the feature set covers (a dry-run cache covers part), and say so once."""
        cover = pair_features(self.urls, feature_source, info)
        self.feature_urls, self.cut_features = cover.feature_urls, cover.cut
        if cover.partial:
            log.info(cover.describe(self.total_samples))
            self.urls, self.total_samples = cover.data_urls, cover.samples or 0

    @property
    def batches_per_epoch(self) -> int | None:
        """Fixed batches per rank per epoch in resampled mode (equal on every rank); None when it is data-dependent."""
        if not self.cfg.resampled:
            return None
        samples = self.cfg.epoch_samples or self.total_samples
        if not samples:
            raise ShardError(f"{self.cfg.train}: set data.epoch_samples (no manifest gives the sample count)")
        return max(1, math.ceil(samples / (self.world_size * self.cfg.batch_size)))

    def _plan(self) -> StreamPlan:
        return StreamPlan(
            urls=self.urls,
            feature_urls=self.feature_urls,
            rank=self.rank,
            world_size=self.world_size,
            seed=self.seed,
            epoch=self.epoch,
            resampled=self.cfg.resampled,
            shuffle_buffer=self.cfg.shuffle_buffer,
            batch_size=self.cfg.batch_size,
            skip_batches=self.batch_in_epoch,
            cut_features=self.cut_features,
        )

    def _data_loader(self, stream: EpochStream) -> Any:
        import torch.utils.data

        workers = self.cfg.workers
        return torch.utils.data.DataLoader(
            _IterableAdapter(stream),
            batch_size=None,
            num_workers=workers,
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """One epoch from the current position; the position advances as batches are taken."""
        limit = self.batches_per_epoch
        batches = iter(self._data_loader(EpochStream(self._plan(), self.builder)))
        while limit is None or self.batch_in_epoch < limit:
            batch = next(batches, None)
            if batch is None:
                break
            self.skipped_samples += batch["n_skipped"]
            if batch.get(SKIPS_ONLY):
                self.pending_failed_shards += batch["failed_shards"]
                continue
            if self.pending_failed_shards:
                batch["failed_shards"] = self.pending_failed_shards + batch["failed_shards"]
                self.pending_failed_shards = []
            self.batch_in_epoch += 1
            yield batch
        self.next_epoch()


def caption_format(cfg: DataConfig) -> CaptionFormat:
    """How the run's shards give their captions (dcclip JSON, or one .txt caption in a given language)."""
    return CaptionFormat(cfg.caption_lang, cfg.lang_field, cfg.machine_captions)


def run_languages(cfg: DataConfig, manifest_langs: dict[str, int]) -> list[str]:
    """The languages a run trains on: ``data.langs``, else the manifest's, else the single-caption language."""
    if cfg.langs:
        return list(cfg.langs)
    if manifest_langs:
        return sorted(manifest_langs)
    if cfg.lang_field:
        raise ShardError(
            f"{cfg.train}: with data.lang_field and no manifest, set data.langs (the languages to train on)"
        )
    if cfg.caption_lang:
        return [cfg.caption_lang]
    log.warning("%s: no manifest gives the languages; training on ['en'] (set data.langs to choose)", cfg.train)
    return ["en"]


def _manifest_counts(source: str) -> dict[str, Any]:
    """Sample and per-language counts from the manifest(s) of a source; empty when there is none."""
    samples, langs = 0, {}
    for part in set_directories(source):
        manifest = read_manifest(part)
        samples += manifest["samples"]
        for lang, n in manifest["langs"].items():
            langs[lang] = langs.get(lang, 0) + n
    return {"samples": samples, "langs": langs}
