"""Shared by the benchmark scripts: machine/version info and writing results as JSON + a markdown table."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from dcclip.runtime.timing import machine_facts

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Where a figure was measured: CPU, cores, Python and library versions."""
    versions = {}
    for package in ("torch", "onnxruntime", "timm", "transformers", "open_clip_torch", "webdataset", "numpy", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    facts = machine_facts()
    return {"cpu": facts["cpu"], "cores": facts["cores"], "python": sys.version.split()[0], "versions": versions}


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_result(name: str, payload: dict[str, Any], table: str, command: str) -> Path:
    """Write ``results/NAME.json`` (figures + machine + command) and ``results/NAME.md`` (the table)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "command": command, "date": time.strftime("%Y-%m-%d"), "machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (RESULTS / f"{name}.md").write_text(f"### {name}\n\n`{command}`\n\n{table}\n", encoding="utf-8")
    return RESULTS / f"{name}.json"


def stop(process: subprocess.Popen) -> None:
    """Terminate a helper process (a server, a competing job), killing it if it does not exit within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
