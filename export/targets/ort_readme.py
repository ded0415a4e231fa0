"""README.md of the ORT target: its files, the measured parity, minimal-build commands, Kotlin / Swift snippets whose
constants are read from the manifest, and how to tokenise on a device (``readme``, called by ort.py)."""

from __future__ import annotations

from typing import Any

from dcclip.runtime.bundle import (
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    MANIFEST_FILE,
    TEXT_INPUTS,
    TEXT_OUTPUT,
    TOKENIZER_FILE,
)
from dcclip.runtime.constants import LOGIT_SCALE_MAX
from dcclip.runtime.preprocess import Preprocess

# The target's files (ort.py writes them, the README names them) and its towers.
OPS_CONFIG = "required_operators.config"
PARITY_FILE = "parity.json"
CARD_FILE = "MODEL_CARD.md"
VECTORS_FILE = "tokenizer_vectors.json"
ROLES = ("image", "text")


# --- sections -------------------------------------------------------------------------------------------------------
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
        "logit_scale": float(manifest.get("logit_scale", LOGIT_SCALE_MAX)),
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
