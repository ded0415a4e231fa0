"""Stage 1, ``dcclip distill``: the student learns the teacher's feature maps and embeddings in every language."""

from __future__ import annotations

from dcclip.config import RunConfig
from dcclip.stages.build import run_stage


def run(cfg: RunConfig) -> dict:
    """Train a stage-1 student from ``cfg``; uses cached teacher features when the data has them."""
    if cfg.stage != "distill":
        raise ValueError(f"`dcclip distill` runs stage 'distill', but the config says stage={cfg.stage!r}")
    return run_stage(cfg)
