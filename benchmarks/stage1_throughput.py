"""Stage-1 throughput: online teacher vs cached features vs in-memory tensors, through the real training loop.

    python benchmarks/stage1_throughput.py [--teacher openclip:ViT-B-32@random] [--student mnv4s050-text4]
                                           [--samples 640] [--batch-size 32] [--steps 12] [--device cpu]
                                           [--mfu-only] [--repeats 3] [--compile] [--bf16-step]
    python benchmarks/stage1_throughput.py --loader-sweep demo-student --batch-size 128 --samples 768 --steps 12

All three runs train the same student at the same precision for the same steps; only where the teacher targets come
from differs. Speed does not depend on the teacher's weights, so a randomly initialised ViT-B-32 stands in for it.

Then, against the machine's own limit (results/stage1_mfu.*): the sustained fp32 and bf16 matmul rate at the same
threads, the FLOPs of one step (flop counter) and MFU for the image tower alone, the text tower alone, the full
stage-1 step and a stage-2 step on one real batch; the operators that take the step's time; and each optimisation
measured against its alternative in alternation (padding, channels-last, optimizer implementation, torch.compile).
``--loader-sweep`` times the real loop per (DataLoader workers, main-process threads) pair instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_result
from _stage1_mfu import measure_mfu


class InMemoryBatches:
    """The same prepared batch again and again: the student's own compute speed, no reading at all."""

    def __init__(self, batch: dict[str, Any], per_epoch: int):
        self.batch, self.per_epoch, self.skipped_samples = batch, per_epoch, 0

    def __iter__(self):
        for _ in range(self.per_epoch):
            yield self.batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": 0, "batch_in_epoch": 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass


def steady_rate(run_dir: Path, skip: int = 1) -> float:
    """Mean samples/s over the logged intervals after the first (worker start-up and warm-up excluded)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records[skip:]] or [records[-1]["samples_per_s"]]
    return sum(rates) / len(rates)


def config(
    args: argparse.Namespace,
    world: Path,
    tokenizer: Path,
    out: Path,
    features: Path | None,
    workers: int = 2,
    extra: tuple[str, ...] = (),
):
    from dcclip.config import load_config

    overrides = [
        f"data.train={world / 'train'}", f"data.batch_size={args.batch_size}", f"data.workers={workers}",
        f"student.model={args.student}", f"student.tokenizer={tokenizer}", f"teacher.spec={args.teacher}",
        f"train.out_dir={out}", f"train.steps={args.steps}", "train.log_every=3", f"train.device={args.device}",
        f"train.ckpt_every={args.steps}", f"train.precision={args.precision}",
    ]  # fmt: skip
    if features is not None:
        overrides.append(f"data.features={features}")
    return load_config(None, [*overrides, *extra])


def prepare_batch(cfg) -> tuple[Any, Any, dict[str, Any]]:
    """The prepared cached-features run, its distributed env and one real batch from its loader."""
    from dcclip.engine.distributed import init_distributed
    from dcclip.stages.build import prepare_run

    env = init_distributed(cfg.train.device)
    prepared = prepare_run(cfg, env)
    return prepared, env, next(iter(prepared.loader))


def run_in_memory(cfg, out: Path) -> float:
    """Build the cached run, take one real batch, then train on it from memory."""
    from dcclip.engine.loop import fit

    prepared, env, batch = prepare_batch(cfg)
    prepared.spec.run_dir = out
    fit(prepared.task, InMemoryBatches(batch, 10**6), prepared.spec, env)
    return steady_rate(out)


SWEEP_WORKERS = (0, 1, 2, 3)
# one caption per image, as configs/demo.yaml trains; one long epoch, so no run pays for restarting its workers midway
SWEEP_OVERRIDES = ("data.caption_sampling=temperature", "data.epoch_samples=1000000")


def loader_sweep(args: argparse.Namespace, world: Path, tokenizer: Path, tmp: Path, command: str) -> None:
    """samples/s of the cached-features stage-1 loop per (DataLoader workers, torch threads of the main process).

    Workers decode JPEGs and assemble batches with one torch thread each (DataLoader's default); the main process
    runs the student with ``threads``. On a small machine the two compete for the same cores.
    """
    import torch

    from dcclip.stages.build import run_stage
    from dcclip.stages.cache_teacher import run as cache_teacher

    cache_teacher(config(args, world, tokenizer, tmp / "unused", None), tmp / "features")
    rows, default_threads = [], torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        for workers in SWEEP_WORKERS:
            torch.set_num_threads(threads)
            out = tmp / f"sweep-w{workers}-t{threads}"
            run_stage(config(args, world, tokenizer, out, tmp / "features", workers, SWEEP_OVERRIDES))
            rows.append({"workers": workers, "main_threads": threads, "samples_per_s": steady_rate(out)})
    torch.set_num_threads(default_threads)
    best = max(rows, key=lambda row: row["samples_per_s"])
    for row in rows:
        row["vs_best"] = row["samples_per_s"] / best["samples_per_s"]
    table = markdown_table(rows, ["workers", "main_threads", "samples_per_s", "vs_best"])
    table += (
        f"\n\nStudent {args.student}, cached teacher features ({args.teacher}), one caption per image, one epoch, "
        f"batch {args.batch_size}, {args.steps} steps per run "
        f"(first logged interval excluded), {default_threads} CPU threads available; dcclip's default is "
        f"data.workers=2 and torch's thread default in the main process."
    )
    write_result("loader_sweep", {"rows": rows, "student": args.student, "batch_size": args.batch_size}, table, command)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="openclip:ViT-B-32@random")
    parser.add_argument("--student", default="mnv4s050-text4")
    parser.add_argument("--samples", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--mfu-only", action="store_true", help="skip the online/cached/in-memory loop runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per MFU figure (median)")
    parser.add_argument("--bf16-step", action="store_true", help="also time the full step under bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="also time the full step under torch.compile")
    parser.add_argument(
        "--loader-sweep", metavar="STUDENT", help="only time the cached-features loop of STUDENT for each "
        "(DataLoader workers, main-process threads) pair; e.g. demo-student, whose step is short enough for reading "
        "to matter",
    )  # fmt: skip
    args = parser.parse_args()

    from dcclip.data.shards import iter_captions
    from dcclip.data.world import generate_world
    from dcclip.models.tokenizers import train_tokenizer
    from dcclip.stages.build import run_stage
    from dcclip.stages.cache_teacher import run as cache_teacher

    tmp = Path(tempfile.mkdtemp(prefix="dcclip-stage1-"))
    generate_world(tmp / "world", train_samples=args.samples, seed=0, eval_samples=10, shard_size=128)
    tokenizer = train_tokenizer(iter_captions(tmp / "world" / "train"), 4000, tmp / "tok")

    command = "python benchmarks/stage1_throughput.py " + " ".join(sys.argv[1:])
    if args.loader_sweep:
        args.student = args.loader_sweep
        loader_sweep(args, tmp / "world", tokenizer, tmp, command)
        return
    start = time.perf_counter()
    cache_summary = cache_teacher(config(args, tmp / "world", tokenizer, tmp / "unused", None), tmp / "features")
    cache_seconds = time.perf_counter() - start
    prepared, _, batch = prepare_batch(config(args, tmp / "world", tokenizer, tmp / "mfu", tmp / "features"))
    measure_mfu(prepared, batch, args, command)
    if args.mfu_only:
        return

    run_stage(config(args, tmp / "world", tokenizer, tmp / "online", None))
    run_stage(config(args, tmp / "world", tokenizer, tmp / "cached", tmp / "features"))
    memory = run_in_memory(config(args, tmp / "world", tokenizer, tmp / "setup", tmp / "features"), tmp / "memory")

    online, cached = steady_rate(tmp / "online"), steady_rate(tmp / "cached")
    rows = [
        {"run": "online teacher (shards)", "samples_per_s": online, "vs_in_memory": online / memory},
        {"run": "cached features (shards)", "samples_per_s": cached, "vs_in_memory": cached / memory},
        {"run": "in-memory tensors (student compute only)", "samples_per_s": memory, "vs_in_memory": 1.0},
    ]
    table = markdown_table(rows, ["run", "samples_per_s", "vs_in_memory"])
    table += (
        f"\n\ncached / online = {cached / online:.1f}×; cached reaches {100 * cached / memory:.0f}% of the student's "
        f"in-memory throughput. Teacher {args.teacher}, student {args.student}, batch {args.batch_size}, "
        f"{args.precision}, device {args.device}. Caching {cache_summary['samples_encoded']} samples took "
        f"{cache_seconds:.0f} s ({cache_summary['samples_per_s']} samples/s)."
    )
    payload = {
        "rows": rows,
        "cached_over_online": cached / online,
        "cached_over_in_memory": cached / memory,
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "device": args.device,
        "cache": cache_summary,
    }
    write_result("stage1_throughput", payload, table, command)
    print(table)


if __name__ == "__main__":
    main()
