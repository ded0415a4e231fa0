"""CPU training keeps freed memory mapped (glibc mallopt), unless the user configured the allocator or opted out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dcclip.config import OptimConfig, TrainConfig
from dcclip.engine import cpu_memory
from dcclip.engine import loop as engine_loop
from dcclip.engine.distributed import DistEnv

# Training steps of a small convolutional net with 2 threads; prints the minor page faults of 20 steps after warm-up.
FAULTS_SCRIPT = """
import resource, sys
import torch
from torch import nn
if sys.argv[1] == "keep":
    from dcclip.engine.cpu_memory import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(2)
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                    nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                    nn.Linear(32, 8))
opt = torch.optim.AdamW(net.parameters())
x = torch.randn(128, 3, 48, 48)
def step():
    opt.zero_grad()
    net(x).square().mean().backward()
    opt.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not cpu_memory.on_glibc(), reason="mallopt tuning applies to glibc only")
def test_training_steps_stop_faulting_pages_back_in():
    default, kept = minor_faults("default"), minor_faults("keep")
    assert kept * 10 < default, (default, kept)


class FakeLibc:
    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(cpu_memory, "_applied", None)
    monkeypatch.setattr(cpu_memory.ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(cpu_memory.platform, "system", lambda: "Linux")
    monkeypatch.setattr(cpu_memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    return libc


def test_settings_are_applied_once(fake_libc):
    assert cpu_memory.keep_freed_memory() is True
    assert cpu_memory.keep_freed_memory() is True
    params = [param for param, _ in fake_libc.calls]
    assert sorted(params) == sorted([cpu_memory.M_MMAP_THRESHOLD, cpu_memory.M_TRIM_THRESHOLD, cpu_memory.M_TOP_PAD])
    assert all(0 < value < 2**31 for _, value in fake_libc.calls)  # mallopt takes a C int


@pytest.mark.parametrize(
    "name, value",
    [("MALLOC_ARENA_MAX", "2"), ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"), ("LD_PRELOAD", "libjemalloc.so")],
)
def test_an_allocator_the_user_configured_is_left_alone(fake_libc, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert cpu_memory.keep_freed_memory() is False
    assert fake_libc.calls == []


def test_other_c_libraries_are_left_alone(fake_libc, monkeypatch):
    monkeypatch.setattr(cpu_memory.platform, "libc_ver", lambda: ("", ""))
    assert cpu_memory.keep_freed_memory() is False
    assert fake_libc.calls == []


class OneWeightTask(nn.Module):
    def __init__(self):
        super().__init__()
        self.student = nn.Linear(2, 1)

    def forward(self, batch):
        return {"loss": self.student(batch["x"]).square().mean()}


class ListLoader:
    def __iter__(self):
        for _ in range(4):
            yield {"keys": ["a", "b"], "x": torch.ones(2, 2)}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("keep", [True, False])
def test_the_train_loop_applies_it_on_cpu_unless_switched_off(monkeypatch, tmp_path, keep):
    called = []
    monkeypatch.setattr(engine_loop, "keep_freed_memory", lambda: called.append(True) or True)
    spec = engine_loop.FitSpec(
        run_dir=tmp_path,
        train=TrainConfig(out_dir=str(tmp_path), steps=2, log_every=1, ckpt_every=2, keep_cpu_memory=keep),
        optim=OptimConfig(lr=1e-2, warmup_steps=1),
        checkpoint_config={"stage": "test"},
    )
    result = engine_loop.fit(OneWeightTask(), ListLoader(), spec, DistEnv())
    assert result.step == 2
    assert called == ([True] if keep else [])
