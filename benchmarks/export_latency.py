"""Export latency and size: a ViT-B-32 teacher vs the edge students, torch eager vs onnxruntime fp32 vs int8.

    python benchmarks/export_latency.py [--students mnv4s-text6,fastvit-t8-text4] [--batches 1,32] [--repeat 5]
                                        [--demo-report runs/demo/report.json]

Weights are random (speed and size do not depend on them). Every tower is exported and quantised the way
`dcclip export` does it, then timed side by side in one run; ratios are against the teacher in onnxruntime fp32.
The int8 accuracy drop comes from a trained student: the demo's report, when one is given or found.

MFU columns: each tower's inference FLOPs (torch's flop counter on the same module's forward) divided by the measured
latency, against the machine's sustained fp32 matmul rate at the same threads (int8 rows too: the fp32 limit is the
reference a user compares with).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_result
from _mfu import count_flops, load_average, matmul_flops_per_s

from dcclip.demo.report import median_ms

EMBED_DIM = 512
VOCAB = 32000
TEXT_LEN = 32


class OpenClipImage:
    """open_clip's image encoder behind the ``embed`` interface the exporter expects."""

    def __new__(cls, model):
        import torch

        class _Image(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model
                self.trunk = model.visual  # what the exporter reparameterises

            def embed(self, pixels):
                return self.model.encode_image(pixels)

        return _Image()


class OpenClipText:
    """open_clip's text encoder as (ids, mask) -> embedding; CLIP pools at the end token, so the mask is unused."""

    def __new__(cls, model):
        import torch

        class _Text(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):
                return self.model.encode_text(input_ids * attention_mask)  # padding is id 0 anyway

        return _Text()


def towers(name: str) -> dict[str, Any]:
    """(image module, text module, image size, context length) of the teacher or a student, random weights."""
    import torch

    torch.manual_seed(0)
    if name == "teacher ViT-B-32":
        import open_clip

        model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
        return {"image": OpenClipImage(model).eval(), "text": OpenClipText(model).eval(), "size": 224, "length": 77}
    from dcclip.models.students import build_student, student_preprocess

    student = build_student(name, embed_dim=EMBED_DIM, vocab_size=VOCAB, pad_id=0).eval()
    return {"image": student.image, "text": student.text, "size": student_preprocess(student.arch).image_size,
            "length": TEXT_LEN}  # fmt: skip


def export_towers(name: str, parts: dict[str, Any], out: Path) -> dict[str, Path]:
    """fp32 and int8 ONNX files of both towers, made with dcclip's exporter and quantiser."""
    from dcclip.export.onnx import export_image_tower, export_text_tower
    from dcclip.export.quantize import quantize_tower

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {"image_fp32": out / "image.onnx", "text_fp32": out / "text.onnx"}
    export_image_tower(parts["image"], files["image_fp32"], parts["size"])
    ids = rng.integers(1, 1000, size=(2, parts["length"]), dtype=np.int64)
    ids[:, -1] = 49407 if name.startswith("teacher") else 3  # open_clip pools at the highest id (end token)
    # open_clip's text tower has a fixed context: its graph only runs at that length (the TorchScript exporter
    # still names the axis; the dynamo exporter refuses a constant axis, as it should for dcclip's students)
    exporters = ("torchscript",) if name.startswith("teacher") else ("dynamo", "torchscript")
    export_text_tower(parts["text"], files["text_fp32"], ids, np.ones_like(ids), exporters=exporters)
    calibration = rng.standard_normal((16, 3, parts["size"], parts["size"])).astype(np.float32)
    files["image_int8"], files["text_int8"] = out / "image.int8.onnx", out / "text.int8.onnx"
    quantize_tower(files["image_fp32"], files["image_int8"], calibration=calibration)
    quantize_tower(files["text_fp32"], files["text_int8"])
    return files


def time_torch(parts: dict[str, Any], pixels: np.ndarray, ids: np.ndarray, mask: np.ndarray, repeat: int) -> tuple:
    import torch

    with torch.no_grad():
        image_ms = median_ms(lambda: parts["image"].embed(torch.from_numpy(pixels)), repeat, warmup=1)
        text_ms = median_ms(lambda: parts["text"](torch.from_numpy(ids), torch.from_numpy(mask)), repeat, warmup=1)
    return image_ms, text_ms


def time_onnx(image: Path, text: Path, pixels: np.ndarray, ids: np.ndarray, mask: np.ndarray, repeat: int) -> tuple:
    import onnxruntime as ort

    image_session = ort.InferenceSession(str(image), providers=["CPUExecutionProvider"])
    text_session = ort.InferenceSession(str(text), providers=["CPUExecutionProvider"])
    image_ms = median_ms(lambda: image_session.run(None, {"pixel_values": pixels}), repeat, warmup=1)
    text_ms = median_ms(lambda: text_session.run(None, {"input_ids": ids, "attention_mask": mask}), repeat, warmup=1)
    return image_ms, text_ms


def tower_flops(parts: dict[str, Any], pixels: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    """Inference FLOPs of one call of the image and the text tower (the same work onnxruntime does)."""
    import torch

    with torch.no_grad():
        image = count_flops(lambda: parts["image"].embed(torch.from_numpy(pixels)))
        text = count_flops(lambda: parts["text"](torch.from_numpy(ids), torch.from_numpy(mask)))
    return image, text


def time_model(name: str, parts: dict[str, Any], files: dict[str, Path], batches: list[int], repeat: int) -> list[dict]:
    """Milliseconds per call of each tower in torch eager, onnxruntime fp32 and onnxruntime int8, per batch size."""
    rows = []
    sizes = {k: v.stat().st_size / 1e6 for k, v in files.items()}
    for batch in batches:
        pixels = np.random.default_rng(1).standard_normal((batch, 3, parts["size"], parts["size"])).astype(np.float32)
        ids = np.random.default_rng(2).integers(1, 1000, size=(batch, parts["length"]), dtype=np.int64)
        mask = np.ones_like(ids)
        image_flops, text_flops = tower_flops(parts, pixels, ids, mask)
        timings = {"torch eager fp32": time_torch(parts, pixels, ids, mask, repeat)}
        for precision in ("fp32", "int8"):
            timings[f"onnxruntime {precision}"] = time_onnx(
                files[f"image_{precision}"], files[f"text_{precision}"], pixels, ids, mask, repeat
            )
        for backend, (image_ms, text_ms) in timings.items():
            precision = "int8" if "int8" in backend else "fp32"
            rows.append({
                "model": name, "backend": backend, "batch": batch, "image_ms": image_ms, "text_ms": text_ms,
                "image_mb": sizes[f"image_{precision}"], "text_mb": sizes[f"text_{precision}"],
                "image_gflop": image_flops / 1e9, "text_gflop": text_flops / 1e9,
            })  # fmt: skip
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Speed-ups and size ratios against the teacher in onnxruntime fp32 at the same batch size."""
    base = {r["batch"]: r for r in rows if r["model"].startswith("teacher") and r["backend"] == "onnxruntime fp32"}
    for row in rows:
        ref = base[row["batch"]]
        row["image_speedup"] = ref["image_ms"] / row["image_ms"]
        row["text_speedup"] = ref["text_ms"] / row["text_ms"]
        row["smaller_by"] = (ref["image_mb"] + ref["text_mb"]) / (row["image_mb"] + row["text_mb"])


def add_mfu(rows: list[dict], peak_flop_s: float) -> None:
    """Achieved GFLOP/s and MFU of every tower timing against the measured fp32 matmul rate."""
    for row in rows:
        for tower in ("image", "text"):
            achieved = row[f"{tower}_gflop"] * 1e9 / (row[f"{tower}_ms"] / 1e3)
            row[f"{tower}_gflop_s"] = achieved / 1e9
            row[f"{tower}_mfu"] = achieved / peak_flop_s


def int8_drop(report_path: Path | None) -> dict[str, Any] | None:
    """Zero-shot top-1 of the trained demo student's bundle, fp32 vs int8, from the demo report."""
    if report_path is None or not report_path.is_file():
        return None
    report = json.loads(report_path.read_text())
    out = {}
    for task, table in report["top1"].items():
        fp32, int8 = table["values"]["student ONNX fp32"]["mean"], table["values"]["student ONNX int8"]["mean"]
        out[task] = {"fp32_top1": fp32, "int8_top1": int8, "drop_points": 100 * (fp32 - int8)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", default="mnv4s-text6,fastvit-t8-text4")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--demo-report", default="runs/demo/report.json")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="dcclip-export-bench-"))
    rows, load_before = [], load_average()
    peaks = [matmul_flops_per_s("fp32")]
    for name in ["teacher ViT-B-32", *args.students.split(",")]:
        parts = towers(name)
        files = export_towers(name, parts, tmp / name.replace(" ", "_"))
        rows += time_model(name, parts, files, batches, args.repeat)
        peaks.append(matmul_flops_per_s("fp32"))  # between models too: the best of several is the machine's limit
    add_ratios(rows)
    add_mfu(rows, max(peaks))
    columns = ["model", "backend", "batch", "image_ms", "text_ms", "image_mb", "text_mb", "image_speedup",
               "text_speedup", "smaller_by"]  # fmt: skip
    table = markdown_table(rows, columns)
    mfu_columns = ["model", "backend", "batch", "image_gflop", "image_gflop_s", "image_mfu", "text_gflop",
                   "text_gflop_s", "text_mfu"]  # fmt: skip
    table += "\n\nAgainst the machine's limit (inference FLOPs / latency vs sustained fp32 matmul):\n\n"
    table += markdown_table(rows, mfu_columns)
    table += (
        f"\n\nPeak fp32 matmul {max(peaks) / 1e9:.0f} GFLOP/s (best of "
        f"{', '.join(f'{p / 1e9:.0f}' for p in peaks)}, measured before, between and after the models); "
        f"load average {load_before:.2f} → {load_average():.2f}."
    )
    drop = int8_drop(Path(args.demo_report))
    if drop:
        table += "\n\nint8 vs fp32 zero-shot top-1 of the trained demo student (mean over languages): " + "; ".join(
            f"{task}: {d['fp32_top1']:.1%} → {d['int8_top1']:.1%} ({d['drop_points']:+.2f} points)"
            for task, d in drop.items()
        )
    table += "\n\nRatios are against the teacher in onnxruntime fp32 at the same batch size; sizes are the ONNX files."
    write_result("export_latency", {"rows": rows, "int8_top1": drop, "embed_dim": EMBED_DIM, "vocab": VOCAB,
                                    "peak_fp32_gflop_s": [p / 1e9 for p in peaks]},
                 table, "python benchmarks/export_latency.py " + " ".join(sys.argv[1:]))  # fmt: skip
    print(table)


if __name__ == "__main__":
    main()
