"""Geometric augmentation applied identically to every view of a batch (student pixels, teacher pixels).

Distillation with augmentation only works when the teacher is asked about the *augmented* image ("consistent
teaching", Beyer et al. 2022): the same random affine warp, expressed in relative coordinates, is applied to the
student's and the teacher's input whatever their resolutions, so the teacher's targets describe what the student sees.
Cached teacher features describe the unaugmented image and cannot be combined with it.

Policies:
- ``none``: pixels unchanged.
- ``flip``: horizontal flip with probability 1/2.
- ``geometric``: any rotation, flip, zoom in/out and shift, bilinear, borders reflected. Objects stay whole on average;
  colours are never touched (colour is what captions name).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

AUGMENT_POLICIES = ("none", "flip", "geometric")
ZOOM_RANGE = (0.75, 1.35)  # > 1 zooms out (objects get smaller), < 1 zooms in
MAX_SHIFT = 0.15  # fraction of the half-side


def affine_params(n: int, policy: str, rng: np.random.Generator) -> np.ndarray:
    """Per-sample 2x3 affine matrices [n, 2, 3] in normalised coordinates (identity for ``none``)."""
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    if policy == "none":
        return theta
    if policy == "flip":
        theta[:, 0, 0] = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        return theta
    if policy != "geometric":
        raise ValueError(f"unknown augmentation policy {policy!r}; choose from {', '.join(AUGMENT_POLICIES)}")
    angle = rng.uniform(0.0, 2 * math.pi, n)
    zoom = np.exp(rng.uniform(math.log(ZOOM_RANGE[0]), math.log(ZOOM_RANGE[1]), n))
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    cos, sin = np.cos(angle) * zoom, np.sin(angle) * zoom
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, :, 2] = rng.uniform(-MAX_SHIFT, MAX_SHIFT, (n, 2))
    return theta


def warp(pixels: Any, theta: Any, size: int | None = None) -> Any:
    """Apply [n, 2, 3] affine matrices to [n, C, H, W] float pixels (torch), reflecting at the borders; ``size``
    samples the warped view on a size x size grid instead of H x W (one resampling for warp and resize)."""
    import torch
    import torch.nn.functional as F

    theta = torch.as_tensor(theta, dtype=pixels.dtype)
    shape = list(pixels.shape) if size is None else [*pixels.shape[:2], size, size]
    grid = F.affine_grid(theta, shape, align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def augment_views(batch: dict[str, Any], policy: str, rng: np.random.Generator) -> dict[str, Any]:
    """Warp ``pixels`` and, with the same matrices, ``teacher_pixels`` of a collated batch (in place, returned)."""
    if policy == "none":
        return batch
    theta = affine_params(batch["pixels"].shape[0], policy, rng)
    for name in ("pixels", "teacher_pixels"):
        if name in batch:
            batch[name] = warp(batch[name], theta)
    return batch
