"""Frozen CLIP teachers behind one interface: open_clip, Hugging Face (CLIP / AltCLIP / Chinese-CLIP) and composites.

A teacher is chosen by a spec string (``teacher.spec`` in the run config):

- ``openclip:MODEL@TAG``             open_clip architecture + pretrained tag (``openclip:ViT-B-32@openai``); the
                                     weights come through the Hugging Face cache, so they load offline once cached
- ``openclip:MODEL@random``          random init (benchmarks); MODEL may also be a dcclip teacher JSON name or path
- ``openclip:/path/ckpt.pt#ARCH``    a local checkpoint (.pt/.pth/.bin/.safetensors) for ARCH: an open_clip
                                     architecture name, a dcclip teacher JSON name (``configs/models/teachers``)
                                     or a path to a JSON in open_clip's model-config format
- ``openclip:/path/to/dir``          a directory with ``open_clip_config.json`` + weights (open_clip's ``local-dir:``)
- ``openclip:hf-hub:ORG/REPO``       an open_clip model on the Hugging Face Hub
- ``hf:/path/to/dir`` or ``hf:ORG/NAME``   transformers ``CLIPModel`` / ``AltCLIPModel`` / ``ChineseCLIPModel``
- ``mclip:/path/to/dir``             (text side only, ``teacher.text_spec``) a Hugging Face text encoder +
                                     ``projection.safetensors`` + ``mclip_config.json`` (Multilingual-CLIP form)

``teacher.text_spec`` may also be any ``openclip:``/``hf:`` CLIP spec, whose text tower then replaces the image
teacher's. Every teacher is frozen (``requires_grad=False``), locked in eval mode and runs under ``torch.no_grad()``
(not ``inference_mode``: its outputs are targets inside autograd losses).

Feature maps: for open_clip ViTs the patch tokens after the last block with ``ln_post`` applied when open_clip applies
it to the tokens the pooled embedding is read from; for ModifiedResNet the last stage before ``attnpool``; for timm
towers the trunk's last feature map (final norm applied for token models that normalise every token before pooling).
For Hugging Face models the vision model's last hidden state without CLS, through ``post_layernorm`` (the norm the
pooled output goes through). All feature maps are ``[B, C, h, w]`` float32.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import json
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcclip.models.teacher_spec import (
    BACKENDS,
    HF,
    MCLIP,
    OPENCLIP,
    OPENCLIP_HUB_PREFIX,
    RANDOM_TAG,
    TeacherSpec,
    TeacherSpecError,
    parse_teacher_spec,
)
from dcclip.runtime.preprocess import OPENAI_MEAN, OPENAI_STD, Preprocess

__all__ = [
    "BACKENDS",
    "CompositeTeacher",
    "HFClipTeacher",
    "MClipTextEncoder",
    "OpenClipTeacher",
    "Teacher",
    "TeacherLoadError",
    "TeacherSpec",
    "TeacherSpecError",
    "load_teacher",
    "parse_teacher_spec",
    "preprocess_from_hf",
    "preprocess_from_openclip",
    "weights_digest",
]

OPENCLIP_DIR_CONFIG = "open_clip_config.json"
MCLIP_CONFIG = "mclip_config.json"
MCLIP_PROJECTION = "projection.safetensors"
MCLIP_POOLING = ("mean", "cls")
HF_MODEL_CLASSES = {"clip": "CLIPModel", "altclip": "AltCLIPModel", "chinese_clip": "ChineseCLIPModel"}
# Text encoders whose position ids start after the padding index (RoBERTa family), which shortens the usable length.
ROBERTA_STYLE_TEXT = ("roberta", "altclip_text_model")
HF_RESAMPLE = {2: "bilinear", 3: "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}
INSTALL_HINT = "pip install 'dcclip[train]'"


class TeacherLoadError(RuntimeError):
    """A well-formed teacher spec that cannot be loaded: missing files, weights not available offline, bad shapes."""


# --------------------------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------------------------


class Teacher(nn.Module):
    """A frozen, eval-locked CLIP teacher: L2-normalised image / text embeddings and an image feature map."""

    def __init__(self, spec: str, preprocess: Preprocess) -> None:
        super().__init__()
        self.spec = spec
        self.preprocess = preprocess
        self.embed_dim = 0
        self.fmap_channels: int | None = None
        self.fmap_grid: tuple[int, int] | None = None
        self._fingerprint: str | None = None

    def _image_forward(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """Backend hook, called under no_grad: (unnormalised embedding, feature map or None)."""
        raise NotImplementedError

    def _text_forward(self, texts: list[str]) -> Tensor:
        """Backend hook, called under no_grad: unnormalised text embeddings."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Device of the teacher's weights (inputs are moved there)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights (pixels are cast to it)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def encode_image(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """Preprocessed pixels [B, 3, S, S] -> (unit-norm embedding [B, D], feature map [B, C, h, w] or None)."""
        _check_pixels(pixels, self.preprocess.image_size, self.spec)
        with torch.no_grad():
            embedding, fmap = self._image_forward(pixels.to(self.device, self.dtype))
            embedding = F.normalize(embedding.float(), dim=-1)
            return embedding, None if fmap is None else fmap.float()

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Captions -> unit-norm embeddings [B, D], tokenised with the teacher's own tokenizer."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a sequence of strings, not a single string")
        texts = [str(text) for text in texts]
        with torch.no_grad():
            if not texts:
                return torch.zeros(0, self.embed_dim, device=self.device)
            return F.normalize(self._text_forward(texts).float(), dim=-1)

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """Alias of encode_image, so the teacher can be called like any module."""
        return self.encode_image(pixels)

    def fingerprint(self) -> str:
        """sha256 over spec, preprocessing and every weight: identifies this exact teacher for cached features."""
        if self._fingerprint is None:
            header = json.dumps({"spec": self.spec, "preprocess": self.preprocess.to_dict()}, sort_keys=True)
            digest = hashlib.sha256(header.encode("utf-8"))
            digest.update(weights_digest(self).encode("ascii"))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def train(self, mode: bool = True) -> Teacher:
        """Stay in eval mode whatever is asked, so dropout and norm statistics never change (eval-locked)."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Teacher:
        """Keep every parameter frozen whatever is asked: a teacher is never trained."""
        return super().requires_grad_(False)

    def _apply(self, fn: Callable, recurse: bool = True) -> Teacher:
        """Forget the cached fingerprint when weights are moved or cast (a dtype change changes the bytes)."""
        self._fingerprint = None
        return super()._apply(fn, recurse)

    def _freeze(self) -> None:
        """Freeze all parameters and lock eval mode."""
        for param in self.parameters():
            param.requires_grad_(False)
        self.train(False)

    def _finish(self) -> None:
        """Freeze, then read embedding dim and feature-map shape from one blank image (works for every backend)."""
        self._freeze()
        size = self.preprocess.image_size
        embedding, fmap = self.encode_image(torch.zeros(1, 3, size, size))
        self.embed_dim = int(embedding.shape[-1])
        if fmap is not None:
            self.fmap_channels = int(fmap.shape[1])
            self.fmap_grid = (int(fmap.shape[2]), int(fmap.shape[3]))

    def extra_repr(self) -> str:
        """Spec, embedding size and feature-map shape in the module's repr."""
        return f"spec={self.spec!r}, embed_dim={self.embed_dim}, fmap={self.fmap_channels}x{self.fmap_grid}"


def weights_digest(module: nn.Module) -> str:
    """sha256 over every state_dict tensor (name, dtype, shape, raw bytes), sorted by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def _check_pixels(pixels: Tensor, size: int, spec: str) -> None:
    """Refuse pixel batches that are not [B, 3, size, size], naming the teacher."""
    if not isinstance(pixels, Tensor) or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
        shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
        raise ValueError(f"teacher {spec!r} expects pixels of shape [B, 3, {size}, {size}], got {shape}")


def load_teacher(spec: str, text_spec: str = "", device: str | torch.device = "cpu") -> Teacher:
    """Build the frozen teacher for ``spec`` (plus a separate text teacher for ``text_spec``) on ``device``."""
    teacher = _load_clip(spec)
    if text_spec:
        teacher = CompositeTeacher(teacher, _load_text_side(text_spec))
    return teacher.to(torch.device(device))


def _load_clip(spec: str) -> Teacher:
    """An image+text teacher from an ``openclip:`` or ``hf:`` spec."""
    parsed = parse_teacher_spec(spec)
    if parsed.backend not in CLIP_LOADERS:
        raise TeacherSpecError(f"teacher spec {spec!r}: mclip: is a text-only teacher; pass it as teacher.text_spec")
    return CLIP_LOADERS[parsed.backend](parsed)


def _load_text_side(text_spec: str) -> nn.Module:
    """The text side of a composite teacher: a text-only backend (M-CLIP) or any CLIP teacher's text tower."""
    parsed = parse_teacher_spec(text_spec)
    if parsed.backend in TEXT_LOADERS:
        return TEXT_LOADERS[parsed.backend](parsed)
    return _load_clip(text_spec)


def _require(module: str) -> ModuleType:
    """Import an optional dependency, with an install hint when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"teachers need {module}: {INSTALL_HINT}") from exc


def _offline_note() -> str:
    """' (HF_HUB_OFFLINE=1 is set)' when the hub is switched off, so the message says why nothing was fetched."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return ""
    return " (HF_HUB_OFFLINE=1 is set)" if constants.HF_HUB_OFFLINE else ""


def _brief(exc: BaseException, limit: int = 800) -> str:
    """An exception's message, trimmed of trailing dots and cut to ``limit`` characters (the cause stays chained)."""
    text = str(exc).strip().rstrip(".")
    return text if len(text) <= limit else f"{text[:limit]} ... ({len(text) - limit} more characters)"


def _download_hint(repo: str, then: str, local_dir: bool = False) -> str:
    """How to fetch a hub repository once with network (into the HF cache, or into DIR with ``local_dir``)."""
    target = " --local-dir DIR" if local_dir else ""
    return (
        f"Download it once with network: `hf download {repo}{target}` (older huggingface_hub: "
        f"`huggingface-cli download {repo}{target}`), {then}"
    )


# --------------------------------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------------------------------


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
    resize_mode = _supported(cfg.get("resize_mode", "shortest"), ("shortest", "squash"), "shortest", spec)
    interpolation = _supported(cfg.get("interpolation", "bicubic"), ("bicubic", "bilinear"), "bicubic", spec)
    return Preprocess(
        image_size=int(size),
        mean=_triple(cfg.get("mean", OPENAI_MEAN)),
        std=_triple(cfg.get("std", OPENAI_STD)),
        resize_mode=resize_mode,
        interpolation=interpolation,
    )


def _supported(value: Any, allowed: tuple[str, ...], fallback: str, spec: str) -> str:
    """A preprocessing option Preprocess can reproduce, else the closest one with a warning."""
    if value in allowed:
        return str(value)
    warnings.warn(
        f"teacher {spec!r}: preprocessing option {value!r} is not supported; using {fallback!r}", stacklevel=3
    )
    return fallback


def _triple(values: Any) -> tuple[float, float, float]:
    """Per-channel mean / std as three floats (a single value is repeated)."""
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    return tuple(values * 3 if len(values) == 1 else values[:3])  # type: ignore[return-value]


def _load_openclip(spec: TeacherSpec) -> OpenClipTeacher:
    """Create the open_clip model for a parsed spec and wrap it with its tokenizer."""
    open_clip = _require("open_clip")
    name, kwargs = _openclip_model_args(spec)
    try:
        model = open_clip.create_model(name, device="cpu", precision="fp32", **kwargs)
    except pickle.UnpicklingError as exc:
        raise TeacherLoadError(_unsafe_checkpoint_message(spec, exc)) from exc
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as exc:
        raise TeacherLoadError(f"teacher {spec.raw!r}: open_clip could not build the model: {_brief(exc)}") from exc
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
        f"{path} weights.pt (a full pickled model needs its .state_dict()). Refused: {_brief(exc, 300)}"
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
            f"weights for {spec.raw!r} (open_clip {name}, tag {spec.pretrained!r}) are not available{_offline_note()}: "
            f"{_brief(exc)}. "
            + _download_hint(repo, "which fills the Hugging Face cache so this spec then loads offline; ")
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
            f"open_clip model {repo!r} of {spec.raw!r} is not available{_offline_note()}: {_brief(exc)}. "
            + _download_hint(repo, "which fills the Hugging Face cache so this spec then loads offline")
        ) from exc


# --------------------------------------------------------------------------------------------------------------------
# Hugging Face transformers
# --------------------------------------------------------------------------------------------------------------------


class HFClipTeacher(Teacher):
    """A transformers CLIPModel, AltCLIPModel or ChineseCLIPModel with its own tokenizer."""

    def __init__(self, spec: str, model: nn.Module, tokenizer: Any, preprocess: Preprocess) -> None:
        super().__init__(spec, preprocess)
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = _hf_text_max_length(tokenizer, model.config.text_config)
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
        batch = _tokenize(self.tokenizer, texts, self.max_length, self.device)
        out = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out if isinstance(out, Tensor) else out.pooler_output


def _tokens_to_grid(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Patch tokens [B, h*w, C] -> feature map [B, C, h, w]."""
    batch, count, channels = tokens.shape
    if count != grid[0] * grid[1]:
        raise TeacherLoadError(f"{count} patch tokens do not form a {grid[0]}x{grid[1]} grid")
    return tokens.transpose(1, 2).reshape(batch, channels, grid[0], grid[1]).contiguous()


def _tokenize(tokenizer: Any, texts: list[str], max_length: int, device: torch.device) -> dict[str, Tensor]:
    """Pad to the longest caption, truncate to the model's limit, move ids and mask to ``device``."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}


def _hf_text_max_length(tokenizer: Any, text_config: Any) -> int:
    """Longest input the text model accepts: its position table (less RoBERTa's offset) and the tokenizer's limit."""
    limit = int(getattr(text_config, "max_position_embeddings", 512))
    if any(kind in str(getattr(text_config, "model_type", "")) for kind in ROBERTA_STYLE_TEXT):
        limit -= int(getattr(text_config, "pad_token_id", 1) or 0) + 1
    model_max = getattr(tokenizer, "model_max_length", None)
    return min(limit, int(model_max)) if isinstance(model_max, int) and model_max > 0 else limit


def _load_hf(spec: TeacherSpec) -> HFClipTeacher:
    """Load config, model, tokenizer and image-processor settings from a local directory or the hub."""
    transformers = _require("transformers")
    config = _hf_call(spec, transformers.AutoConfig.from_pretrained, spec.model)
    class_name = HF_MODEL_CLASSES.get(config.model_type)
    if class_name is None:
        known = ", ".join(sorted(HF_MODEL_CLASSES))
        raise TeacherLoadError(f"teacher {spec.raw!r}: model_type {config.model_type!r} is not supported ({known})")
    model_class = getattr(transformers, class_name)
    model = _hf_call(spec, model_class.from_pretrained, spec.model, dtype=torch.float32)
    tokenizer = _hf_call(spec, transformers.AutoTokenizer.from_pretrained, spec.model)
    image_size = int(config.vision_config.image_size)
    preprocess = preprocess_from_hf(_hf_image_processor_dict(spec), image_size, spec.raw)
    return HFClipTeacher(spec.raw, model, tokenizer, preprocess)


def _hf_call(spec: TeacherSpec, load: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a transformers ``from_pretrained``; turn missing files / hub failures into TeacherLoadError with a hint."""
    try:
        return load(*args, **kwargs)
    except (OSError, ValueError) as exc:
        raise _hf_load_error(spec, exc) from exc


def _hf_load_error(spec: TeacherSpec, exc: BaseException) -> TeacherLoadError:
    """A TeacherLoadError naming the spec; for hub ids it says how to download the model."""
    if spec.source != "hub":
        return TeacherLoadError(f"teacher {spec.raw!r}: cannot load from {spec.model}: {_brief(exc)}")
    hint = _download_hint(spec.model, f"then use {spec.backend}:DIR", local_dir=True)
    where = f"{spec.model!r} is not a local directory and could not be fetched from the Hugging Face Hub"
    return TeacherLoadError(f"teacher {spec.raw!r}: {where}{_offline_note()}: {_brief(exc)}. {hint}")


def _hf_image_processor_dict(spec: TeacherSpec) -> dict[str, Any]:
    """The raw image-processor settings (preprocessor_config.json); {} with a warning when a local dir has none."""
    from transformers.image_processing_utils import ImageProcessingMixin

    try:
        return ImageProcessingMixin.get_image_processor_dict(spec.model)[0]
    except OSError as exc:
        if spec.source == "hub":
            raise _hf_load_error(spec, exc) from exc
        warnings.warn(f"teacher {spec.raw!r}: no image processor config ({exc}); using CLIP defaults", stacklevel=2)
        return {}


def preprocess_from_hf(cfg: Mapping[str, Any], image_size: int, spec: str = "") -> Preprocess:
    """Map a Hugging Face image-processor config onto Preprocess: shortest-side resize + centre crop, or squash."""
    resample = cfg.get("resample", 3)
    interpolation = HF_RESAMPLE.get(resample)
    if interpolation is None:
        interpolation = _supported(resample, ("bicubic", "bilinear"), "bicubic", spec)
    resize_mode, size = _hf_geometry(cfg, image_size, spec)
    if size != image_size:
        warnings.warn(f"teacher {spec!r}: processor crops to {size} but the model expects {image_size}", stacklevel=2)
    return Preprocess(
        image_size=size,
        mean=_triple(cfg.get("image_mean", OPENAI_MEAN)),
        std=_triple(cfg.get("image_std", OPENAI_STD)),
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


# --------------------------------------------------------------------------------------------------------------------
# Composite (M-CLIP form): image side from a CLIP teacher, text side from a multilingual text teacher
# --------------------------------------------------------------------------------------------------------------------


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
        self.max_length = _hf_text_max_length(tokenizer, encoder.config)

    def _text_forward(self, texts: list[str]) -> Tensor:
        """Encode, pool (mask-weighted mean or CLS) and project; unnormalised."""
        batch = _tokenize(self.tokenizer, texts, self.max_length, self.projection.weight.device)
        hidden = self.encoder(**batch).last_hidden_state
        if self.pooling == "cls":
            return self.projection(hidden[:, 0])
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return self.projection((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def _load_mclip(spec: TeacherSpec) -> MClipTextEncoder:
    """Load ``mclip_config.json``, the text encoder, its tokenizer and ``projection.safetensors`` from a directory."""
    transformers = _require("transformers")
    root = Path(spec.model)
    cfg = _read_mclip_config(root, spec)
    encoder = _hf_call(spec, transformers.AutoModel.from_pretrained, str(root), dtype=torch.float32)
    tokenizer = _hf_call(spec, transformers.AutoTokenizer.from_pretrained, str(root))
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


class CompositeTeacher(Teacher):
    """Image side from one CLIP teacher, text side from another text teacher in the same embedding space."""

    def __init__(self, image_teacher: Teacher, text_encoder: nn.Module) -> None:
        super().__init__(f"{image_teacher.spec} + {text_encoder.spec}", image_teacher.preprocess)
        if image_teacher.embed_dim != text_encoder.embed_dim:
            raise TeacherLoadError(
                f"image teacher {image_teacher.spec!r} embeds in {image_teacher.embed_dim} dims but text teacher "
                f"{text_encoder.spec!r} in {text_encoder.embed_dim}: they must share one embedding space"
            )
        self.image_teacher = image_teacher
        self.text_encoder = text_encoder
        self.embed_dim = image_teacher.embed_dim
        self.fmap_channels = image_teacher.fmap_channels
        self.fmap_grid = image_teacher.fmap_grid
        self._freeze()

    def _image_forward(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """Embedding and feature map from the image teacher."""
        return self.image_teacher._image_forward(pixels)

    def _text_forward(self, texts: list[str]) -> Tensor:
        """Embedding from the text teacher (its own tokenizer)."""
        return self.text_encoder._text_forward(texts)


# One table per role: a new backend is a parser branch in teacher_spec.py and one line here.
CLIP_LOADERS: dict[str, Callable[[TeacherSpec], Teacher]] = {OPENCLIP: _load_openclip, HF: _load_hf}
TEXT_LOADERS: dict[str, Callable[[TeacherSpec], nn.Module]] = {MCLIP: _load_mclip}
