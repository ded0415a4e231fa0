"""Stage-1 with cached features on one GPU against the GPU's own limit (called by gpu_stage1.sh).

    python benchmarks/_gpu_stage1.py [--device cuda] [--batch-size 512] [--steps 60] [--workers 12]
    python benchmarks/_gpu_stage1.py --device cpu --tiny        # dry run: tiny sizes, a few steps

Toy world at 224 px -> cache ViT-B-32@random teacher features (img/s) -> the real stage-1 loop (bf16, channels-last,
DataLoader workers) -> img/s from the loop's own log, the same step on one batch held in memory (student compute only),
FLOPs per image (flop counter), MFU against the measured bf16 matmul rate, and peak GPU memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_result
from _mfu import count_flops, matmul_flops_per_s, mfu
from stage1_throughput import InMemoryBatches, prepare_batch, steady_rate

TINY = {"teacher": "openclip:test-vit@random", "student": "test-student", "samples": 16, "image_size": 64,
        "batch_size": 4, "steps": 2, "workers": 0, "teacher_batch": 16}  # fmt: skip


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: tiny models and data, a few steps")
    parser.add_argument("--teacher", default="openclip:ViT-B-32@random")
    parser.add_argument("--student", default="mnv4s050-text4")
    parser.add_argument("--samples", type=int, default=4096, help="toy-world images (the loop cycles epochs)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--teacher-batch", type=int, default=512)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()
    if args.tiny:
        for name, value in TINY.items():
            setattr(args, name, value)
        args.precision = "fp32" if args.device == "cpu" else args.precision
    return args


def run_config(args: argparse.Namespace, tmp: Path, out: str, features: Path | None, steps: int) -> Any:
    """The stage-1 config: cached features, bf16, channels-last, DataLoader workers, one checkpoint at the end."""
    from dcclip.config import load_config

    overrides = [
        f"data.train={tmp / 'world' / 'train'}", f"data.batch_size={args.batch_size}", f"data.workers={args.workers}",
        f"student.model={args.student}", f"student.tokenizer={tmp / 'tok'}", f"teacher.spec={args.teacher}",
        f"teacher.batch_size={args.teacher_batch}", f"train.out_dir={tmp / out}", f"train.steps={steps}",
        f"train.log_every={max(1, steps // 6)}", f"train.device={args.device}", f"train.ckpt_every={steps}",
        f"train.precision={args.precision}", "train.channels_last=true",
    ]  # fmt: skip
    if features is not None:
        overrides.append(f"data.features={features}")
    return load_config(None, overrides)


def step_flops(cfg: Any) -> tuple[float, Any, Any, dict]:
    """FLOPs per image of one stage-1 step (forward + backward, flop counter) on a real batch, on the device."""
    from dcclip.engine.loop import autocast, to_device

    prepared, env, batch = prepare_batch(cfg)
    task = prepared.task.to(env.device)
    task.student.to(memory_format=torch.channels_last)
    moved = to_device(batch, env.device, True)

    def step() -> None:
        with autocast(env.device, cfg.train.precision):
            loss = task(moved)["loss"]
        loss.backward()

    return count_flops(step) / len(batch["keys"]), prepared, env, batch


def main() -> None:
    args = parse()
    from dcclip.data.shards import iter_captions
    from dcclip.data.world import generate_world
    from dcclip.engine.loop import fit
    from dcclip.models.tokenizers import train_tokenizer
    from dcclip.stages.build import run_stage
    from dcclip.stages.cache_teacher import run as cache_teacher

    cuda = args.device.startswith("cuda")
    dtype = "bf16" if args.precision == "bf16" else "fp32"
    peak = matmul_flops_per_s(dtype, size=8192 if cuda else 256, device=args.device)
    tmp = Path(tempfile.mkdtemp(prefix="dcclip-gpu-stage1-"))
    start = time.perf_counter()
    generate_world(tmp / "world", args.samples, seed=0, eval_samples=10, image_size=args.image_size, shard_size=512)
    world_s = time.perf_counter() - start
    train_tokenizer(iter_captions(tmp / "world" / "train"), 4000, tmp / "tok")
    cache = cache_teacher(run_config(args, tmp, "unused", None, args.steps), tmp / "features")

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run_stage(run_config(args, tmp, "loop", tmp / "features", args.steps))
    loop_rate = steady_rate(tmp / "loop")
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")

    flops, prepared, env, batch = step_flops(run_config(args, tmp, "memory", tmp / "features", args.steps))
    prepared.spec.run_dir = tmp / "memory"
    fit(prepared.task, InMemoryBatches(batch, 10**6), prepared.spec, env)
    memory_rate = steady_rate(tmp / "memory")

    rows = [
        {"run": "stage-1 loop, cached features (shards, workers)", "img_per_s": loop_rate},
        {"run": "stage-1 step, one batch in memory", "img_per_s": memory_rate},
    ]
    for row in rows:
        row["mfu"] = mfu(row["img_per_s"] * flops, peak)
        row["achieved_tflop_s"] = row["img_per_s"] * flops / 1e12
    table = markdown_table(rows, ["run", "img_per_s", "achieved_tflop_s", "mfu"])
    table += (
        f"\n\n{args.student}, batch {args.batch_size}, {args.precision}, channels-last, {args.workers} workers, "
        f"{args.image_size} px, all captions per image; {flops / 1e9:.2f} GFLOP per image (fwd+bwd); measured "
        f"{dtype} matmul peak {peak / 1e12:.1f} TFLOP/s; peak memory {peak_mem:.1f} GiB. Cache-teacher "
        f"{args.teacher}: {cache['samples_per_s']} img/s. Toy world: {args.samples} images in {world_s:.0f} s. "
        f"Device {torch.cuda.get_device_name() if cuda else args.device}."
    )
    payload = {"rows": rows, "flops_per_image": flops, "peak_flop_s": peak, "peak_memory_gib": peak_mem,
               "cache": cache, "args": vars(args)}  # fmt: skip
    if not args.tiny:  # a dry run proves the path works; its figures are not results
        write_result("gpu_stage1", payload, table, "bash benchmarks/gpu_stage1.sh " + " ".join(sys.argv[1:]))
    print(table)


if __name__ == "__main__":
    main()
