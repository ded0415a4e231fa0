"""Parity of an exported bundle against the torch student it came from, measured on real inputs and recorded.

ONNX outputs can differ from torch (open_clip issue 186), so nothing is assumed: every export compares embeddings
(max abs diff, mean/min cosine, at the traced batch size and at batch 1) and zero-shot top-1 decisions between torch
and onnxruntime. fp32 must match (min cosine >= 0.9999) or the export fails; int8 figures are recorded and flagged
when top-1 agreement falls below 98%.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from dcclip.runtime.preprocess import ImageDecodeError, Preprocess, decode_image

from .errors import ExportError
from .onnx import IMAGE_INPUT, TEXT_INPUTS

__all__ = [
    "FP32_MIN_COSINE",
    "INT8_MIN_AGREEMENT",
    "OnnxEncoder",
    "TorchEncoder",
    "ValidationInputs",
    "ZeroShotSet",
    "compare_embeddings",
    "failing_towers",
    "load_zero_shot_set",
    "prepare_inputs",
    "synthetic_images",
    "validate_export",
]

log = logging.getLogger(__name__)

FP32_MIN_COSINE = 0.9999
INT8_MIN_AGREEMENT = 0.98
MAX_NORM_ERROR = 1e-3
BATCH = 32
DEFAULT_IMAGES = 32
DEFAULT_EVAL_IMAGES = 64
# Captions for parity and for the caption-argmax agreement when no eval set is given: ten languages, ten scripts.
CAPTIONS: dict[str, list[str]] = {
    "en": ["a red circle on a white background", "two blue squares", "a small green triangle", "a yellow star"],
    "zh": ["白色背景上的红色圆形", "两个蓝色正方形", "一个绿色的小三角形", "一颗黄色的星星"],
    "ja": ["白い背景に赤い円", "青い正方形が二つ", "小さな緑の三角形", "黄色い星"],
    "ko": ["흰 배경 위의 빨간 원", "파란 정사각형 두 개", "작은 초록색 삼각형", "노란 별"],
    "fr": ["un cercle rouge sur fond blanc", "deux carrés bleus", "un petit triangle vert", "une étoile jaune"],
    "de": ["ein roter Kreis auf weißem Grund", "zwei blaue Quadrate", "ein kleines grünes Dreieck", "ein gelber Stern"],
    "es": ["un círculo rojo sobre fondo blanco", "dos cuadrados azules", "un pequeño triángulo verde", "una estrella"],
    "ru": ["красный круг на белом фоне", "два синих квадрата", "маленький зелёный треугольник", "жёлтая звезда"],
    "ar": ["دائرة حمراء على خلفية بيضاء", "مربعان أزرقان", "مثلث أخضر صغير", "نجمة صفراء"],
    "hi": ["सफ़ेद पृष्ठभूमि पर लाल वृत्त", "दो नीले वर्ग", "एक छोटा हरा त्रिभुज", "एक पीला तारा"],
}


class Encoder(Protocol):
    """Anything that embeds preprocessed pixels and token batches into normalised float32 vectors."""

    def image(self, pixels: np.ndarray) -> np.ndarray: ...

    def text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class TorchEncoder:
    """The reference: the torch student in eval mode, outputs L2-normalised like the exported graphs."""

    def __init__(self, student: torch.nn.Module) -> None:
        self.student = student.eval()

    @torch.inference_mode()
    def image(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels [N, 3, H, W] -> [N, D]."""
        return F.normalize(self.student.image.embed(torch.from_numpy(pixels)), dim=-1).float().numpy()

    @torch.inference_mode()
    def text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Ids and mask [N, L] -> [N, D]."""
        ids, mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        return F.normalize(self.student.text(ids, mask), dim=-1).float().numpy()


class OnnxEncoder:
    """The exported towers in onnxruntime (CPU)."""

    def __init__(self, image_path: Path, text_path: Path) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self.image_session = ort.InferenceSession(str(image_path), options, providers=providers)
        self.text_session = ort.InferenceSession(str(text_path), options, providers=providers)

    def image(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels [N, 3, H, W] -> [N, D]."""
        return self.image_session.run(None, {IMAGE_INPUT: np.ascontiguousarray(pixels, np.float32)})[0]

    def text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Ids and mask [N, L] -> [N, D]."""
        feed = {TEXT_INPUTS[0]: input_ids.astype(np.int64), TEXT_INPUTS[1]: attention_mask.astype(np.int64)}
        return self.text_session.run(None, feed)[0]


@dataclass
class ZeroShotSet:
    """A sample of a zero-shot classification set: preprocessed images, labels, class names and templates per lang."""

    pixels: np.ndarray
    labels: np.ndarray | None
    classnames: dict[str, list[str]]
    templates: dict[str, list[str]]
    source: str


@dataclass
class ValidationInputs:
    """What parity is measured on: preprocessed images, captions (with languages) and an optional zero-shot set."""

    pixels: np.ndarray
    captions: list[str]
    caption_langs: list[str]
    image_source: str
    zero_shot: ZeroShotSet | None = None


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


def synthetic_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Drawn scenes (shapes on gradients, assorted sizes) for when no real images are at hand."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        width, height = (int(v) for v in rng.integers(48, 160, size=2))
        ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * rng.uniform(0, 255, size=(1, 1, 3))
        base = np.broadcast_to(ramp + rng.uniform(0, 128, size=(1, 1, 3)), (height, width, 3))
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
            box = (x0, y0, x0 + int(rng.integers(8, width)), y0 + int(rng.integers(8, height)))
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        images.append(image)
    return images


def _sample_dir(path: Path) -> Path:
    """Where a clip_benchmark set keeps its shards: ``test/`` when present, else the directory itself."""
    return path / "test" if (path / "test").is_dir() else path


def _read_json_or_lines(path: Path, json_name: str, text_name: str) -> dict[str, list[str]]:
    """Per-language lists from ``json_name``, else the English list from the one-per-line ``text_name``."""
    if (path / json_name).is_file():
        data = json.loads((path / json_name).read_text("utf-8"))
        return {str(lang): [str(item) for item in items] for lang, items in data.items()}
    if (path / text_name).is_file():
        lines = [line.strip() for line in (path / text_name).read_text("utf-8").splitlines()]
        return {"en": [line for line in lines if line]}
    return {}


def load_zero_shot_set(
    path: Path, preprocess: Preprocess, max_images: int = DEFAULT_EVAL_IMAGES, langs: Sequence[str] | None = None
) -> ZeroShotSet:
    """A sample of a clip_benchmark-layout classification set (classnames/templates JSON or txt, shards of jpg+cls)."""
    from dcclip.data.shards import image_field, iter_samples

    path = Path(path)
    classnames = _read_json_or_lines(path, "classnames.json", "classnames.txt")
    if not classnames:
        raise ExportError(f"{path}: not a zero-shot set (no classnames.json or classnames.txt)")
    templates = _read_json_or_lines(path, "templates.json", "zeroshot_classification_templates.txt")
    wanted = [lang for lang in classnames if not langs or lang in langs] or list(classnames)
    images, labels = [], []
    for sample in iter_samples(_sample_dir(path)):
        field = image_field(sample)
        if field is None:
            continue
        try:
            images.append(preprocess(decode_image(sample[field])))
        except ImageDecodeError as exc:
            log.warning("skipping eval image %s: %s", sample.get("__key__"), exc)
            continue
        labels.append(int(sample["cls"]) if "cls" in sample else -1)
        if len(images) >= max_images:
            break
    if not images:
        raise ExportError(f"{path}: no decodable images in the eval set")
    return ZeroShotSet(
        pixels=np.stack(images).astype(np.float32),
        labels=np.asarray(labels) if min(labels) >= 0 else None,
        classnames={lang: classnames[lang] for lang in wanted},
        templates={lang: templates.get(lang) or ["{c}"] for lang in wanted},
        source=str(path),
    )


def shard_captions(source: str | Path, limit: int = 64) -> list[tuple[str, str]]:
    """Up to ``limit`` (lang, caption) pairs from a shard source, every language of a sample taken in turn."""
    from dcclip.data.shards import iter_samples

    found: list[tuple[str, str]] = []
    for sample in iter_samples(source):
        try:
            captions = json.loads(sample.get("json", b"{}")).get("captions", {})
        except (ValueError, AttributeError):
            continue
        found.extend((str(lang), text) for lang, text in captions.items() if isinstance(text, str) and text.strip())
        if len(found) >= limit:
            break
    return found[:limit]


def prepare_inputs(
    preprocess: Preprocess,
    images: Sequence[Image.Image] | None = None,
    captions: Sequence[tuple[str, str]] | None = None,
    eval_set: Path | None = None,
    langs: Sequence[str] | None = None,
    n_images: int = DEFAULT_IMAGES,
    image_source: str = "given",
) -> ValidationInputs:
    """Images (given, else drawn), captions (given, else the built-in ten languages) and the optional eval set."""
    source = image_source if images else "synthetic"
    chosen = list(images)[:n_images] if images else synthetic_images(n_images)
    pairs = list(captions) if captions else [(lang, text) for lang, texts in CAPTIONS.items() for text in texts]
    zero_shot = load_zero_shot_set(eval_set, preprocess, langs=langs) if eval_set is not None else None
    return ValidationInputs(
        pixels=preprocess.batch(chosen).astype(np.float32),
        captions=[text for _, text in pairs],
        caption_langs=sorted({lang for lang, _ in pairs}),
        image_source=source,
        zero_shot=zero_shot,
    )


# --------------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------------


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs diff and mean/min cosine between matching rows of two embedding matrices."""
    if reference.shape != candidate.shape:
        raise ExportError(f"embedding shapes differ: torch {reference.shape} vs onnx {candidate.shape}")
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    cos = (ref * cand).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-12)
    return {
        "max_abs_diff": float(np.abs(ref - cand).max()),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "n": len(ref),
    }


def _norm_error(embeddings: np.ndarray) -> float:
    """Largest distance of an output's L2 norm from 1 (the graphs normalise; the runtime relies on it)."""
    return float(np.abs(np.linalg.norm(embeddings.astype(np.float64), axis=1) - 1.0).max())


def _batched_images(encoder: Encoder, pixels: np.ndarray) -> np.ndarray:
    """Embed pixels in batches of BATCH."""
    return np.concatenate([encoder.image(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)])


def _batched_texts(encoder: Encoder, tokenizer: Any, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Tokenize and embed texts in batches of BATCH (each batch padded to its longest text)."""
    out = []
    for i in range(0, len(texts), BATCH):
        ids, mask = tokenizer.encode(list(texts[i : i + BATCH]), max_length)
        out.append(encoder.text(ids, mask))
    return np.concatenate(out)


def _tower_parity(
    reference: Encoder, candidate: Encoder, inputs: ValidationInputs, tokenizer: Any, max_len: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-tower figures at the batched size and at batch 1 (the first image, the first caption on its own)."""
    candidate_images = _batched_images(candidate, inputs.pixels)
    image = compare_embeddings(_batched_images(reference, inputs.pixels), candidate_images)
    image["norm_error"] = _norm_error(candidate_images)
    single_pixels = inputs.pixels[:1]
    image_single = compare_embeddings(reference.image(single_pixels), candidate.image(single_pixels))
    texts = inputs.captions
    candidate_texts = _batched_texts(candidate, tokenizer, texts, max_len)
    text = compare_embeddings(_batched_texts(reference, tokenizer, texts, max_len), candidate_texts)
    text["norm_error"] = _norm_error(candidate_texts)
    ids, mask = tokenizer.encode(texts[:1], max_len)
    text_single = compare_embeddings(reference.text(ids, mask), candidate.text(ids, mask))
    image["batch1_max_abs_diff"], image["batch1_cosine"] = image_single["max_abs_diff"], image_single["min_cosine"]
    text["batch1_max_abs_diff"], text["batch1_cosine"] = text_single["max_abs_diff"], text_single["min_cosine"]
    text["languages"] = inputs.caption_langs
    return image, text


def _class_embeddings(
    encoder: Encoder, tokenizer: Any, names: list[str], templates: list[str], max_len: int
) -> np.ndarray:
    """Normalised mean of the normalised template embeddings of every class."""
    texts = [template.replace("{c}", name) for name in names for template in templates]
    emb = _batched_texts(encoder, tokenizer, texts, max_len).reshape(len(names), len(templates), -1).mean(1)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _zero_shot(reference: Encoder, candidate: Encoder, zs: ZeroShotSet, tokenizer: Any, max_len: int) -> dict[str, Any]:
    """Top-1 agreement (and accuracy when labels are known) of torch vs onnx, per language and overall."""
    ref_img, cand_img = _batched_images(reference, zs.pixels), _batched_images(candidate, zs.pixels)
    per_lang, agree, acc_ref, acc_cand = {}, [], [], []
    for lang, names in zs.classnames.items():
        ref_cls = _class_embeddings(reference, tokenizer, names, zs.templates[lang], max_len)
        cand_cls = _class_embeddings(candidate, tokenizer, names, zs.templates[lang], max_len)
        ref_top, cand_top = (ref_img @ ref_cls.T).argmax(1), (cand_img @ cand_cls.T).argmax(1)
        per_lang[lang] = float((ref_top == cand_top).mean())
        agree.append(ref_top == cand_top)
        if zs.labels is not None:
            acc_ref.append(ref_top == zs.labels)
            acc_cand.append(cand_top == zs.labels)
    result = {
        "source": "eval_set",
        "eval_set": zs.source,
        "images": len(zs.pixels),
        "classes": len(next(iter(zs.classnames.values()))),
        "top1_agreement": float(np.concatenate(agree).mean()),
        "per_language": per_lang,
    }
    if acc_ref:
        result["top1_accuracy_torch"] = float(np.concatenate(acc_ref).mean())
        result["top1_accuracy_onnx"] = float(np.concatenate(acc_cand).mean())
    return result


def _caption_agreement(
    reference: Encoder, candidate: Encoder, inputs: ValidationInputs, tokenizer: Any, max_len: int
) -> dict[str, Any]:
    """Without an eval set: agreement of the best-matching caption for every validation image."""
    ref = _batched_images(reference, inputs.pixels) @ _batched_texts(reference, tokenizer, inputs.captions, max_len).T
    cand = _batched_images(candidate, inputs.pixels) @ _batched_texts(candidate, tokenizer, inputs.captions, max_len).T
    return {
        "source": "captions",
        "images": len(inputs.pixels),
        "classes": len(inputs.captions),
        "top1_agreement": float((ref.argmax(1) == cand.argmax(1)).mean()),
    }


def validate_export(
    reference: Encoder,
    candidate: Encoder,
    inputs: ValidationInputs,
    tokenizer: Any,
    max_len: int,
    precision: str,
) -> dict[str, Any]:
    """Measure parity of one precision; fp32 below FP32_MIN_COSINE raises ExportError, int8 is flagged instead."""
    image, text = _tower_parity(reference, candidate, inputs, tokenizer, max_len)
    if inputs.zero_shot is not None:
        zero_shot = _zero_shot(reference, candidate, inputs.zero_shot, tokenizer, max_len)
    else:
        zero_shot = _caption_agreement(reference, candidate, inputs, tokenizer, max_len)
    report = {
        "precision": precision,
        "max_abs_diff": max(image["max_abs_diff"], text["max_abs_diff"]),
        "min_cosine": min(image["min_cosine"], text["min_cosine"], image["batch1_cosine"], text["batch1_cosine"]),
        "mean_cosine": (image["mean_cosine"] * image["n"] + text["mean_cosine"] * text["n"]) / (image["n"] + text["n"]),
        "top1_agreement": zero_shot["top1_agreement"],
        "image": {**image, "source": inputs.image_source},
        "text": text,
        "zero_shot": zero_shot,
    }
    return _judge(report, precision)


def failing_towers(report: dict[str, Any], bar: float = FP32_MIN_COSINE) -> list[str]:
    """The towers ('image', 'text') whose batched or batch-1 cosine falls below ``bar``."""
    return [role for role in ("image", "text") if min(report[role]["min_cosine"], report[role]["batch1_cosine"]) < bar]


def _judge(report: dict[str, Any], precision: str) -> dict[str, Any]:
    """Fail fp32 below the cosine bar; flag int8 (or fp32) whose top-1 agreement is below INT8_MIN_AGREEMENT."""
    norm_error = max(report["image"]["norm_error"], report["text"]["norm_error"])
    if norm_error > MAX_NORM_ERROR:
        raise ExportError(f"{precision} ONNX outputs are not unit vectors (norm off by {norm_error:.3g})", report)
    if precision == "fp32" and not report["min_cosine"] >= FP32_MIN_COSINE:
        raise ExportError(
            f"fp32 ONNX does not match torch: min cosine {report['min_cosine']:.6f} < {FP32_MIN_COSINE} "
            f"(image min {report['image']['min_cosine']:.6f}, text min {report['text']['min_cosine']:.6f}, "
            f"max abs diff {report['max_abs_diff']:.3g}, top-1 agreement {report['top1_agreement']:.3f})",
            report,
        )
    report["flagged"] = bool(report["top1_agreement"] < INT8_MIN_AGREEMENT)
    report["thresholds"] = {"fp32_min_cosine": FP32_MIN_COSINE, "min_top1_agreement": INT8_MIN_AGREEMENT}
    if report["flagged"]:
        log.warning("%s export flagged: top-1 agreement %.3f", precision, report["top1_agreement"])
    return report
