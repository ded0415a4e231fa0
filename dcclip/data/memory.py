"""A shard set decoded once into memory, and a resumable batch stream over it.

For data sets that fit in RAM (the toy world, a few hundred thousand low-resolution images) decoding JPEGs on every
step costs more than a small student's training step. ``decode_shard_set`` decodes and resizes every image once per
distinct input geometry (student and teacher may differ) into uint8 arrays; ``MemoryLoader`` then yields the same
batches the streaming ``ShardLoader`` does (pixels, tokens, caption-to-image map, source captions), drawn by a seeded
permutation per epoch, so a resumed run continues on exactly the uninterrupted sequence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dcclip.config import DataConfig
from dcclip.data.augment import augment_views
from dcclip.data.pipeline import EpochPosition, choose_captions, language_weights
from dcclip.data.shards import DCCLIP_CAPTIONS, CaptionFormat, ShardError, decode_sample, iter_tar_samples, shard_paths
from dcclip.data.sources import describe
from dcclip.runtime.preprocess import ImageDecodeError, Preprocess, to_rgb

log = logging.getLogger(__name__)


@dataclass
class DecodedShards:
    """Every decodable sample of a shard set: keys, metadata and uint8 images [N, S, S, 3] per input size."""

    keys: list[str]
    meta: list[dict[str, Any]]
    images: dict[tuple, np.ndarray]  # geometry key (size, resize mode, interpolation) -> uint8 [N, S, S, 3]
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def geometry(pre: Preprocess) -> tuple:
    """What decides the resized pixels (normalisation is applied later, per batch)."""
    return (pre.image_size, pre.resize_mode, pre.interpolation)


def decode_shard_set(
    source: str, preprocesses: Sequence[Preprocess], progress: bool = False, fmt: CaptionFormat = DCCLIP_CAPTIONS
) -> DecodedShards:
    """Decode every sample of ``source`` once; undecodable samples are skipped, logged and named."""
    from tqdm import tqdm

    geometries = {geometry(p): p for p in preprocesses}
    keys: list[str] = []
    meta: list[dict[str, Any]] = []
    pixels: dict[tuple, list[np.ndarray]] = {g: [] for g in geometries}
    skipped: list[str] = []
    for url in tqdm(shard_paths(source), desc="decode", unit="shard", disable=not progress):
        try:
            for sample in iter_tar_samples(url):
                key = sample["__key__"]
                try:
                    info, image = decode_sample(sample, fmt)
                    image = to_rgb(image)
                    resized = {g: np.asarray(p.resize(image), dtype=np.uint8) for g, p in geometries.items()}
                except (ShardError, ImageDecodeError, ValueError, KeyError) as exc:
                    log.warning("%s: skipping %s: %s", url, key, exc)
                    skipped.append(key)
                    continue
                keys.append(key)
                meta.append(info)
                for g, array in resized.items():
                    pixels[g].append(array)
        except (ShardError, OSError) as exc:  # as the streaming reader: the shard's remaining samples are lost
            log.warning("%s: skipping the rest of this shard: %s", url, exc)
            skipped.append(describe(url))
    if not keys:
        raise ShardError(f"{source}: no decodable sample")
    images = {g: np.stack(arrays) for g, arrays in pixels.items()}
    return DecodedShards(keys, meta, images, skipped)


def normalise(images: np.ndarray, pre: Preprocess) -> Any:
    """uint8 [B, S, S, 3] -> float32 torch [B, 3, S, S] with the model's mean and std."""
    import torch

    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((pixels - mean) / std).contiguous()


class MemoryLoader(EpochPosition):
    """Batches for one rank from a decoded shard set, epoch after epoch, with a resumable position."""

    def __init__(
        self,
        cfg: DataConfig,
        decoded: DecodedShards,
        preprocess: Preprocess,
        tokenizer: Any,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        teacher_preprocess: Preprocess | None = None,
    ):
        self.cfg, self.decoded, self.tokenizer = cfg, decoded, tokenizer
        self.preprocess, self.teacher_preprocess = preprocess, teacher_preprocess
        self.rank, self.world_size, self.seed = rank, world_size, seed
        counts = _caption_counts(decoded.meta)
        self.langs = list(cfg.langs) or sorted(counts) or ["en"]
        self.weights = language_weights(self.langs, counts, cfg.caption_sampling, cfg.temperature)
        self.total_samples = len(decoded)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.skipped_samples = len(decoded.skipped)

    @property
    def batches_per_epoch(self) -> int:
        """Equal on every rank: the epoch's samples split over ranks, in whole batches."""
        samples = self.cfg.epoch_samples or self.total_samples
        return max(1, math.ceil(samples / (self.world_size * self.cfg.batch_size)))

    def _indices(self, batch: int) -> np.ndarray:
        """Sample indices of one batch of this rank: a seeded permutation per epoch, cycled when needed."""
        order = np.random.default_rng([self.seed, self.epoch, 0x3E3]).permutation(self.total_samples)
        start = (batch * self.world_size + self.rank) * self.cfg.batch_size
        return order[np.arange(start, start + self.cfg.batch_size) % self.total_samples]

    def batch(self, batch: int) -> dict[str, Any]:
        """Batch number ``batch`` of the current epoch (deterministic in seed, epoch, rank and batch)."""
        import torch

        indices = self._indices(batch)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, batch, 0xBA7])
        texts, lang_ids, caption_image, sources = [], [], [], []
        for image_index, i in enumerate(indices):
            captions = self.decoded.meta[i]["captions"]
            for lang_id, text in choose_captions(captions, self.langs, self.cfg.caption_sampling, self.weights, rng):
                texts.append(text)
                lang_ids.append(lang_id)
                caption_image.append(image_index)
            source_lang = self.decoded.meta[i].get("source_lang") or next(iter(captions))
            sources.append(captions.get(source_lang, next(iter(captions.values()))))
        input_ids, attention_mask = self.tokenizer.encode(texts, self.cfg.max_text_len)
        out = {
            "pixels": self._pixels(indices, self.preprocess),
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "lang_ids": torch.tensor(lang_ids, dtype=torch.long),
            "caption_image": torch.tensor(caption_image, dtype=torch.long),
            "keys": [self.decoded.keys[i] for i in indices],
            "texts": texts,
            "source_texts": sources,
            "n_skipped": 0,
            "skipped_keys": [],
        }
        if self.teacher_preprocess is not None:
            out["teacher_pixels"] = self._pixels(indices, self.teacher_preprocess)
        return augment_views(out, self.cfg.augment, rng)

    def _pixels(self, indices: np.ndarray, pre: Preprocess) -> Any:
        return normalise(self.decoded.images[geometry(pre)][indices], pre)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """One epoch from the current position; the position advances as batches are taken."""
        while self.batch_in_epoch < self.batches_per_epoch:
            batch = self.batch(self.batch_in_epoch)
            self.batch_in_epoch += 1
            yield batch
        self.next_epoch()


def _caption_counts(meta: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for info in meta:
        for lang in info["captions"]:
            counts[lang] = counts.get(lang, 0) + 1
    return counts
