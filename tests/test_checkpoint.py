"""Checkpoints are read without running code from them: the trainer state loads as tensors and plain values only."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dcclip import checkpoint as ckpt


class _Payload:
    """Unpickling this runs code: what a hostile trainer_state.pt would carry."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


def _checkpoint_dir(tmp_path, state) -> ckpt.Path:
    model = torch.nn.Linear(2, 2)
    return ckpt.write_checkpoint(tmp_path / "run", 1, model, {"arch": "x"}, state)


def test_rng_state_round_trips_through_a_safe_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = {"rng": ckpt.rng_state(), "step": 1}
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = _checkpoint_dir(tmp_path, state)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.read_checkpoint(path).trainer_state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_state_that_would_run_code_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _checkpoint_dir(tmp_path, {"step": 1})
    torch.save({"step": 1, "evil": _Payload()}, path / ckpt.STATE_FILE)
    with pytest.raises(ckpt.CheckpointError, match=r"trainer_state\.pt.*refused.*train\.trust_state=true"):
        ckpt.read_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_an_old_state_with_numpy_arrays_needs_the_trust_flag(tmp_path):
    path = _checkpoint_dir(tmp_path, {"step": 1})
    torch.save({"step": 1, "rng": {"numpy": np.random.get_state()}}, path / ckpt.STATE_FILE)
    with pytest.raises(ckpt.CheckpointError, match="older dcclip"):
        ckpt.read_checkpoint(path)
    state = ckpt.read_checkpoint(path, trusted=True).trainer_state
    assert state["step"] == 1 and state["rng"]["numpy"][0] == "MT19937"
