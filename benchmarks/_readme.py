"""README blocks generated from result files, so a figure is never retyped.

``<!-- results:NAME -->`` … ``<!-- /results:NAME -->`` holds results/NAME.md (a benchmark) and ``<!-- report:NAME -->``
… ``<!-- /report:NAME -->`` holds results/NAME_report.md (a run's report, e.g. the demo's headline written by
benchmarks/demo_report.py), each without its heading and command line. ``python benchmarks/run_all.py --gather``
rewrites the blocks; tests/test_docs.py fails when one is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from _common import RESULTS

BLOCK = re.compile(
    r"(<!-- (?P<kind>results|report):(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /(?P=kind):(?P=name) -->)", re.S
)


def source_name(kind: str, name: str) -> str:
    """The results/ file stem a block quotes: NAME for a benchmark, NAME_report for a run's report."""
    return name if kind == "results" else f"{name}_report"


def result_body(name: str) -> str:
    """results/NAME.md from its first table or paragraph after the heading and the command line."""
    text = (RESULTS / f"{name}.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("`")) + 1  # after the command line
    return "\n".join(lines[start:]).strip() + "\n"


def blocks(readme: str) -> dict[str, str]:
    """{source name: body} of every generated block in ``readme`` (the source name is the results/ file stem)."""
    return {source_name(m["kind"], m["name"]): m["body"] for m in BLOCK.finditer(readme)}


def generated(readme: str) -> str:
    """``readme`` with every block whose result file exists filled from it (the others left as they are)."""

    def fill(m: re.Match) -> str:
        name = source_name(m["kind"], m["name"])
        return m[0] if not (RESULTS / f"{name}.md").is_file() else m[1] + result_body(name) + m.group(5)

    return BLOCK.sub(fill, readme)


def refresh(readme_path: Path) -> list[str]:
    """Rewrite every generated block of ``readme_path`` from results/; returns the source names of the blocks changed.

    A block whose result file does not exist yet is left as it is, and named on stderr.
    """
    readme = readme_path.read_text(encoding="utf-8")
    found = blocks(readme)
    for name in found:
        if not (RESULTS / f"{name}.md").is_file():
            print(f"README: no results/{name}.md yet; its block is left as it is", file=sys.stderr)
    changed = [n for n, body in found.items() if (RESULTS / f"{n}.md").is_file() and body != result_body(n)]
    fresh = generated(readme)
    if fresh != readme:
        readme_path.write_text(fresh, encoding="utf-8")
    return changed
