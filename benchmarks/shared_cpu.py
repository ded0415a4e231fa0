"""Training step time on a shared CPU: torch's default threads vs the chosen ones, alone and beside a competing job.

    python benchmarks/shared_cpu.py [--steps 8] [--batch-size 64] [--competitor matmul|spin]

One short training step (demo student, a synthetic 64 px batch, contrastive loss, AdamW) is timed four ways in one
run: {default threads, chosen threads} x {machine alone, one CPU-bound competing process on the cores}. The competing
process is started and stopped here and always ends within a bounded time. "Chosen" is engine/threads.py's rule,
evaluated while the competitor runs (so it sees the load the way a training run starting then would).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, stop, write_result

COMPETITORS = {
    "spin": "import time\nend = time.time() + {limit}\nwhile time.time() < end:\n    pass\n",
    "matmul": (
        "import time, torch\ntorch.set_num_threads({threads})\na = torch.randn(512, 512)\nend = time.time() + {limit}\n"
        "while time.time() < end:\n    a @ a\n"
    ),
}


def make_step(batch_size: int) -> Any:
    """One demo-student training step on a fixed synthetic batch (the same work every call)."""
    import torch

    from dcclip.losses import contrastive_loss
    from dcclip.models.students import build_student

    torch.manual_seed(0)
    student = build_student("demo-student", embed_dim=128, vocab_size=600, pad_id=0)
    size = int(student.arch.get("image", {}).get("image_size", 64)) if isinstance(student.arch, dict) else 64
    pixels = torch.randn(batch_size, 3, size, size)
    ids = torch.randint(1, 600, (batch_size, 16))
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = student(pixels, ids, mask, with_fmap=False)
        loss = contrastive_loss(out["image_emb"], out["text_emb"], torch.arange(batch_size), student.logit_scale)
        loss.backward()
        optimizer.step()

    return step


def time_steps(step: Any, threads: int, steps: int) -> float:
    """Median seconds per step at ``threads`` torch threads, after one warm-up step."""
    import torch

    torch.set_num_threads(threads)
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def start_competitor(kind: str, limit_s: float) -> subprocess.Popen:
    """A CPU-bound process that stops by itself after ``limit_s`` seconds (and is killed by us before that)."""
    code = COMPETITORS[kind].format(limit=limit_s, threads=1)
    return subprocess.Popen([sys.executable, "-c", code])


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The four timings, default and chosen threads alternating within each condition."""
    import torch

    from dcclip.engine.threads import machine_threads

    default = torch.get_num_threads()
    step = make_step(args.batch_size)
    rows = []
    for condition in ("alone", f"with 1 {args.competitor} process"):
        competitor = None
        if condition != "alone":
            competitor = start_competitor(args.competitor, args.competitor_limit)
            time.sleep(args.settle)  # let the load average see it
        try:
            chosen = machine_threads("auto")
            for label, threads in (("default", default), ("chosen", chosen.threads)):
                seconds = time_steps(step, threads, args.steps)
                reason = chosen.reason if label == "chosen" else "torch default"
                row = {"condition": condition, "threads": label, "n_threads": threads, "s_per_step": round(seconds, 4)}
                rows.append({**row, "reason": reason})
        finally:
            if competitor is not None:
                stop(competitor)
    torch.set_num_threads(default)
    alone = {r["threads"]: r["s_per_step"] for r in rows if r["condition"] == "alone"}
    for row in rows:
        row["slowdown_vs_alone"] = round(row["s_per_step"] / alone[row["threads"]], 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="matmul")
    parser.add_argument("--competitor-limit", type=float, default=600.0, help="the competitor ends by itself after")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds the competitor runs before timing")
    args = parser.parse_args(argv)
    rows = measure(args)
    columns = ["condition", "threads", "n_threads", "s_per_step", "slowdown_vs_alone", "reason"]
    command = "python benchmarks/shared_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_result("shared_cpu", {"rows": rows, "settings": vars(args)}, markdown_table(rows, columns), command)
    print(markdown_table(rows, columns))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
