"""MEXA-style cross-lingual alignment of a text encoder, from parallel captions alone (no images).

For each non-English language L, the parallel captions of L and English are embedded. Figures:

- ``retrieval_acc``: share of L captions whose nearest English caption (cosine) is their own translation;
  ``retrieval_acc_en``: the same from English to L. A tie with the translation counts as a miss, so chance is
  1/n and a constant encoder scores 0.
- ``cos_pairs``: mean cosine of translation pairs; ``cos_random``: mean cosine of mismatched pairs (every off-diagonal
  pair, the expectation over random pairings); ``gap`` = cos_pairs - cos_random.

Parallel captions come from the retrieval set's per-sample json (``captions`` in every language; the first caption
per language when several are given). Pairs whose English or L text repeats an earlier pair are dropped, since
identical texts cannot be told apart by any encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dcclip.eval.datasets import DatasetError, RetrievalDataset
from dcclip.eval.embedding import embed_texts
from dcclip.eval.models import EmbeddingModel
from dcclip.eval.registry import TASKS

__all__ = ["METRICS", "PIVOT", "alignment_scores", "evaluate_alignment", "parallel_pairs"]

PIVOT = TASKS["alignment"].pivot  # every language is measured against English
METRICS = ("retrieval_acc", "retrieval_acc_en", "cos_pairs", "cos_random", "gap")
COUNTS = {"retrieval_acc": "n", "retrieval_acc_en": "n"}  # shares of n caption pairs


def _nearest_is_own(similarity: np.ndarray) -> np.ndarray:
    """Per row, whether the diagonal entry beats every other entry of the row strictly."""
    diagonal = np.diag(similarity)[:, None]
    return ((similarity >= diagonal).sum(axis=1) - 1) == 0


def alignment_scores(lang_emb: np.ndarray, pivot_emb: np.ndarray) -> dict[str, float | int]:
    """Alignment figures from row-aligned, L2-normalised embeddings of translations [n, D] (n >= 2)."""
    n = len(lang_emb)
    if n < 2 or pivot_emb.shape != lang_emb.shape:
        raise ValueError(
            f"alignment needs >= 2 row-aligned pairs of equal shape, got {lang_emb.shape} and {pivot_emb.shape}"
        )
    similarity = lang_emb @ pivot_emb.T  # [n (L), n (English)]
    cos_pairs = float(np.mean(np.diag(similarity)))
    cos_random = float((similarity.sum() - np.trace(similarity)) / (n * n - n))
    return {
        "retrieval_acc": float(np.mean(_nearest_is_own(similarity))),
        "retrieval_acc_en": float(np.mean(_nearest_is_own(similarity.T))),
        "cos_pairs": cos_pairs,
        "cos_random": cos_random,
        "gap": cos_pairs - cos_random,
        "n": n,
    }


def parallel_pairs(captions: list[dict[str, list[str]]], lang: str, pivot: str = PIVOT) -> list[tuple[str, str]]:
    """(L caption, pivot caption) of every sample that has both, without repeated texts on either side."""
    pairs, seen_lang, seen_pivot = [], set(), set()
    for per_lang in captions:
        if not per_lang.get(lang) or not per_lang.get(pivot):
            continue
        text, ref = per_lang[lang][0], per_lang[pivot][0]
        if text in seen_lang or ref in seen_pivot:
            continue
        seen_lang.add(text)
        seen_pivot.add(ref)
        pairs.append((text, ref))
    return pairs


def _dataset_captions(dataset: RetrievalDataset) -> list[dict[str, list[str]]]:
    """Captions per language of every sample (images are never decoded)."""
    captions = [sample.captions for sample in dataset.samples()]
    if not captions:
        raise DatasetError(f"{dataset.root}: no samples to evaluate")
    return captions


def evaluate_alignment(
    model: EmbeddingModel,
    dataset: RetrievalDataset,
    langs: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = False,
    pivot: str = PIVOT,
) -> dict[str, dict[str, Any]]:
    """Per non-pivot language: retrieval_acc, retrieval_acc_en, cos_pairs, cos_random, gap and n pairs."""
    langs = [lang for lang in (list(langs) if langs else dataset.langs) if lang != pivot]
    dataset.check_langs([pivot, *langs])
    if not langs:
        raise DatasetError(f"{dataset.root}: alignment needs a language besides {pivot!r} (has {dataset.langs})")
    captions = _dataset_captions(dataset)
    pairs = {lang: parallel_pairs(captions, lang, pivot) for lang in langs}
    for lang, found in pairs.items():
        if len(found) < 2:
            where = dataset.root / "test"
            raise DatasetError(f"{where}: {len(found)} parallel {lang!r}-{pivot!r} caption pairs; need >= 2")
    pivot_texts = list(dict.fromkeys(ref for found in pairs.values() for _, ref in found))
    pivot_emb = embed_texts(model, pivot_texts, batch_size, progress, f"{model.name}: {pivot} captions")
    row_of = {text: i for i, text in enumerate(pivot_texts)}  # English is embedded once for every language
    results = {}
    for lang, found in pairs.items():
        lang_emb = embed_texts(model, [t for t, _ in found], batch_size, progress, f"{model.name}: {lang} captions")
        results[lang] = alignment_scores(lang_emb, pivot_emb[[row_of[ref] for _, ref in found]])
    return results
