"""One embedding interface for every model the evaluations score: students, teachers and exported ONNX bundles.

Every evaluation only needs L2-normalised image and text embeddings, so a model is anything with ``name``,
``embed_images`` and ``embed_texts``. ``load_model`` turns a reference string (checkpoint or run directory, bundle
directory, teacher spec) into one. torch is imported only by the torch-backed models, so a bundle evaluates with the
torch-free runtime alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from dcclip.checkpoint import CHECKPOINT_DIR, CONFIG_FILE, MODEL_FILE, is_checkpoint_like
from dcclip.models.teacher_spec import CLIP_PREFIXES, PREFIXES
from dcclip.runtime.manifest import BUNDLE_FORMAT, MANIFEST_FILE
from dcclip.runtime.prompts import l2_normalize

__all__ = [
    "BUNDLE_FORMAT",
    "TEACHER_PREFIXES",
    "EmbeddingModel",
    "ModelLoadError",
    "OnnxEvalModel",
    "StudentModel",
    "TeacherModel",
    "batches",
    "default_name",
    "load_model",
]

TEACHER_PREFIXES = CLIP_PREFIXES  # specs eval loads as a model; mclip: is a text side (--teacher-text)
DEFAULT_BATCH_SIZE = 64


class ModelLoadError(ValueError):
    """A model reference that names nothing loadable; the message says what was looked for."""


@runtime_checkable
class EmbeddingModel(Protocol):
    """What every evaluation needs from a model: a label and L2-normalised float32 embeddings [N, D]."""

    name: str

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """PIL images -> L2-normalised float32 embeddings [N, D]."""
        ...

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised float32 embeddings [N, D], in the same space as the images."""
        ...


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items, so large inputs never go through a model at once."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _embed_batched(fn: Callable[[Sequence[Any]], np.ndarray], items: Sequence[Any], size: int) -> np.ndarray:
    """Run ``fn`` over batches of ``items`` and stack the L2-normalised results (empty input -> [0, 0])."""
    parts = [l2_normalize(fn(chunk)) for chunk in batches(items, size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _check_texts(texts: Sequence[str]) -> list[str]:
    """A list of strings, refusing a bare string (it would be embedded character by character)."""
    if isinstance(texts, str):
        raise TypeError("embed_texts takes a list of strings, not a single string")
    return [str(text) for text in texts]


class StudentModel:
    """A trained dcclip student (checkpoint directory or run directory) behind the EmbeddingModel interface."""

    def __init__(
        self, path: str | Path, device: str = "cpu", name: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        from dcclip.models.students import load_student_checkpoint

        self.loaded = load_student_checkpoint(path, device=device)
        self.device = device
        self.batch_size = batch_size
        self.name = name or default_name(str(path))
        self.ref = str(path)
        self.kind = "student"

    def _images(self, chunk: Sequence[Image.Image]) -> np.ndarray:
        """One batch of images through the image tower, without autograd bookkeeping."""
        import torch

        pixels = torch.from_numpy(self.loaded.preprocess.batch(list(chunk))).float().to(self.device)
        with torch.inference_mode():
            return self.loaded.model.encode_image(pixels).float().cpu().numpy()

    def _texts(self, chunk: Sequence[str]) -> np.ndarray:
        """One batch of texts through the student's own tokenizer and text tower."""
        import torch

        ids, mask = self.loaded.tokenizer.encode(list(chunk), self.loaded.max_text_len)
        with torch.inference_mode():
            out = self.loaded.model.encode_text(
                torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
            )
            return out.float().cpu().numpy()

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """PIL images -> L2-normalised float32 embeddings [N, D], in batches of ``batch_size``."""
        return _embed_batched(self._images, list(images), self.batch_size)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised float32 embeddings [N, D], in batches of ``batch_size``."""
        return _embed_batched(self._texts, _check_texts(texts), self.batch_size)


class TeacherModel:
    """A CLIP teacher (``openclip:`` / ``hf:`` spec, optionally with a separate text teacher) as an EmbeddingModel."""

    def __init__(
        self,
        spec: str,
        text_spec: str = "",
        device: str = "cpu",
        name: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        from dcclip.models.teachers import load_teacher

        self.teacher = load_teacher(spec, text_spec, device=device)
        self.batch_size = batch_size
        self.name = name or default_name(spec, text_spec)
        self.ref = spec if not text_spec else f"{spec} + text {text_spec}"
        self.kind = "teacher"

    def _images(self, chunk: Sequence[Image.Image]) -> np.ndarray:
        """One batch of images through the teacher's own preprocessing and image tower."""
        import torch

        pixels = torch.from_numpy(self.teacher.preprocess.batch(list(chunk))).float()
        with torch.inference_mode():
            return self.teacher.encode_image(pixels)[0].cpu().numpy()

    def _texts(self, chunk: Sequence[str]) -> np.ndarray:
        """One batch of texts through the teacher's (or its text teacher's) tokenizer and text tower."""
        import torch

        with torch.inference_mode():
            return self.teacher.encode_text(list(chunk)).cpu().numpy()

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """PIL images -> L2-normalised float32 embeddings [N, D], in batches of ``batch_size``."""
        return _embed_batched(self._images, list(images), self.batch_size)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised float32 embeddings [N, D], in batches of ``batch_size``."""
        return _embed_batched(self._texts, _check_texts(texts), self.batch_size)


class OnnxEvalModel:
    """An exported ONNX bundle, loaded by the torch-free runtime, as an EmbeddingModel."""

    def __init__(
        self,
        path: str | Path,
        name: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str | None = None,
    ) -> None:
        try:
            from dcclip.runtime.bundle import load_bundle_model
        except ImportError as exc:
            raise ModelLoadError(
                f"{path} is an ONNX bundle, but the bundle runtime (dcclip.runtime.bundle.load_bundle_model) cannot "
                f"be imported: {exc}. Install the core runtime (pip install dcclip: onnxruntime, numpy, pillow, "
                f"tokenizers) or use a dcclip version that ships it."
            ) from exc
        self.runtime = load_bundle_model(Path(path), precision)
        self.batch_size = batch_size
        suffix = "" if precision in (None, "fp32") else f"@{precision}"  # None: the manifest's choice
        self.name = name or default_name(str(path)) + suffix
        self.ref = str(path) + suffix
        self.kind = "bundle"

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """PIL images -> L2-normalised float32 embeddings [N, D] from the bundle's image.onnx."""
        return _embed_batched(lambda chunk: self.runtime.embed_images(list(chunk)), list(images), self.batch_size)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised float32 embeddings [N, D] from the bundle's text.onnx."""
        return _embed_batched(lambda chunk: self.runtime.embed_texts(list(chunk)), _check_texts(texts), self.batch_size)


class RememberedTexts:
    """Any EmbeddingModel, embedding each distinct text once and remembering it for later calls.

    For several evaluations of one model over the same captions: the demo's retrieval and alignment passes read the
    same 9,000 captions, and templated captions repeat within one pass too.
    """

    def __init__(self, model: EmbeddingModel) -> None:
        self.model = model
        self.name = model.name
        self.ref = getattr(model, "ref", model.name)
        self.kind = getattr(model, "kind", type(model).__name__)
        self._rows: dict[str, np.ndarray] = {}

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """The wrapped model's image embeddings (not remembered)."""
        return self.model.embed_images(images)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``; only texts not seen before go through the model."""
        texts = _check_texts(texts)
        new = [text for text in dict.fromkeys(texts) if text not in self._rows]
        if new:
            self._rows.update(zip(new, self.model.embed_texts(new), strict=True))
        if not texts:
            return self.model.embed_texts([])
        return np.stack([self._rows[text] for text in texts])


def default_name(ref: str, text_spec: str = "") -> str:
    """A short report label from a reference: the last path part (``run/step-N`` for checkpoints), spec backend kept."""
    prefix = next((p for p in PREFIXES if ref.startswith(p)), "")
    body = ref[len(prefix) :].rstrip("/\\")
    path = Path(body)
    if not prefix and not path.name and path.exists():
        path = path.resolve()  # "." or ".." -> the directory's own name
    label = path.name or body
    if path.parent.name == CHECKPOINT_DIR and path.parent.parent.name:
        label = f"{path.parent.parent.name}/{path.name}"
    label = f"{prefix}{label}"
    return f"{label}+{default_name(text_spec)}" if text_spec else label


def _bundle_format(path: Path) -> str | None:
    """The ``format`` field of a directory's manifest.json, or None when there is none or it is not JSON."""
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        payload = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return payload.get("format") if isinstance(payload, dict) else None


def _split_precision(ref: str) -> tuple[str, str | None]:
    """``BUNDLE_DIR@int8`` -> (BUNDLE_DIR, "int8") when the part before ``@`` is a bundle; else (ref, None)."""
    head, at, precision = ref.rpartition("@")
    if at and precision and not Path(ref).expanduser().exists() and _bundle_format(Path(head).expanduser()):
        return head, precision
    return ref, None


def load_model(
    ref: str | Path,
    device: str = "cpu",
    name: str | None = None,
    text_spec: str = "",
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str | None = None,
) -> EmbeddingModel:
    """Load whatever ``ref`` names: a bundle directory, a checkpoint or run directory, or an openclip:/hf: spec.

    ``text_spec`` (a teacher's separate text side, e.g. ``mclip:/dir``) applies to teacher specs only. A bundle runs
    at ``precision``, or at the one named in the reference (``BUNDLE_DIR@int8``), so one run can compare both;
    with neither, each tower runs at the manifest's recommended precision (fp32 when it records none).
    """
    ref_str, ref_precision = _split_precision(str(ref))
    path = Path(ref_str).expanduser()
    if path.is_dir():
        fmt = _bundle_format(path)
        if fmt == BUNDLE_FORMAT:
            _refuse_text_spec(text_spec, ref_str)
            return OnnxEvalModel(path, name=name, batch_size=batch_size, precision=ref_precision or precision)
        if is_checkpoint_like(path):
            _refuse_text_spec(text_spec, ref_str)
            return StudentModel(path, device=device, name=name, batch_size=batch_size)
        found = f" (its manifest.json has format {fmt!r})" if fmt else ""
        raise ModelLoadError(
            f"{path} is a directory but neither an ONNX bundle (manifest.json with format {BUNDLE_FORMAT!r}) nor a "
            f"checkpoint ({CONFIG_FILE} + {MODEL_FILE}) nor a run directory ({CHECKPOINT_DIR}/){found}"
        )
    if ref_str.startswith(TEACHER_PREFIXES):
        return TeacherModel(ref_str, text_spec, device=device, name=name, batch_size=batch_size)
    what = "a file, not a model directory" if path.exists() else "not an existing directory"
    raise ModelLoadError(
        f"cannot load model {ref_str!r}: {what}. Expected a checkpoint or run directory, an ONNX bundle directory, "
        f"or a teacher spec starting with {' or '.join(TEACHER_PREFIXES)}"
    )


def _refuse_text_spec(text_spec: str, ref: str) -> None:
    """A separate text teacher only makes sense for teachers; refuse it elsewhere instead of ignoring it."""
    if text_spec:
        raise ModelLoadError(f"a teacher text spec ({text_spec!r}) was given for {ref!r}, which is not a teacher")
