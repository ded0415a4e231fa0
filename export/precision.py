"""``--precision auto``: time fp32 and int8 per tower on the export machine and keep int8 only where it pays off.

int8 is not faster everywhere: on one CPU static QDQ makes a FastViT image tower 1.6x slower than fp32 while it speeds
up MobileNetV4 and every text tower. So the choice is measured: each tower runs in onnxruntime with the runtime's own
session options and a fixed thread count, at each timed batch (1 and 32 by default), median of ``repeats`` runs after
``warmup``. int8 is recommended for a tower only when it is at least ``min_speedup`` (1.1x) faster at every timed batch
AND its top-1 agreement with fp32 clears the bar. The manifest records the timings, the machine and the choice.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from dcclip.runtime.bundle import IMAGE_INPUT, TEXT_INPUTS, make_session_options
from dcclip.runtime.timing import machine_facts

__all__ = [
    "AUTO_MIN_SPEEDUP",
    "DEFAULT_TIMED_BATCHES",
    "TimingPlan",
    "choice_table",
    "choose_precision",
    "decide_precisions",
    "machine_info",
    "onnx_timer",
    "time_towers",
    "timing_feeds",
    "timing_machine",
]

AUTO_MIN_SPEEDUP = 1.1  # int8 must beat fp32 by this factor at every timed batch: a smaller gain is timing noise
DEFAULT_TIMED_BATCHES = (1, 32)
ROLES = ("image", "text")

Feed = dict[str, np.ndarray]
Timer = Callable[[Path, Feed], float]  # milliseconds of one run of a tower file on one feed


def default_threads() -> int:
    """Threads a timing session uses: every core the process may run on (fixed, so repeats are comparable)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class TimingPlan:
    """How towers are timed: batch sizes, warm-up runs, timed repeats (median) and onnxruntime intra-op threads."""

    batches: tuple[int, ...] = DEFAULT_TIMED_BATCHES
    warmup: int = 3
    repeats: int = 10
    threads: int = field(default_factory=default_threads)
    min_speedup: float = AUTO_MIN_SPEEDUP

    def __post_init__(self) -> None:
        if not self.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches):
            raise ValueError(f"timed batches must be positive integers, got {self.batches!r}")
        if self.repeats < 1 or self.warmup < 0 or self.threads < 1 or not self.min_speedup > 0:
            raise ValueError(f"invalid timing plan {self!r}")

    def to_dict(self) -> dict[str, Any]:
        """The plan as the manifest records it."""
        return {**asdict(self), "batches": list(self.batches), "statistic": "median"}


def onnx_timer(plan: TimingPlan) -> Timer:
    """A timer that runs a tower file in onnxruntime (the runtime's session options, ``plan.threads`` threads)."""

    def run(path: Path, feed: Feed) -> float:
        options = make_session_options(plan.threads, 1)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(plan.warmup):
            session.run(None, feed)
        times = []
        for _ in range(plan.repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        return 1000.0 * statistics.median(times)

    return run


def timing_machine(threads: int) -> dict[str, Any]:
    """The machine the timings were taken on (runtime's machine facts, plus threads and onnxruntime): they hold for
    it, not for the edge device the bundle goes to."""
    return {**machine_facts(), "threads": threads, "onnxruntime": ort.__version__}


machine_info = timing_machine  # the name export/bundle.py imports


def timing_feeds(
    image_size: int, encode: Callable[[list[str]], tuple[np.ndarray, np.ndarray]], captions: Sequence[str], batch: int
) -> dict[str, Feed]:
    """One image feed (seeded noise) and one text feed (real captions, cycled and padded as the runtime pads)."""
    pixels = np.random.default_rng(batch).standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    ids, mask = encode([captions[i % len(captions)] for i in range(batch)])
    text = {TEXT_INPUTS[0]: ids.astype(np.int64), TEXT_INPUTS[1]: mask.astype(np.int64)}
    return {"image": {IMAGE_INPUT: pixels}, "text": text}


def time_towers(
    files: dict[str, dict[str, Path]], feeds: dict[int, dict[str, Feed]], timer: Timer
) -> dict[str, dict[str, Any]]:
    """Per tower: fp32 and int8 milliseconds and the speedup (fp32 ms / int8 ms) at each batch (JSON keys: str)."""
    out = {}
    for role in ROLES:
        fp32 = {str(b): round(timer(files[role]["fp32"], feed[role]), 4) for b, feed in feeds.items()}
        int8 = {str(b): round(timer(files[role]["int8"], feed[role]), 4) for b, feed in feeds.items()}
        speedup = {b: round(fp32[b] / int8[b], 3) if int8[b] > 0 else float("inf") for b in fp32}
        out[role] = {"fp32_ms": fp32, "int8_ms": int8, "speedup": speedup}
    return out


def _pct(share: float) -> str:
    """97% / 99.6%: a share as a percentage with one decimal, a trailing .0 dropped."""
    text = f"{100 * share:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"


def _times(factor: float) -> str:
    """1.6x / 1.04x: a factor with one decimal, two near 1 (where the 1.1x bar needs them to read right)."""
    return f"{factor:.2f}x" if factor < 1.25 else f"{factor:.1f}x"


def choose_precision(
    speedups: Iterable[float], agreement: float, min_agreement: float, min_speedup: float = AUTO_MIN_SPEEDUP
) -> tuple[str, str]:
    """('int8' | 'fp32', reason) for one tower: int8 only if it agrees enough and is ``min_speedup`` faster at every
    timed batch. Agreement is checked first: a fast int8 tower that changes decisions is not an option."""
    worst = min(speedups)
    if agreement < min_agreement:
        return "fp32", f"fp32: int8 agreement {_pct(agreement)} < {_pct(min_agreement)}"
    if worst < 1.0:
        return "fp32", f"fp32: int8 {_times(1.0 / worst)} slower"
    if worst < min_speedup:
        return "fp32", f"fp32: int8 only {_times(worst)} faster (< {_times(min_speedup)})"
    return "int8", f"int8: {_times(worst)} faster, agreement {_pct(agreement)}"


def decide_precisions(
    timings: dict[str, dict[str, Any]],
    agreements: dict[str, float],
    min_agreement: float,
    plan: TimingPlan,
    machine: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's ``precision_choice``: policy, machine and, per tower, timings, agreement, choice and reason."""
    towers = {}
    for role in ROLES:
        speedups = timings[role]["speedup"].values()
        choice, reason = choose_precision(speedups, agreements[role], min_agreement, plan.min_speedup)
        towers[role] = {**timings[role], "top1_agreement": agreements[role], "choice": choice, "reason": reason}
    policy = plan.to_dict() | {"min_top1_agreement": min_agreement}
    return {"requested": "auto", "policy": policy, "machine": machine, "towers": towers}


def choice_table(choice: dict[str, Any]) -> str:
    """A console table of ``precision_choice``: tower, fp32 ms, int8 ms, speedup, agreement, shipped (per batch)."""
    rows = [("tower", "batch", "fp32 ms", "int8 ms", "speedup", "agreement", "shipped")]
    for role, tower in choice["towers"].items():
        for batch in tower["fp32_ms"]:
            rows.append(
                (
                    role,
                    batch,
                    f"{tower['fp32_ms'][batch]:.2f}",
                    f"{tower['int8_ms'][batch]:.2f}",
                    f"{tower['speedup'][batch]:.2f}x",
                    _pct(tower["top1_agreement"]),
                    tower["choice"],
                )
            )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    reasons = [f"{role}: {tower['reason']}" for role, tower in choice["towers"].items()]
    machine = choice["machine"]
    header = f"precision auto on {machine['cpu']} ({machine['threads']} threads, onnxruntime {machine['onnxruntime']})"
    return "\n".join([header, *lines, *reasons])
