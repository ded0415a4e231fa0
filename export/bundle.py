"""``export_bundle``: checkpoint -> validated ONNX bundle (fp32 and/or int8) that the torch-free runtime loads.

The bundle is built in a temporary directory beside ``out`` and renamed into place only when every tower exported,
matched torch and was hashed, so a failed export never leaves a half bundle where a good one was.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dcclip import __version__
from dcclip.data.shards import write_json_atomic
from dcclip.models.students import LoadedStudent, load_student_checkpoint
from dcclip.runtime.bundle import BUNDLE_FORMAT, FORMAT_VERSION, MANIFEST_FILE, TOKENIZER_FILE, sha256_file

from .errors import ExportError
from .onnx import (
    EXPORTERS,
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    TEXT_INPUTS,
    TEXT_OUTPUT,
    ExportRecord,
    export_image_tower,
    export_text_tower,
)
from .quantize import DEFAULT_CALIB_IMAGES, calibration_images, choose_method, quantize_tower
from .validate import (
    CAPTIONS,
    OnnxEncoder,
    TorchEncoder,
    ValidationInputs,
    failing_towers,
    prepare_inputs,
    shard_captions,
    synthetic_images,
)
from .validate import validate_export as measure_parity

__all__ = ["LOGIT_SCALE_MAX", "PRECISION_CHOICES", "export_bundle"]

log = logging.getLogger(__name__)

PRECISION_CHOICES = ("fp32", "int8", "both")
LOGIT_SCALE_MAX = 100.0
FILES = {("image", "fp32"): "image.onnx", ("text", "fp32"): "text.onnx"}
FILES |= {("image", "int8"): "image.int8.onnx", ("text", "int8"): "text.int8.onnx"}


def export_bundle(
    checkpoint: Path,
    out: Path,
    precision: str = "both",
    calib_shards: str | None = None,
    eval_set: Path | None = None,
) -> dict[str, Any]:
    """Export, validate and (for int8) quantise a student checkpoint into the bundle ``out``; returns its manifest.

    ``calib_shards`` (a shard source) gives real images for int8 calibration and parity, and multilingual captions;
    ``eval_set`` (clip_benchmark layout) gives the zero-shot agreement sample. Without them, drawn images and built-in
    captions in ten languages are used, and the manifest says so.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {precision!r}")
    out = Path(out)
    _check_replaceable(out)
    loaded = load_student_checkpoint(checkpoint)
    precisions = ["fp32", "int8"] if precision == "both" else [precision]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = _build(loaded, staging, precisions, calib_shards, Path(eval_set) if eval_set else None)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("bundle written to %s (%s)", out, ", ".join(precisions))
    return manifest


def _build(
    loaded: LoadedStudent, staging: Path, precisions: list[str], calib_shards: str | None, eval_set: Path | None
) -> dict[str, Any]:
    """Every file of the bundle in ``staging``, then its manifest."""
    images = calibration_images(calib_shards, DEFAULT_CALIB_IMAGES) if calib_shards else []
    captions = shard_captions(calib_shards) if calib_shards else []
    max_len = text_max_length(loaded)
    inputs = prepare_inputs(loaded.preprocess, images, captions, eval_set, loaded.langs, image_source="shards")
    tokenizer, reference = loaded.tokenizer, TorchEncoder(loaded.model)
    with tempfile.TemporaryDirectory(prefix="dcclip-export-") as work:
        fp32_dir = staging if "fp32" in precisions else Path(work)
        records, parity = _export_fp32(loaded, fp32_dir, max_len, inputs, reference)
        image_fp32, text_fp32 = Path(records["image"].path), Path(records["text"].path)
        quantization = None
        if "int8" in precisions:
            static = choose_method(image_fp32) == "static_qdq"
            calib, calib_source = _calibration(images, inputs, loaded) if static else (None, None)
            quantization = _quantize(image_fp32, text_fp32, staging, calib, calib_source)
            candidate = OnnxEncoder(staging / FILES["image", "int8"], staging / FILES["text", "int8"])
            parity["int8"] = measure_parity(reference, candidate, inputs, tokenizer, max_len, "int8")
    _save_tokenizer(loaded, staging)
    parity = {key: value for key, value in parity.items() if key in precisions}
    manifest = _manifest(loaded, staging, precisions, records, quantization, parity, max_len)
    manifest["validation_inputs"] = {"images": inputs.image_source, "captions": "shards" if captions else "built-in"}
    write_json_atomic(staging / MANIFEST_FILE, manifest)
    return manifest


def _save_tokenizer(loaded: LoadedStudent, staging: Path) -> None:
    """Write tokenizer.json and make sure the runtime will read back the same pad id the student was trained with."""
    from dcclip.models.tokenizers import TextTokenizer

    saved = TextTokenizer.from_path(loaded.tokenizer.save(staging))
    if saved.pad_id != loaded.tokenizer.pad_id:
        raise ExportError(
            f"tokenizer.json reads back with pad id {saved.pad_id}, the student uses {loaded.tokenizer.pad_id}: "
            "name the pad token in the tokenizer (e.g. '<pad>') before exporting"
        )


def text_max_length(loaded: LoadedStudent) -> int:
    """Tokens per text the bundle accepts: the checkpoint's setting, capped by the text tower's position table."""
    return int(min(loaded.max_text_len, loaded.model.text.max_length))


def _text_sample(loaded: LoadedStudent, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Trace inputs for the text tower: real captions, batch >= 2 and a length >= 2 that differs from the batch."""
    texts = [CAPTIONS["en"][0], CAPTIONS["zh"][1], CAPTIONS["ar"][2]]
    ids, mask = loaded.tokenizer.encode(texts, max_len)
    length = max(ids.shape[1], 2)
    if length == len(texts):  # equal sizes could be unified into one symbol by the tracer
        if length < max_len:
            length += 1
        else:
            ids, mask = ids[:2], mask[:2]
    pad = length - ids.shape[1]
    ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=loaded.tokenizer.pad_id)
    return ids, np.pad(mask, ((0, 0), (0, pad)), constant_values=0)


def _export_tower(
    loaded: LoadedStudent, role: str, out_dir: Path, max_len: int, exporters: tuple[str, ...] = EXPORTERS
) -> ExportRecord:
    """One tower as an fp32 ONNX file in ``out_dir``."""
    path = out_dir / FILES[role, "fp32"]
    if role == "image":
        return export_image_tower(loaded.model.image, path, loaded.preprocess.image_size, exporters=exporters)
    ids, mask = _text_sample(loaded, max_len)
    return export_text_tower(loaded.model.text, path, ids, mask, exporters=exporters)


def _export_fp32(
    loaded: LoadedStudent, out_dir: Path, max_len: int, inputs: ValidationInputs, reference: TorchEncoder
) -> tuple[dict[str, ExportRecord], dict[str, Any]]:
    """Both towers in fp32, checked against torch; a dynamo graph that fails parity is re-exported by TorchScript."""
    records = {role: _export_tower(loaded, role, out_dir, max_len) for role in ("image", "text")}
    try:
        return records, {"fp32": _fp32_parity(records, inputs, loaded, reference, max_len)}
    except ExportError as exc:
        retry = [role for role in failing_towers(exc.report or {}) if records[role].exporter == "dynamo"]
        if exc.report is None or not retry:
            raise
        reason = f"dynamo graph failed fp32 parity: {exc}"
        log.warning("%s; retrying %s with the TorchScript exporter", reason, retry)
    for role in retry:
        record = _export_tower(loaded, role, out_dir, max_len, exporters=("torchscript",))
        records[role] = replace(record, fallback_reason=reason)
    return records, {"fp32": _fp32_parity(records, inputs, loaded, reference, max_len)}


def _fp32_parity(
    records: dict[str, ExportRecord],
    inputs: ValidationInputs,
    loaded: LoadedStudent,
    reference: TorchEncoder,
    max_len: int,
) -> dict[str, Any]:
    """fp32 parity figures of the exported pair (ExportError below the bar)."""
    candidate = OnnxEncoder(Path(records["image"].path), Path(records["text"].path))
    return measure_parity(reference, candidate, inputs, loaded.tokenizer, max_len, "fp32")


def _calibration(images: list[Image.Image], inputs: ValidationInputs, loaded: LoadedStudent) -> tuple[np.ndarray, str]:
    """Calibration pixels: the shard images, else the eval set's images, else drawn scenes (recorded as such)."""
    if images:
        return loaded.preprocess.batch(images).astype(np.float32), "shards"
    if inputs.zero_shot is not None:
        return inputs.zero_shot.pixels, "eval_set"
    log.warning("no --calib-shards: calibrating int8 on drawn images; pass real images for a better int8 model")
    return loaded.preprocess.batch(synthetic_images(DEFAULT_CALIB_IMAGES, seed=1)).astype(np.float32), "synthetic"


def _quantize(
    image_fp32: Path, text_fp32: Path, staging: Path, calib: np.ndarray | None, calib_source: str | None
) -> dict[str, dict[str, Any]]:
    """int8 versions of both towers; the method per tower is chosen from its graph and recorded."""
    try:
        image = quantize_tower(image_fp32, staging / FILES["image", "int8"], calibration=calib)
        text = quantize_tower(text_fp32, staging / FILES["text", "int8"])
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc
    for info in (image, text):
        if "calibration" in info:
            info["calibration"]["source"] = calib_source
    return {"image": image, "text": text}


def _manifest(
    loaded: LoadedStudent,
    staging: Path,
    precisions: list[str],
    records: dict[str, ExportRecord],
    quantization: dict[str, dict[str, Any]] | None,
    parity: dict[str, Any],
    max_len: int,
) -> dict[str, Any]:
    """The manifest: what the runtime needs to use the bundle, and what anyone needs to trust it."""
    model = loaded.model
    return {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "dcclip_version": __version__,
        "embed_dim": int(model.arch["embed_dim"]),
        "logit_scale": min(math.exp(float(model.logit_scale.detach())), LOGIT_SCALE_MAX),
        "image_preprocess": loaded.preprocess.to_dict(),
        "text_max_length": max_len,
        "pad_id": int(loaded.tokenizer.pad_id),
        "languages": list(loaded.langs),
        "precisions": precisions,
        "io": {
            "image": {"inputs": [IMAGE_INPUT], "output": IMAGE_OUTPUT, "normalized": True},
            "text": {"inputs": list(TEXT_INPUTS), "output": TEXT_OUTPUT, "normalized": True},
        },
        "files": _file_entries(staging, precisions),
        "exporter": {role: _record_dict(record, staging) for role, record in records.items()},
        "quantization": quantization,
        "parity": parity,
        "source": {
            "checkpoint": str(loaded.path),
            "step": loaded.config.get("step"),
            "student": model.arch.get("name"),
            "config": loaded.config,
        },
    }


def _file_entries(staging: Path, precisions: list[str]) -> dict[str, dict[str, Any]]:
    """Role, precision, sha256 and size of every model file and the tokenizer."""
    entries = {}
    for (role, precision), name in FILES.items():
        if precision in precisions:
            entries[name] = _file_entry(staging / name, role, precision)
    entries[TOKENIZER_FILE] = _file_entry(staging / TOKENIZER_FILE, "tokenizer", None)
    return entries


def _file_entry(path: Path, role: str, precision: str | None) -> dict[str, Any]:
    """One file's manifest entry."""
    return {"role": role, "precision": precision, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _record_dict(record: ExportRecord, staging: Path) -> dict[str, Any]:
    """The export record with the path made relative (the fp32 file may not be in the bundle at all)."""
    data = record.to_dict()
    path = Path(data.pop("path"))
    data["file"] = path.name if path.parent == staging else None
    return data


def _is_bundle(path: Path) -> bool:
    """Whether a directory holds a dcclip bundle manifest (so replacing it loses nothing else)."""
    try:
        return json.loads((path / MANIFEST_FILE).read_text("utf-8")).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_replaceable(out: Path) -> None:
    """``out`` may be absent, an empty directory or an earlier bundle; anything else is refused, not overwritten."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory; choose another output path")
    if any(out.iterdir()) and not _is_bundle(out):
        raise ExportError(f"{out} is a non-empty directory that is not a dcclip bundle; refusing to replace it")


def _publish(staging: Path, out: Path) -> None:
    """Move the finished bundle into place: a rename, with any previous bundle swapped out first."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
