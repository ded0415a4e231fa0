"""Timing taken in turns, and the machine a figure was measured on: one implementation for the demo report, export's
precision choice and the benchmarks."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "interleaved_ms", "machine_facts"]


def interleaved_ms(
    fns: dict[Hashable, Callable[[], Any]],
    repeat: int = 100,
    warmup: int = 3,
    sync: Callable[[], Any] | None = None,
) -> dict[Hashable, list[float]]:
    """Wall times in milliseconds of every function, taken in turns (one call each per round) after a warm-up.

    Taking turns spreads a busy machine's slow moments over every model instead of charging them to whichever
    model happened to be timed then: two identical graphs measure the same. ``sync`` (a device synchronise) runs
    before and after each timed call.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[Hashable, list[float]] = {key: [] for key in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            if sync is not None:
                sync()
            start = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times[key].append((time.perf_counter() - start) * 1000)
    return times


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from /proc/cpuinfo (Linux; ``Model``/``Hardware`` on ARM), else what ``platform`` knows."""
    try:
        for line in cpuinfo.read_text("utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_facts() -> dict[str, Any]:
    """Where a figure was measured: CPU model, cores, platform and Python version."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
