"""The M-CLIP backend (``mclip:/path/dir``, text side only): a Hugging Face text encoder + ``projection.safetensors`` +
``mclip_config.json``, the Multilingual-CLIP form, projecting captions into a CLIP teacher's embedding space."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dcclip.models.teacher_spec import TeacherSpec
from dcclip.models.teachers.hf import hf_text_max_length, tokenize
from dcclip.models.teachers.hub import TeacherLoadError, hf_call, require

MCLIP_CONFIG = "mclip_config.json"
MCLIP_PROJECTION = "projection.safetensors"
MCLIP_POOLING = ("mean", "cls")


class MClipTextEncoder(nn.Module):
    """A Hugging Face text encoder + linear projection into a CLIP embedding space (Multilingual-CLIP form)."""

    def __init__(self, spec: str, encoder: nn.Module, tokenizer: Any, projection: nn.Linear, pooling: str) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.projection = projection
        self.pooling = pooling
        self.embed_dim = int(projection.out_features)
        self.max_length = hf_text_max_length(tokenizer, encoder.config)

    def _text_forward(self, texts: list[str]) -> Tensor:
        """Encode, pool (mask-weighted mean or CLS) and project; unnormalised."""
        batch = tokenize(self.tokenizer, texts, self.max_length, self.projection.weight.device)
        hidden = self.encoder(**batch).last_hidden_state
        if self.pooling == "cls":
            return self.projection(hidden[:, 0])
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return self.projection((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def load(spec: TeacherSpec) -> MClipTextEncoder:
    """Load ``mclip_config.json``, the text encoder, its tokenizer and ``projection.safetensors`` from a directory."""
    transformers = require("transformers")
    root = Path(spec.model)
    cfg = _read_mclip_config(root, spec)
    encoder = hf_call(spec, transformers.AutoModel.from_pretrained, str(root), dtype=torch.float32)
    tokenizer = hf_call(spec, transformers.AutoTokenizer.from_pretrained, str(root))
    projection = _load_projection(root / MCLIP_PROJECTION, int(encoder.config.hidden_size), cfg, spec)
    return MClipTextEncoder(spec.raw, encoder, tokenizer, projection, cfg["pooling"])


def _read_mclip_config(root: Path, spec: TeacherSpec) -> dict[str, Any]:
    """Read and check ``mclip_config.json`` ({"pooling": "mean"|"cls", "embed_dim": D})."""
    path = root / MCLIP_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TeacherLoadError(f"teacher {spec.raw!r}: cannot read {path}: {exc}") from exc
    cfg.setdefault("pooling", "mean")
    if cfg["pooling"] not in MCLIP_POOLING:
        raise TeacherLoadError(f"teacher {spec.raw!r}: {path}: pooling must be one of {MCLIP_POOLING}")
    return cfg


def _load_projection(path: Path, hidden: int, cfg: Mapping[str, Any], spec: TeacherSpec) -> nn.Linear:
    """The [D, H] projection (optional bias) from safetensors, checked against the encoder and the config."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise TeacherLoadError(f"teacher {spec.raw!r}: projection weights {path} do not exist")
    tensors = load_file(str(path))
    weight = tensors.get("weight")
    if weight is None or weight.ndim != 2 or weight.shape[1] != hidden:
        shape = None if weight is None else tuple(weight.shape)
        raise TeacherLoadError(f"teacher {spec.raw!r}: {path}: 'weight' must be [D, {hidden}], got {shape}")
    if cfg.get("embed_dim") not in (None, weight.shape[0]):
        raise TeacherLoadError(f"teacher {spec.raw!r}: embed_dim {cfg['embed_dim']} != projection {weight.shape[0]}")
    bias = tensors.get("bias")
    projection = nn.Linear(hidden, weight.shape[0], bias=bias is not None)
    projection.load_state_dict({"weight": weight, **({"bias": bias} if bias is not None else {})})
    return projection.float()
