"""Checkpoints as directories: model.safetensors, config.json, trainer_state.pt (+ tokenizer.json).

Builders return plain dicts; ``write_checkpoint`` puts them in a temporary directory and renames it, so a crash never
leaves half a checkpoint as the latest one. Only the last K are kept.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the layout names below are read by torch-free code (eval)
    import torch
    from torch import nn

from dcclip.io import atomic_dir

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def is_checkpoint_like(path: Path) -> bool:
    """A checkpoint directory (config and weights) or a run directory (holding ``checkpoints/``)."""
    return ((path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file()) or (path / CHECKPOINT_DIR).is_dir()


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not fit the run that tries to use it."""


@dataclass
class Checkpoint:
    """What a checkpoint directory holds, loaded."""

    path: Path
    config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any] | None


def rng_state() -> dict[str, Any]:
    """Every random generator a run touches, so a resumed run draws the same numbers; tensors and plain values only,
    so the state loads with ``torch.load(weights_only=True)``."""
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(_as_python_random_state(state["python"]))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        numpy_state = (numpy_state["name"], keys, numpy_state["pos"], numpy_state["has_gauss"],
                       numpy_state["cached_gaussian"])  # fmt: skip
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainer_state(
    optimizer: torch.optim.Optimizer, scheduler: Any, step: int, samples_seen: int, data_state: dict, world_size: int
) -> dict[str, Any]:
    """Everything besides the weights that a resumed run needs to continue exactly."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "samples_seen": samples_seen,
        "data": data_state,
        "rng": rng_state(),
        "world_size": world_size,
    }


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def write_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    config: dict[str, Any],
    state: dict[str, Any] | None,
    extra_files: dict[str, Path] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNNNN`` atomically and prune older ones beyond ``keep_last``."""
    import torch
    from safetensors.torch import save_model

    root = Path(run_dir) / CHECKPOINT_DIR
    final = root / step_dir_name(step)
    with atomic_dir(final) as tmp:  # re-running the same step (after a resume) replaces it whole
        save_model(model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps({**config, "step": step}, indent=2, ensure_ascii=False), "utf-8")
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
    prune_checkpoints(root, keep_last)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are never listed)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / MODEL_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(root: Path, keep_last: int) -> None:
    for old in list_checkpoints(root.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its latest checkpoint); errors say what was looked for."""
    path = Path(path)
    if (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: no checkpoint here (expected {MODEL_FILE} + {CONFIG_FILE}, or a run directory)")
    return latest


def read_config(path: str | Path) -> dict[str, Any]:
    """The config.json of a checkpoint (architecture, tokenizer, preprocessing, run config)."""
    path = resolve_checkpoint(path)
    try:
        return json.loads((path / CONFIG_FILE).read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: invalid JSON ({exc})") from exc


def _as_python_random_state(state: Any) -> tuple:
    """``random.setstate`` wants nested tuples; a state that went through a file may come back as lists."""
    version, internal, gauss = state
    return int(version), tuple(int(v) for v in internal), gauss


def read_trainer_state(path: Path, trusted: bool = False) -> dict[str, Any]:
    """The trainer state file of a checkpoint, loaded so that it cannot run code (tensors and plain values only).

    A file holding anything else (written by dcclip before 0.x, or by someone else) is refused, naming the file; with
    ``trusted`` (``train.trust_state=true``) it is loaded with full unpickling, for files you made yourself.
    """
    import torch

    file = Path(path) / STATE_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{file}: holds Python objects besides tensors and plain values (an older dcclip wrote it, or someone "
            "else did); loading it could run code, so it was refused. If you made this checkpoint yourself, resume "
            f"with train.trust_state=true. Detail: {str(exc).splitlines()[0]}"
        ) from exc


def read_checkpoint(path: str | Path, with_state: bool = True, trusted: bool = False) -> Checkpoint:
    """Load weights (and optionally the trainer state) of a checkpoint directory or a run's latest."""
    from safetensors.torch import load_file

    path = resolve_checkpoint(path)
    state = None
    if with_state and (path / STATE_FILE).is_file():
        state = read_trainer_state(path, trusted)
    return Checkpoint(path, read_config(path), load_file(str(path / MODEL_FILE)), state)


def load_weights(model: nn.Module, checkpoint: Checkpoint, strict: bool = True) -> None:
    """Put checkpoint weights into ``model``; a mismatch names the missing and unexpected keys."""
    own = model.state_dict()
    # safetensors drops tied duplicates; fill them from the tensor they share memory with.
    weights = {k: v for k, v in checkpoint.model_state.items() if k in own}
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in checkpoint.model_state if k not in own]
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{checkpoint.path}: weights do not fit this model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.load_state_dict(weights, strict=False)
