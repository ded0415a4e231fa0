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

__all__ = ["MIN_COSINE", "OPS_CONFIG", "PARITY_FILE", "TARGET_FORMAT", "build", "ort_name"]

log = logging.getLogger(__name__)

TARGET_FORMAT = "dcclip-ort-target"
OPS_CONFIG = "required_operators.config"
PARITY_FILE = "parity.json"
README_FILE = "README.md"
CARD_FILE = "MODEL_CARD.md"
VECTORS_FILE = "tokenizer_vectors.json"
MIN_COSINE = {"fp32": 0.9999, "int8": 0.999}  # per embedding, .ort vs .onnx of the same file: a conversion bar
DEFAULT_IMAGES = 45  # rendered eval images of the toy world (45 of its 90 colour-shape classes)
ROLES = ("image", "text")


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


# --- README --------------------------------------------------------------------------------------------------------
def readme(manifest: dict[str, Any], summary: dict[str, Any]) -> str:
    """README.md of the target: files, measured parity, minimal-build commands, app snippets, tokenisation."""
    return (
        "\n\n".join(
            [
                "# dcclip ORT target (onnxruntime mobile)",
                _files_section(summary),
                _parity_section(summary),
                _build_section(),
                _constants_section(manifest),
                _kotlin_section(manifest, summary),
                _swift_section(manifest, summary),
                _tokenizer_section(manifest),
                _other_converters_section(),
            ]
        )
        + "\n"
    )


def _files_section(summary: dict[str, Any]) -> str:
    rows = [f"| `{name}` | {size:,} |" for name, size in summary["bytes"].items()]
    ops = sum(len(v) for v in summary["ops"].values())
    return "\n".join(
        [
            f"Written by `dcclip target ort` (dcclip {summary['dcclip_version']}, onnxruntime "
            f"{summary['onnxruntime_version']}) from the bundle's ONNX files with onnxruntime's converter "
            "(fixed optimisations, target platform arm).",
            "",
            "| file | bytes |",
            "|---|---:|",
            *rows,
            "",
            f"`{OPS_CONFIG}` lists the {ops} operators all these models use; `{PARITY_FILE}` holds every figure below; "
            f"`{VECTORS_FILE}` gives prompts with their token ids; `{MANIFEST_FILE}`, `{TOKENIZER_FILE}` "
            f"(and `{CARD_FILE}`) are the bundle's own.",
        ]
    )


def _parity_section(summary: dict[str, Any]) -> str:
    lines = [
        "## Parity: .ort against .onnx (Python onnxruntime, CPU, this machine)",
        "",
        f"Inputs: {summary['parity_inputs']['images']}; prompts of those classes in "
        f"{', '.join(summary['parity_inputs']['prompts'])}, tokenised by dcclip.runtime's tokenizer.",
        "",
        "| precision | tower | max abs diff | min cosine | zero-shot top-1 agreement (min over langs) |",
        "|---|---|---:|---:|---:|",
    ]
    for precision, figures in summary["parity"].items():
        for role in ROLES:
            tower = figures[role]
            shipped = figures["shipped"][role]
            label = precision if shipped == precision else f"{precision} (ships {shipped})"
            agreement = f"{figures['top1_agreement']['min']:.1%}"
            lines.append(
                f"| {label} | {role} | {tower['max_abs_diff']:.2e} | {tower['min_cosine']:.6f} | {agreement} |"
            )
    lines += ["", "Not measured: speed and memory on a phone, and the app's own image decoding and resizing."]
    return "\n".join(lines)


def _build_section() -> str:
    return "\n".join(
        [
            "## A minimal onnxruntime build with only these operators",
            "",
            "From an onnxruntime source checkout of the version that converted these files (ORT format files are "
            "read by the same or a newer runtime). Flags as in onnxruntime's custom-build documentation at the time "
            "of writing; see onnxruntime's custom build docs for your version before relying on them.",
            "",
            "```sh",
            "# Android (arm64-v8a), Java/Kotlin API included",
            "./build.sh --config MinSizeRel --android \\",
            "  --android_sdk_path $ANDROID_HOME --android_ndk_path $ANDROID_NDK \\",
            "  --android_abi arm64-v8a --android_api 24 --build_java --build_shared_lib --skip_tests \\",
            f"  --minimal_build --disable_ml_ops --disable_exceptions --include_ops_by_config /path/to/{OPS_CONFIG}",
            "",
            "# iOS (arm64 device), Objective-C/Swift API in an Apple framework",
            "./build.sh --config MinSizeRel --use_xcode --ios --apple_sysroot iphoneos --osx_arch arm64 \\",
            "  --apple_deploy_target 15.1 --build_apple_framework --skip_tests \\",
            f"  --minimal_build --disable_ml_ops --disable_exceptions --include_ops_by_config /path/to/{OPS_CONFIG}",
            "```",
            "",
            "onnxruntime also ships packaging scripts that take the same config (an Android AAR, an iOS framework / "
            "pod); its custom build docs name them. `--minimal_build` runs ORT-format models on the CPU only; an "
            "NNAPI or Core ML execution provider needs `--minimal_build extended` and models converted with the "
            "runtime optimisation style, which this target does not write. None of these builds was run here.",
        ]
    )


def _constants(manifest: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing and tokenizer facts an app needs, from the manifest."""
    pre = Preprocess.from_config(manifest["image_preprocess"]).to_dict()
    return {
        **pre,
        "text_max_length": int(manifest["text_max_length"]),
        "pad_id": int(manifest.get("pad_id", 0)),
        "embed_dim": int(manifest["embed_dim"]),
        "logit_scale": float(manifest.get("logit_scale", 100.0)),
        "languages": list(manifest.get("languages") or []),
    }


def _floats(values: list[float], suffix: str = "") -> str:
    return ", ".join(f"{float(v)!r}{suffix}" for v in values)


def _constants_section(manifest: dict[str, Any]) -> str:
    c = _constants(manifest)
    resize = (
        f"resize the shorter side to {c['image_size']} px ({c['interpolation']}), centre-crop "
        f"{c['image_size']}x{c['image_size']}"
        if c["resize_mode"] == "shortest"
        else f"resize to {c['image_size']}x{c['image_size']} ({c['interpolation']}, aspect ratio not kept)"
    )
    return "\n".join(
        [
            "## What the app must do (from manifest.json)",
            "",
            f"- image: RGB, {resize}; scale to [0, 1]; subtract mean [{_floats(c['mean'])}] and divide by std "
            f"[{_floats(c['std'])}] per channel; layout NCHW float32 `{IMAGE_INPUT}` [N, 3, {c['image_size']}, "
            f"{c['image_size']}] -> `{IMAGE_OUTPUT}` [N, {c['embed_dim']}], already L2-normalised.",
            f"- text: `{TEXT_INPUTS[0]}` and `{TEXT_INPUTS[1]}` int64 [N, L] with L <= {c['text_max_length']} "
            f"(longer token lists are cut to {c['text_max_length']}, keeping a trailing special token); rows padded "
            f"on the right with pad id {c['pad_id']} and mask 0 -> `{TEXT_OUTPUT}` [N, {c['embed_dim']}], "
            "L2-normalised.",
            f"- scores: cosine (dot product of the two embeddings) x logit scale {c['logit_scale']:.4f}, softmax "
            "over the labels.",
            f"- languages the model was trained for: {', '.join(c['languages']) or 'not recorded'}.",
        ]
    )


def _kotlin_section(manifest: dict[str, Any], summary: dict[str, Any]) -> str:
    c = _constants(manifest)
    image, text = summary["files"]["fp32"]["image"], summary["files"]["fp32"]["text"]
    return "\n".join(
        [
            "## Android (Kotlin, `com.microsoft.onnxruntime:onnxruntime-android` or your minimal build)",
            "",
            "```kotlin",
            "import ai.onnxruntime.OnnxTensor",
            "import ai.onnxruntime.OrtEnvironment",
            "import ai.onnxruntime.OrtSession",
            "import java.nio.FloatBuffer",
            "import java.nio.LongBuffer",
            "",
            f"const val IMAGE_SIZE = {c['image_size']}",
            f"val MEAN = floatArrayOf({_floats(c['mean'], 'f')})",
            f"val STD = floatArrayOf({_floats(c['std'], 'f')})",
            f'const val RESIZE_MODE = "{c["resize_mode"]}"  // interpolation: {c["interpolation"]}',
            f"const val TEXT_MAX_LENGTH = {c['text_max_length']}",
            f"const val PAD_ID = {c['pad_id']}L",
            f"const val LOGIT_SCALE = {c['logit_scale']!r}f",
            "",
            "val env: OrtEnvironment = OrtEnvironment.getEnvironment()",
            f'val imageSession: OrtSession = env.createSession(context.assets.open("{image}").readBytes(), '
            "OrtSession.SessionOptions())",
            f'val textSession: OrtSession = env.createSession(context.assets.open("{text}").readBytes(), '
            "OrtSession.SessionOptions())",
            "",
            "/** chw: one preprocessed image, 3 * IMAGE_SIZE * IMAGE_SIZE floats (see the constants above). */",
            "fun embedImage(chw: FloatArray): FloatArray {",
            "    val shape = longArrayOf(1, 3, IMAGE_SIZE.toLong(), IMAGE_SIZE.toLong())",
            "    OnnxTensor.createTensor(env, FloatBuffer.wrap(chw), shape).use { pixels ->",
            f'        imageSession.run(mapOf("{IMAGE_INPUT}" to pixels)).use {{ result ->',
            '            @Suppress("UNCHECKED_CAST")',
            "            return (result[0].value as Array<FloatArray>)[0]",
            "        }",
            "    }",
            "}",
            "",
            "/** ids: one text's token ids (at most TEXT_MAX_LENGTH), from the bundle's tokenizer. */",
            "fun embedText(ids: LongArray): FloatArray {",
            "    val shape = longArrayOf(1, ids.size.toLong())",
            "    val mask = LongArray(ids.size) { 1L }",
            "    OnnxTensor.createTensor(env, LongBuffer.wrap(ids), shape).use { idsTensor ->",
            "        OnnxTensor.createTensor(env, LongBuffer.wrap(mask), shape).use { maskTensor ->",
            f'            val feeds = mapOf("{TEXT_INPUTS[0]}" to idsTensor, "{TEXT_INPUTS[1]}" to maskTensor)',
            "            textSession.run(feeds).use { result ->",
            '                @Suppress("UNCHECKED_CAST")',
            "                return (result[0].value as Array<FloatArray>)[0]",
            "            }",
            "        }",
            "    }",
            "}",
            "```",
        ]
    )


def _swift_section(manifest: dict[str, Any], summary: dict[str, Any]) -> str:
    c = _constants(manifest)
    image = summary["files"]["fp32"]["image"].removesuffix(".ort")
    return "\n".join(
        [
            "## iOS (Swift, the `onnxruntime-objc` pod or your minimal build)",
            "",
            "```swift",
            "import Foundation",
            "import onnxruntime_objc",
            "",
            f"let imageSize = {c['image_size']}",
            f"let mean: [Float] = [{_floats(c['mean'])}]",
            f"let std: [Float] = [{_floats(c['std'])}]",
            f'let resizeMode = "{c["resize_mode"]}"  // interpolation: {c["interpolation"]}',
            f"let textMaxLength = {c['text_max_length']}",
            f"let padId: Int64 = {c['pad_id']}",
            f"let logitScale: Float = {c['logit_scale']!r}",
            "",
            "let env = try ORTEnv(loggingLevel: ORTLoggingLevel.warning)",
            f'let imagePath = Bundle.main.path(forResource: "{image}", ofType: "ort")!',
            "let options = try ORTSessionOptions()",
            "let imageSession = try ORTSession(env: env, modelPath: imagePath, sessionOptions: options)",
            "",
            "/// chw: one preprocessed image, 3 * imageSize * imageSize floats (see the constants above).",
            "func embedImage(_ chw: [Float]) throws -> [Float] {",
            "    let data = NSMutableData(bytes: chw, length: chw.count * MemoryLayout<Float>.stride)",
            "    let shape: [NSNumber] = [1, 3, NSNumber(value: imageSize), NSNumber(value: imageSize)]",
            "    let pixels = try ORTValue(tensorData: data, elementType: .float, shape: shape)",
            f'    let outputs = try imageSession.run(withInputs: ["{IMAGE_INPUT}": pixels], '
            f'outputNames: ["{IMAGE_OUTPUT}"], runOptions: nil)',
            f'    let bytes = try outputs["{IMAGE_OUTPUT}"]!.tensorData() as Data',
            "    return bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }",
            "}",
            "```",
            "",
            f"The text tower works the same way with `{TEXT_INPUTS[0]}` and `{TEXT_INPUTS[1]}` as "
            "`ORTTensorElementDataType.int64` tensors of shape [1, L].",
        ]
    )


def _tokenizer_section(manifest: dict[str, Any]) -> str:
    c = _constants(manifest)
    return "\n".join(
        [
            "## Tokenising on the phone",
            "",
            f"`{TOKENIZER_FILE}` is a Hugging Face `tokenizers` file (pad id {c['pad_id']}, at most "
            f"{c['text_max_length']} tokens per text, special tokens added). Two ways to use it:",
            "",
            "1. Fixed labels (the usual zero-shot app): compute the label embeddings on the host with dcclip "
            "(`ZeroShotClassifier.class_embeddings`, the same tokenizer and prompt ensemble as `dcclip classify`) "
            "and ship them; the phone runs only the image tower. This is the recommended path: everything in it is "
            "what the parity figures above measure.",
            "2. Free text on the device: run a `tokenizers`-compatible tokenizer on the phone (e.g. the Rust "
            "`tokenizers` crate behind JNI / Swift, or a port that reads tokenizer.json), then the text tower. "
            f"Check it against `{VECTORS_FILE}`: every prompt there must give exactly those ids. No phone tokenizer "
            "was built or measured here.",
        ]
    )


def _other_converters_section() -> str:
    return "\n".join(
        [
            "## LiteRT (.tflite) and Core ML",
            "",
            "Not produced by dcclip yet. Tried once beside the pinned torch 2.14.1 in a throwaway environment "
            "(pip resolution, December 2026): `ai-edge-torch` 0.7.2 (now `litert-torch` 0.10.0) resolves with "
            "torch 2.14.1 but pulls jax, torchao and the LiteRT converter and lowers pinned packages (pydantic "
            "2.14.4 -> 2.11.10, typing-extensions 4.16.0 -> 4.12.2, anyio), so it cannot go into dcclip's "
            "environment unchanged; in the throwaway environment it converted the test student's image tower and "
            "LiteRT's interpreter matched torch (max abs diff 2.6e-09, min cosine 1.0 on 2 random inputs; text "
            "tower not tried). `coremltools` 9.0 resolves too, but a Core ML model runs only on Apple systems, so "
            "no parity can be measured on this Linux machine. `onnx2tf` needs TensorFlow 2.19 and numpy 1.26 "
            "(dcclip pins numpy 2.4). onnxruntime's NNAPI and Core ML execution providers (a `--minimal_build "
            "extended` build) are the tested-format path to phone accelerators.",
        ]
    )
