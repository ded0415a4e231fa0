"""Batched embedding with progress bars, shared by every evaluation: images are streamed, texts are chunked.

The checks here catch a model that breaks the EmbeddingModel contract (wrong row count, NaNs, a changing width)
where it happens instead of as a confusing metric. Under torchrun the batches are dealt out across ranks
(``dcclip.eval.distributed.deal``) and every rank gets the whole result, exactly the one-process one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from dcclip.data.progress import progress_bar
from dcclip.data.shards import chunked
from dcclip.eval import distributed
from dcclip.eval.datasets import DatasetError
from dcclip.eval.models import EmbeddingModel, batches
from dcclip.runtime.prompts import l2_normalize

__all__ = ["ImageEmbeddings", "embed_image_entries", "embed_image_stream", "embed_texts"]

log = logging.getLogger(__name__)
Item = TypeVar("Item")
ImageEntry = tuple[Callable[[], Image.Image], str]  # (opens the image, names the sample in messages)


def _main_rank_bar(total: int | None, desc: str, enabled: bool) -> Any:
    """A tqdm bar (to stderr) when enabled, tqdm is installed and this is rank 0, else a no-op bar."""
    return progress_bar(total, desc, "item", enabled and distributed.is_main(), leave=False, dynamic_ncols=True)


def _checked(embeddings: np.ndarray, expected_rows: int, what: str, name: str) -> np.ndarray:
    """Validate one batch of model output ([rows, D], finite) and L2-normalise it."""
    array = np.asarray(embeddings)
    if array.ndim != 2 or array.shape[0] != expected_rows:
        raise ValueError(f"model {name!r}: {what} embeddings have shape {array.shape}, expected [{expected_rows}, D]")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"model {name!r}: {what} embeddings contain NaN or infinity")
    return l2_normalize(array)


def _stack(parts: list[np.ndarray], what: str, name: str) -> np.ndarray:
    """Concatenate batches, refusing a model whose embedding width changes between batches."""
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    widths = {p.shape[1] for p in parts}
    if len(widths) != 1:
        raise ValueError(f"model {name!r}: {what} embedding width changes between batches ({sorted(widths)})")
    return np.concatenate(parts)


def _with_progress(chunks: Iterable[Sequence[Item]], bar: Any) -> Iterator[Sequence[Item]]:
    """Yield the chunks, counting each on the bar once it is done (under torchrun: done by some rank, roughly)."""
    for chunk in chunks:
        yield chunk
        bar.update(len(chunk))


def _embed_text_batch(model: EmbeddingModel, chunk: Sequence[str]) -> np.ndarray:
    """One batch of texts through the model, checked and normalised."""
    return _checked(model.embed_texts(list(chunk)), len(chunk), "text", model.name)


def embed_texts(
    model: EmbeddingModel, texts: Sequence[str], batch_size: int = 64, progress: bool = False, desc: str = ""
) -> np.ndarray:
    """Texts -> L2-normalised float32 [N, D], in batches with a progress bar (dealt across torchrun ranks)."""
    bar = _main_rank_bar(len(texts), desc or f"{model.name}: texts", progress)
    try:
        chunks = _with_progress(batches(list(texts), batch_size), bar)
        parts = distributed.deal(chunks, lambda chunk: _embed_text_batch(model, chunk))
    finally:
        bar.close()
    return _stack(parts, "text", model.name)


@dataclass(frozen=True)
class ImageEmbeddings:
    """Embeddings [kept, D] of the images that decoded, their positions in the stream, and the names of the rest."""

    embeddings: np.ndarray
    kept: list[int]
    skipped: list[str]


def _embed_image_batch(model: EmbeddingModel, batch: Sequence[tuple[int, ImageEntry]]) -> ImageEmbeddings:
    """Decode one batch (an undecodable image is logged and left out of it) and embed the rest in one call."""
    images, kept, skipped = [], [], []
    for index, (open_image, where) in batch:
        try:
            images.append(open_image())
        except DatasetError as exc:
            log.warning("skipping %s: %s", where, exc)
            skipped.append(where)
            continue
        kept.append(index)
    if not images:
        return ImageEmbeddings(np.zeros((0, 0), dtype=np.float32), kept, skipped)
    return ImageEmbeddings(_checked(model.embed_images(images), len(images), "image", model.name), kept, skipped)


def embed_image_entries(
    model: EmbeddingModel,
    entries: Iterable[ImageEntry],
    batch_size: int = 64,
    progress: bool = False,
    total: int | None = None,
    desc: str = "",
) -> ImageEmbeddings:
    """A stream of (image opener, name) -> embeddings of the images that decode, in stream order.

    The stream is cut into batches of ``batch_size`` entries before decoding, and an undecodable image only shrinks
    its own batch: so under torchrun every batch, and every figure, is the one-process one. Only the batches being
    embedded are decoded (under torchrun: only this rank's).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    bar = _main_rank_bar(total, desc or f"{model.name}: images", progress)
    try:
        chunks = _with_progress(chunked(enumerate(entries), batch_size), bar)
        done = distributed.deal(chunks, lambda chunk: _embed_image_batch(model, chunk))
    finally:
        bar.close()
    parts = [batch.embeddings for batch in done if batch.kept]
    kept = [index for batch in done for index in batch.kept]
    skipped = [where for batch in done for where in batch.skipped]
    return ImageEmbeddings(_stack(parts, "image", model.name), kept, skipped)


def embed_image_stream(
    model: EmbeddingModel,
    images: Iterable[Image.Image],
    batch_size: int = 64,
    progress: bool = False,
    total: int | None = None,
    desc: str = "",
) -> np.ndarray:
    """A stream of decoded PIL images -> L2-normalised float32 [N, D]; one batch of images is held at a time.

    Under torchrun every rank decodes the whole stream (it arrives decoded); ``embed_image_entries`` avoids that.
    """
    entries = ((_constant(image), f"image {i}") for i, image in enumerate(images))
    return embed_image_entries(model, entries, batch_size, progress, total, desc).embeddings


def _constant(image: Image.Image) -> Callable[[], Image.Image]:
    """An opener for an image that is already decoded."""
    return lambda: image
