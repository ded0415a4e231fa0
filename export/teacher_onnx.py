"""Export an open_clip teacher's towers to ONNX fp32, so teacher and student can be timed in the same runtime.

The graphs compute what ``OpenClipTeacher.encode_image`` / ``encode_text`` compute in torch: ``pixel_values``
[B, 3, S, S] -> ``image_embeds`` and ``input_ids`` [B, context_length] -> ``text_embeds``, both L2-normalised, with a
dynamic batch axis. open_clip's CLIP text tower adds its whole positional table to the tokens, so the text graph runs
at the teacher's context length only (its tokenizer always pads to that length) and takes no attention mask. Any
open_clip image tower exports (ViT, ModifiedResNet, a timm trunk). The exporter, its checks and its fallback are
export/onnx.py's; parity with torch is measured here on random pixels and multilingual captions, and an fp32 graph
below validate's cosine bar fails the export (ONNX outputs can differ from torch: open_clip issue 186).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from dcclip.runtime.bundle import IMAGE_INPUT, IMAGE_OUTPUT, TEXT_INPUTS, TEXT_OUTPUT

from .errors import ExportError
from .onnx import EXPORTERS, ExportRecord, _export, _Spec
from .validate import FP32_MIN_COSINE, compare_embeddings, probe_captions

__all__ = [
    "IMAGE_FILE",
    "RECORD_FILE",
    "TEXT_FILE",
    "TEXT_INPUT",
    "TeacherImageGraph",
    "TeacherOnnx",
    "TeacherTextGraph",
    "export_teacher_onnx",
    "teacher_parity",
]

IMAGE_FILE = "teacher_image.onnx"
TEXT_FILE = "teacher_text.onnx"
RECORD_FILE = "teacher_onnx.json"
TEXT_INPUT = TEXT_INPUTS[0]  # input_ids only: open_clip's CLIP pools at the end token and masks causally
TRACE_BATCH = 2  # >= 2: the dynamo exporter fixes a traced batch of 1 into the graph
PARITY_BATCH = 3  # differs from the traced batch, so parity also proves the batch axis is dynamic


class TeacherImageGraph(nn.Module):
    """An open_clip model's image tower for export: pixels [B, 3, S, S] -> L2-normalised embeddings [B, D]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """open_clip's encode_image, normalised inside the graph like the student's towers."""
        return F.normalize(self.model.encode_image(pixel_values), dim=-1)


class TeacherTextGraph(nn.Module):
    """An open_clip model's text tower for export: token ids [B, context_length] -> L2-normalised embeddings [B, D]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """open_clip's encode_text, normalised inside the graph."""
        return F.normalize(self.model.encode_text(input_ids), dim=-1)


@dataclass(frozen=True)
class TeacherOnnx:
    """Where a teacher's ONNX towers are, how they were exported, their input sizes and their parity with torch."""

    spec: str
    image: ExportRecord
    text: ExportRecord
    image_size: int
    context_length: int
    parity: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (written beside the graphs as teacher_onnx.json)."""
        return {
            "spec": self.spec,
            "image": self.image.to_dict(),
            "text": self.text.to_dict(),
            "image_size": self.image_size,
            "context_length": self.context_length,
            "parity": self.parity,
        }

    @property
    def bytes(self) -> int:
        """Bytes on disk of both graphs (weights included: they are exported into the files)."""
        return sum(Path(record.path).stat().st_size for record in (self.image, self.text))


def _batch_spec(inputs: tuple[str, ...], output: str) -> _Spec:
    """Names of a one-input graph whose only dynamic axis is the batch."""
    return _Spec(inputs=inputs, outputs=(output,), dynamic={inputs[0]: {0: "batch"}, output: {0: "batch"}})


def _open_clip_teacher(teacher: Any) -> Any:
    """The loaded open_clip teacher for a spec string or a teacher object; ExportError for other backends."""
    if isinstance(teacher, str):
        from dcclip.models.teachers import load_teacher

        teacher = load_teacher(teacher)
    if not hasattr(teacher, "model") or not hasattr(teacher.model, "encode_text"):
        raise ExportError(f"teacher ONNX export needs an open_clip teacher, got {type(teacher).__name__}")
    return teacher


def _parity_texts() -> list[str]:
    """Multilingual captions for the text parity check, one per language (many scripts, many token lengths)."""
    return [captions[0] for captions in probe_captions().values()]


def _sample_ids(teacher: Any, texts: Sequence[str]) -> np.ndarray:
    """The teacher's own token ids [B, context_length] (int64) for ``texts``."""
    return np.asarray(teacher.tokenizer(list(texts)), dtype=np.int64)


def export_teacher_onnx(teacher: Any, out_dir: Path, exporters: Sequence[str] = EXPORTERS) -> TeacherOnnx:
    """Export both towers of an open_clip teacher (object or ``openclip:`` spec) to ``out_dir`` and check parity.

    Writes ``teacher_image.onnx``, ``teacher_text.onnx`` and ``teacher_onnx.json`` (records and parity figures);
    raises ExportError when either fp32 graph's min cosine to torch is below FP32_MIN_COSINE.
    """
    teacher = _open_clip_teacher(teacher)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(teacher.model).cpu().float().eval()
    size = teacher.preprocess.image_size
    pixels = torch.randn(TRACE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    image = _export(
        TeacherImageGraph(model).eval(), (pixels,), out_dir / IMAGE_FILE, _batch_spec((IMAGE_INPUT,), IMAGE_OUTPUT),
        exporters,
    )  # fmt: skip
    ids = torch.from_numpy(_sample_ids(teacher, _parity_texts()[:TRACE_BATCH]))
    text = _export(
        TeacherTextGraph(model).eval(), (ids,), out_dir / TEXT_FILE, _batch_spec((TEXT_INPUT,), TEXT_OUTPUT), exporters
    )
    parity = teacher_parity(teacher, out_dir / IMAGE_FILE, out_dir / TEXT_FILE)
    result = TeacherOnnx(teacher.spec, image, text, size, int(ids.shape[1]), parity)
    (out_dir / RECORD_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    if not parity["min_cosine"] >= FP32_MIN_COSINE:
        raise ExportError(
            f"teacher fp32 ONNX does not match torch: min cosine {parity['min_cosine']:.6f} < {FP32_MIN_COSINE} "
            f"(image {parity['image']['min_cosine']:.6f}, text {parity['text']['min_cosine']:.6f}, batch 1: "
            f"image {parity['image']['batch1_cosine']:.6f}, text {parity['text']['batch1_cosine']:.6f})",
            result.to_dict(),
        )
    return result


def teacher_parity(teacher: Any, image_path: Path, text_path: Path) -> dict[str, Any]:
    """Max abs diff and mean/min cosine of each ONNX tower against the torch teacher, batched and at batch 1.

    The batches (3 images, 10 captions) differ from the traced one, so a passing check also shows the batch axis is
    dynamic; batch 1 is what the speed comparison runs.
    """
    size = teacher.preprocess.image_size
    pixels = torch.randn(PARITY_BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))
    texts = _parity_texts()
    image = _tower_parity(
        ort.InferenceSession(str(image_path), providers=["CPUExecutionProvider"]),
        IMAGE_INPUT, pixels.numpy(), teacher.encode_image(pixels)[0].cpu().numpy(),
    )  # fmt: skip
    text = _tower_parity(
        ort.InferenceSession(str(text_path), providers=["CPUExecutionProvider"]),
        TEXT_INPUT, _sample_ids(teacher, texts), teacher.encode_text(texts).cpu().numpy(),
    )  # fmt: skip
    worst = min(image["min_cosine"], image["batch1_cosine"], text["min_cosine"], text["batch1_cosine"])
    return {"image": image, "text": text, "min_cosine": worst}


def _tower_parity(session: ort.InferenceSession, name: str, inputs: np.ndarray, reference: np.ndarray) -> dict:
    """compare_embeddings of one tower on the whole batch, plus the cosine of its first row run alone."""
    output = session.get_outputs()[0].name
    figures = compare_embeddings(reference, session.run([output], {name: inputs})[0])
    single = compare_embeddings(reference[:1], session.run([output], {name: inputs[:1]})[0])
    return {**figures, "batch1_cosine": single["min_cosine"]}
