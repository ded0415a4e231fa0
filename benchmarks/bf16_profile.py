"""Where bf16 wins and loses on this CPU: the real-size stage-1 step's parts in fp32, bf16 autocast and bf16 weights.

    python benchmarks/bf16_profile.py [--teacher openclip:ViT-B-32@random] [--student mnv4s050-text4]
                                      [--batch-size 16] [--rounds 3] [--threads 2]

Stage 1 with the teacher online is two pieces of work: the frozen teacher's forward (images and source captions) and
the student's forward + backward. Each is timed in fp32, under bf16 autocast (what ``train.precision=bf16`` does
today: fp32 weights cast to bf16 at every matmul) and, for the frozen teacher, with its weights converted to bf16 once.
Variants are timed in turns (``interleaved_ms``) on the same batch; then one call of each is profiled (torch
profiler, self CPU time per operator and input shapes) so the ops that keep bf16 from paying are named. The
machine's fp32 and bf16 matmul rates are measured at the same threads.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_result
from _mfu import matmul_flops_per_s

from dcclip.runtime.timing import interleaved_ms

CAPTION = "a photo of a small red car parked next to a tall green tree on a sunny day"
TOP_OPS = 8


def autocast(enabled: bool) -> Any:
    """bf16 autocast on CPU when enabled, else a no-op context."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def teacher_forward(teacher: Any, pixels: torch.Tensor, texts: list[str], bf16: bool) -> Callable[[], None]:
    """One frozen-teacher forward on images and captions (as stage 1 does online), optionally under autocast."""

    def run() -> None:
        with torch.no_grad(), autocast(bf16):
            teacher.encode_image(pixels)
            teacher.encode_text(texts)

    return run


def bf16_weights(teacher: Any, pixels: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """A copy of the frozen teacher with bf16 weights (cast once, not per matmul) and its bf16 input."""
    return copy.deepcopy(teacher).to(torch.bfloat16), pixels.to(torch.bfloat16)


def student_step(student: Any, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, bf16: bool) -> Callable:
    """The student's forward and backward on one batch (cosine to fixed targets), optionally under autocast."""
    with torch.no_grad():
        targets = student.image(pixels)[0].detach(), student.text(ids, mask).detach()

    def run() -> None:
        with autocast(bf16):
            image, _ = student.image(pixels)
            text = student.text(ids, mask)
            loss = (1 - torch.cosine_similarity(image.float(), targets[0], dim=-1)).mean()
            loss = loss + (1 - torch.cosine_similarity(text.float(), targets[1], dim=-1)).mean()
        loss.backward()
        student.zero_grad(set_to_none=True)

    return run


def top_operators(fn: Callable[[], None]) -> list[dict[str, Any]]:
    """The operators (by input shapes) taking the most self CPU time in one call, with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    events = [e for e in prof.key_averages(group_by_input_shape=True) if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "shapes": shapes(e.input_shapes), "self_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:TOP_OPS]]  # fmt: skip


def shapes(input_shapes: list) -> str:
    """The operator's tensor input shapes, e.g. ``[50, 768, 2304] x [50, 768, 2304]`` (scalars left out)."""
    return " x ".join(str(list(shape)) for shape in input_shapes if shape)


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """The teacher, the student and one random real-size batch."""
    from dcclip.models.students import build_student, student_preprocess
    from dcclip.models.teachers import load_teacher

    torch.manual_seed(0)
    teacher = load_teacher(args.teacher).eval()
    student = build_student(args.student, embed_dim=teacher.embed_dim, vocab_size=32000, pad_id=0).train()
    size = student_preprocess(student.arch).image_size
    pixels = torch.randn(args.batch_size, 3, size, size)
    ids = torch.randint(1, 32000, (args.batch_size, min(32, student.text.max_length)))
    texts = [f"{CAPTION} #{i}" for i in range(args.batch_size)]
    return {"teacher": teacher, "student": student, "pixels": pixels, "ids": ids, "texts": texts}


def variants(p: dict[str, Any]) -> dict[str, Callable[[], None]]:
    """Every timed piece of work, by name."""
    teacher16, pixels16 = bf16_weights(p["teacher"], p["pixels"])
    mask = torch.ones_like(p["ids"])
    return {
        "teacher fwd, fp32": teacher_forward(p["teacher"], p["pixels"], p["texts"], False),
        "teacher fwd, bf16 autocast": teacher_forward(p["teacher"], p["pixels"], p["texts"], True),
        "teacher fwd, bf16 weights": teacher_forward(teacher16, pixels16, p["texts"], True),
        "student f+b, fp32": student_step(p["student"], p["pixels"], p["ids"], mask, False),
        "student f+b, bf16 autocast": student_step(p["student"], p["pixels"], p["ids"], mask, True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="openclip:ViT-B-32@random")
    parser.add_argument("--student", default="mnv4s050-text4")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peaks = {d: matmul_flops_per_s(d, args.threads) / 1e9 for d in ("fp32", "bf16")}
    work = variants(prepare(args))
    times = interleaved_ms(work, repeat=args.rounds, warmup=1)
    rows = [{"work": name, "ms": statistics.median(t), "runs": len(t)} for name, t in times.items()]
    base = {row["work"].split(",")[0]: row["ms"] for row in rows if row["work"].endswith("fp32")}
    for row in rows:
        row["speedup_vs_fp32"] = base[row["work"].split(",")[0]] / row["ms"]
    profiles = {name: top_operators(fn) for name, fn in work.items()}
    table = markdown_table(rows, ["work", "ms", "speedup_vs_fp32", "runs"])
    table += (
        f"\n\nTeacher {args.teacher}, student {args.student}, batch {args.batch_size} at the student's size, "
        f"{args.threads} threads; matmul peak {peaks['fp32']:.0f} GFLOP/s fp32, {peaks['bf16']:.0f} GFLOP/s bf16."
    )
    for name, ops in profiles.items():
        table += f"\n\nTop operators, {name} (self CPU time, one call):\n\n"
        table += markdown_table(ops, ["op", "shapes", "self_ms", "share", "calls"])
    write_result("bf16_profile", {"rows": rows, "peaks_gflop_s": peaks, "profiles": profiles, "threads": args.threads,
                                  "teacher": args.teacher, "student": args.student, "batch_size": args.batch_size},
                 table, "python benchmarks/bf16_profile.py " + " ".join(sys.argv[1:]))  # fmt: skip
    print(table)


if __name__ == "__main__":
    main()
