"""Zero-shot classification, the standard CLIP recipe (as clip_benchmark runs it), per language, in numpy.

Class embedding = normalised mean of the normalised embeddings of every template filled with the class name; logits =
image embeddings @ class embeddings.T. Metrics: top-1, top-5 and mean per-class recall (clip_benchmark's
``balanced_accuracy_score``); a tie with the true class counts as a miss, so a constant model scores 0. Image
embeddings are computed once and scored against every language's classifier, so "English prompts" is simply
``lang="en"``. The metrics are written here because clip_benchmark 1.6.2's ``accuracy()`` fails on numpy 2.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dcclip.eval import stats
from dcclip.eval.datasets import ClassificationDataset, DatasetError
from dcclip.eval.embedding import ImageEntry, embed_image_entries, embed_texts
from dcclip.eval.models import EmbeddingModel
from dcclip.runtime.prompts import class_embeddings, fill_templates

__all__ = [
    "COUNTS",
    "METRICS",
    "classification_metrics",
    "embed_dataset_images",
    "evaluate_zeroshot",
    "mean_per_class_recall",
    "topk_accuracy",
    "true_label_ranks",
    "zeroshot_classifier",
]

METRICS = ("top1", "top5", "mean_per_class_recall")
COUNTS = {"top1": "n", "top5": "n"}  # the shares of n images (their Wilson intervals are drawn in the report)


def zeroshot_classifier(
    model: EmbeddingModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Class embeddings [C, D]: the normalised mean of each class's normalised template embeddings."""
    if not classnames or not templates:
        raise ValueError("zeroshot_classifier needs at least one class name and one template")
    texts = fill_templates(classnames, templates)
    embeddings = embed_texts(model, texts, batch_size, progress, f"{model.name}: class prompts")
    return class_embeddings(embeddings, len(classnames))


def true_label_ranks(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How many other classes score at least as high as the true one; ties count against the model."""
    true = logits[np.arange(len(labels)), labels][:, None]
    return (logits >= true).sum(axis=1) - 1


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose true label is among the k highest logits (a tie with the true label is a miss)."""
    return float(np.mean(true_label_ranks(logits, np.asarray(labels, dtype=np.int64)) < k))


def mean_per_class_recall(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of each class's top-1 recall (sklearn's balanced accuracy)."""
    labels = np.asarray(labels, dtype=np.int64)
    correct = true_label_ranks(logits, labels) == 0
    return float(np.mean([np.mean(correct[labels == c]) for c in np.unique(labels)]))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """top1, top5, mean per-class recall and the sample count from logits [N, C] and integer labels [N]."""
    labels = np.asarray(labels, dtype=np.int64)
    return {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "mean_per_class_recall": mean_per_class_recall(logits, labels),
        "n": len(labels),
    }


def attribute_hits(logits: np.ndarray, labels: np.ndarray, values: Sequence[str]) -> np.ndarray:
    """Per row: whether its top-1 class has the same attribute value as the true class (e.g. the right colour)."""
    table = np.asarray(values, dtype=object)
    predicted = np.asarray(logits).argmax(axis=1)
    return table[predicted] == table[np.asarray(labels, dtype=np.int64)]


def attribute_metrics(logits: np.ndarray, labels: np.ndarray, attributes: dict[str, list[str]]) -> dict[str, Any]:
    """``top1_<attribute>`` with its 95% Wilson interval for every class attribute of the set."""
    out: dict[str, Any] = {}
    for name, values in attributes.items():
        hits = attribute_hits(logits, labels, values)
        out[f"top1_{name}"] = float(hits.mean())
        out[stats.ci_key(f"top1_{name}")] = list(stats.wilson_interval(int(hits.sum()), len(hits)))
    return out


def embed_dataset_images(
    model: EmbeddingModel, dataset: ClassificationDataset, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Image embeddings [N, D] and labels [N] of the whole set, streamed in batches; images that do not decode are
    logged, left out and named in ``dataset.skipped``."""
    labels: list[int] = []

    def entries() -> Iterator[ImageEntry]:
        for open_image, label, where in dataset.entries():
            labels.append(label)
            yield open_image, where

    embedded = embed_image_entries(model, entries(), batch_size, progress, total=dataset.size_hint)
    dataset.skipped = embedded.skipped
    if not embedded.kept:
        raise DatasetError(f"{dataset.root}: no samples to evaluate (skipped {len(embedded.skipped)} undecodable)")
    return embedded.embeddings, np.asarray(labels, dtype=np.int64)[embedded.kept]


def evaluate_zeroshot(
    model: EmbeddingModel,
    dataset: ClassificationDataset,
    langs: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per language: {top1, top5, mean_per_class_recall, n} (plus ``top1_<attribute>`` with its interval when the set
    has class attributes); images are embedded once for all languages."""
    langs = list(langs) if langs else dataset.langs
    dataset.check_langs(langs)
    image_emb, labels = embed_dataset_images(model, dataset, batch_size, progress)
    results = {}
    for lang in langs:
        classes = zeroshot_classifier(model, dataset.classnames[lang], dataset.templates[lang], batch_size, progress)
        logits = image_emb @ classes.T
        results[lang] = {
            **classification_metrics(logits, labels),
            **attribute_metrics(logits, labels, dataset.attributes),
        }
    return results
