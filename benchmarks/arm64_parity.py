"""aarch64 parity: the torch-free runtime in an emulated Debian arm64 root (qemu-user) against the runtime here.

    python benchmarks/arm64_parity.py [--bundle runs/demo/bundle] [--images DIR] [--max-images 10]

Default bundle: the demo's (runs/demo/bundle) with the demo world's shapes eval set; without a demo, the test student
(tests/helpers/serve_bundles.py's student_bundle, exported fp32 + int8) on a generated toy-world eval set, and the
result says so. Figures: max abs difference of image and text embeddings per precision, top-1 identical count and max
abs probability difference per language, ``dcclip classify`` and index search on both, and each machine's int8 vs
fp32 top-1 agreement. Nothing is timed: speed under emulation says nothing about a device. Needs root, mmdebstrap,
arch-test and qemu-user-static (``make test-arm64`` installs them); without them it says so and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_result

from dcclip.export.targets import arm64

ROOT = Path(__file__).resolve().parents[1]
DEMO_BUNDLE = ROOT / "runs" / "demo" / "bundle"
DEMO_EVAL = ROOT / "runs" / "demo" / "world" / "eval" / "shapes"
COLUMNS = ["check", "precision", "lang", "image_max_abs", "text_max_abs", "top1_identical", "prob_max_abs", "note"]


def fixture_bundle(work: Path) -> Path:
    """The test student exported with fp32 and int8 towers (as tests/edge builds it)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.serve_bundles import student_bundle
    from helpers.threads import torch_threads

    from dcclip.export.bundle import export_bundle

    student_bundle(work)
    with torch_threads(1):
        export_bundle(work / "run", work / "bundle-both", precision="both")
    return work / "bundle-both"


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per precision and language, then the CLI, the index and the int8 agreement."""
    out = []
    for precision, figures in report["precisions"].items():
        for lang, row in figures["classify"].items():
            out.append({
                "check": "runtime API", "precision": precision, "lang": lang,
                "image_max_abs": figures["image_max_abs"], "text_max_abs": figures["text_max_abs"],
                "top1_identical": f"{row['top1_identical']}/{row['images']}", "prob_max_abs": row["prob_max_abs"],
            })  # fmt: skip
    cli, index = report["cli"], report["index"]
    out.append({
        "check": "dcclip classify --json", "precision": "manifest's", "lang": "first",
        "top1_identical": f"{cli['top1_identical']}/{cli['images']}", "prob_max_abs": cli["prob_max_abs"],
        "note": "same ranking" if cli["ranking_identical"] else "ranking differs",
    })  # fmt: skip
    out.append({
        "check": "index build + search_text", "precision": "fp32", "image_max_abs": index["embeddings_max_abs"],
        "note": f"hits identical: {index['hits_identical']}; score max abs {index['score_max_abs']:.2g}",
    })  # fmt: skip
    agreement = report["int8_agreement"]
    if agreement["x86"] is not None:
        for lang in agreement["x86"]:
            out.append({
                "check": "int8 vs fp32 top-1 agreement", "precision": "int8", "lang": lang,
                "note": f"x86 {agreement['x86'][lang]:.0%}, arm64 {agreement['arm64'][lang]:.0%}",
            })  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="default: runs/demo/bundle, else the test student")
    parser.add_argument("--images", type=Path, default=None, help="default: the demo's shapes eval set, else generated")
    parser.add_argument("--max-images", type=int, default=arm64.MAX_IMAGES)
    args = parser.parse_args()
    try:
        arm64.check_host()
    except arm64.Arm64SetupError as exc:
        print(f"arm64_parity skipped: {exc}")
        return 0
    with tempfile.TemporaryDirectory(prefix="arm64_parity-") as tmp:
        bundle, images, origin = args.bundle, args.images, "given"
        if bundle is None and DEMO_BUNDLE.is_dir():
            bundle, origin = DEMO_BUNDLE, "demo bundle (runs/demo/bundle)"
            images = images or (DEMO_EVAL if DEMO_EVAL.is_dir() else None)
        elif bundle is None:
            bundle, origin = fixture_bundle(Path(tmp)), "test student (no runs/demo/bundle): fp32 + int8 export"
        report = arm64.check_parity(bundle, images, max_images=args.max_images)
    report["bundle"]["origin"] = origin
    command = "python " + " ".join(["benchmarks/arm64_parity.py", *sys.argv[1:]])
    table = markdown_table(rows(report), COLUMNS)
    notes = (
        f"\n\nBundle: {origin}; images: {report['inputs']['source']} ({report['inputs']['images']}). "
        f"x86 {report['platform']['x86']['python']} against arm64 (Debian {report['root']['suite']}, Python "
        f"{report['platform']['arm64']['python']}, qemu-user) with the same wheels: "
        + ", ".join(f"{k} {v}" for k, v in report["platform"]["arm64"]["versions"].items())
        + ". Parity failures: "
        + ("; ".join(report["failures"]) or "none")
        + "."
    )
    write_result("arm64_parity", report, table + notes, command)
    print(table + notes)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
