"""Zero-shot classification, retrieval and cross-lingual alignment evaluation.

``run_eval`` (report.py) is the single entry the CLI calls; ``load_model`` (models.py) turns a checkpoint, bundle or
teacher spec into an ``EmbeddingModel``. Nothing here imports torch or matplotlib until a model or chart needs it.
"""

import importlib
from typing import Any

# Loaded on first use (PEP 562): the CLI reads the task registry (eval/registry.py) without importing the evaluators.
_EXPORTS = {
    "ClassificationDataset": "dcclip.eval.datasets",
    "DatasetError": "dcclip.eval.datasets",
    "EmbeddingModel": "dcclip.eval.models",
    "ModelLoadError": "dcclip.eval.models",
    "RetrievalDataset": "dcclip.eval.datasets",
    "evaluate_alignment": "dcclip.eval.alignment",
    "evaluate_retrieval": "dcclip.eval.retrieval",
    "evaluate_zeroshot": "dcclip.eval.zeroshot",
    "load_model": "dcclip.eval.models",
    "open_dataset": "dcclip.eval.datasets",
    "recall_at_k": "dcclip.eval.retrieval",
    "run_eval": "dcclip.eval.report",
    "zeroshot_classifier": "dcclip.eval.zeroshot",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dcclip.eval' has no attribute {name!r}")


__all__ = [
    "ClassificationDataset",
    "DatasetError",
    "EmbeddingModel",
    "ModelLoadError",
    "RetrievalDataset",
    "evaluate_alignment",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "load_model",
    "open_dataset",
    "recall_at_k",
    "run_eval",
    "zeroshot_classifier",
]
