"""The student architecture JSON: its fields, their validation (errors name the file and the dotted field) and the
resolution against teacher and tokenizer into ``Student.arch``, the plain JSON-able dict that rebuilds the student.

A student JSON (``configs/models/students/NAME.json``) names the towers; ``build_student`` resolves it against the
teacher (embedding width, feature-map shape) and the tokenizer (vocabulary, pad id).
"""

from __future__ import annotations

import copy
import difflib
import json
import numbers
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from dcclip.models.registry import get_model_config, model_config_path
from dcclip.runtime.optional import require as require_optional
from dcclip.runtime.preprocess import INTERPOLATIONS, RESIZE_MODES, Preprocess

TEXT_ARCHS = ("bert", "xlm-roberta")
POOLINGS = ("mean", "cls")

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


def family_of_type(model_type: str) -> str:
    """The layout family of a Hugging Face model type (BERT and RoBERTa-likes), or the type itself."""
    return TEXT_FAMILIES.get(model_type, model_type)


# Import an optional training dependency (timm, transformers); missing, an ImportError naming the train extra.
require = partial(require_optional, purpose="a dcclip student")


def fail(source: str, field: str, message: str) -> StudentConfigError:
    """An error naming the file and the dotted field."""
    return StudentConfigError(f"{source}: {field}: {message}")


def _check_fields(section: Any, allowed: frozenset[str], source: str, where: str) -> None:
    """The section is an object whose keys are all known, with the closest known name as a hint."""
    if not isinstance(section, Mapping):
        raise fail(source, where or "top level", f"must be an object, got {type(section).__name__}")
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise fail(source, f"{where}.{key}" if where else str(key), f"unknown field{hint}")


def _int(value: Any, source: str, field: str, minimum: int = 1) -> int:
    """An integer (not a bool) no smaller than minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise fail(source, field, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _choice(value: Any, choices: tuple[str, ...], source: str, field: str) -> str:
    """One of a fixed set of strings."""
    if value not in choices:
        raise fail(source, field, f"must be one of {list(choices)}, got {value!r}")
    return value


def _triple(value: Any, source: str, field: str, positive: bool = False) -> list[float]:
    """Three numbers (per-channel mean or std)."""
    ok = isinstance(value, list | tuple) and len(value) == 3
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or (positive and any(v <= 0 for v in value)):
        kind = "three positive numbers" if positive else "three numbers"
        raise fail(source, field, f"must be {kind}, got {value!r}")
    return [float(v) for v in value]


def validate_image(image: Any, source: str) -> None:
    """Check the image section's fields and values."""
    _check_fields(image, IMAGE_FIELDS, source, "image")
    if not isinstance(image.get("timm_model"), str) or not image["timm_model"]:
        raise fail(source, "image.timm_model", "required: the name of a timm model")
    if not isinstance(image.get("timm_kwargs", {}), Mapping):
        raise fail(source, "image.timm_kwargs", "must be an object of keyword arguments for timm.create_model")
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
                raise fail(source, f"text.{key}", "conflicts with text.hf_dir (the encoder's config sets it)")
        if "hf_dir" in text and not isinstance(text["hf_dir"], str):
            raise fail(source, "text.hf_dir", "must be a directory path")
    else:
        _choice(text.get("arch", "bert"), TEXT_ARCHS, source, "text.arch")
        for key in ("num_layers", "hidden_size", "num_heads"):
            if key not in text:
                raise fail(source, f"text.{key}", "required (or give text.hf_dir)")
            _int(text[key], source, f"text.{key}")
        if text["hidden_size"] % text["num_heads"]:
            raise fail(source, "text.num_heads", f"must divide hidden_size {text['hidden_size']}")
        if "intermediate_size" in text:
            _int(text["intermediate_size"], source, "text.intermediate_size")
        dropout = text.get("dropout", 0.0)
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise fail(source, "text.dropout", f"must be a number in [0, 1), got {dropout!r}")
    if "max_length" in text:
        _int(text["max_length"], source, "text.max_length", minimum=2)
    _choice(text.get("pooling", "mean"), POOLINGS, source, "text.pooling")


def _validate_resolved_fields(cfg: Mapping[str, Any], source: str) -> None:
    """A resolved architecture must carry every value build_student filled in."""
    if not isinstance(cfg["embed_dim"], int):
        raise fail(source, "embed_dim", "must be an integer in a resolved architecture")
    grid, channels = cfg.get("fmap_grid"), cfg.get("fmap_channels")
    if (grid is None) != (channels is None):
        raise fail(source, "fmap_grid", "fmap_channels and fmap_grid must both be set or both be null")
    if channels is not None:
        _int(channels, source, "fmap_channels")
        if not isinstance(grid, list | tuple) or len(grid) != 2:
            raise fail(source, "fmap_grid", f"must be [height, width], got {grid!r}")
        _int(grid[0], source, "fmap_grid[0]")
        _int(grid[1], source, "fmap_grid[1]")
    for key in ("vocab_size", "pad_id", "max_length", "pooling"):
        if key not in cfg["text"]:
            raise fail(source, f"text.{key}", "missing from a resolved architecture")
    _int(cfg["text"]["vocab_size"], source, "text.vocab_size")
    _int(cfg["text"]["pad_id"], source, "text.pad_id", minimum=0)
    for key in ("image_size", "mean", "std"):
        if key not in cfg["image"]:
            raise fail(source, f"image.{key}", "missing from a resolved architecture")


def validate_student_config(cfg: Any, source: str, resolved: bool = False) -> dict[str, Any]:
    """Check a student architecture (a JSON's content, or a resolved Student.arch) and return a deep copy."""
    allowed = TOP_FIELDS | (RESOLVED_TOP_FIELDS if resolved else frozenset())
    _check_fields(cfg, allowed, source, "")
    for key in ("embed_dim", "image", "text"):
        if key not in cfg:
            raise fail(source, key, "required")
    embed_dim = cfg["embed_dim"]
    if embed_dim != "teacher":
        _int(embed_dim, source, "embed_dim")
    validate_image(cfg["image"], source)
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


def _agree(name: str, from_arch: Any, from_arg: Any, source: str) -> Any:
    """One value given by the architecture and/or an argument: they must agree when both are set."""
    if from_arch is not None and from_arg is not None and from_arch != from_arg:
        raise fail(source, name, f"the architecture says {from_arch!r} but {from_arg!r} was passed")
    return from_arg if from_arg is not None else from_arch


def _resolve_embed_dim(value: int | str, embed_dim: int | None, source: str) -> int:
    """'teacher' takes the argument; an integer must match it when given."""
    if value == "teacher":
        if embed_dim is None:
            raise fail(source, "embed_dim", "is 'teacher': pass embed_dim (the teacher's embedding width)")
        return int(embed_dim)
    return int(_agree("embed_dim", value, embed_dim, source))


def resolve_image(image: Mapping[str, Any]) -> dict[str, Any]:
    """Fill preprocessing defaults from timm's pretrained config of the model (else CLIP's)."""
    timm = require("timm")
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
        raise fail(source, "text", "vocab_size is required (the tokenizer's vocabulary size)")
    _int(vocab_size, source, "vocab_size")
    _int(pad_id, source, "pad_id", minimum=0)
    if pad_id >= vocab_size:
        raise fail(source, "pad_id", f"{pad_id} is outside the vocabulary of {vocab_size}")
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
        raise fail(source, "text.hf_dir", f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    config = require("transformers").AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    if "arch" in text and family_of_type(text["arch"]) != family_of_type(config.model_type):
        raise fail(source, "text.arch", f"{text['arch']!r} but {hf_dir} holds a {config.model_type!r} model")
    model_vocab = int(config.vocab_size)
    if vocab_size is not None and vocab_size > model_vocab:
        raise fail(source, "text.hf_dir", f"tokenizer vocabulary {vocab_size} exceeds the encoder's {model_vocab}")
    config_pad = getattr(config, "pad_token_id", None)
    max_length = text.get("max_length", DEFAULT_MAX_LENGTH)
    capacity = _position_capacity(config)
    if capacity is not None and max_length > capacity:
        raise fail(source, "text.max_length", f"{max_length} exceeds the encoder's {capacity} positions")
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


def resolve_arch(
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
        raise fail(source, "fmap_grid", "fmap_channels and fmap_grid must be given together (teacher feature map)")
    return {
        "name": Path(source).stem if source.endswith(".json") else None,
        "embed_dim": _resolve_embed_dim(cfg["embed_dim"], embed_dim, source),
        "fmap_channels": int(fmap_channels) if fmap_channels is not None else None,
        "fmap_grid": [int(fmap_grid[0]), int(fmap_grid[1])] if fmap_grid is not None else None,
        "image": resolve_image(cfg["image"]),
        "text": _resolve_text(cfg["text"], vocab_size, pad_id, source),
    }
