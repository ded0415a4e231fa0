"""Building students: a resolved architecture -> timm trunk + Hugging Face encoder -> ``Student``; the preprocessing
an architecture implies; parameter counts."""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from dcclip.models.students.arch import (
    fail,
    load_student_config,
    require,
    resolve_arch,
    resolve_image,
    validate_image,
    validate_student_config,
)
from dcclip.models.students.modules import LOGIT_SCALE_INIT, ImageStudent, Student, TextStudent
from dcclip.runtime.preprocess import Preprocess

log = logging.getLogger(__name__)


def _create_trunk(image: Mapping[str, Any], pretrained: bool, source: str) -> nn.Module:
    """The timm model without classifier; pretrained weights must be cached when the hub is offline."""
    timm = require("timm")
    name = image["timm_model"]
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise fail(source, "image.timm_model", f"{name!r} is not a timm model{hint}")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **image["timm_kwargs"])
    except TypeError as exc:
        raise fail(source, "image.timm_kwargs", f"rejected by timm.create_model({name!r}): {exc}") from exc
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
        raise fail(source, "image.image_size", msg) from exc


def _fresh_text_config(text: Mapping[str, Any]) -> Any:
    """A transformers config for a randomly initialised BERT / XLM-R encoder of the given sizes."""
    transformers = require("transformers")
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
    model_class = require("transformers.models.auto.modeling_auto").MODEL_MAPPING[type(config)]
    kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class).parameters else {}
    if weights_dir is not None:
        return model_class.from_pretrained(weights_dir, config=config, local_files_only=True, **kwargs)
    return model_class(config, **kwargs)


def _build_text(arch: Mapping[str, Any], load_weights: bool) -> TextStudent:
    """The text tower of a resolved architecture; hf_dir weights are loaded only when building, not rebuilding."""
    text = arch["text"]
    if "hf_config" in text:
        config_class = require("transformers").CONFIG_MAPPING[text["hf_config"]["model_type"]]
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
    resolved = resolve_arch(cfg, source, embed_dim, fmap_channels, fmap_grid, vocab_size, pad_id)
    image = _build_image(resolved, pretrained, source)
    text = _build_text(resolved, load_weights=True)
    _log_text_cost(text, resolved["text"].get("vocab_size") or 0)
    return Student(image, text, resolved, logit_scale_init)


def _log_text_cost(text: nn.Module, vocab_size: int) -> None:
    """Say what the tokenizer costs: a 250k-piece vocabulary makes the token table most of the text tower."""
    params = _numel(text)
    table = next((m.weight.numel() for m in text.modules() if isinstance(m, nn.Embedding)), 0)  # token embeddings
    share = table / params if params else 0.0
    line = "text tower: %.1fM parameters (%.0f MB fp32), %.0f%% of them the token table of a %d-piece vocabulary"
    args = (params / 1e6, params * 4 / 2**20, 100 * share, vocab_size)
    if share > 0.5 and vocab_size > 64000:
        log.warning(line + "; a tokenizer trained on your shards' languages (dcclip tokenizer train --vocab-size "
                    "32000) shrinks it", *args)  # fmt: skip
    else:
        log.info(line, *args)


def rebuild_student(arch: Mapping[str, Any]) -> Student:
    """Rebuild a student from its resolved ``Student.arch`` alone (random weights; load a state dict after)."""
    source = "<resolved student arch>"
    resolved = validate_student_config(arch, source, resolved=True)
    resolved["image"] = resolve_image(resolved["image"])
    return Student(_build_image(resolved, False, source), _build_text(resolved, load_weights=False), resolved)


def student_preprocess(arch: str | Path | Mapping[str, Any]) -> Preprocess:
    """The image preprocessing a student was (or will be) trained with, from its architecture."""
    if isinstance(arch, Mapping):
        validate_image(arch.get("image"), "<student arch dict>")
        image = arch["image"]
    else:
        image = load_student_config(arch)[0]["image"]
    return Preprocess.from_config(resolve_image(image))


def _numel(module: nn.Module | None) -> int:
    """Number of parameters of a module (0 for None)."""
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def count_parameters(student: Student) -> dict[str, int]:
    """Parameter counts: image (trunk + projection), text, adapter (training only) and what gets deployed."""
    image = _numel(student.image.trunk) + _numel(student.image.proj)
    text = _numel(student.text)
    adapter = _numel(student.image.adapter)
    return {"image": image, "text": text, "adapter": adapter, "total_deployed": image + text}
