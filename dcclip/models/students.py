"""Small image and text students (DC-CLIP recipe): a timm image tower with a feature-map adapter, a transformers text
tower, and the JSON architecture files that describe them.

A student JSON (``configs/models/students/NAME.json``) names the towers; ``build_student`` resolves it against the
teacher (embedding width, feature-map shape) and the tokenizer (vocabulary, pad id) into ``Student.arch``, a plain
JSON-able dict that ``rebuild_student`` turns back into the same modules without teacher, tokenizer or downloads.

Projections are sized from what the towers really output (a dummy forward at build time), never from declared
widths: open_clip's timm tower gets this wrong for models with a head conv (mobilenetv3: 1024 features, 288 declared).
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dcclip.models.registry import get_model_config, model_config_path
from dcclip.runtime.preprocess import Preprocess
from dcclip.runtime.tokenizer import TOKENIZER_FILE

if TYPE_CHECKING:
    import transformers

__all__ = [
    "LOGIT_SCALE_INIT",
    "ImageStudent",
    "Student",
    "StudentConfigError",
    "TextStudent",
    "build_student",
    "count_parameters",
    "inherit_text_layers",
    "load_student_config",
    "rebuild_student",
    "resize_grid",
    "student_preprocess",
]

LOGIT_SCALE_INIT = 1 / 0.07  # CLIP's initial logit scale; the parameter stores its log
TEXT_ARCHS = ("bert", "xlm-roberta")
POOLINGS = ("mean", "cls")
RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")
INSTALL_HINT = "pip install 'dcclip[train]'"

TOP_FIELDS = frozenset({"embed_dim", "image", "text", "description"})
IMAGE_FIELDS = frozenset({"timm_model", "timm_kwargs", "image_size", "mean", "std", "resize_mode", "interpolation"})
TEXT_FIELDS = frozenset(
    {
        "arch",
        "num_layers",
        "hidden_size",
        "num_heads",
        "intermediate_size",
        "max_length",
        "pooling",
        "dropout",
        "hf_dir",
    }
)
TEXT_SIZE_FIELDS = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "dropout")
# Present only in a resolved architecture (Student.arch): filled in from the teacher and the tokenizer.
RESOLVED_TOP_FIELDS = frozenset({"name", "fmap_channels", "fmap_grid"})
RESOLVED_TEXT_FIELDS = frozenset({"vocab_size", "pad_id", "hf_config"})
# Hugging Face model types whose modules share one layout (embeddings + encoder.layer[i]), for layer inheritance.
TEXT_FAMILIES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}
DEFAULT_MAX_LENGTH = 64


class StudentConfigError(ValueError):
    """A student architecture is malformed; the message names the file (or source) and the field."""


# --------------------------------------------------------------------------------------------------------------------
# Image tower
# --------------------------------------------------------------------------------------------------------------------


class ImageStudent(nn.Module):
    """A timm trunk, a linear projection of its pooled features and an optional adapter to the teacher's feature map."""

    def __init__(
        self,
        trunk: nn.Module,
        embed_dim: int,
        image_size: int,
        fmap_channels: int | None = None,
        fmap_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if (fmap_channels is None) != (fmap_grid is None):
            raise ValueError("fmap_channels and fmap_grid must be given together (the teacher's feature map shape)")
        self.trunk = trunk
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 0) or 0)
        self.channels_last_output = getattr(trunk, "output_fmt", "NCHW") == "NHWC"
        fmap, pooled = self._probe(image_size)
        self.feature_dim = int(pooled.shape[-1])
        self.trunk_channels = int(fmap.shape[1])
        self.trunk_grid = (int(fmap.shape[2]), int(fmap.shape[3]))
        self.proj = nn.Linear(self.feature_dim, embed_dim, bias=False)
        self.fmap_grid = (int(fmap_grid[0]), int(fmap_grid[1])) if fmap_grid is not None else None
        self.adapter = nn.Conv2d(self.trunk_channels, fmap_channels, kernel_size=1) if fmap_channels else None

    @torch.no_grad()
    def _probe(self, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one dummy image through the trunk (eval mode) to learn the real feature-map and pooled widths."""
        was_training = self.trunk.training
        self.trunk.eval()
        try:
            pixels = torch.zeros(1, 3, image_size, image_size)
            features = self.trunk.forward_features(pixels)
            pooled = self.trunk.forward_head(features, pre_logits=True)
            return self.feature_grid(features, image_size, image_size), pooled
        finally:
            self.trunk.train(was_training)

    def feature_grid(self, features: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The trunk's last-stage output as [B, C, h, w]: NCHW as is, NHWC permuted, ViT patch tokens as a grid."""
        if features.ndim == 4:
            return features.permute(0, 3, 1, 2) if self.channels_last_output else features
        if features.ndim != 3:
            raise ValueError(f"unsupported trunk output of shape {tuple(features.shape)}")
        tokens = features[:, self.num_prefix_tokens :]
        grid_h, grid_w = self._token_grid(height, width, tokens.shape[1])
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid_h, grid_w)

    def _token_grid(self, height: int, width: int, n_tokens: int) -> tuple[int, int]:
        """Patch grid of a token trunk: from its patch embedding when it says, else the square that fits."""
        patch_embed = getattr(self.trunk, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
            grid_h, grid_w = (int(v) for v in patch_embed.dynamic_feat_size((height, width)))
        else:
            grid_h = grid_w = math.isqrt(n_tokens)
        if grid_h * grid_w != n_tokens:
            raise ValueError(f"cannot arrange {n_tokens} patch tokens into a grid for a {height}x{width} image")
        return grid_h, grid_w

    def adapt(self, fmap: torch.Tensor) -> torch.Tensor:
        """Map the student's feature map onto the teacher's channels (1x1 conv) and grid."""
        assert self.adapter is not None and self.fmap_grid is not None
        return resize_grid(self.adapter(fmap), self.fmap_grid)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixels [B, 3, H, W] -> (embedding [B, D], not normalised; adapted feature map or None)."""
        features = self.trunk.forward_features(pixels)
        embedding = self.proj(self.trunk.forward_head(features, pre_logits=True))
        if self.adapter is None:
            return embedding, None
        fmap = self.feature_grid(features, pixels.shape[-2], pixels.shape[-1])
        return embedding, self.adapt(fmap)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> embedding only: the deployed (ONNX-exported) path, free of data-dependent control flow."""
        features = self.trunk.forward_features(pixels)
        return self.proj(self.trunk.forward_head(features, pre_logits=True))


def resize_grid(fmap: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize [B, C, h, w] to the grid: unchanged, area-averaged when shrinking, bilinear otherwise."""
    height, width = fmap.shape[-2:]
    if (height, width) == tuple(grid):
        return fmap
    if height >= grid[0] and width >= grid[1]:
        return F.adaptive_avg_pool2d(fmap, grid)
    return F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------------------------
# Text tower
# --------------------------------------------------------------------------------------------------------------------


class TextStudent(nn.Module):
    """A Hugging Face encoder, masked-mean or CLS pooling, and a linear projection to the shared embedding space."""

    def __init__(self, transformer: nn.Module, embed_dim: int, pooling: str = "mean", max_length: int = 64) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.transformer = transformer
        self.pooling = pooling
        self.max_length = max_length
        config = transformer.config
        # Explicit zero segment ids: the implicit buffer path slices by sequence length, which export handles worse.
        accepts = "token_type_ids" in inspect.signature(transformer.forward).parameters
        self.use_token_types = accepts and getattr(config, "type_vocab_size", 0) > 0
        self.proj = nn.Linear(config.hidden_size, embed_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [T, L] (int64) -> embeddings [T, D], not normalised."""
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.use_token_types else {}
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.proj(self.pool(hidden, attention_mask))

    def forward_by_length(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_groups: int = 4
    ) -> torch.Tensor:
        """``forward``'s embeddings, computed over groups of similar length, each cut to its longest caption.

        Right padding is most of a training batch of short captions (toy world: 11 real tokens of 32 on average);
        the encoder's cost grows with the padded length, while masked attention and pooling make the padding inert.
        Left-padded or unsorted masks fall back to one call.
        """
        if input_ids.shape[0] == 0:
            return self(input_ids, attention_mask)
        lengths = attention_mask.sum(dim=1)
        groups = length_groups(lengths, max_groups)
        if len(groups) == 1 or not is_right_padded(attention_mask, lengths):
            width = int(lengths.max()) if is_right_padded(attention_mask, lengths) else attention_mask.shape[1]
            return self(input_ids[:, :width], attention_mask[:, :width])
        pieces = []
        for rows in groups:
            width = int(lengths[rows].max())
            pieces.append(self(input_ids[rows, :width], attention_mask[rows, :width]))
        order = torch.cat(groups)
        return torch.cat(pieces)[torch.argsort(order)]

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[T, L, H] -> [T, H]: mean over real tokens (padding ignored) or the first token."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def is_right_padded(attention_mask: torch.Tensor, lengths: torch.Tensor) -> bool:
    """True when every row's real tokens come first (the mask is 1 on exactly its first ``length`` positions)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return bool(torch.equal(attention_mask.bool(), positions[None, :] < lengths[:, None]))


def length_groups(lengths: torch.Tensor, max_groups: int, call_cost: int = 64) -> list[torch.Tensor]:
    """Row indices split, by ascending length, into the 1..max_groups equal groups that pad fewest tokens.

    ``call_cost`` (in padded tokens) charges each extra encoder call, so a batch of equal lengths stays one call.
    """
    order = torch.argsort(lengths, stable=True)
    ranked = lengths[order]
    best, best_cost = [order], int(ranked[-1]) * len(order) if len(order) else 0
    for k in range(2, max(1, max_groups) + 1):
        groups = [g for g in torch.tensor_split(order, k) if len(g)]
        cost = sum(int(lengths[g].max()) * len(g) for g in groups) + call_cost * (len(groups) - 1)
        if cost < best_cost:
            best, best_cost = groups, cost
    return best


# --------------------------------------------------------------------------------------------------------------------
# Student
# --------------------------------------------------------------------------------------------------------------------


class Student(nn.Module):
    """Image and text students, a learnable logit scale and the resolved architecture that rebuilds them."""

    def __init__(
        self, image: ImageStudent, text: TextStudent, arch: dict[str, Any], logit_scale_init: float = LOGIT_SCALE_INIT
    ) -> None:
        super().__init__()
        if logit_scale_init <= 0:
            raise ValueError(f"logit_scale_init is the scale itself and must be > 0, got {logit_scale_init}")
        self.image = image
        self.text = text
        self.arch = copy.deepcopy(arch)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> image embeddings (not normalised)."""
        return self.image.embed(pixels)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids + mask -> text embeddings (not normalised)."""
        return self.text(input_ids, attention_mask)

    def forward(
        self,
        pixels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        with_fmap: bool = True,
    ) -> dict[str, torch.Tensor | None]:
        """Both towers in one call, so a DDP-wrapped student syncs gradients: image_emb, image_fmap, text_emb."""
        out: dict[str, torch.Tensor | None] = {}
        if pixels is not None:
            if with_fmap:
                out["image_emb"], out["image_fmap"] = self.image(pixels)
            else:
                out["image_emb"], out["image_fmap"] = self.image.embed(pixels), None
        if input_ids is not None:
            if attention_mask is None:
                raise ValueError("attention_mask is required with input_ids")
            out["text_emb"] = self.text(input_ids, attention_mask)
        return out


# --------------------------------------------------------------------------------------------------------------------
# Architecture JSON: validation
# --------------------------------------------------------------------------------------------------------------------


def _fail(source: str, field: str, message: str) -> StudentConfigError:
    """An error naming the file and the dotted field."""
    return StudentConfigError(f"{source}: {field}: {message}")


def _check_fields(section: Any, allowed: frozenset[str], source: str, where: str) -> None:
    """The section is an object whose keys are all known, with the closest known name as a hint."""
    if not isinstance(section, Mapping):
        raise _fail(source, where or "top level", f"must be an object, got {type(section).__name__}")
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(source, f"{where}.{key}" if where else str(key), f"unknown field{hint}")


def _int(value: Any, source: str, field: str, minimum: int = 1) -> int:
    """An integer (not a bool) no smaller than minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise _fail(source, field, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _choice(value: Any, choices: tuple[str, ...], source: str, field: str) -> str:
    """One of a fixed set of strings."""
    if value not in choices:
        raise _fail(source, field, f"must be one of {list(choices)}, got {value!r}")
    return value


def _triple(value: Any, source: str, field: str, positive: bool = False) -> list[float]:
    """Three numbers (per-channel mean or std)."""
    ok = isinstance(value, list | tuple) and len(value) == 3
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or (positive and any(v <= 0 for v in value)):
        kind = "three positive numbers" if positive else "three numbers"
        raise _fail(source, field, f"must be {kind}, got {value!r}")
    return [float(v) for v in value]


def _validate_image(image: Any, source: str) -> None:
    """Check the image section's fields and values."""
    _check_fields(image, IMAGE_FIELDS, source, "image")
    if not isinstance(image.get("timm_model"), str) or not image["timm_model"]:
        raise _fail(source, "image.timm_model", "required: the name of a timm model")
    if not isinstance(image.get("timm_kwargs", {}), Mapping):
        raise _fail(source, "image.timm_kwargs", "must be an object of keyword arguments for timm.create_model")
    if "image_size" in image:
        _int(image["image_size"], source, "image.image_size", minimum=8)
    if "mean" in image:
        _triple(image["mean"], source, "image.mean")
    if "std" in image:
        _triple(image["std"], source, "image.std", positive=True)
    _choice(image.get("resize_mode", "shortest"), RESIZE_MODES, source, "image.resize_mode")
    _choice(image.get("interpolation", "bicubic"), INTERPOLATIONS, source, "image.interpolation")


def _validate_text(text: Any, source: str, resolved: bool) -> None:
    """Check the text section: either sizes for a fresh encoder, or hf_dir (a saved Hugging Face encoder)."""
    _check_fields(text, TEXT_FIELDS | (RESOLVED_TEXT_FIELDS if resolved else frozenset()), source, "text")
    from_hf = "hf_dir" in text or "hf_config" in text
    if from_hf:
        for key in TEXT_SIZE_FIELDS:
            if key in text:
                raise _fail(source, f"text.{key}", "conflicts with text.hf_dir (the encoder's config sets it)")
        if "hf_dir" in text and not isinstance(text["hf_dir"], str):
            raise _fail(source, "text.hf_dir", "must be a directory path")
    else:
        _choice(text.get("arch", "bert"), TEXT_ARCHS, source, "text.arch")
        for key in ("num_layers", "hidden_size", "num_heads"):
            if key not in text:
                raise _fail(source, f"text.{key}", "required (or give text.hf_dir)")
            _int(text[key], source, f"text.{key}")
        if text["hidden_size"] % text["num_heads"]:
            raise _fail(source, "text.num_heads", f"must divide hidden_size {text['hidden_size']}")
        if "intermediate_size" in text:
            _int(text["intermediate_size"], source, "text.intermediate_size")
        dropout = text.get("dropout", 0.0)
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise _fail(source, "text.dropout", f"must be a number in [0, 1), got {dropout!r}")
    if "max_length" in text:
        _int(text["max_length"], source, "text.max_length", minimum=2)
    _choice(text.get("pooling", "mean"), POOLINGS, source, "text.pooling")


def _validate_resolved_fields(cfg: Mapping[str, Any], source: str) -> None:
    """A resolved architecture must carry every value build_student filled in."""
    if not isinstance(cfg["embed_dim"], int):
        raise _fail(source, "embed_dim", "must be an integer in a resolved architecture")
    grid, channels = cfg.get("fmap_grid"), cfg.get("fmap_channels")
    if (grid is None) != (channels is None):
        raise _fail(source, "fmap_grid", "fmap_channels and fmap_grid must both be set or both be null")
    if channels is not None:
        _int(channels, source, "fmap_channels")
        if not isinstance(grid, list | tuple) or len(grid) != 2:
            raise _fail(source, "fmap_grid", f"must be [height, width], got {grid!r}")
        _int(grid[0], source, "fmap_grid[0]")
        _int(grid[1], source, "fmap_grid[1]")
    for key in ("vocab_size", "pad_id", "max_length", "pooling"):
        if key not in cfg["text"]:
            raise _fail(source, f"text.{key}", "missing from a resolved architecture")
    _int(cfg["text"]["vocab_size"], source, "text.vocab_size")
    _int(cfg["text"]["pad_id"], source, "text.pad_id", minimum=0)
    for key in ("image_size", "mean", "std"):
        if key not in cfg["image"]:
            raise _fail(source, f"image.{key}", "missing from a resolved architecture")


def validate_student_config(cfg: Any, source: str, resolved: bool = False) -> dict[str, Any]:
    """Check a student architecture (a JSON's content, or a resolved Student.arch) and return a deep copy."""
    allowed = TOP_FIELDS | (RESOLVED_TOP_FIELDS if resolved else frozenset())
    _check_fields(cfg, allowed, source, "")
    for key in ("embed_dim", "image", "text"):
        if key not in cfg:
            raise _fail(source, key, "required")
    embed_dim = cfg["embed_dim"]
    if embed_dim != "teacher":
        _int(embed_dim, source, "embed_dim")
    _validate_image(cfg["image"], source)
    _validate_text(cfg["text"], source, resolved)
    if resolved:
        _validate_resolved_fields(cfg, source)
    return copy.deepcopy(dict(cfg))


def load_student_config(arch: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A student JSON by registry name or path (or a dict), validated; returns (config, source for messages)."""
    if isinstance(arch, Mapping):
        return validate_student_config(arch, "<student arch dict>"), "<student arch dict>"
    source = str(model_config_path(str(arch), "student"))
    return validate_student_config(get_model_config(str(arch), "student"), source), source


# --------------------------------------------------------------------------------------------------------------------
# Architecture: resolution against teacher and tokenizer
# --------------------------------------------------------------------------------------------------------------------


def _import(name: str) -> Any:
    """Import an optional training dependency with an install hint."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"dcclip students need {name}: {INSTALL_HINT}") from exc


def _agree(name: str, from_arch: Any, from_arg: Any, source: str) -> Any:
    """One value given by the architecture and/or an argument: they must agree when both are set."""
    if from_arch is not None and from_arg is not None and from_arch != from_arg:
        raise _fail(source, name, f"the architecture says {from_arch!r} but {from_arg!r} was passed")
    return from_arg if from_arg is not None else from_arch


def _resolve_embed_dim(value: int | str, embed_dim: int | None, source: str) -> int:
    """'teacher' takes the argument; an integer must match it when given."""
    if value == "teacher":
        if embed_dim is None:
            raise _fail(source, "embed_dim", "is 'teacher': pass embed_dim (the teacher's embedding width)")
        return int(embed_dim)
    return int(_agree("embed_dim", value, embed_dim, source))


def _resolve_image(image: Mapping[str, Any]) -> dict[str, Any]:
    """Fill preprocessing defaults from timm's pretrained config of the model (else CLIP's)."""
    timm = _import("timm")
    pretrained_cfg = timm.models.get_pretrained_cfg(image["timm_model"])
    pcfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
    default = Preprocess()
    input_size = pcfg.get("input_size") or (3, default.image_size, default.image_size)
    interpolation = pcfg.get("interpolation", default.interpolation)
    return {
        "timm_model": image["timm_model"],
        "timm_kwargs": dict(image.get("timm_kwargs", {})),
        "image_size": int(image.get("image_size", input_size[-1])),
        "mean": [float(v) for v in image.get("mean", pcfg.get("mean", default.mean))],
        "std": [float(v) for v in image.get("std", pcfg.get("std", default.std))],
        "resize_mode": image.get("resize_mode", "shortest"),
        "interpolation": image.get("interpolation", interpolation if interpolation in INTERPOLATIONS else "bicubic"),
    }


def _resolve_text(text: Mapping[str, Any], vocab_size: int | None, pad_id: int, source: str) -> dict[str, Any]:
    """Text section with every value set: sizes and defaults, plus the tokenizer's vocabulary and pad id."""
    if "hf_dir" in text:
        return _resolve_hf_text(text, vocab_size, pad_id, source)
    if vocab_size is None:
        raise _fail(source, "text", "vocab_size is required (the tokenizer's vocabulary size)")
    _int(vocab_size, source, "vocab_size")
    _int(pad_id, source, "pad_id", minimum=0)
    if pad_id >= vocab_size:
        raise _fail(source, "pad_id", f"{pad_id} is outside the vocabulary of {vocab_size}")
    return {
        "arch": text.get("arch", "bert"),
        "num_layers": text["num_layers"],
        "hidden_size": text["hidden_size"],
        "num_heads": text["num_heads"],
        "intermediate_size": text.get("intermediate_size", 4 * text["hidden_size"]),
        "dropout": float(text.get("dropout", 0.0)),
        "max_length": text.get("max_length", DEFAULT_MAX_LENGTH),
        "pooling": text.get("pooling", "mean"),
        "vocab_size": int(vocab_size),
        "pad_id": int(pad_id),
    }


def _resolve_hf_text(text: Mapping[str, Any], vocab_size: int | None, pad_id: int, source: str) -> dict[str, Any]:
    """Text section for a saved Hugging Face encoder: its config is recorded so rebuilding needs no directory."""
    hf_dir = Path(text["hf_dir"]).expanduser()
    if not (hf_dir / "config.json").is_file():
        raise _fail(source, "text.hf_dir", f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    config = _import("transformers").AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    if "arch" in text and _family_of_type(text["arch"]) != _family_of_type(config.model_type):
        raise _fail(source, "text.arch", f"{text['arch']!r} but {hf_dir} holds a {config.model_type!r} model")
    model_vocab = int(config.vocab_size)
    if vocab_size is not None and vocab_size > model_vocab:
        raise _fail(source, "text.hf_dir", f"tokenizer vocabulary {vocab_size} exceeds the encoder's {model_vocab}")
    config_pad = getattr(config, "pad_token_id", None)
    max_length = text.get("max_length", DEFAULT_MAX_LENGTH)
    capacity = _position_capacity(config)
    if capacity is not None and max_length > capacity:
        raise _fail(source, "text.max_length", f"{max_length} exceeds the encoder's {capacity} positions")
    return {
        "arch": config.model_type,
        "hf_dir": str(hf_dir.resolve()),
        "max_length": max_length,
        "pooling": text.get("pooling", "mean"),
        "vocab_size": model_vocab,
        "pad_id": int(config_pad if config_pad is not None else pad_id),
        "hf_config": json.loads(config.to_json_string(use_diff=False)),
    }


def _position_capacity(config: Any) -> int | None:
    """How many tokens the encoder's position table holds (RoBERTa-style tables start after the pad id)."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    offset = (
        int(getattr(config, "pad_token_id", 0) or 0) + 1 if TEXT_FAMILIES.get(config.model_type) == "roberta" else 0
    )
    return int(positions) - offset


def _resolve_arch(
    cfg: Mapping[str, Any],
    source: str,
    embed_dim: int | None,
    fmap_channels: int | None,
    fmap_grid: tuple[int, int] | None,
    vocab_size: int | None,
    pad_id: int,
) -> dict[str, Any]:
    """A validated JSON plus teacher and tokenizer facts -> the fully resolved, JSON-able architecture."""
    if (fmap_channels is None) != (fmap_grid is None):
        raise _fail(source, "fmap_grid", "fmap_channels and fmap_grid must be given together (teacher feature map)")
    return {
        "name": Path(source).stem if source.endswith(".json") else None,
        "embed_dim": _resolve_embed_dim(cfg["embed_dim"], embed_dim, source),
        "fmap_channels": int(fmap_channels) if fmap_channels is not None else None,
        "fmap_grid": [int(fmap_grid[0]), int(fmap_grid[1])] if fmap_grid is not None else None,
        "image": _resolve_image(cfg["image"]),
        "text": _resolve_text(cfg["text"], vocab_size, pad_id, source),
    }


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------


def _create_trunk(image: Mapping[str, Any], pretrained: bool, source: str) -> nn.Module:
    """The timm model without classifier; pretrained weights must be cached when the hub is offline."""
    timm = _import("timm")
    name = image["timm_model"]
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise _fail(source, "image.timm_model", f"{name!r} is not a timm model{hint}")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **image["timm_kwargs"])
    except TypeError as exc:
        raise _fail(source, "image.timm_kwargs", f"rejected by timm.create_model({name!r}): {exc}") from exc
    except OSError as exc:
        if not pretrained:
            raise
        raise RuntimeError(
            f"pretrained weights for timm model {name!r} are not available: they are not in the local cache and "
            f"could not be downloaded (HF_HUB_OFFLINE=1 or no network). Download them once on a connected machine "
            f"(timm.create_model({name!r}, pretrained=True)) or build with pretrained=False. Cause: {exc}"
        ) from exc


def _build_image(arch: Mapping[str, Any], pretrained: bool, source: str) -> ImageStudent:
    """The image tower of a resolved architecture."""
    image = arch["image"]
    trunk = _create_trunk(image, pretrained, source)
    grid = tuple(arch["fmap_grid"]) if arch["fmap_grid"] is not None else None
    try:
        return ImageStudent(trunk, arch["embed_dim"], image["image_size"], arch["fmap_channels"], grid)
    except (RuntimeError, AssertionError, ValueError) as exc:
        msg = f"{image['timm_model']!r} cannot run at image_size {image['image_size']}: {exc}"
        raise _fail(source, "image.image_size", msg) from exc


def _fresh_text_config(text: Mapping[str, Any]) -> Any:
    """A transformers config for a randomly initialised BERT / XLM-R encoder of the given sizes."""
    transformers = _import("transformers")
    common = {
        "vocab_size": text["vocab_size"],
        "hidden_size": text["hidden_size"],
        "num_hidden_layers": text["num_layers"],
        "num_attention_heads": text["num_heads"],
        "intermediate_size": text["intermediate_size"],
        "hidden_dropout_prob": text["dropout"],
        "attention_probs_dropout_prob": text["dropout"],
        "pad_token_id": text["pad_id"],
        "type_vocab_size": 1,
    }
    if text["arch"] == "bert":
        return transformers.BertConfig(max_position_embeddings=text["max_length"], **common)
    # XLM-R numbers positions from pad_id + 1, so its table needs pad_id + 1 extra rows.
    return transformers.XLMRobertaConfig(max_position_embeddings=text["max_length"] + text["pad_id"] + 1, **common)


def _hf_model(config: Any, weights_dir: str | None) -> nn.Module:
    """A Hugging Face encoder from a config (random weights) or a directory, without its unused pooler."""
    model_class = _import("transformers.models.auto.modeling_auto").MODEL_MAPPING[type(config)]
    kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class).parameters else {}
    if weights_dir is not None:
        return model_class.from_pretrained(weights_dir, config=config, local_files_only=True, **kwargs)
    return model_class(config, **kwargs)


def _build_text(arch: Mapping[str, Any], load_weights: bool) -> TextStudent:
    """The text tower of a resolved architecture; hf_dir weights are loaded only when building, not rebuilding."""
    text = arch["text"]
    if "hf_config" in text:
        config_class = _import("transformers").CONFIG_MAPPING[text["hf_config"]["model_type"]]
        config = config_class.from_dict(text["hf_config"])
        transformer = _hf_model(config, text["hf_dir"] if load_weights else None)
    else:
        transformer = _hf_model(_fresh_text_config(text), None)
    return TextStudent(transformer, arch["embed_dim"], text["pooling"], text["max_length"])


def build_student(
    arch: str | Path | Mapping[str, Any],
    *,
    embed_dim: int | None = None,
    fmap_channels: int | None = None,
    fmap_grid: tuple[int, int] | None = None,
    vocab_size: int | None = None,
    pad_id: int = 0,
    pretrained: bool = False,
    logit_scale_init: float = LOGIT_SCALE_INIT,
) -> Student:
    """Build a student from its JSON (registry name, path or dict), sized to the teacher and the tokenizer.

    ``fmap_channels``/``fmap_grid`` describe the teacher's image feature map; without them no adapter is built.
    ``logit_scale_init`` is the scale itself (CLIP: 1/0.07); the parameter stores its log.
    """
    cfg, source = load_student_config(arch)
    resolved = _resolve_arch(cfg, source, embed_dim, fmap_channels, fmap_grid, vocab_size, pad_id)
    image = _build_image(resolved, pretrained, source)
    text = _build_text(resolved, load_weights=True)
    return Student(image, text, resolved, logit_scale_init)


def rebuild_student(arch: Mapping[str, Any]) -> Student:
    """Rebuild a student from its resolved ``Student.arch`` alone (random weights; load a state dict after)."""
    source = "<resolved student arch>"
    resolved = validate_student_config(arch, source, resolved=True)
    resolved["image"] = _resolve_image(resolved["image"])
    return Student(_build_image(resolved, False, source), _build_text(resolved, load_weights=False), resolved)


def student_preprocess(arch: str | Path | Mapping[str, Any]) -> Preprocess:
    """The image preprocessing a student was (or will be) trained with, from its architecture."""
    if isinstance(arch, Mapping):
        _validate_image(arch.get("image"), "<student arch dict>")
        image = arch["image"]
    else:
        image = load_student_config(arch)[0]["image"]
    return Preprocess.from_config(_resolve_image(image))


# --------------------------------------------------------------------------------------------------------------------
# Layer inheritance and parameter counts
# --------------------------------------------------------------------------------------------------------------------


def _family_of_type(model_type: str) -> str:
    """The layout family of a Hugging Face model type (BERT and RoBERTa-likes), or the type itself."""
    return TEXT_FAMILIES.get(model_type, model_type)


def _family(model: nn.Module) -> str:
    """The layout family of a Hugging Face encoder."""
    return _family_of_type(getattr(getattr(model, "config", None), "model_type", type(model).__name__))


def _check_inheritable(student: nn.Module, teacher: nn.Module) -> None:
    """Same layout family, same hidden size and an embeddings + encoder.layer structure, else ValueError."""
    s_family, t_family = _family(student), _family(teacher)
    if s_family != t_family:
        raise ValueError(f"cannot inherit layers: student is a {s_family} encoder, teacher a {t_family} encoder")
    if not hasattr(teacher, "embeddings") or not hasattr(getattr(teacher, "encoder", None), "layer"):
        raise ValueError(f"cannot inherit layers: {type(teacher).__name__} has no embeddings + encoder.layer")
    s_hidden, t_hidden = student.config.hidden_size, teacher.config.hidden_size
    if s_hidden != t_hidden:
        raise ValueError(f"cannot inherit layers: hidden size {s_hidden} (student) != {t_hidden} (teacher)")


def _copy_parameters(
    student: nn.Module, teacher: nn.Module, prefix: str, slice_rows: tuple[str, ...] = ()
) -> list[str]:
    """Copy same-named parameters; tables named in slice_rows may take the teacher's first rows."""
    teacher_params = dict(teacher.named_parameters())
    copied = []
    for name, param in student.named_parameters():
        source = teacher_params.get(name)
        if source is None:
            raise ValueError(f"cannot inherit {prefix}{name}: the teacher has no such parameter")
        sliceable = any(name.startswith(table) for table in slice_rows)
        if source.shape != param.shape and sliceable and source.shape[1:] == param.shape[1:]:
            source = source[: param.shape[0]] if source.shape[0] >= param.shape[0] else None
        if source is None or source.shape != param.shape:
            shape = tuple(teacher_params[name].shape)
            hint = " (the student must use the teacher's tokenizer)" if "word_embeddings" in name else ""
            raise ValueError(f"cannot inherit {prefix}{name}: shape {tuple(param.shape)} vs teacher {shape}{hint}")
        with torch.no_grad():
            param.copy_(source)
        copied.append(prefix + name)
    return copied


def inherit_text_layers(
    text: TextStudent, teacher_encoder: transformers.PreTrainedModel, every_k: int | None = None
) -> list[str]:
    """Initialise the text student from a teacher encoder (DistilBERT/TinyCLIP style): embeddings and layers 0, k, 2k…

    ``k`` defaults to teacher_layers // student_layers. Returns the names of the copied student parameters.
    """
    teacher = getattr(teacher_encoder, "base_model", teacher_encoder)
    student = text.transformer
    _check_inheritable(student, teacher)
    n_student, n_teacher = len(student.encoder.layer), len(teacher.encoder.layer)
    k = every_k if every_k is not None else n_teacher // n_student
    if k < 1 or (n_student - 1) * k >= n_teacher:
        raise ValueError(f"cannot take {n_student} layers every {k} from a teacher with {n_teacher} layers")
    tables = ("position_embeddings", "token_type_embeddings")
    copied = _copy_parameters(student.embeddings, teacher.embeddings, "transformer.embeddings.", tables)
    for i in range(n_student):
        prefix = f"transformer.encoder.layer.{i}."
        copied += _copy_parameters(student.encoder.layer[i], teacher.encoder.layer[i * k], prefix)
    return copied


def _numel(module: nn.Module | None) -> int:
    """Number of parameters of a module (0 for None)."""
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def count_parameters(student: Student) -> dict[str, int]:
    """Parameter counts: image (trunk + projection), text, adapter (training only) and what gets deployed."""
    image = _numel(student.image.trunk) + _numel(student.image.proj)
    text = _numel(student.text)
    adapter = _numel(student.image.adapter)
    return {"image": image, "text": text, "adapter": adapter, "total_deployed": image + text}


@dataclass
class LoadedStudent:
    """A trained student with everything needed to use it: tokenizer, preprocessing, languages, text length."""

    model: Student
    tokenizer: Any
    preprocess: Preprocess
    langs: list[str]
    max_text_len: int
    config: dict[str, Any]
    path: Path


def student_checkpoint_config(
    student: Student, langs: Sequence[str], max_text_len: int | None = None
) -> dict[str, Any]:
    """The config.json fields ``load_student_checkpoint`` needs: architecture, preprocessing, tokenizer file, text
    length (at most the text tower's) and languages."""
    limit = int(student.text.max_length)
    return {
        "arch": student.arch,
        "preprocess": student_preprocess(student.arch).to_dict(),
        "tokenizer": TOKENIZER_FILE,
        "max_text_len": limit if max_text_len is None else min(max_text_len, limit),
        "langs": list(langs),
    }


def save_student_checkpoint(
    run_dir: str | Path,
    step: int,
    student: Student,
    tokenizer_file: str | Path,
    langs: Sequence[str],
    max_text_len: int | None = None,
) -> Path:
    """Save a student with its tokenizer as step ``step`` of ``run_dir``: the form export, eval and serve read."""
    from dcclip import checkpoint as ckpt

    config = student_checkpoint_config(student, langs, max_text_len)
    return ckpt.write_checkpoint(Path(run_dir), step, student, config, None, {TOKENIZER_FILE: Path(tokenizer_file)})


def load_student_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedStudent:
    """Rebuild a student from a checkpoint directory (or a run directory's latest) in eval mode."""
    from dcclip import checkpoint as ckpt
    from dcclip.models.tokenizers import TextTokenizer

    loaded = ckpt.read_checkpoint(path, with_state=False)
    student = rebuild_student(loaded.config["arch"])
    ckpt.load_weights(student, loaded)
    student.to(device).eval()
    tokenizer_file = loaded.path / loaded.config.get("tokenizer", "tokenizer.json")
    return LoadedStudent(
        model=student,
        tokenizer=TextTokenizer.from_path(tokenizer_file),
        preprocess=Preprocess.from_config(loaded.config["preprocess"]),
        langs=list(loaded.config.get("langs", [])),
        max_text_len=int(loaded.config.get("max_text_len", student.text.max_length)),
        config=loaded.config,
        path=loaded.path,
    )
