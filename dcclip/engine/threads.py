"""Torch intra-op threads for a training process that hold up when other jobs share the cores.

torch's default (one thread per core) collapses when another job is busy on the same cores: OpenMP threads spin
waiting for the one that lost its core (measured: a step 12x slower with one competing process on 2 cores). The rule:
``train.threads`` when set; else ``OMP_NUM_THREADS`` when set (under torchrun a value of 1 is torchrun's own default
and is replaced by the per-rank share); under torchrun the usable cores split over the local ranks; otherwise the
usable cores minus those other work keeps busy, from ``/proc/loadavg``; never below 1.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadChoice:
    """How many intra-op threads, and why."""

    threads: int
    reason: str
    cores: int  # cores this process may run on
    busy: float | None = None  # cores other work keeps busy (loadavg-based), where measured

    def to_dict(self) -> dict:
        """Plain JSON-able record for logs and the run result."""
        return asdict(self)


@dataclass(frozen=True)
class LoadSample:
    """What /proc/loadavg says: the 1-minute load and runnable tasks right now (the reader itself among them)."""

    load1: float
    running: int


def parse_loadavg(text: str) -> LoadSample:
    """``0.52 0.40 0.33 2/345 6789`` -> LoadSample(0.52, 2)."""
    fields = text.split()
    if len(fields) < 4 or "/" not in fields[3]:
        raise ValueError(f"/proc/loadavg: unexpected content {text[:80]!r}")
    return LoadSample(float(fields[0]), int(fields[3].split("/")[0]))


def busy_cores(sample: LoadSample, cores: int, machine_cores: int) -> float:
    """Cores other work keeps busy among ours: the smaller of the 1-minute load and the tasks runnable now besides
    this one (the load includes our own recent work; the instant count alone is noisy), scaled to our share of the
    machine's cores."""
    others = max(min(sample.load1, sample.running - 1), 0.0)
    return min(others * cores / max(machine_cores, cores), float(cores))


def positive_int(value: str | int, where: str) -> int:
    """``value`` as a positive int, or ValueError naming ``where``."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{where}: expected a positive integer, got {value!r}")
    return number


def choose_threads(
    configured: str | int,
    env: Mapping[str, str],
    cores: int,
    machine_cores: int,
    load: LoadSample | None,
) -> ThreadChoice:
    """Pure rule over the config value, the environment, usable cores and a load sample (see the module docstring)."""
    cores = max(cores, 1)
    if str(configured) != "auto":
        return ThreadChoice(positive_int(configured, "train.threads"), "train.threads", cores)
    local_ranks = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp and not (local_ranks > 1 and omp == "1"):
        return ThreadChoice(positive_int(omp, "OMP_NUM_THREADS"), "OMP_NUM_THREADS", cores)
    if local_ranks > 1:
        share = max(cores // local_ranks, 1)
        return ThreadChoice(share, f"torchrun: {cores} cores over {local_ranks} local ranks", cores)
    if load is None:
        return ThreadChoice(cores, "usable cores (load unreadable)", cores)
    busy = busy_cores(load, cores, machine_cores)
    threads = max(cores - math.ceil(busy - 0.25), 1)  # a core counts as taken once it is more than a quarter busy
    reason = f"{cores} usable cores, {busy:.2f} busy with other work (loadavg {load.load1:.2f}, {load.running} running)"
    return ThreadChoice(threads, reason, cores, round(busy, 3))


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def read_load(path: Path = Path("/proc/loadavg")) -> LoadSample | None:
    """The current load sample, or None where the OS has no /proc/loadavg."""
    try:
        return parse_loadavg(path.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None


def machine_threads(configured: str | int = "auto") -> ThreadChoice:
    """The choice for this process now, from the real environment, affinity and load."""
    return choose_threads(configured, os.environ, usable_cores(), os.cpu_count() or 1, read_load())


def apply_threads(configured: str | int = "auto", announce: bool = True) -> ThreadChoice:
    """Choose and set torch's intra-op threads for this training process; logs the choice."""
    import torch

    choice = machine_threads(configured)
    torch.set_num_threads(choice.threads)
    if announce:
        log.info("torch intra-op threads: %d (%s)", choice.threads, choice.reason)
    return choice
