"""int8 quantisation of exported towers, chosen per tower from what the graph is made of.

onnxruntime's dynamic quantisation makes CNNs many times slower (activations are re-quantised at run time around
every conv), so convolutional towers get static QDQ quantisation, per-channel weights, calibrated on real preprocessed
images. Transformer towers (text, ViT images) get dynamic quantisation of their MatMul/Gemm weights, which needs no
calibration and keeps attention's activation-by-activation products in float.

Rules (what each was worth on the demo students: docs/ablations.md, "How the int8 settings were chosen"):

- Static weights are 7-bit (``reduce_range``): x86 kernels without VNNI add pairs of u8 x s8 products in int16 and
  saturate with full 8-bit weights; VNNI and ARM kernels lose only the 8th bit.
- MinMax calibration on images taken evenly from every shard.
- The projection and the L2 normalisation after it stay float (``output_tail``); onnxruntime's dynamic mode renames a
  Gemm to ``<name>_MatMul`` before reading exclusions, so both names are excluded.
- The token embedding (Gather) is weight-only int8.
- A convolutional tower is tried under the plans in order (every conv int8; the first quarter in float, early convs
  being the sensitive ones; weights alone in int8, at fp32's speed since onnxruntime folds them to float at load)
  until the caller's agreement bar is met; one that misses every plan ships fp32.
"""

from __future__ import annotations

import inspect
import logging
import math
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

from dcclip.runtime.bundle import IMAGE_INPUT
from dcclip.runtime.preprocess import ImageDecodeError, Preprocess, decode_image

from .errors import ExportError

__all__ = [
    "CONV_HEAVY_MIN_CONVS",
    "DYNAMIC_OP_TYPES",
    "PLANS",
    "ImageCalibrationReader",
    "TowerQuantizer",
    "calibration_images",
    "choose_method",
    "count_ops",
    "float_nodes",
    "output_tail",
    "quantize_tower",
]

log = logging.getLogger(__name__)

DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Gather")  # Gather: the token-embedding table, weight-only int8
CONV_HEAVY_MIN_CONVS = 4  # a ViT has one Conv (its patch embedding); a CNN has dozens
DEFAULT_CALIB_IMAGES = 256
CALIB_BATCH = 16
EARLY_FLOAT_SHARE = 0.25  # the 'early_fp32' plan keeps the first quarter of a convolutional graph in float
# Plans tried in order for each method until the tower agrees with fp32 well enough (the caller decides).
# 'weights_int8' stores every convolution's weights in int8 and keeps activations in float: the size of int8 without
# activation rounding, at fp32's speed (see ``_weights_only``).
PLANS = {"static_qdq": ("all_int8", "early_fp32", "weights_int8"), "dynamic": ("all_int8",)}


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
    """Up to ``limit`` decodable images taken evenly from the shards of a source; undecodable ones are skipped.

    Shards are often written in the order the data came (one crawl, one scene type, one language per shard), so the
    first ``limit`` images of the first shard can miss whole parts of the distribution the ranges must cover.
    """
    from dcclip.data.shards import shard_paths

    if limit < 1:
        raise ValueError(f"calibration needs at least one image, got limit={limit}")
    paths = shard_paths(source)[:limit]
    per_shard = math.ceil(limit / len(paths))
    images: list[Image.Image] = []
    for path in paths:
        images.extend(_first_images(path, min(per_shard, limit - len(images))))
    return images


def _first_images(path: str, limit: int) -> list[Image.Image]:
    """The first ``limit`` decodable images of one tar shard (read only as far as needed)."""
    from dcclip.data.shards import image_field, iter_tar_samples

    images: list[Image.Image] = []
    for sample in iter_tar_samples(path):
        if len(images) >= limit:
            break
        field = image_field(sample)
        if field is None:
            continue
        try:
            images.append(decode_image(sample[field]))
        except ImageDecodeError as exc:
            log.warning("skipping image %s of %s: %s", sample.get("__key__"), path, exc)
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


class TowerQuantizer:
    """Quantises one fp32 tower under one plan after another, pre-processing and calibrating only once.

    ``calibration`` is needed for a convolutional tower: preprocessed pixels [N, 3, H, W], or PIL images together with
    ``preprocess``. ``method`` overrides the automatic choice ('static_qdq' or 'dynamic'). Files live in ``work_dir``.
    """

    def __init__(
        self,
        fp32_path: Path,
        work_dir: Path,
        calibration: np.ndarray | Iterable[Image.Image] | None = None,
        preprocess: Preprocess | None = None,
        method: str | None = None,
    ) -> None:
        self.method = method or choose_method(fp32_path)
        if self.method not in PLANS:
            raise ValueError(f"method must be one of {sorted(PLANS)}, got {self.method!r}")
        ops = count_ops(fp32_path)
        self.info: dict[str, Any] = {"method": self.method, "conv_nodes": ops["Conv"]}
        self.info["matmul_nodes"] = ops["MatMul"] + ops["Gemm"]
        self.pixels = _calibration_pixels(calibration, preprocess) if self.method == "static_qdq" else None
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.source, self.info["pre_process"] = _pre_process(Path(fp32_path), self.work_dir / "pre.onnx")
        self.model = _name_nodes(self.source)
        self.calibration_cache = self.work_dir / "calibration.json"

    @property
    def plans(self) -> tuple[str, ...]:
        """The plans of this tower's method, least float first."""
        return PLANS[self.method]

    def quantize(self, out_path: Path, plan: str = "all_int8") -> dict[str, Any]:
        """Write the int8 tower under ``plan`` to ``out_path``; returns what was done, for the manifest."""
        if plan not in self.plans:
            raise ValueError(f"plan must be one of {self.plans} for a {self.method} tower, got {plan!r}")
        keep = float_nodes(self.model, plan, dynamic=self.method == "dynamic")
        if plan == "weights_int8":
            details = _weights_only(self.source, Path(out_path), keep)
        elif self.method == "static_qdq":
            details = _static(self.source, Path(out_path), self.pixels, keep, self.calibration_cache)
        else:
            details = _dynamic(self.source, Path(out_path), keep)
        onnx.checker.check_model(str(out_path))
        return {**self.info, "plan": plan, "float_nodes": len(keep), **details}


def quantize_tower(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray | Iterable[Image.Image] | None = None,
    preprocess: Preprocess | None = None,
    method: str | None = None,
    plan: str = "all_int8",
) -> dict[str, Any]:
    """Write the int8 version of one tower under one plan; returns what was done (method, plan, calibration)."""
    with tempfile.TemporaryDirectory(prefix="dcclip-quant-") as tmp:
        return TowerQuantizer(Path(fp32_path), Path(tmp), calibration, preprocess, method).quantize(out_path, plan)


def float_nodes(model: onnx.ModelProto, plan: str, dynamic: bool = False) -> list[str]:
    """Nodes a plan keeps in float: always the output tail; under 'early_fp32' also the graph's first quarter.

    The first quarter is counted in convolutions (graph order is topological, so this is the stem and the first
    stage or two, where quantisation noise has the longest way to grow) and every node before the boundary is kept,
    residual Adds included, so no float conv is fed through a quantise-dequantise pair.
    """
    keep = output_tail(model)
    if dynamic:  # dynamic quantisation turns Gemm G into MatMul 'G_MatMul' (+ Add) before reading the exclusions
        keep += [f"{node.name}_MatMul" for node in model.graph.node if node.name in keep and node.op_type == "Gemm"]
    if plan == "early_fp32":
        convs = [index for index, node in enumerate(model.graph.node) if node.op_type == "Conv"]
        boundary = convs[min(len(convs) - 1, math.ceil(len(convs) * EARLY_FLOAT_SHARE))] if convs else 0
        keep += [node.name for node in model.graph.node[:boundary]]
    return list(dict.fromkeys(keep))


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


def _static(source: Path, out_path: Path, pixels: np.ndarray, keep_float: list[str], cache: Path) -> dict[str, Any]:
    """Static QDQ: per-channel 7-bit weights, uint8 activations, MinMax ranges (see the module notes for why).

    The calibration ranges are kept in ``cache`` (where onnxruntime supports it), so a second plan re-uses them.
    """
    cached = {"calibration_cache_path": str(cache)} if _supports_calibration_cache() else {}
    quantize_static(
        str(source),
        str(out_path),
        ImageCalibrationReader(pixels),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep_float,
        calibrate_method=CalibrationMethod.MinMax,  # its augmented graph returns per-batch min/max, not activations
        **cached,
    )
    return {
        "format": "QDQ",
        "per_channel": True,
        "activation_type": "uint8",
        "weight_type": "int8 (7-bit range)",
        "calibration": {"method": "MinMax", "images": len(pixels)},
    }


def _weights_only(source: Path, out_path: Path, keep_float: list[str]) -> dict[str, Any]:
    """Weight-only int8: each constant Conv weight is stored as int8 codes (symmetric, one scale per output channel,
    the full 8 bits) and rebuilt as ``Cast(codes) * scale``; activations stay float.

    Only the weights' rounding can move a decision. The file is about as small as static int8, and onnxruntime
    folds the constant Cast and Mul into float weights when it loads the graph, so the tower runs at fp32's speed
    with no session option (a DequantizeLinear would be kept and re-run on every call). No calibration is needed.
    """
    model = onnx.load(str(source))
    graph, keep = model.graph, set(keep_float)
    initializers = {init.name: init for init in graph.initializer}
    rebuilt: dict[str, str] = {}  # float weight initializer -> the output of the Cast * scale that replaces it
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = node.input[1] if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or node.name in keep or weight not in initializers:
            continue
        if weight not in rebuilt:
            rebuilt[weight] = _add_int8_weight(graph, initializers[weight], new_nodes)
        node.input[1] = rebuilt[weight]
    _drop_unused_initializers(graph, set(rebuilt))
    nodes = new_nodes + list(graph.node)  # the new nodes read initializers only: first keeps the order topological
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(out_path))
    return {
        "format": "weight-only",
        "per_channel": True,
        "weight_type": "int8 (8-bit, per output channel)",
        "activations": "float",
        "calibration": None,  # nothing to calibrate: activations are not quantised
        "convs": len(rebuilt),
    }


def _add_int8_weight(graph: onnx.GraphProto, weight: onnx.TensorProto, nodes: list[onnx.NodeProto]) -> str:
    """Add ``weight``'s int8 codes and scales to ``graph`` and the Cast and Mul that rebuild it to ``nodes``; returns
    the name of the rebuilt float weight."""
    from onnx import TensorProto, helper, numpy_helper

    codes, scale = _int8_per_channel(numpy_helper.to_array(weight).astype(np.float32))
    name = weight.name
    graph.initializer.extend(
        [numpy_helper.from_array(codes, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale")]
    )
    nodes += [
        helper.make_node("Cast", [f"{name}_int8"], [f"{name}_int8_as_float"], f"{name}_Cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{name}_int8_as_float", f"{name}_scale"], [f"{name}_dequantized"], f"{name}_Scale"),
    ]
    return f"{name}_dequantized"


def _drop_unused_initializers(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the ``candidates`` no node reads any more (a float weight another, float, node still reads stays)."""
    still_read = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name not in candidates or init.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _int8_per_channel(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes in [-127, 127] and one float scale per output channel, shaped [C, 1, ...] to broadcast."""
    flat = weights.reshape(weights.shape[0], -1)
    scale = np.abs(flat).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32).reshape(-1, *([1] * (weights.ndim - 1)))
    codes = np.clip(np.rint(weights / scale), -127, 127).astype(np.int8)
    return codes, scale


def _supports_calibration_cache() -> bool:
    """Whether this onnxruntime's quantize_static can keep calibration ranges in a file (newer versions)."""
    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _dynamic(source: Path, out_path: Path, keep_float: list[str]) -> dict[str, Any]:
    """Dynamic quantisation of MatMul/Gemm with constant weights, weight-only Gather; attention products stay float."""
    quantize_dynamic(
        str(source),
        str(out_path),
        op_types_to_quantize=list(DYNAMIC_OP_TYPES),
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep_float,
        extra_options={"MatMulConstBOnly": True},
    )
    return {"op_types": list(DYNAMIC_OP_TYPES), "weight_type": "int8", "per_channel": False}
