"""The demo's closing work: speed and size side by side, ``report.md`` / ``report.json`` with charts, the summary."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dcclip.data.shards import write_json_atomic

SAMPLE_TEXT = "a small red star on the left and a large blue circle on the right"
TABLE_MODELS = ("teacher", "student stage 1", "student stage 2", "student ONNX fp32", "student ONNX int8")


def median_ms(fn: Callable[[], Any], repeat: int = 30, warmup: int = 3) -> float:
    """Median wall time of ``fn`` in milliseconds after a warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_speed_and_size(teacher_dir: Path, bundle_dir: Path) -> dict[str, Any]:
    """Batch-1 latency of each tower and bytes on disk: teacher in torch vs student bundle in onnxruntime."""
    import torch

    from dcclip.models.teachers import load_teacher
    from dcclip.runtime.bundle import load_bundle_model, read_manifest

    teacher = load_teacher(f"openclip:{teacher_dir}")
    size = teacher.preprocess.image_size
    pixels = torch.randn(1, 3, size, size)
    rows = [
        {
            "model": "teacher (torch fp32)",
            "image_ms": median_ms(lambda: teacher.encode_image(pixels)),
            "text_ms": median_ms(lambda: teacher.encode_text([SAMPLE_TEXT])),
            "bytes": sum(p.stat().st_size for p in Path(teacher_dir).glob("*.safetensors")),
        }
    ]
    manifest = read_manifest(bundle_dir)
    for precision in manifest["precisions"]:
        model = load_bundle_model(bundle_dir, precision)
        student_pixels = np.random.default_rng(0).standard_normal(
            (1, 3, model.preprocess.image_size, model.preprocess.image_size)
        )
        files = [f for f, e in manifest["files"].items() if e.get("precision") == precision]
        rows.append(
            {
                "model": f"student (onnxruntime {precision})",
                "image_ms": median_ms(lambda m=model, x=student_pixels: m.embed_pixels(x.astype(np.float32))),
                "text_ms": median_ms(lambda m=model: m.embed_texts([SAMPLE_TEXT])),
                "bytes": sum((Path(bundle_dir) / f).stat().st_size for f in files),
            }
        )
    base = rows[0]
    for row in rows:
        row["image_speedup"] = base["image_ms"] / row["image_ms"]
        row["text_speedup"] = base["text_ms"] / row["text_ms"]
        row["size_ratio"] = base["bytes"] / row["bytes"]
    return {"rows": rows, "note": "batch 1, median of 30 runs after warm-up, towers only (no preprocessing)"}


# --- report ---------------------------------------------------------------------------------------------------------
def accuracy_table(eval_summary: dict[str, Any], task: str, metric: str) -> tuple[list[str], list[str], dict]:
    """(languages, models, {model: {lang: value}}) of one eval task, languages in the dataset's order plus 'mean'."""
    results = eval_summary[task]["results"]
    models = [m for m in TABLE_MODELS if m in results] or list(results)
    langs = list(next(iter(results.values())).keys())
    values = {m: {lang: results[m][lang][metric] for lang in langs} for m in models}
    for m in models:
        values[m]["mean"] = eval_summary[task]["mean"][m][metric]
    return [*langs, "mean"], models, values


def markdown(langs: list[str], models: list[str], values: dict, fmt: str = "{:.1%}") -> str:
    lines = ["| language | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for lang in langs:
        cells = [fmt.format(values[m][lang]) for m in models]
        label = f"**{lang}**" if lang == "mean" else lang
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loss_curves(out: Path, runs: dict[str, Path]) -> Path:
    """One PNG with the total and component losses of each training stage."""
    from matplotlib.figure import Figure

    from dcclip.engine.metrics import read_metrics

    figure = Figure(figsize=(11, 3.6))
    for index, (title, run_dir) in enumerate(runs.items(), 1):
        axis = figure.add_subplot(1, len(runs), index)
        records = read_metrics(run_dir)
        for name in sorted({k for r in records for k in r if k.endswith("loss")}):
            points = [(r["step"], r[name]) for r in records if name in r]
            axis.plot(*zip(*points, strict=True), label=name, linewidth=1.2)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path = out / "loss_curves.png"
    figure.savefig(path, dpi=110)
    return path


def speed_chart(out: Path, bench: dict[str, Any]) -> Path:
    """Latency (image and text tower, batch 1) and size on disk, teacher vs student."""
    from matplotlib.figure import Figure

    rows = bench["rows"]
    names = [r["model"] for r in rows]
    figure = Figure(figsize=(11, 3.4))
    for index, (key, title) in enumerate(
        [("image_ms", "image tower, ms (batch 1)"), ("text_ms", "text tower, ms (batch 1)"), ("bytes", "MB on disk")], 1
    ):
        axis = figure.add_subplot(1, 3, index)
        values = [r[key] / 1e6 if key == "bytes" else r[key] for r in rows]
        axis.barh(names, values, color=["#c44e52"] + ["#4c72b0"] * (len(rows) - 1))
        axis.set_title(title, fontsize=9)
        axis.tick_params(labelsize=7)
        axis.invert_yaxis()
    figure.tight_layout()
    path = out / "speed_size.png"
    figure.savefig(path, dpi=110)
    return path


def accuracy_chart(out: Path, langs: list[str], models: list[str], values: dict, name: str, title: str) -> Path:
    """Grouped bars: languages on x, one bar per model."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.8))
    axis = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        xs = [j + i * width for j in range(len(langs))]
        axis.bar(xs, [values[model][lang] for lang in langs], width, label=model)
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(langs))], langs)
    axis.set_ylim(0, 1)
    axis.set_title(title)
    axis.legend(fontsize=7, ncol=len(models))
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path = out / name
    figure.savefig(path, dpi=110)
    return path


def extract_examples(eval_set: Path, out: Path, count: int = 4) -> list[Path]:
    """A few evaluation images as plain files, to try `dcclip classify` on."""
    from dcclip.data.shards import image_field, iter_tar_samples

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sample in iter_tar_samples(eval_set / "test" / "0.tar"):
        ext = image_field(sample)
        if ext is None:
            continue
        path = out / f"{sample['__key__']}.{ext}"
        path.write_bytes(sample[ext])
        written.append(path)
        if len(written) == count:
            break
    return written


def write_report(settings: Any, summaries: dict[str, Any], step_seconds: dict[str, float], total: float) -> dict:
    """report.json (every figure) and report.md (tables + charts) in the demo directory."""
    out = Path(settings.out)
    p = settings.paths()
    examples = extract_examples(p["world"] / "eval" / "shapes", out / "examples")
    evals = summaries["eval"]
    tables = {}
    charts = {"loss_curves": loss_curves(out, {"stage 1 (distill)": p["distill"], "stage 2 (align)": p["align"]}).name}
    for task, title in (
        ("zeroshot_shapes", "zero-shot top-1, colour x shape"),
        ("zeroshot_digits", "zero-shot top-1, digits"),
    ):
        langs, models, values = accuracy_table(evals, task, "top1")
        tables[task] = {"langs": langs, "models": models, "values": values}
        charts[task] = accuracy_chart(out, langs, models, values, f"{task}_top1.png", title).name
    charts["speed_size"] = speed_chart(out, summaries["bench"]).name
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "seconds": {"total_this_run": round(total, 1), "steps": {k: round(v, 1) for k, v in step_seconds.items()}},
        "top1": tables,
        "retrieval": evals["retrieval"],
        "alignment": evals["alignment"],
        "speed_size": summaries["bench"],
        "export": summaries["export"],
        "training": {name: summaries[name].get("final_losses") for name in ("distill", "align")},
        "teacher": summaries["teacher"],
        "bundle": str(p["bundle"]),
        "examples": [str(e) for e in examples],
        "charts": charts,
    }
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
    return report


def speed_markdown(bench: dict[str, Any]) -> str:
    lines = [
        "| model | image tower ms | text tower ms | MB | image speed-up | text speed-up | smaller by |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in bench["rows"]:
        lines.append(
            f"| {r['model']} | {r['image_ms']:.2f} | {r['text_ms']:.2f} | {r['bytes'] / 1e6:.1f} | "
            f"{r['image_speedup']:.1f}× | {r['text_speedup']:.1f}× | {r['size_ratio']:.1f}× |"
        )
    return "\n".join(lines) + f"\n\n{bench['note']}."


def report_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: accuracy per language, speed and size, and where everything is."""
    parts = ["# dcclip demo report\n", f"Bundle: `{report['bundle']}`\n"]
    for task, title in (("zeroshot_shapes", "Zero-shot top-1: colour × shape (90 classes)"),
                        ("zeroshot_digits", "Zero-shot top-1: handwritten digits (10 classes)")):  # fmt: skip
        t = report["top1"][task]
        parts += [
            f"## {title}\n",
            markdown(t["langs"], t["models"], t["values"]),
            f"\n![{task}]({report['charts'][task]})\n",
        ]
    parts += [
        "## Speed and size\n",
        speed_markdown(report["speed_size"]),
        f"\n![speed]({report['charts']['speed_size']})\n",
    ]
    parts += ["## Training\n", f"![losses]({report['charts']['loss_curves']})\n"]
    seconds = report["seconds"]["steps"]
    parts += ["## Step times (s)\n", " · ".join(f"{k} {v}" for k, v in seconds.items()) + "\n"]
    return "\n".join(parts)


def print_summary(report: dict[str, Any]) -> None:
    """What a person wants at the end of the demo: the table, speed and size, and what to run next."""
    t = report["top1"]["zeroshot_shapes"]
    print("\nZero-shot top-1 on the colour x shape eval set, per language:\n")
    print(markdown(t["langs"], t["models"], t["values"]))
    print("\nSpeed and size (teacher vs student):\n")
    print(speed_markdown(report["speed_size"]))
    bundle = report["bundle"]
    print(f"\nBundle: {bundle}\nReport: {Path(bundle).parent / 'report.md'}")
    print(f"Total time of this run: {report['seconds']['total_this_run']:.0f} s\n")
    image = report["examples"][0] if report.get("examples") else "IMAGE.jpg"
    print("Try it:")
    labels = "红色的圆形,蓝色的正方形,黄色的五角星,绿色的三角形"
    print(f'  dcclip classify --bundle {bundle} {image} --labels "{labels}" --lang zh')
    print(f"  dcclip serve --bundle {bundle} --port 8000")
