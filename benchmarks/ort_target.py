"""ORT target (phones): ``.ort`` files of a bundle against its ``.onnx`` files in Python onnxruntime, and their sizes.

    python benchmarks/ort_target.py [--bundle runs/demo/bundle]

Builds the target with ``dcclip target ort`` (``dcclip.export.targets.ort.build``) into a temp dir and records what
the build measured: per precision and tower, max abs diff and min cosine against the ``.onnx``, zero-shot top-1
agreement (worst language), and the size of every ``.ort`` file. Speed on a phone is not measured here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_result

from dcclip.export.targets.ort import build


def rows(summary: dict) -> list[dict]:
    """One row per precision and tower."""
    table = []
    for precision, parity in summary["parity"].items():
        for tower in ("image", "text"):
            figures = parity[tower]
            table.append({
                "precision": precision,
                "tower": tower,
                "file": figures["file"],
                "bytes": summary["bytes"].get(figures["file"], ""),
                "vectors": figures["vectors"],
                "max_abs_diff": figures["max_abs_diff"],
                "min_cosine": figures["min_cosine"],
                "top1_agreement_min_lang": parity["top1_agreement"]["min"],
            })  # fmt: skip
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("runs/demo/bundle"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        summary = build(args.bundle, Path(tmp) / "ort")
    table = rows(summary)
    columns = [
        "precision",
        "tower",
        "file",
        "bytes",
        "vectors",
        "max_abs_diff",
        "min_cosine",
        "top1_agreement_min_lang",
    ]
    ops = sum(len(v) for v in summary["ops"].values())
    text = markdown_table(table, columns) + f"\n\n{ops} operators listed in required_operators.config."
    command = f"python benchmarks/ort_target.py --bundle {args.bundle}"
    write_result("ort_target", {"bundle": str(args.bundle), "rows": table, "summary": summary}, text, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
