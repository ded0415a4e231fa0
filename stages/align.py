"""Stage 2, ``dcclip align``: symmetric InfoNCE between student image and text embeddings over all languages."""

from __future__ import annotations

from dcclip.config import RunConfig
from dcclip.stages.build import run_stage


def run(cfg: RunConfig) -> dict:
    """Align a stage-1 student (``train.init``) contrastively; distillation losses may stay on as a regulariser."""
    if cfg.stage != "align":
        raise ValueError(f"`dcclip align` runs stage 'align', but the config says stage={cfg.stage!r}")
    if cfg.loss.contrastive <= 0:
        raise ValueError("stage 2 needs loss.contrastive > 0")
    if not cfg.train.init and cfg.train.resume != "auto" and not cfg.train.resume:
        raise ValueError("stage 2 starts from a stage-1 checkpoint: pass --init DIR (or train.init=DIR)")
    return run_stage(cfg)
