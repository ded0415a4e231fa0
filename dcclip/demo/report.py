"""The demo's closing work: speed and size side by side, ``report.md`` / ``report.json`` with charts, the summary."""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dcclip.eval.stats import ci_key, format_rate, mean_interval, rate_interval
from dcclip.io import write_json_atomic
from dcclip.runtime.timing import interleaved_ms, machine_facts

SAMPLE_TEXT = "a small red star on the left and a large blue circle on the right"
PROVIDERS = ("CPUExecutionProvider",)
TEACHER = "teacher"
TABLE_MODELS = (TEACHER, "student stage 1", "student stage 2", "student ONNX fp32", "student ONNX int8")
HEADLINE_MODELS = ("student stage 1", "student stage 2")
PIVOT = "en"  # retention is measured against the teacher's English top-1
MEAN_ROW = "mean"
STAGE_NAMES = {"distill": "stage 1", "align": "stage 2"}
TASKS = {  # eval summary key -> (short name, title)
    "zeroshot_shapes": ("colour × shape", "Zero-shot top-1: colour × shape (90 classes)"),
    "zeroshot_digits": ("digits", "Zero-shot top-1: handwritten digits (10 classes)"),
}


def median_ms(fn: Callable[[], Any], repeat: int = 30, warmup: int = 3) -> float:
    """Median wall time of ``fn`` in milliseconds after a warm-up."""
    return statistics.median(interleaved_ms({"fn": fn}, repeat, warmup)["fn"])


def measure_speed_and_size(
    teacher_dir: Path, bundle_dir: Path, onnx_dir: Path | None = None, threads: int = 1, repeat: int = 100
) -> dict[str, Any]:
    """Batch-1 latency of each tower and bytes on disk, every model in onnxruntime with the same session options.

    The teacher's towers are exported to ONNX fp32 (into ``onnx_dir``, or a temporary directory) and timed beside the
    student bundle's fp32 and int8 towers, so the ratios compare models, not runtimes. Inputs are tokenised and
    preprocessed beforehand: only ``session.run`` is timed, every tower in turn (``interleaved_ms``). Each row gives
    the median and the interquartile range; sizes are the ONNX files (weights included).
    """
    if onnx_dir is None:
        with tempfile.TemporaryDirectory(prefix="dcclip-teacher-onnx-") as tmp:
            figures = measure_speed_and_size(teacher_dir, bundle_dir, Path(tmp), threads, repeat)
        for role in ("image", "text"):  # the graphs went with the temporary directory: keep only their names
            figures["teacher_onnx"][role]["path"] = Path(figures["teacher_onnx"][role]["path"]).name
        return figures
    import onnxruntime as ort

    from dcclip.runtime.bundle import read_manifest

    manifest = read_manifest(bundle_dir)
    prepared = [_teacher_row(teacher_dir, Path(onnx_dir), threads)]
    prepared += [_student_row(Path(bundle_dir), manifest, p, threads) for p in manifest["precisions"]]
    runs = {(i, tower): fn for i, (_, fns) in enumerate(prepared) for tower, fn in fns.items()}
    times = interleaved_ms(runs, repeat)
    rows = [row for row, _ in prepared]
    for i, row in enumerate(rows):
        for tower in ("image", "text"):
            row[f"{tower}_ms"] = statistics.median(times[i, tower])
            row[f"{tower}_ms_iqr"] = [float(q) for q in np.percentile(times[i, tower], [25, 75])]
    for row in rows:
        row["image_speedup"] = rows[0]["image_ms"] / row["image_ms"]
        row["text_speedup"] = rows[0]["text_ms"] / row["text_ms"]
        row["size_ratio"] = rows[0]["bytes"] / row["bytes"]
    teacher_onnx = rows[0].pop("onnx")
    session = {"runtime": f"onnxruntime {ort.__version__}", "providers": list(PROVIDERS), "batch": 1,
               "intra_op_num_threads": threads, "inter_op_num_threads": 1, "repeat": repeat}  # fmt: skip
    note = (
        f"every model in {session['runtime']} (CPU) with the same session options ({threads} intra-op thread"
        f"{'s' if threads != 1 else ''}); batch 1, median of {repeat} runs per tower (interquartile range in "
        "brackets), the towers timed in turn after a warm-up; towers only (inputs tokenised and preprocessed "
        "beforehand); sizes are the ONNX files; speed-ups and size ratios are against the teacher"
    )
    return {"rows": rows, "note": note, "session": session, "teacher_onnx": teacher_onnx}


def _sessions(image: Path, text: Path, threads: int) -> tuple[Any, Any]:
    """onnxruntime sessions of an image and a text graph, with the session options every timed model shares."""
    import onnxruntime as ort

    from dcclip.runtime.bundle import make_session_options

    options = make_session_options(threads, 1)
    return tuple(ort.InferenceSession(str(p), options, providers=list(PROVIDERS)) for p in (image, text))


def _runs(sessions: tuple[Any, Any], image_feed: dict, text_feed: dict) -> dict[str, Callable[[], Any]]:
    """One image and one text ``session.run`` as zero-argument calls, ready to be timed."""
    image, text = sessions
    return {"image": lambda: image.run(None, image_feed), "text": lambda: text.run(None, text_feed)}


def _pixels(size: int) -> np.ndarray:
    """One random preprocessed image [1, 3, size, size] (speed does not depend on the pixels)."""
    return np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)


def _teacher_row(teacher_dir: Path, onnx_dir: Path, threads: int) -> tuple[dict[str, Any], dict[str, Callable]]:
    """Export the demo teacher to ONNX fp32: its row (export record under ``onnx``) and its tower runs."""
    from dcclip.export.teacher_onnx import TEXT_INPUT, export_teacher_onnx
    from dcclip.models.teachers import load_teacher
    from dcclip.runtime.bundle import IMAGE_INPUT

    teacher = load_teacher(f"openclip:{teacher_dir}")
    exported = export_teacher_onnx(teacher, onnx_dir)
    ids = np.asarray(teacher.tokenizer([SAMPLE_TEXT]), dtype=np.int64)
    sessions = _sessions(Path(exported.image.path), Path(exported.text.path), threads)
    row = {
        "model": "teacher (onnxruntime fp32)",
        "role": "teacher",
        "precision": "fp32",
        "bytes": exported.bytes,
        "image_bytes": Path(exported.image.path).stat().st_size,
        "text_bytes": Path(exported.text.path).stat().st_size,
        "checkpoint_bytes": sum(p.stat().st_size for p in Path(teacher_dir).glob("*.safetensors")),
        "onnx": exported.to_dict(),
    }
    return row, _runs(sessions, {IMAGE_INPUT: _pixels(exported.image_size)}, {TEXT_INPUT: ids})


def _student_row(
    bundle_dir: Path, manifest: dict, precision: str, threads: int
) -> tuple[dict[str, Any], dict[str, Callable]]:
    """One precision of the student bundle, opened with the shared session options: its row and its tower runs."""
    from dcclip.runtime.bundle import IMAGE_INPUT, TEXT_INPUTS, bundle_file, load_bundle_model

    model = load_bundle_model(bundle_dir, precision, intra_op_num_threads=threads, inter_op_num_threads=1)
    ids, mask = model.tokenizer.encode([SAMPLE_TEXT], model.text_max_length)
    files = {role: bundle_dir / bundle_file(manifest, role, precision) for role in ("image", "text")}
    row = {
        "model": f"student (onnxruntime {precision})",
        "role": "student",
        "precision": precision,
        "bytes": sum(f.stat().st_size for f in files.values()),
        "image_bytes": files["image"].stat().st_size,
        "text_bytes": files["text"].stat().st_size,
    }
    shipped = getattr(model, "tower_precisions", None)  # a tower whose int8 graph fell back ships fp32
    if shipped and any(p != precision for p in shipped.values()):
        row["tower_precisions"] = dict(shipped)
    feeds = {IMAGE_INPUT: _pixels(model.preprocess.image_size)}, {TEXT_INPUTS[0]: ids, TEXT_INPUTS[1]: mask}
    return row, _runs((model.image_session, model.text_session), *feeds)


# --- report ---------------------------------------------------------------------------------------------------------
def accuracy_table(
    eval_summary: dict[str, Any], task: str, metric: str = "top1", classes: int | None = None
) -> dict[str, Any]:
    """One zero-shot task as the report shows it: rates, 95% intervals and counts, and every student's retention.

    ``langs`` are the dataset's languages plus ``mean``; ``values`` / ``ci95`` are {model: {lang: ...}}; ``n`` is
    {lang: images} (the mean's: the count its interval uses); ``teacher_en`` is the teacher's English figure, the
    reference of ``retention`` = student rate / teacher English rate ({student: {lang: ratio or None}});
    ``retention_summary`` gives each student's min (and where) and mean over the languages. With ``classes``, the
    teacher's figure also says whether its interval clears chance (1 / classes): below that, retention is noise.
    """
    results, means = eval_summary[task]["results"], eval_summary[task]["mean"]
    models = [m for m in TABLE_MODELS if m in results] or list(results)
    langs = list(next(iter(results.values())).keys())
    rows = [*langs, MEAN_ROW]

    def figures(model: str, row: str) -> dict[str, Any]:
        return means[model] if row == MEAN_ROW else results[model][row]

    values = {m: {row: float(figures(m, row)[metric]) for row in rows} for m in models}
    ci95 = {m: {row: _interval(results[m], means[m], row, metric) for row in rows} for m in models}
    n = {row: _count(results[models[0]], means[models[0]], row) for row in rows}
    teacher_en = _teacher_english(results, metric, classes)
    reference = teacher_en["top1"] if teacher_en else None
    retention = {m: {row: _ratio(values[m][row], reference) for row in rows} for m in models if m != TEACHER}
    summary = {m: _retention_summary(ratios, langs) for m, ratios in retention.items()}
    return {"langs": rows, "models": models, "values": values, "ci95": ci95, "n": n, "teacher_en": teacher_en,
            "retention": retention, "retention_summary": summary}  # fmt: skip


def _interval(per_lang: dict[str, Any], mean: dict[str, Any], row: str, metric: str) -> list[float] | None:
    """The eval report's interval for a row; recomputed from the counts for summaries written before intervals."""
    figures = mean if row == MEAN_ROW else per_lang[row]
    if ci_key(metric) in figures:
        return list(figures[ci_key(metric)])
    if not all("n" in f for f in per_lang.values()):
        return None
    if row == MEAN_ROW:
        return list(mean_interval([f[metric] for f in per_lang.values()], [f["n"] for f in per_lang.values()]))
    return list(rate_interval(figures[metric], figures["n"]))


def _count(per_lang: dict[str, Any], mean: dict[str, Any], row: str) -> int | None:
    """Images behind a row's rate (the mean row: the smallest per-language count, which its interval uses)."""
    if row != MEAN_ROW:
        return per_lang[row].get("n")
    counts = [f.get("n") for f in per_lang.values()]
    return mean.get("n", None if None in counts else min(counts))


def _teacher_english(results: dict[str, Any], metric: str, classes: int | None) -> dict[str, Any] | None:
    """The teacher's English figure with its interval, count and chance level, or None when it was not evaluated."""
    figures = results.get(TEACHER, {}).get(PIVOT)
    if figures is None:
        return None
    interval = _interval(results[TEACHER], {}, PIVOT, metric)
    chance = 1.0 / classes if classes else None
    above = None if chance is None or interval is None else interval[0] > chance
    return {"lang": PIVOT, "top1": float(figures[metric]), "ci95": interval, "n": figures.get("n"),
            "chance": chance, "above_chance": above}  # fmt: skip


def _ratio(value: float, reference: float | None) -> float | None:
    """value / reference, or None when there is no reference (a teacher at 0% retains nothing measurable)."""
    return None if not reference else value / reference


def _retention_summary(ratios: dict[str, float | None], langs: list[str]) -> dict[str, Any]:
    """Min (and its language), mean and max retention over the languages (the mean row is not a language)."""
    known = {lang: ratios[lang] for lang in langs if ratios[lang] is not None}
    if not known:
        return {"min": None, "min_lang": None, "mean": None, "max": None, "langs": 0}
    worst = min(known, key=known.__getitem__)
    values = list(known.values())
    return {"min": known[worst], "min_lang": worst, "mean": float(np.mean(values)), "max": max(values),
            "langs": len(known)}  # fmt: skip


def markdown(table: dict[str, Any]) -> str:
    """Per-language top-1 with 95% intervals: a row per language (and the mean), the image count, a column per model."""
    models = table["models"]
    lines = ["| language | n | " + " | ".join(models) + " |", "|---|---:|" + "---:|" * len(models)]
    for lang in table["langs"]:
        cells = [format_rate(table["values"][m][lang], table["ci95"][m][lang]) for m in models]
        lines.append(_row(lang, [_n(table["n"][lang]), *cells]))
    return "\n".join(lines)


def retention_markdown(table: dict[str, Any]) -> str:
    """Per-language retention of the teacher's English top-1, a column per student."""
    students = list(table["retention"])
    lines = ["| language | " + " | ".join(students) + " |", "|---|" + "---:|" * len(students)]
    for lang in table["langs"]:
        lines.append(_row(lang, [_percent(table["retention"][m][lang]) for m in students]))
    return "\n".join(lines)


def _row(label: str, cells: list[str]) -> str:
    """A markdown table row; the mean row in bold."""
    if label == MEAN_ROW:
        label, cells = f"**{label}**", [f"**{cell}**" for cell in cells]
    return f"| {label} | " + " | ".join(cells) + " |"


def _percent(value: float | None) -> str:
    """A ratio in percent with one decimal, or n/a."""
    return "n/a" if value is None else f"{value:.1%}"


def _n(count: int | None) -> str:
    """An image count, or ? when the eval summary predates counts."""
    return "?" if count is None else str(count)


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


def accuracy_chart(out: Path, table: dict[str, Any], name: str, title: str) -> Path:
    """Grouped bars with 95% intervals as error bars: languages (and the mean) on x, one bar per model."""
    from matplotlib.figure import Figure

    langs, models = table["langs"], table["models"]
    figure = Figure(figsize=(12, 3.8))
    axis = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        xs = [j + i * width for j in range(len(langs))]
        values = [table["values"][model][lang] for lang in langs]
        axis.bar(xs, values, width, label=model, **_error_bars(values, [table["ci95"][model][g] for g in langs]))
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(langs))], langs)
    axis.set_ylim(0, 1)
    axis.set_title(f"{title} (whiskers: 95% Wilson intervals)")
    axis.legend(fontsize=7, ncol=len(models))
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path = out / name
    figure.savefig(path, dpi=110)
    return path


def _error_bars(values: list[float], intervals: list[list[float] | None]) -> dict[str, Any]:
    """``bar`` keywords drawing each interval (none when any is missing)."""
    if any(interval is None for interval in intervals):
        return {}
    below = [max(0.0, v - lo) for v, (lo, _) in zip(values, intervals, strict=True)]
    above = [max(0.0, hi - v) for v, (_, hi) in zip(values, intervals, strict=True)]
    return {"yerr": np.array([below, above]), "capsize": 1.5, "error_kw": {"elinewidth": 0.7, "alpha": 0.7}}


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
    tables = {task: accuracy_table(evals, task, "top1", eval_classes(p["eval"] / task)) for task in TASKS}
    charts = {"loss_curves": loss_curves(out, {"stage 1 (distill)": p["distill"], "stage 2 (align)": p["align"]}).name}
    for task, table in tables.items():
        charts[task] = accuracy_chart(out, table, f"{task}_top1.png", TASKS[task][1]).name
    if "bench" in summaries:
        charts["speed_size"] = speed_chart(out, summaries["bench"]).name
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "machine": machine_facts(),
        "seconds": {"total_this_run": round(total, 1), "steps": {k: round(v, 1) for k, v in step_seconds.items()}},
        "headline": headline(tables),
        "top1": tables,
        "breakdown": {task: attribute_breakdown(evals, task) for task in TASKS},
        "retrieval": evals.get("retrieval"),
        "alignment": evals.get("alignment"),
        "speed_size": summaries.get("bench"),
        "export": summaries["export"],
        "training": {name: summaries[name].get("final_losses") for name in ("distill", "align")},
        "precision": {name: summaries[name].get("precision") for name in ("distill", "align")},
        "teacher": summaries["teacher"],
        "bundle": str(p["bundle"]),
        "examples": [str(e) for e in examples],
        "charts": charts,
    }
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
    return report


def attribute_breakdown(eval_summary: dict[str, Any], task: str) -> dict[str, Any] | None:
    """What each model gets right of a class's parts (``top1_<attribute>`` from the eval, e.g. colour vs shape):
    {model: {"en": {metric: rate}, "mean": {metric: mean over languages}}}; None when the set has no attributes."""
    results = eval_summary[task]["results"]
    first = next(iter(next(iter(results.values())).values()))
    metrics = ["top1", *sorted(k for k in first if k.startswith("top1_") and not k.endswith("_ci95"))]
    if len(metrics) == 1:
        return None
    models = [m for m in TABLE_MODELS if m in results] or list(results)
    table = {}
    for model in models:
        per_lang = results[model]
        table[model] = {
            "en": {m: per_lang["en"][m] for m in metrics} if "en" in per_lang else None,
            MEAN_ROW: {m: float(np.mean([figures[m] for figures in per_lang.values()])) for m in metrics},
        }
    return {"metrics": metrics, "models": table}


def breakdown_markdown(breakdown: dict[str, Any]) -> str:
    """The breakdown as a table: per model, English and the mean over languages for each attribute."""
    metrics = breakdown["metrics"]
    names = ["top-1" if m == "top1" else f"{m.removeprefix('top1_')} right" for m in metrics]
    header = "| model | " + " | ".join(f"{n} (en · mean)" for n in names) + " |"
    lines = [header, "|---|" + "---:|" * len(metrics)]
    for model, rows in breakdown["models"].items():
        cells = []
        for m in metrics:
            en = "–" if rows["en"] is None else f"{100 * rows['en'][m]:.1f}%"
            cells.append(f"{en} · {100 * rows[MEAN_ROW][m]:.1f}%")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_classes(report_dir: Path) -> int | None:
    """The class count an eval report records for its dataset (None when the report or the figure is missing)."""
    path = Path(report_dir) / "report.json"
    if not path.is_file():
        return None
    classes = json.loads(path.read_text(encoding="utf-8")).get("dataset", {}).get("classes")
    return int(classes) if classes else None


def headline(tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per eval set: the teacher's English top-1 (with interval and n) and stage 1 / stage 2 retention min and mean."""
    return {
        task: {
            "teacher_en": table["teacher_en"],
            "retention": {m: table["retention_summary"][m] for m in HEADLINE_MODELS if m in table["retention_summary"]},
        }
        for task, table in tables.items()
    }


def headline_markdown(report: dict[str, Any]) -> str:
    """The headline as a small table: one row per eval set, then what retention means."""
    students = list(dict.fromkeys(m for h in report["headline"].values() for m in h["retention"]))
    header = ["eval set", "teacher, English prompts", *(f"{m} retention: min · mean" for m in students)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    languages, at_chance = 0, []
    for task, figures in report["headline"].items():
        if (figures["teacher_en"] or {}).get("above_chance") is False:
            at_chance.append(TASKS.get(task, (task,))[0])
        cells = [TASKS.get(task, (task,))[0], _teacher_cell(figures["teacher_en"])]
        cells += [_retention_cell(figures["retention"].get(m)) for m in students]
        languages = max([languages, *(r["langs"] for r in figures["retention"].values())])
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"Zero-shot top-1 with 95% Wilson intervals. Retention = a student's top-1 in a language / the teacher's "
        f"top-1 with English prompts; min (and its language) and mean over the {languages} languages."
    )
    if at_chance:
        note += (
            f" On {' and '.join(at_chance)} the teacher's interval does not clear chance (1 / classes), so its "
            "retention figures are noise: train the teacher longer (--teacher-steps)."
        )
    return "\n".join(lines) + "\n\n" + note


def _teacher_cell(teacher: dict[str, Any] | None) -> str:
    """``63.4% [59.0, 67.6] (n = 450, chance 1.1%)``: the teacher's English top-1, interval, image count, chance."""
    if teacher is None:
        return "n/a"
    chance = f", chance {_percent(teacher['chance'])}" if teacher.get("chance") else ""
    return f"{format_rate(teacher['top1'], teacher['ci95'])} (n = {_n(teacher['n'])}{chance})"


def _retention_cell(summary: dict[str, Any] | None) -> str:
    """``71.2% (hi) · 85.3%``: min retention with its language, then the mean."""
    if not summary or summary["min"] is None:
        return "n/a"
    return f"{_percent(summary['min'])} ({summary['min_lang']}) · {_percent(summary['mean'])}"


def speed_markdown(bench: dict[str, Any]) -> str:
    """The speed and size table (ratios against the teacher's row), the measuring conditions and the parity."""
    lines = [
        "| model | image tower ms | text tower ms | MB | image speed-up | text speed-up | smaller by |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in bench["rows"]:
        lines.append(
            f"| {_speed_label(r)} | {_ms(r, 'image')} | {_ms(r, 'text')} | {r['bytes'] / 1e6:.1f} | "
            f"{r['image_speedup']:.1f}× | {r['text_speedup']:.1f}× | {r['size_ratio']:.1f}× |"
        )
    text = "\n".join(lines) + f"\n\n{bench['note']}."
    parity = bench.get("teacher_onnx", {}).get("parity")
    if parity:
        text += f" The teacher's ONNX towers match torch (min cosine {parity['min_cosine']:.6f})."
    return text


def _ms(row: dict[str, Any], tower: str) -> str:
    """``0.42 (0.40–0.45)``: a tower's median milliseconds and, when measured, the interquartile range."""
    iqr = row.get(f"{tower}_ms_iqr")
    return f"{row[f'{tower}_ms']:.2f}" + (f" ({iqr[0]:.2f}–{iqr[1]:.2f})" if iqr else "")


def _speed_label(row: dict[str, Any]) -> str:
    """The row's model, naming towers that ship in another precision (an int8 tower that fell back to fp32)."""
    shipped = row.get("tower_precisions", {})
    others = [role for role, precision in shipped.items() if precision != row.get("precision")]
    if not others:
        return row["model"]
    ships = ", ".join(f"{role} tower ships {shipped[role]}" for role in others)
    return f"{row['model']}: {ships}"


def report_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: headline, accuracy and retention per language, speed and size, where things are."""
    parts = ["# dcclip demo report\n", f"Bundle: `{report['bundle']}`\n", "## Headline\n", headline_markdown(report)]
    for task, (_, title) in TASKS.items():
        table = report["top1"][task]
        teacher = table["teacher_en"]
        reference = "n/a" if teacher is None else format_rate(teacher["top1"], teacher["ci95"])
        parts += [
            f"\n## {title}\n",
            "Top-1 per language with its 95% Wilson interval; n = evaluated images per language (the mean row's "
            "interval uses the smallest n: languages share their images).\n",
            markdown(table),
            f"\nRetention: student top-1 / the teacher's English top-1 ({reference}).\n",
            retention_markdown(table),
            f"\n![{task}]({report['charts'][task]})",
        ]
        breakdown = report.get("breakdown", {}).get(task)
        if breakdown:
            parts += [
                "\nWhat was lost: how often the top-1 class has the right part of the true class (its colour, its "
                "shape), in English and as the mean over languages.\n",
                breakdown_markdown(breakdown),
            ]
    if report["speed_size"]:
        parts += [
            "\n## Speed and size\n",
            speed_markdown(report["speed_size"]),
            f"\n![speed]({report['charts']['speed_size']})\n",
        ]
    parts += [
        "## Training\n",
        precision_line(report.get("precision") or {}),
        f"![losses]({report['charts']['loss_curves']})\n",
    ]
    seconds = report["seconds"]["steps"]
    parts += ["## Step times (s)\n", " · ".join(f"{k} {v}" for k, v in seconds.items()) + "\n"]
    return "\n".join(parts)


def precision_line(choices: dict[str, dict[str, Any] | None]) -> str:
    """Which number format each stage trained in and why (``train.precision=auto`` measures it per machine)."""
    said = [f"{STAGE_NAMES[stage]} {c['precision']} ({c['reason']})" for stage, c in choices.items() if c]
    return f"Precision: {'; '.join(said)}.\n" if said else ""


def print_summary(report: dict[str, Any]) -> None:
    """What a person wants at the end of the demo: the headline, one table, speed and size, and what to run next."""
    print("\nHeadline:\n")
    print(headline_markdown(report))
    print("\nZero-shot top-1 on the colour x shape eval set, per language (95% Wilson intervals):\n")
    print(markdown(report["top1"]["zeroshot_shapes"]))
    if report["speed_size"]:
        print("\nSpeed and size (teacher vs student, both in onnxruntime):\n")
        print(speed_markdown(report["speed_size"]))
    bundle = report["bundle"]
    print(f"\nBundle: {bundle}\nReport: {Path(bundle).parent / 'report.md'}")
    print(f"Total time of this run: {report['seconds']['total_this_run']:.0f} s\n")
    image = report["examples"][0] if report.get("examples") else "IMAGE.jpg"
    print("Try it:")
    labels = "红色的圆形,蓝色的正方形,黄色的五角星,绿色的三角形"
    print(f'  dcclip classify --bundle {bundle} {image} --labels "{labels}" --lang zh')
    print(f"  dcclip serve --bundle {bundle} --port 8000")
