"""The open_clip backend: CLIPs with a ViT, ModifiedResNet or timm image tower.

Specs: ``openclip:MODEL@TAG`` (an open_clip architecture + pretrained tag; the weights come through the Hugging Face
cache, so they load offline once cached), ``openclip:MODEL@random`` (random init; MODEL may also be a dcclip teacher
JSON name or path), ``openclip:/path/ckpt.pt#ARCH`` (a local checkpoint for an open_clip architecture, a dcclip teacher
JSON under ``configs/models/teachers`` or a JSON in open_clip's model-config format), ``openclip:/path/to/dir`` (a
directory with ``open_clip_config.json`` + weights, open_clip's ``local-dir:``) and ``openclip:hf-hub:ORG/REPO``.

Feature maps: for ViTs the patch tokens after the last block, with ``ln_post`` applied when open_clip applies it to the
tokens the pooled embedding is read from; for ModifiedResNet the last stage before ``attnpool``; for timm towers the
trunk's last feature map (final norm applied for token models that normalise every token before pooling).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import pickle
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dcclip.models.teacher_spec import OPENCLIP_HUB_PREFIX, RANDOM_TAG, TeacherSpec, TeacherSpecError
from dcclip.models.teachers.base import Teacher, channel_triple, supported_option
from dcclip.models.teachers.hub import TeacherLoadError, brief, download_hint, offline_note, require
from dcclip.runtime.preprocess import OPENAI_MEAN, OPENAI_STD, Preprocess

OPENCLIP_DIR_CONFIG = "open_clip_config.json"


class OpenClipTeacher(Teacher):
    """An open_clip CLIP (ViT, ModifiedResNet or timm image tower)."""

    def __init__(self, spec: str, model: nn.Module, tokenizer: Callable[[list[str]], Tensor]) -> None:
        super().__init__(spec, preprocess_from_openclip(model.visual.preprocess_cfg, spec))
        self.model = model
        self.tokenizer = tokenizer
        self._finish()

    def _image_forward(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """Embedding and last feature map from one pass through the visual tower."""
        visual = self.model.visual
        if not hasattr(visual, "forward_intermediates"):
            return visual(pixels), None
        norm = _openclip_fmap_norm(visual)
        out = visual.forward_intermediates(pixels, indices=1, normalize_intermediates=norm, output_fmt="NCHW")
        return out["image_features"], out["image_intermediates"][-1]

    def _text_forward(self, texts: list[str]) -> Tensor:
        """open_clip's tokenizer (pads / truncates to the context length), then the text tower."""
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def _openclip_fmap_norm(visual: nn.Module) -> bool:
    """Whether the pooled embedding is read from normalised tokens, so the feature map gets that final norm too."""
    if hasattr(visual, "ln_post"):  # open_clip ViT: ln_post on all tokens unless it pools (or attn-pools) first
        return getattr(visual, "attn_pool", None) is None and not getattr(visual, "final_ln_after_pool", False)
    trunk = getattr(visual, "trunk", None)  # timm tower: ViT-style trunks normalise every token before pooling
    if trunk is None:
        return False
    token_norm = getattr(trunk, "norm", None)
    pooled_norm = getattr(trunk, "fc_norm", None)
    return (
        isinstance(token_norm, nn.Module)
        and not isinstance(token_norm, nn.Identity)
        and (pooled_norm is None or isinstance(pooled_norm, nn.Identity))
    )


def preprocess_from_openclip(cfg: Mapping[str, Any], spec: str = "") -> Preprocess:
    """Map open_clip's ``visual.preprocess_cfg`` (size, mean, std, interpolation, resize_mode) onto Preprocess."""
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise TeacherLoadError(f"teacher {spec!r}: non-square input size {tuple(size)} is not supported")
        size = size[0]
    resize_mode = supported_option(cfg.get("resize_mode", "shortest"), ("shortest", "squash"), "shortest", spec)
    interpolation = supported_option(cfg.get("interpolation", "bicubic"), ("bicubic", "bilinear"), "bicubic", spec)
    return Preprocess(
        image_size=int(size),
        mean=channel_triple(cfg.get("mean", OPENAI_MEAN)),
        std=channel_triple(cfg.get("std", OPENAI_STD)),
        resize_mode=resize_mode,
        interpolation=interpolation,
    )


def load(spec: TeacherSpec) -> OpenClipTeacher:
    """Create the open_clip model for a parsed spec and wrap it with its tokenizer."""
    open_clip = require("open_clip")
    name, kwargs = _openclip_model_args(spec)
    try:
        model = open_clip.create_model(name, device="cpu", precision="fp32", **kwargs)
    except pickle.UnpicklingError as exc:
        raise TeacherLoadError(_unsafe_checkpoint_message(spec, exc)) from exc
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as exc:
        raise TeacherLoadError(f"teacher {spec.raw!r}: open_clip could not build the model: {brief(exc)}") from exc
    tokenizer = open_clip.get_tokenizer(name)
    return OpenClipTeacher(spec.raw, model, tokenizer)


def _unsafe_checkpoint_message(spec: TeacherSpec, exc: BaseException) -> str:
    """Why a checkpoint was refused by torch.load(weights_only=True), and how to turn it into one that loads."""
    path = spec.pretrained or spec.model
    return (
        f"teacher {spec.raw!r}: {path} holds Python objects besides tensors (a pickled model, optimizer or training "
        "arguments), so open_clip's safe loader (torch.load weights_only=True) refused it: unpickling it could run "
        "code. If you trust the file, convert it once to plain weights and point the spec at the result, e.g. "
        'python -c "import sys, torch; c = torch.load(sys.argv[1], weights_only=False); '
        "torch.save(c.get('state_dict', c), sys.argv[2])\" "
        f"{path} weights.pt (a full pickled model needs its .state_dict()). Refused: {brief(exc, 300)}"
    )


def _openclip_model_args(spec: TeacherSpec) -> tuple[str, dict[str, Any]]:
    """(open_clip model name, create_model kwargs) for each weight source; fetches hub weights first."""
    if spec.source == "dir":
        return f"local-dir:{spec.pretrained}", {"require_pretrained": True}
    if spec.source == "hub":
        _fetch_openclip_hub(spec)
        return spec.pretrained, {"require_pretrained": True}
    name, preprocess_cfg = _openclip_arch(spec)
    kwargs: dict[str, Any] = {"force_preprocess_cfg": preprocess_cfg} if preprocess_cfg else {}
    if spec.source == "file":
        return name, {**kwargs, "pretrained": spec.pretrained, "require_pretrained": True}
    if spec.source == "tag":
        _fetch_openclip_tag(spec, name)
        return name, {"pretrained": spec.pretrained, "require_pretrained": True}
    return name, {**kwargs, "pretrained": None, "pretrained_image": False, "pretrained_text": False}


def _openclip_arch(spec: TeacherSpec) -> tuple[str, dict[str, Any]]:
    """Resolve ARCH to a name open_clip knows: a built-in, or a dcclip teacher JSON registered under a unique name."""
    import open_clip

    if spec.model in open_clip.list_models():
        return spec.model, {}
    from dcclip.models.registry import get_model_config

    try:
        cfg = get_model_config(spec.model, "teacher")
    except (ValueError, OSError) as exc:
        raise TeacherSpecError(
            f"teacher spec {spec.raw!r}: {spec.model!r} is neither an open_clip architecture nor a dcclip teacher "
            f"JSON ({exc})"
        ) from exc
    preprocess_cfg = cfg.pop("preprocess_cfg", {})
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in cfg]
    if missing:
        raise TeacherSpecError(f"teacher spec {spec.raw!r}: architecture {spec.model!r} lacks {', '.join(missing)}")
    return _register_openclip_config(Path(spec.model).stem, cfg), preprocess_cfg


_CONFIG_DIR: list[Path] = []


def _register_openclip_config(stem: str, cfg: dict[str, Any]) -> str:
    """Register a model-config dict with open_clip under a content-hashed name that cannot clash with built-ins."""
    import open_clip

    text = json.dumps(cfg, sort_keys=True, indent=1)
    name = f"dcclip-{stem}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if name not in open_clip.list_models():
        if not _CONFIG_DIR:
            _CONFIG_DIR.append(Path(tempfile.mkdtemp(prefix="dcclip-openclip-configs-")))
            atexit.register(shutil.rmtree, _CONFIG_DIR[0], ignore_errors=True)
        path = _CONFIG_DIR[0] / f"{name}.json"
        path.write_text(text, encoding="utf-8")
        open_clip.add_model_config(path)
    return name


def _fetch_openclip_tag(spec: TeacherSpec, name: str) -> None:
    """Check the tag and fetch its weights into the cache, failing fast and clearly when offline."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(name, spec.pretrained)
    if not cfg:
        tags = ", ".join(list_pretrained_tags_by_model(name)) or "none"
        raise TeacherSpecError(
            f"teacher spec {spec.raw!r}: unknown pretrained tag {spec.pretrained!r} for {spec.model} "
            f"(known tags: {tags}; or use @{RANDOM_TAG})"
        )
    try:
        download_pretrained(cfg)
    except Exception as exc:  # hub / network errors come in many types; all mean "weights unavailable"
        repo = "/".join(cfg.get("hf_hub", "").strip("/").split("/")[:2]) or cfg.get("url", "")
        arch = f"{name}-quickgelu" if cfg.get("quick_gelu") and not name.endswith("-quickgelu") else name
        raise TeacherLoadError(
            f"weights for {spec.raw!r} (open_clip {name}, tag {spec.pretrained!r}) are not available{offline_note()}: "
            f"{brief(exc)}. "
            + download_hint(repo, "which fills the Hugging Face cache so this spec then loads offline; ")
            + f"or pass a local checkpoint: openclip:/path/to/open_clip_pytorch_model.bin#{arch}"
        ) from exc


def _fetch_openclip_hub(spec: TeacherSpec) -> None:
    """Fetch an ``hf-hub:`` open_clip config and weights, failing clearly (open_clip only warns on missing weights)."""
    from open_clip.pretrained import download_pretrained_from_hf

    repo = spec.pretrained[len(OPENCLIP_HUB_PREFIX) :]
    try:
        download_pretrained_from_hf(repo, filename=OPENCLIP_DIR_CONFIG)
        download_pretrained_from_hf(repo)
    except Exception as exc:  # hub / network errors come in many types; all mean "model unavailable"
        raise TeacherLoadError(
            f"open_clip model {repo!r} of {spec.raw!r} is not available{offline_note()}: {brief(exc)}. "
            + download_hint(repo, "which fills the Hugging Face cache so this spec then loads offline")
        ) from exc
