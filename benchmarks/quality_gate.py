"""The quality gate's statistics over seeds: the working recipe against every fault, to place the gate's floors.

    python benchmarks/quality_gate.py [--seeds 0 1 2 3 4] [--faults none image_loss_off ...] [--keep DIR]
    python benchmarks/quality_gate.py --rejudge   # verdicts and tables again from results/quality_gate.json

For each seed the working recipe runs first; each fault then reuses that seed's toy world, teacher and tokenizer
(the demo's step cache) and reruns stage 1, stage 2, export and eval. Writes results/quality_gate.{json,md}: every
run's statistics, the distribution per recipe (min / median / max), and the margin between the lowest working run
and the highest broken run for each statistic, against the floors in dcclip/demo/gate.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result

from dcclip.demo.gate import (
    FAULTS,
    FLOORS,
    GATE_LANGS,
    INT8_MIN_AGREEMENT,
    LOSES,
    STUDENTS,
    TEACHER_MIN,
    failures,
    run_gate,
)

REUSED_STEPS = ("world", "teacher", "tokenizer")


def seed_from(working: Path, out: Path) -> None:
    """Start ``out`` with the working run's world, teacher and tokenizer, recorded as done in its step state."""
    out.mkdir(parents=True)
    for name in REUSED_STEPS:
        shutil.copytree(working / name, out / name, copy_function=os.link)
    state = json.loads((working / "steps.json").read_text("utf-8"))
    (out / "steps.json").write_text(json.dumps({k: state[k] for k in REUSED_STEPS}), encoding="utf-8")


def statistics(run: dict[str, Any]) -> dict[str, float]:
    """The gate's statistics of one run, each the weakest over the students it is measured on."""
    students = run["students"]
    imitators = [s for s in students.values() if "image_cosine" in s]
    return {
        "image_cosine": min(s["image_cosine"] for s in imitators),
        "text_cosine": min(min(s["text_cosine"][lang] for lang in GATE_LANGS) for s in imitators),
        "retention": min(students[name]["retention"] for name in STUDENTS),
        "teacher_digits": run["teacher"]["zeroshot_digits"],
        "teacher_shapes": run["teacher"]["zeroshot_shapes"],
        "int8_agreement": run["int8"]["top1_agreement"],
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per fault and statistic: min, median, max over seeds; margins between working and broken runs."""
    table: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for stat, value in run["stats"].items():
            table.setdefault(run["fault"], {}).setdefault(stat, []).append(value)
    spread = {
        f: {s: [min(v), float(sorted(v)[len(v) // 2]), max(v)] for s, v in stats.items()} for f, stats in table.items()
    }
    margins = {}
    for stat, floor in FLOORS.items():
        working = min(table.get("none", {}).get(stat, [float("nan")]))
        broken = [max(v[stat]) for f, v in table.items() if stat in LOSES.get(f, ())]
        margins[stat] = {"floor": floor, "lowest_working": working, "highest_broken": max(broken, default=None)}
    caught = {f: all(r["failures"] for r in runs if r["fault"] == f) for f in table if f != "none"}
    passed = all(not r["failures"] for r in runs if r["fault"] == "none")
    return {"spread": spread, "margins": margins, "every_fault_caught": caught, "working_always_passes": passed}


def markdown(runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """Per recipe: each statistic as min / median / max over seeds, then the floors and margins."""
    stats = ["image_cosine", "text_cosine", "retention", "teacher_digits", "teacher_shapes", "int8_agreement"]
    lines = ["| recipe | seeds | " + " | ".join(stats) + " | gate |", "|" + "---|" * (len(stats) + 3)]
    for fault, spread in summary["spread"].items():
        seeds = sorted(r["seed"] for r in runs if r["fault"] == fault)
        verdicts = {bool(r["failures"]) for r in runs if r["fault"] == fault}
        verdict = (
            "fails on every seed" if verdicts == {True} else "passes on every seed" if verdicts == {False} else "mixed"
        )
        cells = [" / ".join(f"{x:.3f}" for x in spread[s]) for s in stats]
        lines.append(f"| {fault} | {','.join(map(str, seeds))} | " + " | ".join(cells) + f" | {verdict} |")
    header = "| statistic | floor | lowest working run | highest run of the faults that lose it |"
    lines += ["", header, "|---|---|---|---|"]
    for stat, m in summary["margins"].items():
        broken = "n/a" if m["highest_broken"] is None else f"{m['highest_broken']:.3f}"
        lines.append(f"| {stat} | {m['floor']} | {m['lowest_working']:.3f} | {broken} |")
    working = summary["spread"].get("none", {})
    for stat, floor, reference in SANITY_FLOORS:
        if stat in working:
            lines.append(f"| {stat} | {floor} | {working[stat][0]:.3f} | {reference} |")
    return "\n".join(lines)


# Floors that do not separate working from broken distillation but check the setting: the teacher's own accuracy
# (against chance) and the int8 bundle's agreement with fp32 (export ships a tower int8 only at >= 97% on its own).
SANITY_FLOORS = [
    ("teacher_digits", TEACHER_MIN["zeroshot_digits"], "chance 0.100"),
    ("teacher_shapes", TEACHER_MIN["zeroshot_shapes"], "chance 0.011"),
    ("int8_agreement", INT8_MIN_AGREEMENT, "each int8 tower >= 0.97 alone"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=list(FAULTS))
    parser.add_argument("--keep", type=Path, default=None, help="keep every run's outputs here (default: a temp dir)")
    parser.add_argument("--rejudge", action="store_true", help="no runs: judge the recorded runs by today's floors")
    args = parser.parse_args()
    if args.rejudge:
        return report(rejudged(), "python benchmarks/quality_gate.py && python benchmarks/quality_gate.py --rejudge")
    root = args.keep or Path(tempfile.mkdtemp(prefix="dcclip-gate-"))
    faults = ["none", *[f for f in args.faults if f != "none"]]
    runs = []
    for seed in args.seeds:
        for fault in faults:
            out = root / f"seed{seed}" / fault
            if fault != "none" and not out.exists():
                seed_from(root / f"seed{seed}" / "none", out)
            start = time.perf_counter()
            run = run_gate(out, seed, fault)
            run["seconds"] = round(time.perf_counter() - start, 1)
            run["stats"] = statistics(run)
            runs.append(run)
            print(json.dumps({"seed": seed, "fault": fault, **run["stats"], "failures": run["failures"]}), flush=True)
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return report(runs, ("python benchmarks/quality_gate.py " + " ".join(sys.argv[1:])).strip())


def rejudged() -> list[dict[str, Any]]:
    """The recorded runs, each judged again by dcclip/demo/gate.py's floors of today."""
    runs = json.loads((RESULTS / "quality_gate.json").read_text("utf-8"))["runs"]
    for run in runs:
        run["failures"] = failures(run)
        run["stats"] = statistics(run)
    return runs


def report(runs: list[dict[str, Any]], command: str) -> int:
    """Write results/quality_gate.{json,md}; 0 when every working run passes and every broken run fails."""
    summary = summarise(runs)
    floors = {**FLOORS, "teacher": TEACHER_MIN, "int8_agreement": INT8_MIN_AGREEMENT}
    write_result("quality_gate", {"runs": runs, **summary, "floors": floors}, markdown(runs, summary), command)
    return 0 if summary["working_always_passes"] and all(summary["every_fault_caught"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
