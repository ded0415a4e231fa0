"""The teacher interface every backend implements: a frozen, eval-locked CLIP with L2-normalised image and text
embeddings and an image feature map, its fingerprint for cached features, and the preprocessing helpers backends share.

Feature maps are ``[B, C, h, w]`` float32 (each backend's module says which layer it reads). Every teacher is frozen
(``requires_grad=False``), locked in eval mode and runs under ``torch.no_grad()`` (not ``inference_mode``: its outputs
are targets inside autograd losses).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcclip.runtime.preprocess import Preprocess


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


def supported_option(value: Any, allowed: tuple[str, ...], fallback: str, spec: str) -> str:
    """A preprocessing option Preprocess can reproduce, else the closest one with a warning."""
    if value in allowed:
        return str(value)
    warnings.warn(
        f"teacher {spec!r}: preprocessing option {value!r} is not supported; using {fallback!r}", stacklevel=3
    )
    return fallback


def channel_triple(values: Any) -> tuple[float, float, float]:
    """Per-channel mean / std as three floats (a single value is repeated)."""
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    return tuple(values * 3 if len(values) == 1 else values[:3])  # type: ignore[return-value]
