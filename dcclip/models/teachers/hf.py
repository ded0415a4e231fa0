"""The Hugging Face backend: transformers ``CLIPModel``, ``AltCLIPModel`` and ``ChineseCLIPModel`` (``hf:/path/dir`` or
``hf:ORG/NAME``), and the tokenizer helpers the M-CLIP text side shares.

Feature maps: the vision model's last hidden state without CLS, through ``post_layernorm`` (the norm the pooled output
goes through).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dcclip.models.teacher_spec import TeacherSpec
from dcclip.models.teachers.base import Teacher, channel_triple, supported_option
from dcclip.models.teachers.hub import TeacherLoadError, hf_call, hf_load_error, require
from dcclip.runtime.preprocess import OPENAI_MEAN, OPENAI_STD, Preprocess

HF_MODEL_CLASSES = {"clip": "CLIPModel", "altclip": "AltCLIPModel", "chinese_clip": "ChineseCLIPModel"}
# Text encoders whose position ids start after the padding index (RoBERTa family), which shortens the usable length.
ROBERTA_STYLE_TEXT = ("roberta", "altclip_text_model")
HF_RESAMPLE = {2: "bilinear", 3: "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}


class HFClipTeacher(Teacher):
    """A transformers CLIPModel, AltCLIPModel or ChineseCLIPModel with its own tokenizer."""

    def __init__(self, spec: str, model: nn.Module, tokenizer: Any, preprocess: Preprocess) -> None:
        super().__init__(spec, preprocess)
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = hf_text_max_length(tokenizer, model.config.text_config)
        self.patch_size = int(model.config.vision_config.patch_size)
        self._finish()

    def _image_forward(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """The two steps of ``get_image_features`` (vision model, projection), keeping the hidden states."""
        vision = self.model.vision_model
        out = vision(pixel_values=pixels, return_dict=True)
        embedding = self.model.visual_projection(out.pooler_output)
        tokens = vision.post_layernorm(out.last_hidden_state[:, 1:])
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        return embedding, _tokens_to_grid(tokens, grid)

    def _text_forward(self, texts: list[str]) -> Tensor:
        """The model's own tokenizer, then ``get_text_features`` (an output object in transformers 5)."""
        batch = tokenize(self.tokenizer, texts, self.max_length, self.device)
        out = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out if isinstance(out, Tensor) else out.pooler_output


def _tokens_to_grid(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Patch tokens [B, h*w, C] -> feature map [B, C, h, w]."""
    batch, count, channels = tokens.shape
    if count != grid[0] * grid[1]:
        raise TeacherLoadError(f"{count} patch tokens do not form a {grid[0]}x{grid[1]} grid")
    return tokens.transpose(1, 2).reshape(batch, channels, grid[0], grid[1]).contiguous()


def tokenize(tokenizer: Any, texts: list[str], max_length: int, device: torch.device) -> dict[str, Tensor]:
    """Pad to the longest caption, truncate to the model's limit, move ids and mask to ``device``."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}


def hf_text_max_length(tokenizer: Any, text_config: Any) -> int:
    """Longest input the text model accepts: its position table (less RoBERTa's offset) and the tokenizer's limit."""
    limit = int(getattr(text_config, "max_position_embeddings", 512))
    if any(kind in str(getattr(text_config, "model_type", "")) for kind in ROBERTA_STYLE_TEXT):
        limit -= int(getattr(text_config, "pad_token_id", 1) or 0) + 1
    model_max = getattr(tokenizer, "model_max_length", None)
    return min(limit, int(model_max)) if isinstance(model_max, int) and model_max > 0 else limit


def load(spec: TeacherSpec) -> HFClipTeacher:
    """Load config, model, tokenizer and image-processor settings from a local directory or the hub."""
    transformers = require("transformers")
    config = hf_call(spec, transformers.AutoConfig.from_pretrained, spec.model)
    class_name = HF_MODEL_CLASSES.get(config.model_type)
    if class_name is None:
        known = ", ".join(sorted(HF_MODEL_CLASSES))
        raise TeacherLoadError(f"teacher {spec.raw!r}: model_type {config.model_type!r} is not supported ({known})")
    model_class = getattr(transformers, class_name)
    model = hf_call(spec, model_class.from_pretrained, spec.model, dtype=torch.float32)
    tokenizer = hf_call(spec, transformers.AutoTokenizer.from_pretrained, spec.model)
    image_size = int(config.vision_config.image_size)
    preprocess = preprocess_from_hf(_hf_image_processor_dict(spec), image_size, spec.raw)
    return HFClipTeacher(spec.raw, model, tokenizer, preprocess)


def _hf_image_processor_dict(spec: TeacherSpec) -> dict[str, Any]:
    """The raw image-processor settings (preprocessor_config.json); {} with a warning when a local dir has none."""
    from transformers.image_processing_utils import ImageProcessingMixin

    try:
        return ImageProcessingMixin.get_image_processor_dict(spec.model)[0]
    except OSError as exc:
        if spec.source == "hub":
            raise hf_load_error(spec, exc) from exc
        warnings.warn(f"teacher {spec.raw!r}: no image processor config ({exc}); using CLIP defaults", stacklevel=2)
        return {}


def preprocess_from_hf(cfg: Mapping[str, Any], image_size: int, spec: str = "") -> Preprocess:
    """Map a Hugging Face image-processor config onto Preprocess: shortest-side resize + centre crop, or squash."""
    resample = cfg.get("resample", 3)
    interpolation = HF_RESAMPLE.get(resample)
    if interpolation is None:
        interpolation = supported_option(resample, ("bicubic", "bilinear"), "bicubic", spec)
    resize_mode, size = _hf_geometry(cfg, image_size, spec)
    if size != image_size:
        warnings.warn(f"teacher {spec!r}: processor crops to {size} but the model expects {image_size}", stacklevel=2)
    return Preprocess(
        image_size=size,
        mean=channel_triple(cfg.get("image_mean", OPENAI_MEAN)),
        std=channel_triple(cfg.get("image_std", OPENAI_STD)),
        resize_mode=resize_mode,
        interpolation=interpolation,
    )


def _hf_geometry(cfg: Mapping[str, Any], image_size: int, spec: str) -> tuple[str, int]:
    """(resize_mode, output size) from ``size`` / ``crop_size`` / ``do_center_crop``; warns where it approximates."""
    size = cfg.get("size", {"shortest_edge": image_size})
    size = {"shortest_edge": size} if isinstance(size, int) else dict(size or {})
    crop = cfg.get("crop_size") if cfg.get("do_center_crop", True) else None
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    if crop and crop.get("height") != crop.get("width"):
        raise TeacherLoadError(f"teacher {spec!r}: non-square crop {crop} is not supported")
    crop_side = int(crop["height"]) if crop else None
    if size.get("shortest_edge"):
        edge = int(size["shortest_edge"])
        if crop_side is not None and crop_side != edge:
            _approximate(spec, f"resize the short side to {edge} then crop {crop_side}", f"resize to {crop_side}")
        return "shortest", crop_side or edge
    if size.get("height") and size.get("width"):
        if size["height"] != size["width"]:
            raise TeacherLoadError(f"teacher {spec!r}: non-square resize {size} is not supported")
        side = int(size["height"])
        if crop_side is not None and crop_side < side:
            _approximate(spec, f"resize to {side}x{side} then crop {crop_side}", f"resize to {crop_side}")
        return "squash", min(side, crop_side or side)
    return "shortest", crop_side or image_size


def _approximate(spec: str, wanted: str, done: str) -> None:
    """Warn that the image processor's geometry is approximated by what Preprocess can do."""
    warnings.warn(f"teacher {spec!r}: the image processor would {wanted}; dcclip will {done}", stacklevel=3)
