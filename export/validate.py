"""Parity of an exported bundle against the torch student it came from, measured on real inputs and recorded.

ONNX outputs can differ from torch (open_clip issue 186), so nothing is assumed: every export compares embeddings
(max abs diff, mean/min cosine, at the traced batch size and at batch 1) and zero-shot top-1 decisions between torch
and onnxruntime. fp32 must match (min cosine >= 0.9999) or the export fails; int8 figures are recorded and flagged
when top-1 agreement falls below 97%.

int8 is judged by agreement, not by accuracy: two models can both score 60% while disagreeing on a fifth of the images.
``tower_agreement`` measures, against the fp32 graphs, how often each quantised tower changes a zero-shot top-1
decision on its own (int8 image + fp32 text, fp32 image + int8 text) and both together; the bundle ships int8 for a
tower only when its figure clears the bar.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from dcclip.runtime.bundle import IMAGE_INPUT, TEXT_INPUTS
from dcclip.runtime.prompts import class_embeddings, fill_templates

from .errors import ExportError
from .validate_inputs import (  # noqa: F401 - the inputs' names stay importable from validate
    BUILT_IN_CAPTIONS,
    DEFAULT_EVAL_IMAGES,
    DEFAULT_IMAGES,
    EVAL_SET_CAPTIONS,
    ValidationInputs,
    ZeroShotSet,
    eval_set_captions,
    eval_set_paths,
    load_zero_shot_set,
    prepare_inputs,
    probe_captions,
    shard_captions,
    synthetic_images,
)

__all__ = [
    "FP32_MIN_COSINE",
    "INT8_MIN_AGREEMENT",
    "AgreementProbe",
    "MemoEncoder",
    "OnnxEncoder",
    "TorchEncoder",
    "ValidationInputs",
    "ZeroShotSet",
    "compare_embeddings",
    "failing_towers",
    "load_zero_shot_set",
    "prepare_inputs",
    "synthetic_images",
    "tower_agreement",
    "validate_export",
]

log = logging.getLogger(__name__)

FP32_MIN_COSINE = 0.9999
INT8_MIN_AGREEMENT = 0.97  # top-1 decisions int8 must share with fp32, per tower and combined
MAX_NORM_ERROR = 1e-3
# Two classes whose reference scores lie this close are a tie that float noise breaks either way: picking either is
# the reference's decision. Random-weight test models (and repeated captions) give exact ties.
TIE_TOLERANCE = 1e-5
BATCH = 32


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


class MemoEncoder:
    """An encoder that remembers its embeddings per input batch: every measurement asks the reference the same."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self._seen: dict[tuple[str, tuple[int, ...], str], np.ndarray] = {}

    def _recall(self, kind: str, arrays: tuple[np.ndarray, ...], compute: Any) -> np.ndarray:
        """The stored embeddings of these inputs, computed on first use."""
        digest = hashlib.sha1(b"".join(np.ascontiguousarray(array).tobytes() for array in arrays)).hexdigest()
        key = (kind, arrays[0].shape, digest)
        if key not in self._seen:
            self._seen[key] = compute()
        return self._seen[key]

    def image(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels [N, 3, H, W] -> [N, D], computed once per batch."""
        return self._recall("image", (pixels,), lambda: self.inner.image(pixels))

    def text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Ids and mask [N, L] -> [N, D], computed once per batch."""
        return self._recall("text", (input_ids, attention_mask), lambda: self.inner.text(input_ids, attention_mask))


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


def same_top1(reference_scores: np.ndarray, candidate_top: np.ndarray) -> np.ndarray:
    """Per row: whether the candidate's pick is the reference's top-1, or tied with it within TIE_TOLERANCE."""
    picked = np.take_along_axis(reference_scores, candidate_top[:, None], axis=1)[:, 0]
    return picked >= reference_scores.max(1) - TIE_TOLERANCE


def _class_embeddings(
    encoder: Encoder, tokenizer: Any, names: list[str], templates: list[str], max_len: int
) -> np.ndarray:
    """Class embeddings by the runtime's prompt ensembling."""
    return class_embeddings(_batched_texts(encoder, tokenizer, fill_templates(names, templates), max_len), len(names))


def _zero_shot(reference: Encoder, candidate: Encoder, zs: ZeroShotSet, tokenizer: Any, max_len: int) -> dict[str, Any]:
    """Top-1 agreement (and accuracy when labels are known) of torch vs onnx, per language and overall."""
    ref_img, cand_img = _batched_images(reference, zs.pixels), _batched_images(candidate, zs.pixels)
    per_lang, agree, acc_ref, acc_cand = {}, [], [], []
    for lang, names in zs.classnames.items():
        ref_cls = _class_embeddings(reference, tokenizer, names, zs.templates[lang], max_len)
        cand_cls = _class_embeddings(candidate, tokenizer, names, zs.templates[lang], max_len)
        ref_scores = ref_img @ ref_cls.T
        ref_top, cand_top = ref_scores.argmax(1), (cand_img @ cand_cls.T).argmax(1)
        same = same_top1(ref_scores, cand_top)
        per_lang[lang] = float(same.mean())
        agree.append(same)
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


def _zero_shot_sets(
    reference: Encoder, candidate: Encoder, sets: list[ZeroShotSet], tokenizer: Any, max_len: int
) -> dict[str, Any]:
    """Zero-shot figures of one set, or of several with the lowest agreement as the headline figure."""
    results = [_zero_shot(reference, candidate, zs, tokenizer, max_len) for zs in sets]
    if len(results) == 1:
        return results[0]
    return {
        "source": "eval_sets",
        "top1_agreement": min(result["top1_agreement"] for result in results),
        "sets": results,
    }


def _caption_agreement(
    reference: Encoder, candidate: Encoder, inputs: ValidationInputs, tokenizer: Any, max_len: int
) -> dict[str, Any]:
    """Without an eval set: agreement of the best caption for every validation image and the best image per caption."""
    ref_images = _batched_images(reference, inputs.pixels)
    ref_texts = _batched_texts(reference, tokenizer, inputs.captions, max_len)
    images = _batched_images(candidate, inputs.pixels)
    texts = _batched_texts(candidate, tokenizer, inputs.captions, max_len)
    return {
        "source": "captions",
        "images": len(inputs.pixels),
        "classes": len(inputs.captions),
        "top1_agreement": float(_same_decisions(ref_images, images, ref_texts, texts, both_ways=True).mean()),
    }


def validate_export(
    reference: Encoder,
    candidate: Encoder,
    inputs: ValidationInputs,
    tokenizer: Any,
    max_len: int,
    precision: str,
    min_agreement: float = INT8_MIN_AGREEMENT,
) -> dict[str, Any]:
    """Measure parity of one precision; fp32 below FP32_MIN_COSINE raises ExportError, int8 is flagged instead.

    ``min_agreement``: top-1 agreement below which the report is flagged.
    """
    image, text = _tower_parity(reference, candidate, inputs, tokenizer, max_len)
    if inputs.zero_shot_sets:
        zero_shot = _zero_shot_sets(reference, candidate, inputs.zero_shot_sets, tokenizer, max_len)
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
    return _judge(report, precision, min_agreement)


def failing_towers(report: dict[str, Any], bar: float = FP32_MIN_COSINE) -> list[str]:
    """The towers ('image', 'text') whose batched or batch-1 cosine falls below ``bar``."""
    return [role for role in ("image", "text") if min(report[role]["min_cosine"], report[role]["batch1_cosine"]) < bar]


def _judge(report: dict[str, Any], precision: str, min_agreement: float = INT8_MIN_AGREEMENT) -> dict[str, Any]:
    """Fail fp32 below the cosine bar; flag int8 (or fp32) whose top-1 agreement is below ``min_agreement``."""
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
    report["flagged"] = bool(report["top1_agreement"] < min_agreement)
    report["thresholds"] = {"fp32_min_cosine": FP32_MIN_COSINE, "min_top1_agreement": min_agreement}
    if report["flagged"]:
        log.warning("%s export flagged: top-1 agreement %.3f", precision, report["top1_agreement"])
    return report


# --------------------------------------------------------------------------------------------------------------------
# Per-tower agreement of int8 with fp32
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    """One agreement sample: images, and per language (or for the captions) the texts whose argmax is a decision.

    ``both_ways``: captions are matched both ways (best caption per image, best image per caption).
    """

    name: str
    pixels: np.ndarray
    texts: dict[str, list[str]]
    group: dict[str, int]  # texts per class whose normalised mean is the class embedding (1: the texts themselves)
    both_ways: bool = False


def _samples(inputs: ValidationInputs) -> list[_Sample]:
    """The zero-shot sets (class names in every template, every language), else the validation captions."""
    if not inputs.zero_shot_sets:
        return [_Sample("captions", inputs.pixels, {"captions": list(inputs.captions)}, {"captions": 1}, True)]
    samples = []
    for zs in inputs.zero_shot_sets:
        texts = {
            lang: [template.replace("{c}", name) for name in names for template in zs.templates[lang]]
            for lang, names in zs.classnames.items()
        }
        group = {lang: len(zs.templates[lang]) for lang in zs.classnames}
        samples.append(_Sample(zs.source, zs.pixels, texts, group))
    return samples


SampleImages = list[np.ndarray]  # per sample: image embeddings [N, D]
SampleTexts = list[dict[str, np.ndarray]]  # per sample, per language: class (or caption) embeddings [C, D]


class AgreementProbe:
    """The fp32 embeddings of the agreement sample, computed once, against which int8 towers are scored.

    A decision is one image's top-1 class in one language (or, without an eval set, one image's best caption and one
    caption's best image). A tower is scored with the other tower in fp32, so each figure is that tower's own damage;
    both int8 towers together give the combined figure. Figures are per sample; the lowest is the headline.
    """

    def __init__(self, fp32: Encoder, inputs: ValidationInputs, tokenizer: Any, max_len: int) -> None:
        self.tokenizer, self.max_len = tokenizer, max_len
        self.samples = _samples(inputs)
        self.source = "eval_set" if inputs.zero_shot_sets else "captions"
        self.images = self.embed_images(fp32)
        self.texts = self.embed_texts(fp32)

    def embed_images(self, encoder: Encoder) -> SampleImages:
        """The encoder's image embeddings of every sample."""
        return [_batched_images(encoder, sample.pixels) for sample in self.samples]

    def embed_texts(self, encoder: Encoder) -> SampleTexts:
        """Per sample and language: class embeddings (normalised mean over templates) or caption embeddings."""
        return [self._texts(encoder, sample) for sample in self.samples]

    def _texts(self, encoder: Encoder, sample: _Sample) -> dict[str, np.ndarray]:
        """One sample's text side, per language."""
        out = {}
        for lang, texts in sample.texts.items():
            emb = _batched_texts(encoder, self.tokenizer, texts, self.max_len)
            emb = emb.reshape(len(texts) // sample.group[lang], sample.group[lang], -1).mean(1)
            out[lang] = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return out

    def score(self, images: SampleImages | None = None, texts: SampleTexts | None = None) -> dict[str, Any]:
        """Share of top-1 decisions that match all-fp32 with these image and/or text embeddings (None: fp32's).

        Figures per sample in ``per_set``; the headline figures (``top1_agreement``, ``decisions``, ``disagreements``)
        are those of the worst sample, named in ``worst_set``.
        """
        images, texts = images or self.images, texts or self.texts
        per_set = {}
        for index, sample in enumerate(self.samples):
            ref_images, ref_texts = self.images[index], self.texts[index]
            same = [
                _same_decisions(ref_images, images[index], ref_texts[key], texts[index][key], sample.both_ways)
                for key in ref_texts
            ]
            per_set[sample.name] = _share(np.concatenate(same))
        worst = min(per_set, key=lambda name: per_set[name]["top1_agreement"])
        return {**per_set[worst], "worst_set": worst, "per_set": per_set}


def _share(same: np.ndarray) -> dict[str, Any]:
    """Agreement figures of a boolean array of matching decisions."""
    return {"top1_agreement": float(same.mean()), "decisions": int(same.size), "disagreements": int((~same).sum())}


def _same_decisions(
    ref_images: np.ndarray, images: np.ndarray, ref_texts: np.ndarray, texts: np.ndarray, both_ways: bool
) -> np.ndarray:
    """Which top-1 decisions of (images, texts) match those of the reference pair (ties within TIE_TOLERANCE)."""
    reference, scores = ref_images @ ref_texts.T, images @ texts.T
    same = same_top1(reference, scores.argmax(1))
    if both_ways:
        same = np.concatenate([same, same_top1(reference.T, scores.T.argmax(1))])
    return same


def tower_agreement(
    fp32: Encoder, int8: Encoder, inputs: ValidationInputs, tokenizer: Any, max_len: int
) -> dict[str, Any]:
    """Top-1 agreement with all-fp32 of int8 image + fp32 text, fp32 image + int8 text, and both int8.

    Measured on every zero-shot set (each image in each language is one decision; the lowest set is the headline),
    else on caption matching both ways over the validation images and captions. The fp32 reference is the exported
    fp32 graph pair, which matches torch to cosine 0.9999 by the time int8 is judged.
    """
    probe = AgreementProbe(fp32, inputs, tokenizer, max_len)
    images, texts = probe.embed_images(int8), probe.embed_texts(int8)
    result: dict[str, Any] = {"source": probe.source, "reference": "fp32 onnx"}
    return result | {
        "image": probe.score(images=images),
        "text": probe.score(texts=texts),
        "combined": probe.score(images, texts),
    }
