"""The demo's headline as a result file: results/demo_report.md from the report.json that `make demo` writes.

The README's ``<!-- report:demo -->`` block and BENCHMARKS.md quote this file (``run_all.py --gather``), so the demo's
figures are typed by the demo alone. Run it after ``make demo``; without a report.json it says so and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result

from dcclip.demo.report import headline_markdown

DEFAULT_REPORT = Path("runs/demo/report.json")
NAME = "demo_report"


def load_report(path: Path) -> dict[str, Any]:
    """The demo's report.json, refused with the command that writes it when missing or without a headline."""
    if not path.is_file():
        raise ValueError(f"{path}: no demo report; run `make demo` (dcclip demo) first, then this script")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc}); run `make demo` again") from exc
    if not isinstance(report, dict) or not report.get("headline"):
        raise ValueError(f"{path}: no 'headline' field; it was written by an older dcclip demo: run `make demo`")
    return report


def how_measured(report: dict[str, Any], here: dict[str, Any]) -> str:
    """One paragraph: the recipe (from the report's settings), where it ran and how long its steps took."""
    s = report.get("settings", {})
    where = report.get("machine") or here
    cpu = f"{where.get('cpu', '?')} ({where.get('cores', '?')} cores)"
    source = "" if report.get("machine") else " (the machine that gathered this file; the report does not name one)"
    steps = report.get("seconds", {}).get("steps", {})
    took = f"; its steps took {sum(steps.values()):.0f} s in all" if steps else ""
    chosen = [c["precision"] for c in (report.get("precision") or {}).values() if c]
    took += f"; trained in {' / '.join(dict.fromkeys(chosen))} (`train.precision=auto`)" if chosen else ""
    return (
        f"How it was measured: `make demo` (`dcclip demo`, seed {s.get('seed', '?')}) on the built-in toy world "
        f"({s.get('train_samples', '?')} training images, {s.get('eval_samples', '?')} per eval set, "
        f"{s.get('image_size', '?')} px): stand-in teacher ({s.get('teacher_image_steps', '?')} image + "
        f"{s.get('teacher_text_steps', '?')} text steps), stage 1 {s.get('distill_steps', '?')} steps, stage 2 "
        f"{s.get('align_steps', '?')} steps, on {cpu}{source}{took}. Per-language tables, speed and size: "
        "`runs/demo/report.md`."
    )


def demo_markdown(report: dict[str, Any], here: dict[str, Any]) -> str:
    """The headline table and its note (dcclip.demo.report), then how it was measured."""
    return headline_markdown(report) + "\n\n" + how_measured(report, here)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--report", type=Path, default=DEFAULT_REPORT, help="the demo's report.json (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        report = load_report(args.report)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = demo_markdown(report, machine())
    command = f"python benchmarks/demo_report.py --report {args.report}"
    payload = {"report": str(args.report), "headline": report["headline"], "settings": report.get("settings")}
    write_result(NAME, payload, text, command)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
