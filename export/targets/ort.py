"""ORT target: ``.ort`` models for onnxruntime's mobile packages and the reduced-operator config for a minimal build.

``build(bundle, out)`` converts every model file of a verified bundle with onnxruntime's own converter
(``onnxruntime.tools.convert_onnx_models_to_ort``, fixed optimisations for ARM CPUs, so no x86-only NCHWc layout is
baked in), writes ``required_operators.config`` listing the operators of all of them (what
``build.sh --minimal_build --include_ops_by_config`` takes), copies tokenizer.json, manifest.json and the model card,
and checks every ``.ort`` file against its ``.onnx`` in Python onnxruntime (which reads ORT format) on real inputs:
rendered toy-world images through the bundle's preprocessing, and the world's class prompts in the bundle's languages
through the runtime's tokenizer. The figures go to ``parity.json``, the summary and README.md (which also carries the
build commands and Kotlin / Swift snippets whose constants are read from the manifest). A target whose ``.ort``
files do not match is not written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from dcclip import __version__
from dcclip.io import atomic_dir, write_json_atomic, write_text_atomic
from dcclip.runtime.bundle import (
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    MANIFEST_FILE,
    TEXT_INPUTS,
    TEXT_OUTPUT,
    TOKENIZER_FILE,
    bundle_file,
    shipped_precision,
    verify_bundle,
)
from dcclip.runtime.preprocess import Preprocess, decode_image
from dcclip.runtime.prompts import class_embeddings, fill_templates, l2_normalize
from dcclip.runtime.tokenizer import TextTokenizer

from ..errors import ExportError
from .ort_readme import CARD_FILE, OPS_CONFIG, PARITY_FILE, ROLES, VECTORS_FILE, readme

__all__ = ["MIN_COSINE", "OPS_CONFIG", "PARITY_FILE", "TARGET_FORMAT", "build", "ort_name"]

log = logging.getLogger(__name__)

TARGET_FORMAT = "dcclip-ort-target"
README_FILE = "README.md"
MIN_COSINE = {"fp32": 0.9999, "int8": 0.999}  # per embedding, .ort vs .onnx of the same file: a conversion bar
DEFAULT_IMAGES = 45  # rendered eval images of the toy world (45 of its 90 colour-shape classes)


def ort_name(onnx_name: str) -> str:
    """``image.int8.onnx`` -> ``image.int8.ort``."""
    return onnx_name.removesuffix(".onnx") + ".ort"


def build(bundle: Path, out: Path, images: int = DEFAULT_IMAGES) -> dict[str, Any]:
    """Write the ORT target of ``bundle`` into ``out`` (replaced whole, atomically); returns its summary."""
    bundle, out = Path(bundle), Path(out)
    manifest = verify_bundle(bundle)  # BundleError naming the file for a missing or altered bundle
    _check_replaceable(out)
    with atomic_dir(out) as staging, tempfile.TemporaryDirectory(prefix="dcclip-ort-") as work:
        files = _convert(bundle, manifest, staging, Path(work))
        inputs = parity_inputs(bundle, manifest, Path(work), images)
        parity = {p: tower_parity(bundle, staging, manifest, p, inputs) for p in manifest["precisions"]}
        _check_parity(parity)
        _copy_bundle_files(bundle, staging)
        summary = _summary(bundle, manifest, staging, files, inputs, parity)
        write_json_atomic(staging / PARITY_FILE, summary)
        write_json_atomic(staging / VECTORS_FILE, tokenizer_vectors(inputs))
        write_text_atomic(staging / README_FILE, readme(manifest, summary))
    log.info("ORT target written to %s", out)
    return summary


# --- conversion ----------------------------------------------------------------------------------------------------
def _model_files(manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{precision: {role: bundle file name}} for every precision the bundle has."""
    return {p: {role: bundle_file(manifest, role, p) for role in ROLES} for p in manifest["precisions"]}


def _convert(bundle: Path, manifest: dict[str, Any], staging: Path, work: Path) -> dict[str, dict[str, str]]:
    """Every model file as ``.ort`` in ``staging`` plus the operator config of all of them; returns the ort names."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    names = _model_files(manifest)
    source, converted = work / "onnx", work / "ort"
    source.mkdir()
    for name in {name for roles in names.values() for name in roles.values()}:
        shutil.copyfile(bundle / name, source / name)
    messages, quiet = io.StringIO(), logging.getLogger("ort_format_model.utils")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(messages):  # the converter prints every step
            convert_onnx_models_to_ort(
                source, output_dir=converted, optimization_styles=[OptimizationStyle.Fixed], target_platform="arm"
            )
    except Exception as exc:  # onnxruntime raises assorted types
        raise ExportError(f"{bundle}: onnxruntime could not convert the models to ORT format: {exc}") from exc
    finally:
        quiet.setLevel(level)
    log.debug("%s", messages.getvalue())
    for path in converted.glob("*.ort"):
        shutil.copyfile(path, staging / path.name)
    _write_ops_config(converted / OPS_CONFIG, staging / OPS_CONFIG)
    return {p: {role: ort_name(name) for role, name in roles.items()} for p, roles in names.items()}


def _write_ops_config(generated: Path, target: Path) -> None:
    """The converter's config with its comment lines (temporary paths) replaced by the plain ``.ort`` names."""
    lines = generated.read_text("utf-8").splitlines()
    models = sorted(Path(line.removeprefix("# - ")).name for line in lines if line.startswith("# - "))
    header = ["# Operators of the dcclip ORT target, for build.sh --include_ops_by_config; from:"]
    body = [line for line in lines if line and not line.startswith("#")]
    write_text_atomic(target, "\n".join([*header, *(f"# - {m}" for m in models), *body]) + "\n")


def read_ops_config(path: Path) -> dict[str, set[str]]:
    """``{domain;opset: {op, ...}}`` from a reduced-operator config (type annotations, if any, left out)."""
    ops: dict[str, set[str]] = {}
    for line in Path(path).read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            domain, opset, names = line.split(";", 2)
            ops.setdefault(f"{domain};{opset}", set()).update(n.split("{", 1)[0] for n in names.split(","))
    return ops


# --- parity inputs -------------------------------------------------------------------------------------------------
@dataclass
class ParityInputs:
    """Preprocessed pixels with their class labels, and per language the tokenised class prompts."""

    pixels: np.ndarray
    labels: np.ndarray
    prompts: dict[str, list[str]]  # lang -> prompts, class-major
    tokens: dict[str, tuple[np.ndarray, np.ndarray]]  # lang -> (input_ids, attention_mask)
    classes: int
    source: str


def parity_inputs(bundle: Path, manifest: dict[str, Any], work: Path, images: int) -> ParityInputs:
    """Toy-world eval images (bundle preprocessing) and its class prompts (runtime tokenizer) in the bundle's langs."""
    from dcclip.data.world import generate_world

    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive int, got {images!r}")
    world = work / "world"
    generate_world(world, train_samples=1, eval_samples=images, image_size=128, seed=0)
    shapes = world / "eval" / "shapes"
    preprocess = Preprocess.from_config(manifest["image_preprocess"])
    pairs = list(_tar_samples(shapes / "test"))
    pixels = np.stack([preprocess(decode_image(jpg)) for jpg, _ in pairs]).astype(np.float32)
    names = json.loads((shapes / "classnames.json").read_text("utf-8"))
    templates = json.loads((shapes / "templates.json").read_text("utf-8"))
    langs = [lang for lang in manifest.get("languages") or [] if lang in names] or ["en"]
    tokenizer = TextTokenizer.from_path(bundle / TOKENIZER_FILE)
    prompts = {lang: fill_templates(names[lang], templates[lang]) for lang in langs}
    tokens = {lang: tokenizer.encode(texts, int(manifest["text_max_length"])) for lang, texts in prompts.items()}
    source = f"toy world (seed 0): {len(pairs)} rendered shape images, {len(names['en'])} classes"
    return ParityInputs(pixels, np.array([c for _, c in pairs]), prompts, tokens, len(names["en"]), source)


def _tar_samples(folder: Path) -> Iterator[tuple[bytes, int]]:
    """(jpeg bytes, class index) of every sample of the clip_benchmark tar shards in ``folder``."""
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(n for n in members if n.endswith(".jpg")):
                label = tar.extractfile(members[name.removesuffix(".jpg") + ".cls"]).read()
                yield tar.extractfile(members[name]).read(), int(label.decode().strip())


def tokenizer_vectors(inputs: ParityInputs, per_lang: int = 3) -> dict[str, Any]:
    """A few prompts per language with the ids the runtime's tokenizer gives them: a check for a phone tokenizer."""
    vectors = []
    for lang, texts in inputs.prompts.items():
        ids, mask = inputs.tokens[lang]
        for row in range(min(per_lang, len(texts))):
            vectors.append({"lang": lang, "text": texts[row], "input_ids": ids[row][mask[row] == 1].tolist()})
    return {
        "tokenizer": TOKENIZER_FILE,
        "note": "ids before padding, from dcclip.runtime's tokenizer",
        "texts": vectors,
    }


# --- parity --------------------------------------------------------------------------------------------------------
def _session(path: Path) -> ort.InferenceSession:
    """A one-thread CPU session (small batches; the machine is shared)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _embed(image: Path, text: Path, inputs: ParityInputs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Image embeddings of the pixels and text embeddings of each language's prompts with one pair of files."""
    image_session, text_session = _session(image), _session(text)
    images = np.concatenate(
        [
            image_session.run([IMAGE_OUTPUT], {IMAGE_INPUT: inputs.pixels[i : i + 16]})[0]
            for i in range(0, len(inputs.pixels), 16)
        ]
    )
    texts = {}
    for lang, (ids, mask) in inputs.tokens.items():
        chunks = [
            text_session.run([TEXT_OUTPUT], {TEXT_INPUTS[0]: ids[i : i + 64], TEXT_INPUTS[1]: mask[i : i + 64]})[0]
            for i in range(0, len(ids), 64)
        ]
        texts[lang] = np.concatenate(chunks)
    return images, texts


def _closeness(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max absolute difference and min cosine similarity, row by row."""
    cosine = np.sum(l2_normalize(reference) * l2_normalize(candidate), axis=1)
    return {"max_abs_diff": float(np.max(np.abs(reference - candidate))), "min_cosine": float(np.min(cosine))}


def _top1(images: np.ndarray, texts: np.ndarray, classes: int) -> np.ndarray:
    """Zero-shot top-1 class per image (prompt ensemble, as the runtime classifies)."""
    return np.argmax(images @ class_embeddings(texts, classes).T, axis=1)


def tower_parity(
    bundle: Path, target: Path, manifest: dict[str, Any], precision: str, inputs: ParityInputs
) -> dict[str, Any]:
    """``.ort`` vs ``.onnx`` of one precision: per tower closeness, and the zero-shot top-1 agreement per language."""
    names = {role: bundle_file(manifest, role, precision) for role in ROLES}
    ref_images, ref_texts = _embed(bundle / names["image"], bundle / names["text"], inputs)
    ort_images, ort_texts = _embed(target / ort_name(names["image"]), target / ort_name(names["text"]), inputs)
    all_ref, all_ort = np.concatenate(list(ref_texts.values())), np.concatenate(list(ort_texts.values()))
    agreement, accuracy = {}, {}
    for lang in inputs.tokens:
        ref_top1 = _top1(ref_images, ref_texts[lang], inputs.classes)
        ort_top1 = _top1(ort_images, ort_texts[lang], inputs.classes)
        agreement[lang] = float(np.mean(ref_top1 == ort_top1))
        accuracy[lang] = {
            "onnx": float(np.mean(ref_top1 == inputs.labels)),
            "ort": float(np.mean(ort_top1 == inputs.labels)),
        }
    return {
        "image": {**_closeness(ref_images, ort_images), "file": ort_name(names["image"]), "vectors": len(ref_images)},
        "text": {**_closeness(all_ref, all_ort), "file": ort_name(names["text"]), "vectors": len(all_ref)},
        "shipped": {role: shipped_precision(manifest, role, precision) for role in ROLES},
        "top1_agreement": {"min": min(agreement.values()), "per_lang": agreement},
        "top1_accuracy": accuracy,
        "min_cosine_bar": MIN_COSINE[precision],
    }


def _check_parity(parity: dict[str, dict[str, Any]]) -> None:
    """ExportError naming the tower and figure when an ``.ort`` file drifts from its ``.onnx`` past the bar."""
    for precision, figures in parity.items():
        for role in ROLES:
            cosine = figures[role]["min_cosine"]
            if cosine < MIN_COSINE[precision]:
                raise ExportError(
                    f"{figures[role]['file']}: min cosine {cosine:.6f} against the .onnx is below the "
                    f"{MIN_COSINE[precision]} bar (max abs diff {figures[role]['max_abs_diff']:.3g})",
                    report=parity,
                )


# --- output --------------------------------------------------------------------------------------------------------
def _copy_bundle_files(bundle: Path, staging: Path) -> None:
    """tokenizer.json, manifest.json and (when the bundle has one) MODEL_CARD.md, byte for byte."""
    for name in (TOKENIZER_FILE, MANIFEST_FILE, CARD_FILE):
        if (bundle / name).is_file():
            shutil.copyfile(bundle / name, staging / name)


def _summary(
    bundle: Path,
    manifest: dict[str, Any],
    staging: Path,
    files: dict[str, dict[str, str]],
    inputs: ParityInputs,
    parity: dict[str, Any],
) -> dict[str, Any]:
    """What was written and measured (also parity.json)."""
    sizes = {path.name: path.stat().st_size for path in sorted(staging.glob("*.ort"))}
    return {
        "format": TARGET_FORMAT,
        "target": "ort",
        "dcclip_version": __version__,
        "onnxruntime_version": ort.__version__,
        "bundle": str(bundle),
        "bundle_manifest_sha256": manifest.get("manifest_sha256"),
        "conversion": {"optimization_style": "Fixed", "target_platform": "arm", "ops_config": OPS_CONFIG},
        "files": files,
        "bytes": sizes,
        "ops": {key: sorted(ops) for key, ops in read_ops_config(staging / OPS_CONFIG).items()},
        "parity_inputs": {"images": inputs.source, "prompts": {lang: len(p) for lang, p in inputs.prompts.items()}},
        "parity": parity,
    }


def _is_target(path: Path) -> bool:
    """Whether ``path`` holds an earlier ORT target (so replacing it loses nothing else)."""
    try:
        return json.loads((path / PARITY_FILE).read_text("utf-8")).get("format") == TARGET_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_replaceable(out: Path) -> None:
    """``out`` may be absent, empty or an earlier ORT target; anything else is refused, not overwritten."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not _is_target(out):
        raise ExportError(f"{out} is a non-empty directory that is not a dcclip ORT target; refusing to replace it")
