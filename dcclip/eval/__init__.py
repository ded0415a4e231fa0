"""Zero-shot classification, retrieval and cross-lingual alignment evaluation.

``run_eval`` (report.py) is the single entry the CLI calls; ``load_model`` (models.py) turns a checkpoint, bundle or
teacher spec into an ``EmbeddingModel``. Nothing here imports torch or matplotlib until a model or chart needs it.
"""

from dcclip.eval.alignment import evaluate_alignment
from dcclip.eval.datasets import ClassificationDataset, DatasetError, RetrievalDataset, open_dataset
from dcclip.eval.models import EmbeddingModel, ModelLoadError, load_model
from dcclip.eval.report import run_eval
from dcclip.eval.retrieval import evaluate_retrieval, recall_at_k
from dcclip.eval.zeroshot import evaluate_zeroshot, zeroshot_classifier

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
