"""int8 quantisation of exported towers, chosen per tower from what the graph is made of.

onnxruntime's dynamic quantisation makes CNNs about 16x slower (activations are re-quantised at run time around
every conv), so convolutional towers get static QDQ quantisation, per-channel weights, calibrated on real preprocessed
images. Transformer towers (text, ViT images) get dynamic quantisation of their MatMul/Gemm weights, which needs no
calibration and keeps attention's activation-by-activation products in float.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from dcclip.runtime.preprocess import ImageDecodeError, Preprocess, decode_image

from .errors import ExportError
from .onnx import IMAGE_INPUT

__all__ = [
    "CONV_HEAVY_MIN_CONVS",
    "DYNAMIC_OP_TYPES",
    "ImageCalibrationReader",
    "calibration_images",
    "choose_method",
    "count_ops",
    "output_tail",
    "quantize_tower",
]

log = logging.getLogger(__name__)

DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Gather")  # Gather: the token-embedding table, weight-only int8
CONV_HEAVY_MIN_CONVS = 4  # a ViT has one Conv (its patch embedding); a CNN has dozens
DEFAULT_CALIB_IMAGES = 128
CALIB_BATCH = 16


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed images [N, 3, H, W] to static calibration, a batch at a time."""

    def __init__(self, pixels: np.ndarray, batch_size: int = CALIB_BATCH, input_name: str = IMAGE_INPUT) -> None:
        if pixels.ndim != 4 or len(pixels) == 0:
            raise ValueError(f"calibration needs a non-empty [N, 3, H, W] array, got shape {pixels.shape}")
        self.pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        self.batch_size = batch_size
        self.input_name = input_name
        self._batches: Iterator[dict[str, np.ndarray]] = self._iter()

    def _iter(self) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive batches of the calibration images."""
        for start in range(0, len(self.pixels), self.batch_size):
            yield {self.input_name: self.pixels[start : start + self.batch_size]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when all images were fed."""
        return next(self._batches, None)

    def rewind(self) -> None:
        """Start again from the first batch (some calibrators read the data twice)."""
        self._batches = self._iter()


def calibration_images(
    source: str | Path | Sequence[Image.Image], limit: int = DEFAULT_CALIB_IMAGES
) -> list[Image.Image]:
    """Up to ``limit`` decoded images from a shard source (dir, tar, brace pattern) or a list of PIL images."""
    if isinstance(source, str | Path):
        return shard_images(source, limit)
    images = list(source)[:limit]
    if not all(isinstance(image, Image.Image) for image in images):
        raise TypeError("calibration images must be PIL images (or give a shard source)")
    return images


def shard_images(source: str | Path, limit: int) -> list[Image.Image]:
    """The first ``limit`` decodable images of a shard source; undecodable ones are skipped with a log line."""
    from dcclip.data.shards import image_field, iter_samples

    images: list[Image.Image] = []
    for sample in iter_samples(source):
        field = image_field(sample)
        if field is None:
            continue
        try:
            images.append(decode_image(sample[field]))
        except ImageDecodeError as exc:
            log.warning("skipping image %s of %s: %s", sample.get("__key__"), sample.get("__url__"), exc)
        if len(images) >= limit:
            break
    return images


def count_ops(path: Path) -> Counter:
    """How many nodes of each op type the graph holds (top level)."""
    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def choose_method(path: Path) -> str:
    """'static_qdq' for a convolutional tower (Conv nodes dominate), 'dynamic' for a transformer tower."""
    ops = count_ops(path)
    matmuls = ops["MatMul"] + ops["Gemm"]
    return "static_qdq" if ops["Conv"] >= max(CONV_HEAVY_MIN_CONVS, matmuls) else "dynamic"


def quantize_tower(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray | Iterable[Image.Image] | None = None,
    preprocess: Preprocess | None = None,
    method: str | None = None,
) -> dict[str, Any]:
    """Write the int8 version of one tower; returns what was done (method, op counts, calibration) for the manifest.

    ``calibration`` is needed for a convolutional tower: preprocessed pixels [N, 3, H, W], or PIL images together with
    ``preprocess``. ``method`` overrides the automatic choice ('static_qdq' or 'dynamic').
    """
    ops = count_ops(fp32_path)
    chosen = method or choose_method(fp32_path)
    info: dict[str, Any] = {"method": chosen, "conv_nodes": ops["Conv"], "matmul_nodes": ops["MatMul"] + ops["Gemm"]}
    with tempfile.TemporaryDirectory(prefix="dcclip-quant-") as tmp:
        source, info["pre_process"] = _pre_process(Path(fp32_path), Path(tmp) / "pre.onnx")
        if chosen == "static_qdq":
            pixels = _calibration_pixels(calibration, preprocess)
            info.update(_static(source, Path(out_path), pixels))
        elif chosen == "dynamic":
            info.update(_dynamic(source, Path(out_path)))
        else:
            raise ValueError(f"method must be 'static_qdq' or 'dynamic', got {chosen!r}")
    onnx.checker.check_model(str(out_path))
    return info


def _pre_process(fp32_path: Path, out: Path) -> tuple[Path, str]:
    """Run quant_pre_process (graph optimisation + ONNX shape inference) before quantising; skip it if it fails.

    Its symbolic shape inference is left out: it cannot follow dynamo graphs (an Expand fed by a computed shape), and
    when it gives up it writes ``sym_shape_infer_temp.onnx`` plus a side data file into the working directory.
    """
    try:
        quant_pre_process(str(fp32_path), str(out), skip_symbolic_shape=True)
        return out, "optimize+shape_inference"
    except Exception as exc:  # onnxruntime raises assorted types from its optimiser and shape inference
        log.warning("quant_pre_process failed for %s (%s); quantising the graph as exported", fp32_path.name, exc)
    shutil.copyfile(fp32_path, out)
    return out, "skipped"


def _calibration_pixels(
    calibration: np.ndarray | Iterable[Image.Image] | None, preprocess: Preprocess | None
) -> np.ndarray:
    """Preprocessed calibration pixels from an array or PIL images; ExportError when there are none."""
    if calibration is None:
        raise ExportError("static quantisation of a convolutional tower needs calibration images")
    if isinstance(calibration, np.ndarray):
        pixels = calibration
    else:
        if preprocess is None:
            raise ValueError("PIL calibration images need the tower's preprocess")
        pixels = preprocess.batch(list(calibration))
    if len(pixels) == 0:
        raise ExportError("static quantisation of a convolutional tower needs calibration images, got none")
    return np.asarray(pixels, dtype=np.float32)


def output_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes from the last MatMul/Gemm (the projection) to the graph output: the L2 normalisation.

    These stay in float: a uint8 grid calibrated on the embedding's range can round a small embedding to all zeros,
    and the normalisation then returns a zero vector. They are a handful of cheap nodes.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    projection = _last_projection(model, producer)
    if projection is None:
        return []
    tail, frontier = [projection], list(projection.output)
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node not in tail:
                tail.append(node)
                frontier.extend(node.output)
    return [node.name for node in tail]


def _last_projection(model: onnx.ModelProto, producer: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The MatMul/Gemm nearest to the graph outputs (breadth-first towards the inputs), or None."""
    queue, seen = [out.name for out in model.graph.output], set()
    while queue:
        node = producer.get(queue.pop(0))
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in DYNAMIC_OP_TYPES:
            return node
        queue.extend(node.input)
    return None


def _name_nodes(path: Path) -> onnx.ModelProto:
    """Give every unnamed node a unique name (exclusion lists refer to names) and save the model back."""
    model = onnx.load(str(path))
    used = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"dcclip_{node.op_type}_{index}"
            while node.name in used:
                node.name += "_"
            used.add(node.name)
    onnx.save(model, str(path))
    return model


def _static(source: Path, out_path: Path, pixels: np.ndarray) -> dict[str, Any]:
    """Static QDQ, per-channel int8 weights and uint8 activations (the fast u8s8 kernels on x86 and ARM)."""
    float_nodes = output_tail(_name_nodes(source))
    quantize_static(
        str(source),
        str(out_path),
        ImageCalibrationReader(pixels),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=float_nodes,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return {
        "float_nodes": len(float_nodes),
        "format": "QDQ",
        "per_channel": True,
        "activation_type": "uint8",
        "weight_type": "int8",
        "calibration": {"method": "MinMax", "images": len(pixels)},
    }


def _dynamic(source: Path, out_path: Path) -> dict[str, Any]:
    """Dynamic quantisation of MatMul/Gemm with constant weights only (attention score products stay float)."""
    quantize_dynamic(
        str(source),
        str(out_path),
        op_types_to_quantize=list(DYNAMIC_OP_TYPES),
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )
    return {"op_types": list(DYNAMIC_OP_TYPES), "weight_type": "int8", "per_channel": False}
