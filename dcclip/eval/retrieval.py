"""Zero-shot image-text retrieval per language: recall@k both ways, the clip_benchmark definition, in numpy.

text->image: a caption scores a hit at k when its own image is among the k most similar images. image->text: an image
scores a hit when any of its captions is among the k most similar captions. Images without a caption in a language
are still candidates for text->image but are not queries for image->text. Ties count against the model (a constant
model scores 0, not the luck of index order).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dcclip.eval.datasets import DatasetError, RetrievalDataset
from dcclip.eval.embedding import ImageEntry, embed_image_entries, embed_texts
from dcclip.eval.models import EmbeddingModel

__all__ = ["KS", "evaluate_retrieval", "metric_counts", "metric_names", "recall_at_k"]

KS = (1, 5, 10)
_BLOCK = 1024  # image rows scored at a time, so memory stays O(block x texts)


def metric_names(ks: Sequence[int] = KS) -> list[str]:
    """Names of the recall figures in report order: i2t_R@k for every k, then t2i_R@k."""
    return [f"i2t_R@{k}" for k in ks] + [f"t2i_R@{k}" for k in ks]


def metric_counts(ks: Sequence[int] = KS) -> dict[str, str]:
    """Which count each recall is a share of: image queries (``n_i2t``) or caption queries (``n_texts``)."""
    return {f"i2t_R@{k}": "n_i2t" for k in ks} | {f"t2i_R@{k}": "n_texts" for k in ks}


METRICS = tuple(metric_names())
COUNTS = metric_counts()


def _text_ranks(similarity: np.ndarray, text_to_image: np.ndarray) -> np.ndarray:
    """For each caption, how many other images score at least as high as its own image."""
    own = similarity[np.arange(len(text_to_image)), text_to_image][:, None]
    return (similarity >= own).sum(axis=1) - 1


def _image_ranks(similarity: np.ndarray, text_to_image: np.ndarray) -> np.ndarray:
    """For each image with captions, how many non-matching captions score at least as high as its best caption."""
    images = np.unique(text_to_image)
    ranks = []
    for start in range(0, len(images), _BLOCK):
        block = images[start : start + _BLOCK]
        scores = similarity[:, block].T  # [block, n_texts]
        positive = text_to_image[None, :] == block[:, None]
        best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
        ranks.append(((scores >= best) & ~positive).sum(axis=1))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def recall_at_k(
    similarity: np.ndarray, text_to_image: Sequence[int] | np.ndarray, ks: Sequence[int] = KS
) -> dict[str, float]:
    """Recall@k both ways from similarity [n_texts, n_images] and each caption's image index [n_texts]."""
    similarity = np.asarray(similarity, dtype=np.float32)
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    if similarity.ndim != 2 or text_to_image.shape != (similarity.shape[0],):
        raise ValueError(f"similarity {similarity.shape} must be [n_texts, n_images] with one image per text")
    if len(text_to_image) == 0:
        raise ValueError("recall_at_k needs at least one caption")
    if text_to_image.min() < 0 or text_to_image.max() >= similarity.shape[1]:
        raise ValueError(f"text_to_image holds indices outside the {similarity.shape[1]} images")
    text_ranks, image_ranks = _text_ranks(similarity, text_to_image), _image_ranks(similarity, text_to_image)
    out = {f"i2t_R@{k}": float(np.mean(image_ranks < k)) for k in ks}
    out.update({f"t2i_R@{k}": float(np.mean(text_ranks < k)) for k in ks})
    return out


def _embed_samples(
    model: EmbeddingModel, dataset: RetrievalDataset, batch_size: int, progress: bool
) -> tuple[np.ndarray, list[dict[str, list[str]]]]:
    """Image embeddings [N, D] of the whole set (streamed) and every sample's captions per language; samples whose
    image does not decode are logged, left out and named in ``dataset.skipped``."""
    captions: list[dict[str, list[str]]] = []

    def entries() -> Iterator[ImageEntry]:
        for sample in dataset.samples():
            captions.append(sample.captions)
            yield sample.image, sample.where

    embedded = embed_image_entries(model, entries(), batch_size, progress, total=dataset.max_samples)
    dataset.skipped = embedded.skipped
    if not embedded.kept:
        raise DatasetError(f"{dataset.root}: no samples to evaluate (skipped {len(embedded.skipped)} undecodable)")
    return embedded.embeddings, [captions[index] for index in embedded.kept]


def captions_of(captions: list[dict[str, list[str]]], lang: str) -> tuple[list[str], np.ndarray]:
    """All captions in ``lang`` flattened, and the index of the image each belongs to."""
    pairs = [(i, text) for i, per_lang in enumerate(captions) for text in per_lang.get(lang, [])]
    return [text for _, text in pairs], np.asarray([i for i, _ in pairs], dtype=np.int64)


def evaluate_retrieval(
    model: EmbeddingModel,
    dataset: RetrievalDataset,
    langs: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = False,
    ks: Sequence[int] = KS,
) -> dict[str, dict[str, Any]]:
    """Per language: i2t_R@k and t2i_R@k for each k, plus n_images, n_i2t and n_texts; images embedded once.

    ``n_i2t`` (images with a caption in the language) is what i2t recalls are shares of; ``n_texts`` is t2i's.
    """
    langs = list(langs) if langs else dataset.langs
    dataset.check_langs(langs)
    image_emb, captions = _embed_samples(model, dataset, batch_size, progress)
    results = {}
    for lang in langs:
        texts, text_to_image = captions_of(captions, lang)
        if not texts:
            raise DatasetError(f"{dataset.root / 'test'}: no captions in language {lang!r} in the evaluated samples")
        text_emb = embed_texts(model, texts, batch_size, progress, f"{model.name}: {lang} captions")
        figures = recall_at_k(text_emb @ image_emb.T, text_to_image, ks)
        queries = len(np.unique(text_to_image))
        results[lang] = {**figures, "n_images": len(captions), "n_i2t": queries, "n_texts": len(texts)}
    return results
