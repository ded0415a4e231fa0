"""``train.precision=auto``: the pure rule on fake numbers, and the real loop choosing by a fake timer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dcclip import checkpoint as ckpt
from dcclip.config import ConfigError, OptimConfig, TrainConfig, load_config
from dcclip.engine import loop as engine_loop
from dcclip.engine.distributed import DistEnv
from dcclip.engine.precision import PrecisionChoice, bf16_support, decide_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the pure rule -----------------------------------------------------------------------------------------------
def test_bf16_is_chosen_only_when_fast_enough_and_close_enough():
    assert decide_precision(1.0, 0.5, 2.0, 2.01).precision == "bf16"
    slow = decide_precision(1.0, 0.9, 2.0, 2.0)
    assert slow.precision == "fp32" and "below the 1.20x" in slow.reason and slow.speedup == pytest.approx(1 / 0.9)
    far = decide_precision(1.0, 0.5, 2.0, 2.1)
    assert far.precision == "fp32" and "tolerance" in far.reason and far.loss_gap == pytest.approx(0.05)
    assert decide_precision(1.0, 0.5, 2.0, float("nan")).precision == "fp32"
    assert decide_precision(1.2, 1.0, 1.0, 1.0).precision == "bf16"  # exactly 1.2x passes


def test_cpu_bf16_units_come_from_the_flags():
    cpu = torch.device("cpu")
    assert bf16_support(cpu, {"avx512f", "amx_bf16"})[0]
    assert bf16_support(cpu, {"avx512_bf16"})[0]
    supported, why = bf16_support(cpu, {"avx2", "fma"})
    assert not supported and "no bf16 units" in why
    assert bf16_support(cpu, None)[0]  # unreadable flags: measure rather than guess


def test_config_accepts_auto_and_threads():
    cfg = load_config(None, ["train.precision=auto", "train.threads=3"])
    assert cfg.train.precision == "auto" and cfg.train.threads == "3"
    with pytest.raises(ConfigError, match=r"train\.threads"):
        load_config(None, ["train.threads=0"])
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_config(None, ["train.precision=fp16"])


# --- through the real loop ---------------------------------------------------------------------------------------
class TinyTask(nn.Module):
    """Linear + BatchNorm + dropout: buffers and RNG that timing must leave as they were; notes each step's dtype."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.2), nn.Linear(8, 1))
        self.dtypes: list[torch.dtype] = []

    def forward(self, batch):
        out = self.student(batch["x"])
        self.dtypes.append(out.dtype)
        return {"loss": (out.float() - batch["y"]).square().mean()}


class Batches:
    """Eight fixed batches an epoch; the position is saved so resume continues the stream."""

    def __init__(self):
        gen = torch.Generator().manual_seed(1)
        self.data = [{"keys": ["a"] * 8, "x": torch.randn(8, 4, generator=gen), "y": torch.randn(8, 1, generator=gen)}
                     for _ in range(8)]  # fmt: skip
        self.position = 0

    def __iter__(self):
        while self.position < len(self.data):
            self.position += 1
            yield self.data[self.position - 1]
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def fake_timer(fp32_s: float, bf16_s: float, bf16_loss_factor: float = 1.0, calls: list | None = None):
    """Runs the real step once and reports made-up seconds (the loss is the real one, scaled for bf16 if asked)."""

    def timer(precision, run_once):
        if calls is not None:
            calls.append(precision)
        loss = run_once()
        return (fp32_s, loss) if precision == "fp32" else (bf16_s, loss * bf16_loss_factor)

    return timer


def run(tmp_path: Path, precision: str, timer=None, steps: int = 3, resume: str = "") -> tuple:
    task = TinyTask()
    spec = engine_loop.FitSpec(
        run_dir=tmp_path,
        train=TrainConfig(
            out_dir=str(tmp_path),
            steps=steps,
            log_every=1,
            ckpt_every=1,
            precision=precision,
            resume=resume,
            threads="1",
        ),
        optim=OptimConfig(lr=1e-2, warmup_steps=1),
        checkpoint_config={"stage": "test"},
        precision_timer=timer,
    )
    return engine_loop.fit(task, Batches(), spec, DistEnv()), task


@pytest.fixture
def has_bf16_units(monkeypatch):
    monkeypatch.setattr(engine_loop, "cpu_flags", lambda: {"amx_bf16"})


def recorded(run_dir: Path) -> dict:
    state = torch.load(ckpt.latest_checkpoint(run_dir) / ckpt.STATE_FILE, weights_only=True)
    return state["precision"]


@pytest.mark.usefixtures("has_bf16_units")
def test_fp32_is_chosen_where_bf16_is_slow_and_training_is_unchanged(tmp_path):
    result, task = run(tmp_path / "auto", "auto", fake_timer(1.0, 0.95))
    assert result.precision["precision"] == "fp32" and "below" in result.precision["reason"]
    assert result.precision["fp32_s"] == 1.0 and result.precision["bf16_s"] == 0.95
    assert json.loads((tmp_path / "auto" / "precision.json").read_text())["precision"] == "fp32"
    assert recorded(tmp_path / "auto")["precision"] == "fp32"
    assert task.dtypes[-3:] == [torch.float32] * 3  # the three training steps
    plain, _ = run(tmp_path / "fp32", "fp32")
    assert plain.precision["reason"] == "configured"
    auto_weights = ckpt.read_checkpoint(result.checkpoint).model_state
    fp32_weights = ckpt.read_checkpoint(plain.checkpoint).model_state
    assert any("running_mean" in name for name in fp32_weights)
    for name, value in fp32_weights.items():  # timing left weights, BatchNorm buffers, RNG and data untouched
        assert torch.equal(auto_weights[name], value), name


@pytest.mark.usefixtures("has_bf16_units")
def test_bf16_is_chosen_where_it_wins_and_the_steps_run_in_bf16(tmp_path):
    result, task = run(tmp_path, "auto", fake_timer(1.0, 0.5))
    assert result.precision["precision"] == "bf16" and result.precision["speedup"] == 2.0
    assert abs(result.precision["loss_gap"]) <= 0.02  # the real bf16 loss on the tiny batch is close
    assert task.dtypes[-3:] == [torch.bfloat16] * 3


@pytest.mark.usefixtures("has_bf16_units")
def test_a_loss_gap_above_the_tolerance_refuses_bf16(tmp_path):
    result, _ = run(tmp_path, "auto", fake_timer(1.0, 0.5, bf16_loss_factor=1.5))
    assert result.precision["precision"] == "fp32" and "tolerance" in result.precision["reason"]
    assert result.precision["loss_gap"] == pytest.approx(0.5, abs=0.03)  # 1.5x the real bf16 loss


@pytest.mark.usefixtures("has_bf16_units")
def test_resume_keeps_the_recorded_choice_without_timing_again(tmp_path):
    run(tmp_path, "auto", fake_timer(1.0, 0.5), steps=2)
    calls: list[str] = []
    result, task = run(tmp_path, "auto", fake_timer(1.0, 5.0, calls=calls), steps=4, resume="auto")
    assert calls == [] and result.step == 4
    assert result.precision["precision"] == "bf16" and result.precision["reason"].startswith("recorded:")
    assert task.dtypes == [torch.bfloat16] * 2
    assert recorded(tmp_path)["precision"] == "bf16"


def test_a_cpu_without_bf16_units_gets_fp32_without_timing(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_loop, "cpu_flags", lambda: {"avx2", "fma"})
    calls: list[str] = []
    result, _ = run(tmp_path, "auto", fake_timer(1.0, 0.1, calls=calls))
    assert calls == [] and result.precision["precision"] == "fp32"
    assert "no bf16 units" in result.precision["reason"] and result.precision["fp32_s"] is None


def test_the_choice_round_trips_through_its_record():
    choice = decide_precision(1.0, 0.5, 2.0, 2.0)
    assert PrecisionChoice.from_dict({**choice.to_dict(), "future_field": 1}) == choice
