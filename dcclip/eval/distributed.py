"""Evaluation across torchrun ranks: whole batches dealt out round-robin, their results gathered back in order.

Batch i goes to rank i % world; every rank embeds its own batches, then every rank receives all batch results in the
original order (``all_gather_object`` of numpy arrays, on gloo and nccl alike). The batches are cut exactly as in one
process, so every number downstream is the one-process number, whichever rank computed a batch. One process
(``WORLD_SIZE`` unset or 1) never imports torch here, so a bundle still evaluates with the torch-free runtime alone.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["deal", "is_main", "rank", "ranks", "world_size"]

Batch = TypeVar("Batch")
Result = TypeVar("Result")


def world_size() -> int:
    """How many ranks torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process is the one that prints, shows progress and writes files."""
    return rank() == 0


@contextmanager
def ranks(device: str) -> Iterator[str]:
    """Join torchrun's process group for the block (gloo on CPU, nccl on GPU); yields the device models load on.

    Under torchrun ``cuda`` and ``auto`` become this rank's own GPU. A group the caller already joined is used and left
    up. On an error the group is dropped without a final barrier: a rank that fails alone would wait there forever,
    and torchrun stops the others once it exits.
    """
    if world_size() <= 1:
        yield _resolve_auto(device)
        return
    import torch.distributed as dist

    from dcclip.engine.distributed import init_distributed, shutdown_distributed

    joined = not dist.is_initialized()
    env = init_distributed(device)
    try:
        yield str(env.device)
    except BaseException:
        if joined and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if joined:
        shutdown_distributed()


def _resolve_auto(device: str) -> str:
    """One process: ``auto`` is ``cuda`` when torch sees a GPU, else ``cpu`` (also without torch: bundles need none)."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def deal(batches: Iterable[Batch], work: Callable[[Batch], Result]) -> list[Result]:
    """``[work(b) for b in batches]``, with batch i computed on rank i % world and every result on every rank.

    Every rank iterates the same ``batches`` (cheap: undecoded samples or texts) and runs ``work`` on its own only.
    An error in one rank's ``work`` is raised on every rank, so no rank is left waiting in the gather. Without a
    process group (one process, or torchrun ranks that never joined one) every batch is computed here.
    """
    world, me = world_size(), rank()
    if world <= 1 or not _joined():
        return [work(batch) for batch in batches]
    mine: dict[int, Result] = {}
    error: BaseException | None = None
    for index, batch in enumerate(batches):
        if index % world == me and error is None:
            try:
                mine[index] = work(batch)
            except Exception as exc:  # re-raised below, on every rank
                error = exc
    gathered = _all_gather((mine, _picklable(error)))
    _raise_first_error([failure for _, failure in gathered], me, error)
    merged = {index: result for results, _ in gathered for index, result in results.items()}
    return [merged[index] for index in range(len(merged))]


def _joined() -> bool:
    """Whether this process is in a torch.distributed process group (only asked under torchrun)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _all_gather(payload: Any) -> list[Any]:
    """Every rank's ``payload``, in rank order."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, payload)
    return out


def _picklable(error: BaseException | None) -> BaseException | None:
    """The error itself when it survives pickling, else a RuntimeError carrying its type and message."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _raise_first_error(failures: list[BaseException | None], me: int, own: BaseException | None) -> None:
    """Raise the lowest rank's error on every rank (the original, with its traceback, on the rank that hit it)."""
    for failed_rank, failure in enumerate(failures):
        if failure is not None:
            raise own if failed_rank == me and own is not None else failure
