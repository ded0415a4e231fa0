"""Micro-batching of the image tower: concurrent requests' preprocessed images go through one model call.

Request threads hand their pixels to ``MicroBatcher.submit`` and block until their rows come back. One batcher thread
takes the first waiting request, then gathers more until ``max_batch`` images, until ``max_wait_s`` after that first
request, or until no other request is on its way (``expecting`` announces one while it decodes), whichever comes
first: a request alone never waits for company that is not coming, and never longer than the bound. A batch that fails
is rerun request by request, so one bad input fails only its own request. ``BatchedModel`` puts the batcher behind
``embed_pixels`` of a bundle model, so the classifier ranks batched embeddings with its own code.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DEFAULT_BATCH_MAX", "DEFAULT_BATCH_WAIT_MS", "BatchedModel", "MicroBatcher", "check_batching"]

# Off by default: it did not beat unbatched serving in the side-by-side serve_load runs (docs/serving.md has the
# figures). The wait applies when batch_max > 1 is asked for.
DEFAULT_BATCH_MAX = 1
DEFAULT_BATCH_WAIT_MS = 2.0
MAX_WAIT_MS = 100.0  # a larger bound only adds latency: a batch of 8 at 224 px takes ~20 ms on 2 cores


def check_batching(batch_max: int, batch_wait_ms: float) -> None:
    """``batch_max`` a positive int (1 turns batching off), ``batch_wait_ms`` a number in [0, MAX_WAIT_MS]."""
    if isinstance(batch_max, bool) or not isinstance(batch_max, int) or batch_max < 1:
        raise ValueError(f"batch_max must be a positive int (1: no batching), got {batch_max!r}")
    wait_ok = isinstance(batch_wait_ms, int | float) and not isinstance(batch_wait_ms, bool)
    if not wait_ok or not 0 <= batch_wait_ms <= MAX_WAIT_MS:
        raise ValueError(
            f"batch_wait_ms must be a number of milliseconds in [0, {MAX_WAIT_MS:g}], got {batch_wait_ms!r}"
        )


@dataclass
class _Item:
    """One request's pixels, its result slot and when it arrived."""

    pixels: np.ndarray
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """What the last call of ``submit`` in this thread saw: seconds queued, seconds in the model, batch images."""

    wait_s: float = 0.0
    run_s: float = 0.0
    batch: int = 0


class MicroBatcher:
    """Gathers concurrent ``submit(pixels)`` calls into one ``run(concatenated pixels)`` call; thread-safe."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int, max_wait_s: float) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch!r} and {max_wait_s!r}")
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._expected = 0  # requests announced by ``expecting`` that have not submitted yet
        self._closed = False
        self._local = threading.local()
        self._thread = threading.Thread(target=self._loop, name="dcclip-batcher", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a request that will ``submit`` soon (while it decodes), so a gathering batch waits for it."""
        with self._cond:
            self._expected += 1
        self._local.announced = True
        try:
            yield
        finally:
            with self._cond:
                if self._local.announced:  # left without submitting (a decode error): nobody is coming
                    self._expected -= 1
                    self._local.announced = False
                    self._cond.notify_all()

    def submit(self, pixels: np.ndarray) -> np.ndarray:
        """``run(pixels)``, batched with other threads' calls; raises what running this request's pixels raised."""
        item = _Item(pixels)
        with self._cond:
            if self._closed:
                raise RuntimeError("the micro-batcher is closed")
            self._queue.append(item)
            if getattr(self._local, "announced", False):  # announced and now here: no longer expected
                self._expected -= 1
                self._local.announced = False
            self._cond.notify_all()
        result, stats = item.future.result()
        self._local.stats = stats
        return result

    def queued(self) -> int:
        """Requests waiting for the model now (not counting a batch being run)."""
        with self._cond:
            return len(self._queue)

    def last_stats(self) -> BatchStats:
        """The stats of this thread's last ``submit``."""
        return getattr(self._local, "stats", BatchStats())

    def close(self) -> None:
        """Stop the batcher thread after the queued requests are served."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        """Gather a batch, run it, hand out its rows; until closed and drained."""
        while True:
            batch = self._gather()
            if not batch:
                return
            self._serve(batch)

    def _gather(self) -> list[_Item]:
        """Block for a first request, then take more until full, the bound after it, or nobody else is coming."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return []
                self._cond.wait()
            deadline = self._queue[0].arrived + self.max_wait_s
            while self._images() < self.max_batch and self._expected > 0:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._take()

    def _images(self) -> int:
        """Images queued now (lock held)."""
        return sum(len(item.pixels) for item in self._queue)

    def _take(self) -> list[_Item]:
        """Queued requests up to ``max_batch`` images (at least one request, whatever its size) (lock held)."""
        batch = [self._queue.popleft()]
        images = len(batch[0].pixels)
        while self._queue and images + len(self._queue[0].pixels) <= self.max_batch:
            item = self._queue.popleft()
            batch.append(item)
            images += len(item.pixels)
        return batch

    def _serve(self, batch: list[_Item]) -> None:
        """Run the batch as one call; if that fails, each request alone, so an error stays with its request."""
        start = time.perf_counter()
        try:
            out = self._run(np.concatenate([item.pixels for item in batch]) if len(batch) > 1 else batch[0].pixels)
        except Exception as exc:  # rerun one by one below: each request gets its own outcome
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for item in batch:
                self._serve([item])
            return
        run_s = time.perf_counter() - start
        images = len(out)
        offset = 0
        for item in batch:
            rows = out[offset : offset + len(item.pixels)]
            offset += len(item.pixels)
            item.future.set_result((rows, BatchStats(start - item.arrived, run_s, images)))


class BatchedModel:
    """A bundle model whose ``embed_pixels`` goes through a ``MicroBatcher``; every other attribute is the model's."""

    def __init__(self, model: Any, max_batch: int, max_wait_s: float) -> None:
        self._model = model
        self.batcher = MicroBatcher(model.embed_pixels, max_batch, max_wait_s)

    def __getattr__(self, name: str) -> Any:
        """Everything but ``embed_pixels`` is the wrapped model's."""
        return getattr(self._model, name)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed pixels [N, 3, S, S] -> embeddings [N, D], computed in a batch with concurrent requests."""
        return self.batcher.submit(pixels)
