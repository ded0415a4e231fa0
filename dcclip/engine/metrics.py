"""Run metrics: one JSON line per log step (and TensorBoard when installed), written by rank 0 only."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from dcclip.io import write_text_atomic

log = logging.getLogger(__name__)


class MetricsWriter:
    """Append metrics to ``run_dir/metrics.jsonl``; mirror scalars to TensorBoard if it is importable."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError:
                log.debug("tensorboard not installed; metrics go to %s only", self.path)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(name, value, step)

    def truncate_after(self, step: int) -> int:
        """Drop records past ``step`` (and a line a kill cut short): a resumed run logs those steps again, so the
        file never holds a step twice. Returns how many records were dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text("utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(record, dict) and int(record.get("step", 0)) <= step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))
            log.info("%s: dropped %d records past step %d (they are logged again)", self.path, dropped, step)
        return dropped

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (for reports and plots)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


class Throughput:
    """Samples per second over the interval since the last reading."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self._n = 0

    def add(self, samples: int) -> None:
        self._n += samples

    def read(self) -> float:
        now = time.perf_counter()
        rate = self._n / max(now - self._t, 1e-9)
        self._t, self._n = now, 0
        return rate


def format_rate(rate: float) -> str:
    """A throughput with two significant figures (0.87, 12, 1300): '{:.0f}' showed 0.87 img/s as 1."""
    if rate <= 0 or rate != rate:  # zero, negative or NaN: nothing to round
        return "0"
    return f"{float(f'{rate:.2g}'):g}" if rate < 1e5 else f"{rate:.2g}"
