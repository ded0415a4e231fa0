"""Batched embedding with progress bars, shared by every evaluation: images are streamed, texts are chunked.

The checks here catch a model that breaks the EmbeddingModel contract (wrong row count, NaNs, a changing width)
where it happens instead of as a confusing metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from dcclip.data.shards import chunked
from dcclip.eval.models import EmbeddingModel, batches
from dcclip.runtime.prompts import l2_normalize

__all__ = ["embed_image_stream", "embed_texts", "progress_bar"]


class _NoBar:
    """Stands in for tqdm when progress is off or tqdm is not installed."""

    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""


def progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    """A tqdm bar (to stderr) when enabled and tqdm is installed, else a no-op bar."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="item", leave=False, dynamic_ncols=True)


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


def embed_texts(
    model: EmbeddingModel, texts: Sequence[str], batch_size: int = 64, progress: bool = False, desc: str = ""
) -> np.ndarray:
    """Texts -> L2-normalised float32 [N, D], in batches with a progress bar."""
    bar = progress_bar(len(texts), desc or f"{model.name}: texts", progress)
    parts = []
    try:
        for chunk in batches(list(texts), batch_size):
            parts.append(_checked(model.embed_texts(list(chunk)), len(chunk), "text", model.name))
            bar.update(len(chunk))
    finally:
        bar.close()
    return _stack(parts, "text", model.name)


def embed_image_stream(
    model: EmbeddingModel,
    images: Iterable[Image.Image],
    batch_size: int = 64,
    progress: bool = False,
    total: int | None = None,
    desc: str = "",
) -> np.ndarray:
    """A stream of PIL images -> L2-normalised float32 [N, D]; only one batch of decoded images is held at a time."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    bar = progress_bar(total, desc or f"{model.name}: images", progress)
    parts = []
    try:
        for chunk in chunked(images, batch_size):
            parts.append(_checked(model.embed_images(chunk), len(chunk), "image", model.name))
            bar.update(len(chunk))
    finally:
        bar.close()
    return _stack(parts, "image", model.name)
