"""``export_bundle``: checkpoint -> validated ONNX bundle (fp32 and/or int8) that the torch-free runtime loads.

The bundle is built in a temporary directory beside ``out`` and renamed into place only when every tower exported,
matched torch and was hashed, so a failed export never leaves a half bundle where a good one was.

int8 is decided per tower: a tower ships int8 only when its int8 graph, run beside the other tower in fp32, agrees with
the all-fp32 bundle on at least ``min_agreement`` of the zero-shot top-1 decisions (and the two int8 towers together
clear it too). A tower that does not ships its fp32 graph as its int8 file, and the manifest (``quantization`` per
tower, ``parity.int8.towers``) and the log say which, why and with what figure.

``precision="auto"`` writes both precisions, then times fp32 and int8 per tower on this machine (export/precision.py)
and records per tower the precision the runtime loads by default (``recommended_precision``, ``precision_choice``):
int8 only where it is faster and agrees.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dcclip import __version__
from dcclip.io import atomic_dir, write_json_atomic
from dcclip.models.students import LoadedStudent, load_student_checkpoint
from dcclip.runtime.bundle import IMAGE_INPUT, IMAGE_OUTPUT, TEXT_INPUTS, TEXT_OUTPUT
from dcclip.runtime.manifest import (
    BUNDLE_FORMAT,
    LOGIT_SCALE_MAX,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    BundleManifest,
    FileEntry,
    build_bundle_manifest,
    check_bundle_manifest,
    file_entry,
    seal_manifest,
)

from .card import seal_with_card
from .errors import ExportError
from .onnx import (
    EXPORTERS,
    ExportRecord,
    export_image_tower,
    export_text_tower,
)
from .precision import Timer, TimingPlan, decide_precisions, machine_info, onnx_timer, time_towers, timing_feeds
from .quantize import DEFAULT_CALIB_IMAGES, TowerQuantizer, calibration_images, choose_method
from .validate import (
    INT8_MIN_AGREEMENT,
    AgreementProbe,
    Encoder,
    MemoEncoder,
    OnnxEncoder,
    TorchEncoder,
    ValidationInputs,
    eval_set_paths,
    failing_towers,
    prepare_inputs,
    probe_captions,
    shard_captions,
    synthetic_images,
)
from .validate import validate_export as measure_parity

__all__ = ["LOGIT_SCALE_MAX", "PRECISION_CHOICES", "export_bundle"]

log = logging.getLogger(__name__)
# --exporter: the exporters tried, in order (the first whose graph checks out and meets fp32 parity is kept)
EXPORTER_CHOICES = {"auto": EXPORTERS, "dynamo": ("dynamo",), "torchscript": ("torchscript",)}

PRECISION_CHOICES = ("fp32", "int8", "both", "auto")
FILES = {("image", "fp32"): "image.onnx", ("text", "fp32"): "text.onnx"}
FILES |= {("image", "int8"): "image.int8.onnx", ("text", "int8"): "text.int8.onnx"}


def export_bundle(
    checkpoint: Path,
    out: Path,
    precision: str = "both",
    calib_shards: str | None = None,
    eval_set: Path | Sequence[Path] | None = None,
    min_agreement: float | None = None,
    timing: TimingPlan | None = None,
    timer: Timer | None = None,
    exporter: str = "auto",
    license: str | None = None,
) -> dict[str, Any]:
    """Export, validate and (for int8) quantise a student checkpoint into the bundle ``out``; returns its manifest.

    ``calib_shards`` (a shard source) gives real images for int8 calibration and parity, and multilingual captions;
    ``eval_set`` (clip_benchmark layout, one or several) gives the zero-shot agreement sample. Without them, drawn
    images and built-in captions in ten languages are used, and the manifest says so. ``min_agreement`` (default
    INT8_MIN_AGREEMENT) is the share of top-1 decisions an int8 tower must keep; a tower below it ships fp32.
    ``precision="auto"`` also times both precisions per tower under ``timing`` (default TimingPlan()) with ``timer``
    (default: onnxruntime on this machine; tests pass their own) and records which one the runtime should load.
    ``exporter``: ``auto`` (torch's dynamo exporter, TorchScript where dynamo fails or misses parity), ``dynamo`` or
    ``torchscript`` only (several times faster on small models, deprecated by torch; parity is checked the same way).
    ``license`` goes into the generated MODEL_CARD.md (unset: the card says so).
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {precision!r}")
    if exporter not in EXPORTER_CHOICES:
        raise ValueError(f"exporter must be one of {tuple(EXPORTER_CHOICES)}, got {exporter!r}")
    min_agreement = INT8_MIN_AGREEMENT if min_agreement is None else min_agreement
    _check_min_agreement(min_agreement)
    out = Path(out)
    _check_replaceable(out)
    loaded = load_student_checkpoint(checkpoint)
    precisions = ["fp32", "int8"] if precision in ("both", "auto") else [precision]
    auto = None
    if precision == "auto":
        timing = timing or TimingPlan()
        auto = (timing, timer or onnx_timer(timing))
    with atomic_dir(out) as staging:
        manifest = _build(
            loaded, staging, precisions, calib_shards, eval_set_paths(eval_set), min_agreement, auto,
            EXPORTER_CHOICES[exporter],
        )  # fmt: skip
        manifest = seal_with_card(staging, manifest, license)  # MODEL_CARD.md from what was just measured
    log.info("bundle written to %s (%s)", out, ", ".join(precisions))
    return manifest


def _check_min_agreement(min_agreement: float) -> None:
    """A number >= 0 (above 1 forces every tower to ship fp32, which tests use); anything else is refused."""
    if isinstance(min_agreement, bool) or not isinstance(min_agreement, int | float) or not min_agreement >= 0:
        raise ValueError(f"min_agreement must be a number >= 0 (a share of top-1 decisions), got {min_agreement!r}")


def _build(
    loaded: LoadedStudent,
    staging: Path,
    precisions: list[str],
    calib_shards: str | None,
    eval_sets: list[Path],
    min_agreement: float,
    auto: tuple[TimingPlan, Timer] | None = None,
    exporters: tuple[str, ...] = EXPORTERS,
) -> dict[str, Any]:
    """Every file of the bundle in ``staging``, then its manifest (with the measured precision choice if ``auto``)."""
    images = calibration_images(calib_shards, DEFAULT_CALIB_IMAGES) if calib_shards else []
    captions = shard_captions(calib_shards) if calib_shards else []
    max_len = text_max_length(loaded)
    inputs = prepare_inputs(loaded.preprocess, images, captions, eval_sets, loaded.langs, image_source="shards")
    tokenizer, reference = loaded.tokenizer, MemoEncoder(TorchEncoder(loaded.model))  # a TorchScript retry re-uses it
    with tempfile.TemporaryDirectory(prefix="dcclip-export-") as work:
        fp32_dir = staging if "fp32" in precisions else Path(work)
        records, parity = _export_fp32(loaded, fp32_dir, max_len, inputs, reference, exporters)
        fp32_files = {role: Path(record.path) for role, record in records.items()}
        quantization, timings = None, {}
        if "int8" in precisions:
            # int8 is judged against the fp32 graphs (which match torch by now), with the same embeddings throughout
            fp32 = MemoEncoder(OnnxEncoder(fp32_files["image"], fp32_files["text"]))
            measure = _timing_hook(loaded, max_len, fp32_files, auto, timings) if auto else None
            quantization, towers = _int8(
                loaded, fp32, fp32_files, staging, Path(work), images, inputs, min_agreement, measure
            )
            candidate = OnnxEncoder(staging / FILES["image", "int8"], staging / FILES["text", "int8"])
            parity["int8"] = measure_parity(fp32, candidate, inputs, tokenizer, max_len, "int8", min_agreement)
            parity["int8"] |= {"reference": "fp32 onnx", "towers": towers}
    _save_tokenizer(loaded, staging)
    parity = {key: value for key, value in parity.items() if key in precisions}
    manifest = _manifest(loaded, staging, precisions, records, quantization, parity, max_len)
    manifest["files"] = _mark_shipped(manifest["files"], quantization)
    caption_source = "shards" if captions else inputs.caption_source  # else "eval_set" or "built-in"
    manifest["validation_inputs"] = {"images": inputs.image_source, "captions": caption_source}
    if auto is not None and quantization is not None:
        manifest |= _precision_choice(timings, quantization, parity["int8"]["towers"], min_agreement, auto[0])
    check_bundle_manifest(manifest, staging / MANIFEST_FILE)  # the fields added since it was built, too
    manifest = seal_manifest(manifest)
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
    captions = probe_captions()
    texts = [captions["en"][0], captions["zh"][1], captions["ar"][2]]
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
    loaded: LoadedStudent,
    out_dir: Path,
    max_len: int,
    inputs: ValidationInputs,
    reference: Encoder,
    exporters: tuple[str, ...] = EXPORTERS,
) -> tuple[dict[str, ExportRecord], dict[str, Any]]:
    """Both towers in fp32, checked against torch; a dynamo graph that fails parity is re-exported by TorchScript
    when ``exporters`` allow it."""
    records = {role: _export_tower(loaded, role, out_dir, max_len, exporters) for role in ("image", "text")}
    try:
        return records, {"fp32": _fp32_parity(records, inputs, loaded, reference, max_len)}
    except ExportError as exc:
        failing = failing_towers(exc.report or {})
        retry = [role for role in failing if records[role].exporter == "dynamo" and "torchscript" in exporters]
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
    reference: Encoder,
    max_len: int,
) -> dict[str, Any]:
    """fp32 parity figures of the exported pair (ExportError below the bar)."""
    candidate = OnnxEncoder(Path(records["image"].path), Path(records["text"].path))
    return measure_parity(reference, candidate, inputs, loaded.tokenizer, max_len, "fp32") | {"reference": "torch"}


def _calibration(images: list[Image.Image], inputs: ValidationInputs, loaded: LoadedStudent) -> tuple[np.ndarray, str]:
    """Calibration pixels: the shard images, else the eval set's images, else drawn scenes (recorded as such)."""
    if images:
        return loaded.preprocess.batch(images).astype(np.float32), "shards"
    if inputs.zero_shot is not None:
        return inputs.zero_shot.pixels, "eval_set"
    log.warning("no --calib-shards: calibrating int8 on drawn images; pass real images for a better int8 model")
    return loaded.preprocess.batch(synthetic_images(DEFAULT_CALIB_IMAGES, seed=1)).astype(np.float32), "synthetic"


def _int8(
    loaded: LoadedStudent,
    fp32: Encoder,
    fp32_files: dict[str, Path],
    staging: Path,
    work: Path,
    images: list[Image.Image],
    inputs: ValidationInputs,
    min_agreement: float,
    measure: Callable[[dict[str, Path]], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Both int8 towers, each tried under its plans until it agrees with fp32; fp32 ships for a tower that never does.

    Returns the per-tower quantisation records (with the decision: requested, shipped, agreement, reason) and the
    agreement figures for ``parity.int8.towers``. ``measure`` sees the int8 files before any fallback replaces one, so
    ``--precision auto`` times the real int8 graphs.
    """
    probe = AgreementProbe(fp32, inputs, loaded.tokenizer, text_max_length(loaded))
    quantization, figures, embeddings = {}, {}, {}
    for role in ("image", "text"):
        quantizer = _guarded(_quantizer, fp32_files[role], work / f"quant-{role}", images, inputs, loaded)
        quantization[role], figures[role], embeddings[role] = _quantize_until_agreed(
            role, quantizer, fp32_files, staging, probe, min_agreement
        )
    figures["combined"] = probe.score(embeddings["image"], embeddings["text"])
    reasons = fallback_reasons(figures, min_agreement)
    if measure is not None:
        measure({role: staging / FILES[role, "int8"] for role in ("image", "text")})
    towers: dict[str, Any] = {"reference": "fp32 onnx", "source": probe.source, "min_top1_agreement": min_agreement}
    for role in ("image", "text"):
        shipped = "fp32" if role in reasons else "int8"
        if shipped == "fp32":
            shutil.copyfile(fp32_files[role], staging / FILES[role, "int8"])
        decision = {"requested": "int8", "shipped": shipped, "top1_agreement": figures[role]["top1_agreement"]}
        quantization[role] |= decision | {"min_top1_agreement": min_agreement, "reason": reasons.get(role)}
        towers[role] = {**figures[role], "shipped": shipped, "reason": reasons.get(role)}
        _log_decision(role, quantization[role], figures[role], min_agreement)
    towers["combined_int8"] = figures["combined"]
    towers["shipped_top1_agreement"] = _shipped_agreement(figures, reasons)
    return quantization, towers


def _timing_hook(
    loaded: LoadedStudent,
    max_len: int,
    fp32_files: dict[str, Path],
    auto: tuple[TimingPlan, Timer],
    timings: dict[str, Any],
) -> Callable[[dict[str, Path]], None]:
    """A callback that times fp32 and int8 of both towers at every planned batch into ``timings``."""
    plan, timer = auto
    captions = [caption for texts in probe_captions().values() for caption in texts]

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return loaded.tokenizer.encode(texts, max_len)

    feeds = {batch: timing_feeds(loaded.preprocess.image_size, encode, captions, batch) for batch in plan.batches}

    def measure(int8_files: dict[str, Path]) -> None:
        files = {role: {"fp32": fp32_files[role], "int8": int8_files[role]} for role in ("image", "text")}
        log.info("timing fp32 and int8 towers at batches %s (%d threads)", list(plan.batches), plan.threads)
        timings.update(time_towers(files, feeds, timer))

    return measure


def _precision_choice(
    timings: dict[str, Any],
    quantization: dict[str, dict[str, Any]],
    towers: dict[str, Any],
    min_agreement: float,
    plan: TimingPlan,
) -> dict[str, Any]:
    """``precision_choice`` and ``recommended_precision`` for the manifest, logged per tower."""
    agreements = {}
    for role in ("image", "text"):
        own = float(quantization[role]["top1_agreement"])
        # a tower sent back to fp32 by the pair's figure (its own clears the bar) is judged by the pair's figure
        paired = quantization[role]["shipped"] == "fp32" and own >= min_agreement
        agreements[role] = float(towers["combined_int8"]["top1_agreement"]) if paired else own
    choice = decide_precisions(timings, agreements, min_agreement, plan, machine_info(plan.threads))
    for role, tower in choice["towers"].items():
        log.info("%s tower: %s", role, tower["reason"])
    return {
        "precision_choice": choice,
        "recommended_precision": {role: tower["choice"] for role, tower in choice["towers"].items()},
    }


def _quantizer(
    fp32_file: Path, work: Path, images: list[Image.Image], inputs: ValidationInputs, loaded: LoadedStudent
) -> TowerQuantizer:
    """A quantiser for one tower, with calibration pixels when its method needs them."""
    if choose_method(fp32_file) != "static_qdq":
        return TowerQuantizer(fp32_file, work)
    pixels, source = _calibration(images, inputs, loaded)
    quantizer = TowerQuantizer(fp32_file, work, pixels)
    quantizer.info["calibration_source"] = source
    return quantizer


def _quantize_until_agreed(
    role: str,
    quantizer: TowerQuantizer,
    fp32_files: dict[str, Path],
    staging: Path,
    probe: AgreementProbe,
    min_agreement: float,
) -> tuple[dict[str, Any], dict[str, Any], list]:
    """Quantise under each plan in turn until the tower (the other one in fp32) clears the bar; the last one tried.

    Returns the quantisation record (with every plan tried and its agreement), the agreement figures and the int8
    tower's embeddings of the agreement sample (for the figure of both towers together).
    """
    out, tried = staging / FILES[role, "int8"], []
    for plan in quantizer.plans:
        info = _guarded(quantizer.quantize, out, plan)
        if role == "image":
            embeddings = probe.embed_images(OnnxEncoder(out, fp32_files["text"]))
            figure = probe.score(images=embeddings)
        else:
            embeddings = probe.embed_texts(OnnxEncoder(fp32_files["image"], out))
            figure = probe.score(texts=embeddings)
        tried.append({"plan": plan, "top1_agreement": figure["top1_agreement"]})
        if figure["top1_agreement"] >= min_agreement:
            break
    source = info.pop("calibration_source", None)
    if info.get("calibration"):  # a weight-only plan calibrates nothing
        info["calibration"]["source"] = source
    return {**info, "plans_tried": tried}, figure, embeddings


def _guarded(action: Callable[..., Any], *args: Any) -> Any:
    """Run a quantisation step; anything but an ExportError becomes one that names the failure."""
    try:
        return action(*args)
    except ExportError:
        raise
    except Exception as exc:  # onnxruntime's quantiser raises assorted types
        raise ExportError(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc


def fallback_reasons(agreement: dict[str, Any], min_agreement: float) -> dict[str, str]:
    """The towers that must ship fp32, each with why: below the bar alone, or the weaker of two whose pair is below.

    Judged per tower (the other in fp32) so that one bad tower does not take the good one with it; then the pair,
    because two towers each just above the bar can together fall below it.
    """
    reasons = {}
    for role in ("image", "text"):
        figure = agreement[role]
        if figure["top1_agreement"] < min_agreement:
            reasons[role] = (
                f"int8 {role} tower agreed with fp32 on {figure['top1_agreement']:.1%} of top-1 decisions "
                f"({figure['disagreements']} of {figure['decisions']} changed{_where(figure)}), "
                f"below the {min_agreement:.1%} bar"
            )
    combined = agreement["combined"]["top1_agreement"]
    if not reasons and combined < min_agreement:
        weaker = min(("image", "text"), key=lambda role: agreement[role]["top1_agreement"])
        reasons[weaker] = (
            f"both towers in int8 agreed with fp32 on {combined:.1%} of top-1 decisions, below the {min_agreement:.1%} "
            f"bar; the {weaker} tower ({agreement[weaker]['top1_agreement']:.1%} alone) is the weaker one"
        )
    return reasons


def _where(figure: dict[str, Any]) -> str:
    """' on SET' naming the sample a figure comes from when there were several (the worst one is the figure)."""
    return f" on {Path(figure['worst_set']).name}" if len(figure.get("per_set", {})) > 1 else ""


def _shipped_agreement(agreement: dict[str, Any], reasons: dict[str, str]) -> float:
    """Agreement of what the int8 bundle ships with all-fp32, from the mixes already measured."""
    if "image" in reasons and "text" in reasons:
        return 1.0
    if reasons:
        return float(agreement["text" if "image" in reasons else "image"]["top1_agreement"])
    return float(agreement["combined"]["top1_agreement"])


def _log_decision(role: str, record: dict[str, Any], figure: dict[str, Any], min_agreement: float) -> None:
    """One console line per tower: how often int8 changed a zero-shot decision, and what ships."""
    if record["shipped"] == "fp32":
        log.warning("%s tower ships fp32 in the int8 bundle: %s", role, record["reason"])
        return
    log.info(
        "%s tower int8 (%s, plan %s): top-1 agreement with fp32 %.1f%% (%d of %d decisions changed%s; bar %.1f%%)",
        role,
        record["method"],
        record["plan"],
        100 * figure["top1_agreement"],
        figure["disagreements"],
        figure["decisions"],
        _where(figure),
        100 * min_agreement,
    )


def _mark_shipped(files: dict[str, dict[str, Any]], quantization: dict[str, dict[str, Any]] | None) -> dict:
    """Give every int8 file entry the precision its graph really computes in ('shipped_precision')."""
    for entry in files.values():
        if entry.get("precision") == "int8" and quantization is not None:
            entry["shipped_precision"] = quantization[entry["role"]]["shipped"]
    return files


def _manifest(
    loaded: LoadedStudent,
    staging: Path,
    precisions: list[str],
    records: dict[str, ExportRecord],
    quantization: dict[str, dict[str, Any]] | None,
    parity: dict[str, Any],
    max_len: int,
) -> BundleManifest:
    """The manifest: what the runtime needs to use the bundle, and what anyone needs to trust it."""
    model = loaded.model
    return build_bundle_manifest(
        dcclip_version=__version__,
        embed_dim=int(model.arch["embed_dim"]),
        logit_scale=min(math.exp(float(model.logit_scale.detach())), logit_scale_cap(loaded.config)),
        image_preprocess=loaded.preprocess.to_dict(),
        text_max_length=max_len,
        pad_id=int(loaded.tokenizer.pad_id),
        languages=list(loaded.langs),
        precisions=precisions,
        io={
            "image": {"inputs": [IMAGE_INPUT], "output": IMAGE_OUTPUT, "normalized": True},
            "text": {"inputs": list(TEXT_INPUTS), "output": TEXT_OUTPUT, "normalized": True},
        },
        files=_file_entries(staging, precisions),
        exporter={role: _record_dict(record, staging) for role, record in records.items()},
        quantization=quantization,
        parity=parity,
        source={
            "checkpoint": str(loaded.path),
            "step": loaded.config.get("step"),
            "student": model.arch.get("name"),
            "config": loaded.config,
        },
    )


def logit_scale_cap(config: dict[str, Any]) -> float:
    """The cap the run trained under (its ``loss.logit_scale_max``, in the checkpoint's run config), else the default:
    a bundle's scale never exceeds what training allowed."""
    loss = ((config.get("run_config") or {}).get("loss")) or {}
    cap = loss.get("logit_scale_max", LOGIT_SCALE_MAX)
    if isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap) or cap <= 0:
        raise ExportError(f"checkpoint config run_config.loss.logit_scale_max is {cap!r}; expected a positive number")
    return float(cap)


def _file_entries(staging: Path, precisions: list[str]) -> dict[str, FileEntry]:
    """Role, precision, sha256 and size of every model file and the tokenizer."""
    entries = {}
    for (role, precision), name in FILES.items():
        if precision in precisions:
            entries[name] = file_entry(staging / name, role, precision)
    entries[TOKENIZER_FILE] = file_entry(staging / TOKENIZER_FILE, "tokenizer", None)
    return entries


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
