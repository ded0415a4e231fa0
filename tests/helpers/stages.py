"""Small helpers shared by stage tests."""

from __future__ import annotations

from pathlib import Path

from dcclip.config import load_config
from dcclip.stages.cache_teacher import run as cache_teacher


def cache(toy_world: Path, teacher_spec: str, out: Path) -> Path:
    """Cache teacher features for the toy world's training shards."""
    cfg = load_config(
        None, [f"data.train={toy_world / 'train'}", f"teacher.spec={teacher_spec}", "teacher.batch_size=32"]
    )
    cache_teacher(cfg, out)
    return out
