"""The one training loop every stage uses: a task (student + frozen teacher + losses) over a stream of batches.

The task returns named losses with their weighted sum under ``loss``; the loop owns everything else: devices, DDP,
mixed precision, accumulation, clipping, the schedule, progress, metrics, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcclip import checkpoint as ckpt
from dcclip.config import OptimConfig, TrainConfig
from dcclip.data.shard_manifest import ShardError
from dcclip.engine.cpu_memory import keep_freed_memory
from dcclip.engine.distributed import DistEnv, all_reduce_mean, all_reduce_sum_int, barrier
from dcclip.engine.metrics import MetricsWriter, Throughput, format_rate
from dcclip.engine.optim import build_optimizer, build_scheduler
from dcclip.engine.precision import (
    PrecisionChoice,
    StepTimer,
    bf16_support,
    cpu_flags,
    decide_precision,
    measure_and_decide,
    wall_timer,
)
from dcclip.engine.threads import apply_threads
from dcclip.io import write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class FitSpec:
    """What the loop needs besides the task and the data."""

    run_dir: Path
    train: TrainConfig
    optim: OptimConfig
    checkpoint_config: dict[str, Any]  # written into every checkpoint's config.json
    checkpoint_files: dict[str, Path] = field(default_factory=dict)  # copied into every checkpoint (tokenizer.json)
    description: str = "train"
    precision_timer: StepTimer | None = None  # how precision=auto times a step; None = the wall clock (tests fake it)


@dataclass
class FitResult:
    """Where a finished run ended."""

    step: int
    samples_seen: int
    checkpoint: Path | None
    losses: dict[str, float]
    seconds: float
    replica_checksums: list[str]
    precision: dict[str, Any] = field(default_factory=dict)  # PrecisionChoice: which precision ran, and why
    threads: dict[str, Any] = field(default_factory=dict)  # ThreadChoice: torch intra-op threads, and why


def forever(loader: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Epoch after epoch; the loader keeps its own position for checkpoints."""
    while True:
        produced = False
        for batch in loader:
            produced = True
            yield batch
        if not produced:
            skipped = getattr(loader, "skipped_samples", 0)
            raise ShardError(  # an input error: the CLI prints it in one line and exits 1
                f"the data stream produced no batch in a whole epoch ({skipped} samples or unreadable shards skipped "
                "so far; the warnings above name them)"
            )


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """Move every tensor of a batch; images go channels-last for convolutional students."""
    moved = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.ndim == 4 and name.endswith("pixels"):
                value = value.contiguous(memory_format=torch.channels_last)
        moved[name] = value
    return moved


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for (fp32 master weights stay); a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def parameter_checksum(module: nn.Module) -> str:
    """SHA-256 over all parameters: equal on every rank when DDP keeps replicas in sync.

    Buffers are left out: BatchNorm statistics are local to each rank between DDP's broadcasts.
    """
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gather_strings(value: str, env: DistEnv) -> list[str]:
    if not env.distributed:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, value)
    return out


class Trainer:
    """State of one run: task, optimiser, schedule, counters; ``fit`` drives it."""

    def __init__(self, task: nn.Module, loader: Any, spec: FitSpec, env: DistEnv):
        self.task, self.loader, self.spec, self.env = task, loader, spec, env
        self.student: nn.Module = task.student
        self.step = 0
        self.failed_shards: list[str] = []  # URLs of shards that broke off since the last metrics record
        self.samples_seen = 0
        self.precision: PrecisionChoice | None = None  # set by settle_precision (restored by resume under auto)
        task.to(env.device)
        if spec.train.channels_last:
            self.student.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(task, spec.optim)
        self.scheduler = build_scheduler(self.optimizer, spec.optim, spec.train.steps)
        self.model = self._wrap_ddp(task)
        self.metrics = MetricsWriter(spec.run_dir, enabled=env.is_main)

    def _wrap_ddp(self, task: nn.Module) -> nn.Module:
        if not self.env.distributed:
            return task
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return DistributedDataParallel(task, device_ids=device_ids)

    # --- resume ---------------------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore weights, optimiser, schedule, counters, RNG and data position from ``train.resume``."""
        choice = self.spec.train.resume
        if not choice:
            self.metrics.truncate_after(0)
            return
        path = ckpt.latest_checkpoint(self.spec.run_dir) if choice == "auto" else ckpt.resolve_checkpoint(choice)
        if path is None:
            log.info("no checkpoint in %s yet: starting fresh", self.spec.run_dir)
            self.metrics.truncate_after(0)
            return
        loaded = ckpt.read_checkpoint(path, trusted=self.spec.train.trust_state)
        self._check_compatible(loaded)
        ckpt.load_weights(self.student, loaded)
        state = loaded.trainer_state
        if state is None:
            raise ckpt.CheckpointError(f"{path}: no {ckpt.STATE_FILE}; it can initialise a run but not resume one")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
        ckpt.set_rng_state(state["rng"])
        if self.spec.train.precision == "auto" and state.get("precision"):
            self.precision = PrecisionChoice.from_dict(state["precision"])
        if state.get("world_size", 1) != self.env.world_size:
            log.warning(
                "resuming on %d ranks a run saved on %d: data order differs", self.env.world_size, state["world_size"]
            )
        self.loader.load_state_dict(state["data"])
        self.metrics.truncate_after(self.step)
        if self.env.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def _check_compatible(self, loaded: ckpt.Checkpoint) -> None:
        """A checkpoint of another architecture or stage cannot be resumed: say which fields differ."""
        mine, theirs = self.spec.checkpoint_config, loaded.config
        differ = [k for k in ("arch", "stage") if k in mine and theirs.get(k) != mine[k]]
        if differ:
            raise ckpt.CheckpointError(
                f"{loaded.path} does not match this config: {', '.join(differ)} differ "
                f"(checkpoint {json.dumps({k: theirs.get(k) for k in differ})[:300]}, "
                f"config {json.dumps({k: mine[k] for k in differ})[:300]})"
            )

    # --- one optimiser step ---------------------------------------------------------------------------------------
    def train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, float], int, int]:
        """Accumulate gradients over micro-batches, clip, step; returns mean losses, images and skipped samples."""
        accum = self.spec.optim.accum_steps
        totals: dict[str, float] = {}
        images = skipped = 0
        if hasattr(self.task, "set_step"):  # tasks with a schedule of their own (e.g. progressive resolution)
            self.task.set_step(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(accum):
            batch = next(batches)
            images += len(batch["keys"])
            skipped += int(batch.get("n_skipped", 0))
            self.failed_shards += batch.get("failed_shards", [])
            batch = to_device(batch, self.env.device, self.spec.train.channels_last)
            last = micro == accum - 1
            no_sync = self.model.no_sync() if self.env.distributed and not last else contextlib.nullcontext()
            with no_sync:
                with autocast(self.env.device, self.precision.precision if self.precision else "fp32"):
                    losses = self.model(batch)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    keys = ", ".join(batch["keys"][:5])
                    raise FloatingPointError(f"step {self.step}: loss is {loss.item()} (batch keys {keys}, ...)")
                (loss / accum).backward()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) / accum
        if self.spec.optim.grad_clip > 0:
            params = [p for p in self.task.parameters() if p.grad is not None]
            totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.spec.optim.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        return totals, images, skipped

    # --- checkpoints and logging ----------------------------------------------------------------------------------
    def save(self) -> Path | None:
        path = None
        if self.env.is_main:
            state = ckpt.trainer_state(
                self.optimizer,
                self.scheduler,
                self.step,
                self.samples_seen,
                self.loader.state_dict(),
                self.env.world_size,
            )
            if self.precision is not None:
                state["precision"] = self.precision.to_dict()
            path = ckpt.write_checkpoint(
                self.spec.run_dir,
                self.step,
                self.student,
                self.spec.checkpoint_config,
                state,
                self.spec.checkpoint_files,
                self.spec.train.keep_last,
            )
        barrier()
        return path

    # --- precision -------------------------------------------------------------------------------------------------
    def settle_precision(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Fix the run's precision (configured, recorded at resume, or timed on the first batch under ``auto``);
        records it beside the checkpoints and returns the batch stream with any peeked batch put back."""
        requested = self.spec.train.precision
        if requested != "auto":
            self.precision = PrecisionChoice(requested, "configured", requested=requested)
        elif self.precision is not None:
            kept = self.precision
            self.precision = PrecisionChoice.from_dict({**kept.to_dict(), "reason": f"recorded: {kept.reason}"})
        else:
            first = next(batches)
            self.precision = self._measure_precision(first)
            batches = itertools.chain([first], batches)
        if self.env.is_main:
            log.info("training precision %s (%s: %s)", self.precision.precision, requested, self.precision.reason)
            write_json_atomic(self.spec.run_dir / "precision.json", self.precision.to_dict())
        return batches

    def _measure_precision(self, batch: dict[str, Any]) -> PrecisionChoice:
        """Time fp32 and bf16 steps on ``batch`` leaving training as it was: no optimiser step, buffers and RNG kept."""
        supported, why = bf16_support(self.env.device, cpu_flags() if self.env.device.type == "cpu" else None)
        if not supported:
            return PrecisionChoice("fp32", f"{why}: fp32 without timing")
        if hasattr(self.task, "set_step"):
            self.task.set_step(self.step)
        batch = to_device(batch, self.env.device, self.spec.train.channels_last)
        buffers = {name: b.detach().clone() for name, b in self.task.named_buffers()}
        rng = ckpt.rng_state()

        def run_once(precision: str) -> float:
            ckpt.set_rng_state(rng)  # the same dropout/augment draws in both precisions
            self.task.zero_grad(set_to_none=True)
            with autocast(self.env.device, precision):
                loss = self.task(batch)["loss"]
            loss.backward()
            return float(loss.detach())

        try:
            choice = measure_and_decide(run_once, self.spec.precision_timer or wall_timer(self.env.device))
        finally:
            self.task.zero_grad(set_to_none=True)
            with torch.no_grad():
                for name, b in self.task.named_buffers():
                    b.copy_(buffers[name])
            ckpt.set_rng_state(rng)
        if self.env.distributed:  # every rank must train alike: decide on the figures averaged over ranks
            figures = [choice.fp32_s, choice.bf16_s, choice.fp32_loss, choice.bf16_loss]
            mean = all_reduce_mean(torch.tensor(figures, dtype=torch.float64, device=self.env.device)).tolist()
            choice = decide_precision(*mean)
        return choice

    def log(self, losses: dict[str, float], rate: float, skipped: int) -> dict[str, float]:
        """Average losses over ranks and write one metrics record (rank 0)."""
        reduced = {}
        for name, value in sorted(losses.items()):
            reduced[name] = float(all_reduce_mean(torch.tensor(value, device=self.env.device)))
        record = {
            **{k: round(v, 6) for k, v in reduced.items()},
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": round(rate, 2),
            "samples_seen": self.samples_seen,
            "skipped_samples": skipped,
            "epoch": self.loader.state_dict().get("epoch", 0),
        }
        failed = sorted(
            {url for urls in gather_strings(json.dumps(self.failed_shards), self.env) for url in json.loads(urls)}
        )
        self.failed_shards = []
        if failed:  # shards that could not be read to the end since the last record, on any rank
            record["unreadable_shards"] = failed
        if hasattr(self.task, "extra_metrics"):
            record.update(self.task.extra_metrics())
        self.metrics.write(self.step, record)
        return reduced


def fit(task: nn.Module, loader: Any, spec: FitSpec, env: DistEnv) -> FitResult:
    """Train ``task`` on ``loader`` for ``spec.train.steps`` optimiser steps, resuming if asked.

    With ``train.threads`` auto or a number, torch's intra-op threads are chosen for this run (engine/threads.py) and
    put back afterwards; the default (torch) leaves torch's own setting alone.
    """
    before = torch.get_num_threads()
    if spec.train.threads == "torch":
        result = _fit(task, loader, spec, env)
        result.threads = {"threads": before, "reason": "torch's own setting (train.threads=torch)"}
        return result
    threads = apply_threads(spec.train.threads, announce=env.is_main)
    try:
        result = _fit(task, loader, spec, env)
    finally:
        torch.set_num_threads(before)
    result.threads = threads.to_dict()
    return result


def _fit(task: nn.Module, loader: Any, spec: FitSpec, env: DistEnv) -> FitResult:
    from tqdm import tqdm

    torch.manual_seed(spec.train.seed + env.rank)
    if env.device.type == "cpu" and spec.train.keep_cpu_memory:
        keep_freed_memory()  # 1.1-1.2x per CPU step: freed activations stay mapped instead of faulting back in
    trainer = Trainer(task, loader, spec, env)
    trainer.resume()
    task.train()
    batches = trainer.settle_precision(forever(loader))
    progress = tqdm(total=spec.train.steps, initial=trainer.step, desc=spec.description, disable=not env.is_main)
    meter, started = Throughput(), time.perf_counter()
    local_images = skipped = 0
    last_losses: dict[str, float] = {}
    checkpoint_path = ckpt.latest_checkpoint(spec.run_dir)
    while trainer.step < spec.train.steps:
        losses, images, skipped_now = trainer.train_step(batches)
        trainer.step += 1
        local_images += images
        skipped += skipped_now
        meter.add(images)
        at_log = trainer.step % spec.train.log_every == 0 or trainer.step == spec.train.steps
        at_ckpt = trainer.step % spec.train.ckpt_every == 0 or trainer.step == spec.train.steps
        if at_log or at_ckpt:
            trainer.samples_seen += all_reduce_sum_int(local_images, env.device)
            local_images = 0
        if at_log:
            rate = meter.read() * env.world_size
            last_losses = trainer.log(losses, rate, all_reduce_sum_int(skipped, env.device))
            progress.set_postfix(loss=f"{last_losses['loss']:.4f}", img_s=format_rate(rate))
        progress.update(1)
        if at_ckpt:
            checkpoint_path = trainer.save() or checkpoint_path
    progress.close()
    trainer.metrics.close()
    checksums = gather_strings(parameter_checksum(trainer.student), env)
    if len(set(checksums)) > 1:
        log.error("replicas diverged: parameter checksums differ across ranks %s", checksums)
    return FitResult(
        step=trainer.step,
        samples_seen=trainer.samples_seen,
        checkpoint=checkpoint_path,
        losses=last_losses,
        seconds=time.perf_counter() - started,
        replica_checksums=checksums,
        precision=trainer.precision.to_dict() if trainer.precision else {},
    )
