"""Export a student's towers to ONNX: one self-contained file per tower, L2-normalised outputs, dynamic batch.

torch 2.14 exports with the dynamo exporter by default. Two of its traps are handled here: a trace with batch 1
silently fixes the batch to 1 (we trace with batch >= 2 and read the exported input shapes back to prove the axes are
dynamic), and weights go to a side ``.onnx.data`` file unless ``external_data=False`` (we keep one file per tower
unless the weights exceed protobuf's 2 GB). When the dynamo exporter fails for a model, the TorchScript exporter is
tried; the exporter that produced each file is recorded.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from dcclip.runtime.bundle import IMAGE_INPUT, IMAGE_OUTPUT, TEXT_INPUTS, TEXT_OUTPUT

from .errors import ExportError

__all__ = [
    "EXPORTERS",
    "OPSET",
    "ExportRecord",
    "ImageTower",
    "TextTower",
    "dynamic_axes_ok",
    "export_image_tower",
    "export_text_tower",
    "graph_io_shapes",
]

log = logging.getLogger(__name__)

OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
PROTOBUF_LIMIT = 2 * 1024**3
EXTERNAL_DATA_MARGIN = 64 * 1024**2  # graph structure and constants beside the weights


@dataclass(frozen=True)
class ExportRecord:
    """What was exported where, by which exporter, with which opset and whether weights sit in a side file."""

    path: str
    exporter: str
    opset: int
    external_data: bool
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the manifest."""
        return asdict(self)


class ImageTower(nn.Module):
    """Eval-mode image tower for export: pixels [B, 3, H, W] -> L2-normalised embeddings [B, D]."""

    def __init__(self, image: nn.Module) -> None:
        super().__init__()
        self.image = image

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed and normalise inside the graph, so every runtime gets unit vectors."""
        return F.normalize(self.image.embed(pixel_values), dim=-1)


class TextTower(nn.Module):
    """Eval-mode text tower for export: ids and mask [B, L] (int64) -> L2-normalised embeddings [B, D]."""

    def __init__(self, text: nn.Module) -> None:
        super().__init__()
        self.text = text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed and normalise inside the graph."""
        return F.normalize(self.text(input_ids, attention_mask), dim=-1)


def deployable_image(image: nn.Module) -> nn.Module:
    """A float32 eval copy of the image tower, reparameterised (FastViT/RepViT/MobileOne branches fused) for export."""
    from timm.utils import reparameterize_model

    tower = copy.deepcopy(image).float().eval()
    tower.trunk = reparameterize_model(tower.trunk, inplace=True)
    return tower


def export_image_tower(
    image: nn.Module,
    path: Path,
    image_size: int,
    batch: int = 2,
    exporters: Sequence[str] = EXPORTERS,
) -> ExportRecord:
    """Export ``Student.image`` (its ``embed`` path) as ``pixel_values`` -> ``image_embeds`` with a dynamic batch."""
    if batch < 2:
        raise ValueError("trace with batch >= 2: the dynamo exporter fixes a batch of 1 into the graph")
    tower = ImageTower(deployable_image(image)).eval()
    pixels = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    spec = _Spec(
        inputs=(IMAGE_INPUT,),
        outputs=(IMAGE_OUTPUT,),
        dynamic={IMAGE_INPUT: {0: "batch"}, IMAGE_OUTPUT: {0: "batch"}},
    )
    return _export(tower, (pixels,), Path(path), spec, exporters)


def export_text_tower(
    text: nn.Module,
    path: Path,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    exporters: Sequence[str] = EXPORTERS,
) -> ExportRecord:
    """Export ``Student.text`` as (``input_ids``, ``attention_mask``) -> ``text_embeds``, dynamic batch and length.

    The sample ids must have batch >= 2 and a length that differs from the batch and is >= 2, so that neither axis
    is specialised to a constant (or unified with the other) by the tracer.
    """
    ids, mask = torch.as_tensor(input_ids, dtype=torch.int64), torch.as_tensor(attention_mask, dtype=torch.int64)
    if ids.shape != mask.shape or ids.ndim != 2 or ids.shape[0] < 2 or ids.shape[1] < 2 or ids.shape[0] == ids.shape[1]:
        raise ValueError(f"sample ids must be [B>=2, L>=2] with B != L and match the mask, got {tuple(ids.shape)}")
    tower = TextTower(copy.deepcopy(text).float().eval()).eval()
    axes = {0: "batch", 1: "sequence"}
    spec = _Spec(
        inputs=TEXT_INPUTS,
        outputs=(TEXT_OUTPUT,),
        dynamic={TEXT_INPUTS[0]: axes, TEXT_INPUTS[1]: axes, TEXT_OUTPUT: {0: "batch"}},
    )
    return _export(tower, (ids, mask), Path(path), spec, exporters)


@dataclass(frozen=True)
class _Spec:
    """Names of a graph's inputs and outputs and which of their axes must stay dynamic."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]


def _export(
    module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, spec: _Spec, exporters: Sequence[str]
) -> ExportRecord:
    """Try each exporter in turn; the first whose graph passes the checker with dynamic axes wins."""
    unknown = [name for name in exporters if name not in EXPORTERS]
    if unknown or not exporters:
        raise ValueError(f"exporters must be a non-empty subset of {EXPORTERS}, got {list(exporters)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    external = _needs_external_data(module)
    failures: list[str] = []
    for name in exporters:
        try:
            _run_exporter(name, module, args, path, spec, external)
            _check_graph(path, spec)
        except Exception as exc:  # any exporter failure: record it and try the next one
            failures.append(f"{name}: {type(exc).__name__}: {_first_line(exc)}")
            log.warning("ONNX export of %s with the %s exporter failed: %s", path.name, name, failures[-1])
            _remove_outputs(path)
            continue
        opset = _opset(path)
        return ExportRecord(str(path), name, opset, external, "; ".join(failures) or None)
    raise ExportError(f"cannot export {path.name}: " + " | ".join(failures))


def _run_exporter(
    name: str, module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, spec: _Spec, external: bool
) -> None:
    """Write ``path`` with one exporter, its chatter (progress lines, deprecation warnings) kept out of the logs."""
    common = {"input_names": list(spec.inputs), "output_names": list(spec.outputs), "opset_version": OPSET}
    with _quiet(), torch.no_grad():
        if name == "dynamo":
            named = {name: torch.export.Dim(name) for axes in spec.dynamic.values() for name in axes.values()}
            shapes = {key: {axis: named[name] for axis, name in spec.dynamic[key].items()} for key in spec.inputs}
            torch.onnx.export(
                module, args, str(path), dynamo=True, dynamic_shapes=shapes, external_data=external,
                verbose=False, report=False, **common,
            )  # fmt: skip
        else:
            torch.onnx.export(module, args, str(path), dynamo=False, dynamic_axes=spec.dynamic, **common)


def _check_graph(path: Path, spec: _Spec) -> None:
    """The ONNX checker passes, the names are the expected ones and every declared dynamic axis is symbolic."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    shapes = graph_io_shapes(model)
    names_in = [value.name for value in model.graph.input]
    names_out = [value.name for value in model.graph.output]
    if names_in != list(spec.inputs) or names_out != list(spec.outputs):
        raise ExportError(f"{path.name}: graph has inputs {names_in} / outputs {names_out}, expected {spec}")
    fixed = dynamic_axes_ok(shapes, spec.dynamic)
    if fixed:
        raise ExportError(f"{path.name}: axes exported as constants instead of dynamic: {fixed}")


def graph_io_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Each graph input's and output's shape as read from the file: ints for fixed dims, names for symbolic ones."""
    shapes = {}
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_param if d.HasField("dim_param") else (d.dim_value or None) for d in dims]
    return shapes


def dynamic_axes_ok(shapes: dict[str, list[int | str | None]], dynamic: dict[str, dict[int, str]]) -> list[str]:
    """The declared-dynamic axes that the graph fixed to a number (empty when all are symbolic)."""
    fixed = []
    for name, axes in dynamic.items():
        dims = shapes.get(name, [])
        for axis in axes:
            if axis >= len(dims) or not isinstance(dims[axis], str):
                fixed.append(f"{name}[{axis}]={dims[axis] if axis < len(dims) else 'missing'}")
    return fixed


def _needs_external_data(module: nn.Module) -> bool:
    """Weights too big for one protobuf (2 GB) must go to a side file; everything smaller stays in one file."""
    weight_bytes = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    return weight_bytes + EXTERNAL_DATA_MARGIN > PROTOBUF_LIMIT


def _opset(path: Path) -> int:
    """The default-domain opset of an exported file."""
    model = onnx.load(str(path), load_external_data=False)
    return next((int(op.version) for op in model.opset_import if op.domain in ("", "ai.onnx")), OPSET)


def _remove_outputs(path: Path) -> None:
    """Delete a failed attempt's file and side data so the next exporter starts clean."""
    for leftover in (path, path.with_name(path.name + ".data")):
        leftover.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (exporter errors can run to pages)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:500] if lines else ""


NOISY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter warnings, progress prints and INFO logs (the outcome is checked and recorded instead)."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
