"""``train.precision=auto``: time real fp32 and bf16-autocast steps on this machine and keep bf16 only where it pays.

A bf16 step is chosen only when it is at least ``MIN_SPEEDUP`` times faster than fp32 on the run's first batch and its
loss on that batch stays within ``LOSS_TOLERANCE`` (relative) of fp32's; otherwise the run trains in fp32. A CPU
without bf16 units (no avx512_bf16 / amx_bf16 / bf16 flag) gets fp32 without timing: bf16 there is emulated and slow.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

MIN_SPEEDUP = 1.2  # bf16 must be this much faster than fp32 to be worth its rounding
LOSS_TOLERANCE = 0.02  # |bf16 loss - fp32 loss| / |fp32 loss| on the timed batch
WARMUP_STEPS = 1
TIMED_STEPS = 3
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (AVX-512 BF16, AMX) and aarch64 (FEAT_BF16)

# timer(precision, run_once) -> (seconds per step, loss); run_once runs one step at that precision and returns its loss
StepTimer = Callable[[str, Callable[[], float]], tuple[float, float]]


@dataclass(frozen=True)
class PrecisionChoice:
    """Which precision a run trains in, and the measurement (or rule) behind it."""

    precision: str  # fp32 | bf16
    reason: str
    requested: str = "auto"
    fp32_s: float | None = None
    bf16_s: float | None = None
    fp32_loss: float | None = None
    bf16_loss: float | None = None
    loss_gap: float | None = None  # relative: |bf16 - fp32| / |fp32|
    speedup: float | None = None  # fp32_s / bf16_s

    def to_dict(self) -> dict:
        """Plain JSON-able record (trainer state, precision.json, the run summary)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> PrecisionChoice:
        """The record a checkpoint kept; unknown keys are ignored so older/newer records still load."""
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in record.items() if k in fields})


def relative_gap(reference: float, other: float) -> float:
    """|other - reference| relative to |reference| (absolute when the reference is 0)."""
    return abs(other - reference) / abs(reference) if reference != 0 else abs(other)


def decide_precision(
    fp32_s: float,
    bf16_s: float,
    fp32_loss: float,
    bf16_loss: float,
    min_speedup: float = MIN_SPEEDUP,
    loss_tolerance: float = LOSS_TOLERANCE,
) -> PrecisionChoice:
    """Pure rule: bf16 only if ``fp32_s / bf16_s >= min_speedup`` and the loss gap is within ``loss_tolerance``."""
    speedup = fp32_s / bf16_s if bf16_s > 0 else math.inf
    gap = relative_gap(fp32_loss, bf16_loss) if math.isfinite(bf16_loss) else math.inf
    figures = dict(
        fp32_s=fp32_s, bf16_s=bf16_s, fp32_loss=fp32_loss, bf16_loss=bf16_loss, loss_gap=gap, speedup=speedup
    )
    said = f"bf16 {speedup:.2f}x fp32's speed ({bf16_s * 1e3:.1f} vs {fp32_s * 1e3:.1f} ms/step), loss gap {gap:.2%}"
    if speedup < min_speedup:
        return PrecisionChoice("fp32", f"{said}: below the {min_speedup:.2f}x needed", **figures)
    if not gap <= loss_tolerance:
        return PrecisionChoice("fp32", f"{said}: loss gap above the {loss_tolerance:.0%} tolerance", **figures)
    return PrecisionChoice("bf16", f"{said}: faster by >= {min_speedup:.2f}x within {loss_tolerance:.0%}", **figures)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU feature flags the kernel reports (x86 ``flags``, aarch64 ``Features``), or None where unreadable."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def bf16_support(device: torch.device, flags: set[str] | None) -> tuple[bool, str]:
    """Whether timing bf16 is worth it here: CUDA asks torch; a CPU needs bf16 units among its flags."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "CUDA device supports bf16" if ok else "CUDA device has no bf16 support"
    if flags is None:
        return True, "CPU flags unreadable: bf16 is timed to find out"
    units = [f for f in BF16_CPU_FLAGS if f in flags]
    if units:
        return True, f"CPU has bf16 units ({', '.join(units)})"
    return False, f"CPU has no bf16 units ({'/'.join(BF16_CPU_FLAGS)} absent; capability {cpu_capability()})"


def cpu_capability() -> str:
    """torch's CPU kernel level (e.g. AVX512, AVX2), for the log."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        return "unknown"


def wall_timer(device: torch.device, warmup: int = WARMUP_STEPS, repeats: int = TIMED_STEPS) -> StepTimer:
    """The real timer: ``warmup`` untimed steps, then the median wall time of ``repeats`` (CUDA synchronised)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timer(precision: str, run_once: Callable[[], float]) -> tuple[float, float]:
        loss = math.nan
        for _ in range(warmup):
            loss = run_once()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            loss = run_once()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times), loss

    return timer


def measure_and_decide(run_once: Callable[[str], float], timer: StepTimer) -> PrecisionChoice:
    """Time fp32 then bf16 with ``timer`` (``run_once(precision)`` runs one step and returns its loss), then decide."""
    fp32_s, fp32_loss = timer("fp32", lambda: run_once("fp32"))
    bf16_s, bf16_loss = timer("bf16", lambda: run_once("bf16"))
    return decide_precision(fp32_s, bf16_s, fp32_loss, bf16_loss)
