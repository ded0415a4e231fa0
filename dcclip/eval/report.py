"""One evaluation run over one or more models (``--compare``) -> report.json, report.md and bar charts.

``run_eval`` is the single entry the CLI calls. Models are loaded and scored one at a time (only one is in memory),
every figure lands in report.json (models x languages x metrics, dataset facts, settings, timings), report.md holds
one markdown table per metric (rows: languages plus their mean; columns: the count behind each figure, then the
models) and every metric gets a grouped bar chart (languages on the x axis, one bar per model). Every rate that is a
share of counted trials (top-1, top-5, recall@k, alignment retrieval accuracy) carries its 95% Wilson interval
(``METRIC_ci95``), shown in the tables and as error bars; the mean over languages gets the conservative interval of
``dcclip.eval.stats``. The markdown and the charts are drawn from the report dict itself, so they cannot disagree with
report.json. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import datetime as _dt
import gc
import io
import json
import logging
import os
import re
import sys
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dcclip import __version__
from dcclip.eval import distributed, stats
from dcclip.eval.datasets import ClassificationDataset, DatasetError, RetrievalDataset, open_dataset
from dcclip.eval.models import TEACHER_PREFIXES, EmbeddingModel, default_name, load_model
from dcclip.eval.registry import TASKS, UNBOUNDED, EvalTask, get_task
from dcclip.io import write_bytes_atomic

__all__ = [
    "REPORT_FORMAT",
    "TASKS",
    "build_report",
    "chart_filename",
    "console_report",
    "draw_chart",
    "markdown_report",
    "run_eval",
    "write_report",
]

log = logging.getLogger(__name__)

REPORT_FORMAT = "dcclip-eval-report"
REPORT_VERSION = 2  # 2: METRIC_ci95 beside counted rates, count keys in "mean", an "intervals" section
MEAN_ROW = "mean"
_DATASET_KINDS = {"classification": "a classification set (classnames + cls labels)", "retrieval": "a retrieval set"}
ModelRef = str | os.PathLike | EmbeddingModel  # a reference for load_model, or a model object used as is


# --------------------------------------------------------------------------------------------------------------------
# Preparing the run
# --------------------------------------------------------------------------------------------------------------------


def _task(task: str) -> EvalTask:
    """The registered task for a name, or ValueError listing the known ones."""
    return get_task(task)


def _open_for(task: str, dataset: str | Path, max_samples: int | None) -> ClassificationDataset | RetrievalDataset:
    """Open the dataset and check it is the kind the task reads (classification vs retrieval)."""
    ds = open_dataset(dataset, max_samples=max_samples)
    if ds.info()["type"] != _task(task).dataset_kind:
        wanted = _DATASET_KINDS[_task(task).dataset_kind]
        raise DatasetError(f"{dataset}: task {task!r} needs {wanted}, but this is a {ds.info()['type']} set")
    return ds


def _task_langs(task: str, ds: ClassificationDataset | RetrievalDataset, langs: Sequence[str] | None) -> list[str]:
    """The languages to score, checked against the dataset before any model is loaded (fail fast)."""
    chosen = list(dict.fromkeys(langs)) if langs else list(ds.langs)
    pivot = _task(task).pivot
    if pivot is None:
        ds.check_langs(chosen)
        return chosen
    ds.check_langs([pivot, *chosen])
    chosen = [lang for lang in chosen if lang != pivot]
    if not chosen:
        raise DatasetError(f"{ds.root}: {task} needs a language besides {pivot!r}")
    return chosen


def _is_ref(model: object) -> bool:
    """Whether a models entry is a reference to load (string or path) rather than a model object."""
    return isinstance(model, (str, os.PathLike))


def _labels(models: Sequence[ModelRef], names: Sequence[str] | None, teacher_text: str = "") -> list[str]:
    """One unique report label per model: given names, else derived ones (repeats get #2, #3 ...)."""
    if names is not None:
        if len(names) != len(models):
            raise ValueError(f"got {len(names)} names for {len(models)} models")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {list(names)}")
        return list(names)
    labels: list[str] = []
    for model in models:
        if _is_ref(model):
            base = default_name(str(model), teacher_text if str(model).startswith(TEACHER_PREFIXES) else "")
        else:
            base = str(getattr(model, "name", type(model).__name__))
        label, k = base, 2
        while label in labels:
            label, k = f"{base}#{k}", k + 1
        labels.append(label)
    return labels


def _load(ref: ModelRef, label: str, device: str, batch_size: int, teacher_text: str) -> EmbeddingModel:
    """A model object as is, or a loaded reference (the teacher text spec goes to teacher specs only)."""
    if not _is_ref(ref):
        return ref
    text_spec = teacher_text if str(ref).startswith(TEACHER_PREFIXES) else ""
    return load_model(ref, device=device, name=label, text_spec=text_spec, batch_size=batch_size)


def _free_memory(collect: bool) -> None:
    """Return a released model's memory before the next one loads (CPU and, when torch is in use, the CUDA cache).

    ``collect``: a reference cycle kept the model alive. Only then does a full collection run: it walks every object
    in the process (0.3-0.5 s once transformers and open_clip are imported), while refcounting frees an acyclic model
    at ``del``.
    """
    if collect:
        gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------------------------
# The report dict
# --------------------------------------------------------------------------------------------------------------------


def _mean_over_langs(per_lang: dict[str, dict[str, Any]], metrics: Sequence[str], counts: dict[str, str]) -> dict:
    """Unweighted mean of each metric over the languages, with intervals for counted rates.

    Every language counts the same. A counted rate's ``METRIC_ci95`` is ``stats.mean_interval`` (Wilson at the mean
    with n = the smallest per-language count: conservative, since languages share images); each count key holds
    that smallest count.
    """
    mean: dict[str, Any] = {}
    for metric in metrics:
        values = [float(figures[metric]) for figures in per_lang.values()]
        mean[metric] = float(np.mean(values))
        if metric in counts:
            ns = [int(figures[counts[metric]]) for figures in per_lang.values()]
            mean[stats.ci_key(metric)] = list(stats.mean_interval(values, ns))
    for key in dict.fromkeys(counts[m] for m in metrics if m in counts):
        mean[key] = min(int(figures[key]) for figures in per_lang.values())
    return mean


def intervals_note(task: str) -> dict[str, Any]:
    """The "intervals" section of a report: method, level, which metrics have them and how the mean's is drawn."""
    return {
        "method": "wilson",
        "level": stats.LEVEL,
        "key_suffix": stats.CI_SUFFIX,
        "metrics": dict(_task(task).counts),
        "per_language": "Wilson score interval of the rate's successes out of its count",
        "mean": "Wilson interval at the unweighted mean with n = the smallest per-language count (conservative: "
        "languages share their images, so pooling their counts would overstate the evidence)",
    }


def chart_filename(task: str, metric: str) -> str:
    """File name of a metric's chart: ``TASK_METRIC.png`` with anything but letters, digits and ``_`` as ``_``."""
    return f"{task}_{re.sub(r'[^A-Za-z0-9_]+', '_', metric)}.png"


def build_report(
    task: str,
    dataset_info: dict[str, Any],
    langs: list[str],
    entries: list[dict[str, Any]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The report dict: every figure per model and language, per-model means, dataset facts, settings and timings.

    Each entry is ``{"name", "ref", "kind", "results": {lang: {metric: value, ...}}, "seconds": {...}}``.
    """
    metrics, counts = list(_task(task).metrics), _task(task).counts
    results = {e["name"]: {lang: stats.with_intervals(f, counts) for lang, f in e["results"].items()} for e in entries}
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "task": task,
        "dataset": dataset_info,
        "langs": langs,
        "metrics": metrics,
        "models": [{k: e[k] for k in ("name", "ref", "kind", "seconds")} for e in entries],
        "results": results,
        "mean": {name: _mean_over_langs(per_lang, metrics, counts) for name, per_lang in results.items()},
        "intervals": intervals_note(task),
        "settings": settings,
        "timings": {"total_seconds": round(sum(e["seconds"]["total"] for e in entries), 3)},
        "files": {
            "json": "report.json",
            "markdown": "report.md",
            "charts": {m: chart_filename(task, m) for m in metrics},
        },
        "dcclip_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------------------------------
# Markdown and charts
# --------------------------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Markdown-safe table cell text."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _figure(report: dict[str, Any], model: str, row: str, metric: str) -> dict[str, Any]:
    """A model's figures for one language, or its means for the mean row."""
    return report["mean"][model] if row == MEAN_ROW else report["results"][model][row]


def format_cell(figures: dict[str, Any], metric: str) -> str:
    """A metric as a table shows it: rates in percent (with their interval when counted), cosines with 4 decimals."""
    value = float(figures[metric])
    if metric in UNBOUNDED:
        return f"{value:.4f}"
    return stats.format_rate(value, figures.get(stats.ci_key(metric)))


def _metric_table(report: dict[str, Any], metric: str) -> list[str]:
    """One metric's table: a row per language plus the mean, the count column (when counted), a column per model."""
    models, count = list(report["results"]), report.get("intervals", {}).get("metrics", {}).get(metric)
    header = ["lang", *([count] if count else []), *(_cell(model) for model in models)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in [*report["langs"], MEAN_ROW]:
        cells = [format_cell(_figure(report, model, row, metric), metric) for model in models]
        label = row
        if row == MEAN_ROW:
            cells, label = [f"**{cell}**" for cell in cells], f"**{MEAN_ROW}**"
        n = [str(_figure(report, models[0], row, metric)[count])] if count else []
        lines.append("| " + " | ".join([label, *n, *cells]) + " |")
    return lines


def _tables(report: dict[str, Any]) -> list[str]:
    """Every metric's table under its own heading."""
    lines: list[str] = []
    for metric in report["metrics"]:
        lines += [f"### {metric}", "", *_metric_table(report, metric), ""]
    return lines


def _intervals_line(report: dict[str, Any]) -> str:
    """What the bracketed figures are (reports from before intervals existed get a plain line)."""
    if "intervals" not in report:
        return "- figures: fractions; mean row: unweighted mean over languages"
    counted = ", ".join(report["intervals"]["metrics"]) or "none"
    return (
        f"- figures: rates in percent; [low, high] = {report['intervals']['level']:.0%} Wilson interval ({counted}); "
        "the count column is the number of trials behind each rate; mean row: unweighted mean over languages, its "
        "interval drawn with the smallest per-language count (conservative)"
    )


def markdown_report(report: dict[str, Any], charts: bool = True) -> str:
    """report.md text: what was evaluated, a table per metric, the models with timings, the charts."""
    ds = report["dataset"]
    lines = [
        f"# dcclip eval: {report['task']}",
        "",
        f"- dataset: `{ds['path']}` ({ds['type']}, {ds.get('samples', '?')} samples"
        + (f", {ds['classes']} classes" if "classes" in ds else "")
        + (f", {ds['skipped']} undecodable skipped" if ds.get("skipped") else "")
        + ")",
        f"- languages: {', '.join(report['langs'])}",
        _intervals_line(report),
        "",
        *_tables(report),
        "| model | kind | reference | load s | eval s |",
        "|---|---|---|---:|---:|",
    ]
    for model in report["models"]:
        seconds = model["seconds"]
        ref = _cell(model["ref"])
        lines.append(f"| {_cell(model['name'])} | {model['kind']} | `{ref}` | {seconds['load']} | {seconds['eval']} |")
    if charts:
        lines += ["", *(f"![{m}]({f})" for m, f in report["files"]["charts"].items())]
    return "\n".join([*lines, ""])


def console_report(report: dict[str, Any]) -> str:
    """What ``dcclip eval`` prints: report.md without the chart links, then where the files are."""
    text = markdown_report(report, charts=False)
    out_dir = report.get("out_dir")
    if out_dir:
        files = report["files"]
        text += f"\nWritten to {out_dir}: {files['json']}, {files['markdown']}"
        text += f" and {len(files['charts'])} charts\n" if files["charts"] else "\n"
    return text


def _error_bars(figures: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """``ax.bar`` keywords drawing each bar's 95% interval, or none when the metric has no intervals."""
    key = stats.ci_key(metric)
    if not all(key in f for f in figures):
        return {}
    below = [max(0.0, f[metric] - f[key][0]) for f in figures]
    above = [max(0.0, f[key][1] - f[metric]) for f in figures]
    return {"yerr": np.array([below, above]), "capsize": 2, "error_kw": {"elinewidth": 0.8, "alpha": 0.7}}


def draw_chart(report: dict[str, Any], metric: str) -> Any:
    """A grouped bar chart (matplotlib Figure, Agg canvas) of one metric: languages + mean on x, a bar per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models, groups = list(report["results"]), [*report["langs"], MEAN_ROW]
    fig = Figure(figsize=(max(6.0, 0.9 * len(groups) * max(1, len(models)) / 2 + 2), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(models))
    x = np.arange(len(groups))
    bars = {}
    for i, model in enumerate(models):
        figures = [_figure(report, model, group, metric) for group in groups]
        bars = _error_bars(figures, metric)
        ax.bar(x + (i - (len(models) - 1) / 2) * width, [f[metric] for f in figures], width, label=model, **bars)
    ax.set_xticks(x, groups)
    if metric not in UNBOUNDED:
        ax.set_ylim(0.0, 1.0)  # rates share one scale, so charts of different runs compare at a glance
    ax.set_ylabel(metric)
    whiskers = ", whiskers: 95% Wilson intervals" if bars else ""
    set_name = str(report["dataset"]["path"]).rstrip("/").rsplit("/", 1)[-1]  # a folder or a URL
    ax.set_title(f"{report['task']}: {metric} ({set_name}{whiskers})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def _png_bytes(fig: Any) -> bytes:
    """A figure rendered to PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _has_matplotlib() -> bool:
    """Whether charts can be drawn (matplotlib is an optional dependency: the core install is the runtime)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """Write report.json, report.md and one PNG chart per metric into ``out_dir``, each atomically.

    Without matplotlib the charts are left out and ``report["files"]["charts"]`` is emptied to say so.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if not _has_matplotlib():
        log.warning("matplotlib is not installed (pip install 'dcclip[train]'): report written without charts")
        report["files"]["charts"] = {}
    for metric, filename in report["files"]["charts"].items():
        write_bytes_atomic(out_dir / filename, _png_bytes(draw_chart(report, metric)))
    write_bytes_atomic(out_dir / "report.md", markdown_report(report).encode("utf-8"))
    text = json.dumps(report, ensure_ascii=False, indent=2) + "\n"
    write_bytes_atomic(out_dir / "report.json", text.encode("utf-8"))  # last: its presence means the report is complete


# --------------------------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------------------------


def _evaluate_one(
    task: str, ref: ModelRef, label: str, ds: Any, langs: list[str], opts: dict[str, Any]
) -> dict[str, Any]:
    """Load one model, score it on every language, release it; returns its report entry with timings."""
    if distributed.is_main():
        log.info("eval %s: %s", task, label)
    start = time.perf_counter()
    model = _load(ref, label, opts["device"], opts["batch_size"], opts["teacher_text"])
    loaded = time.perf_counter()
    results = _task(task).evaluate(model, ds, langs, batch_size=opts["batch_size"], progress=opts["progress"])
    done = time.perf_counter()
    entry = {
        "name": label,
        "ref": str(ref) if _is_ref(ref) else getattr(model, "ref", label),
        "kind": getattr(model, "kind", type(model).__name__),
        "results": results,
        "seconds": {"load": round(loaded - start, 3), "eval": round(done - loaded, 3), "total": round(done - start, 3)},
    }
    if _is_ref(ref):  # loaded here: release it, so only one model is in memory at a time
        released = weakref.ref(model)
        del model
        _free_memory(collect=released() is not None)
    return entry


def _samples_evaluated(task: str, entries: list[dict[str, Any]]) -> int:
    """How many images (zero-shot, retrieval) or caption pairs (alignment, largest language) were scored."""
    per_lang = entries[0]["results"].values()
    key = _task(task).size_key
    return max(int(figures[key]) for figures in per_lang)


def run_eval(
    task: str,
    models: Sequence[ModelRef],
    dataset: str | Path,
    langs: list[str] | None,
    out_dir: Path,
    batch_size: int = 64,
    max_samples: int | None = None,
    device: str = "cpu",
    names: list[str] | None = None,
    teacher_text: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model on one task and dataset, write the report into ``out_dir`` and return it.

    ``models`` are references for ``load_model`` (or EmbeddingModel objects); ``teacher_text`` is a separate text
    teacher for the openclip:/hf: references among them. Under torchrun every rank runs this: batches are dealt out
    across ranks (eval/distributed.py), every rank gets the one-process report, and only rank 0 writes it.
    Undecodable images are left out, logged and counted (``dataset.skipped``).
    """
    if not models:
        raise ValueError("run_eval needs at least one model")
    ds = _open_for(task, dataset, max_samples)
    chosen = _task_langs(task, ds, langs)
    labels = _labels(models, names, teacher_text)
    with distributed.ranks(device) as rank_device:
        opts = {"device": rank_device, "batch_size": batch_size, "teacher_text": teacher_text, "progress": progress}
        entries = [_evaluate_one(task, ref, label, ds, chosen, opts) for ref, label in zip(models, labels, strict=True)]
    info = {**ds.info(), "samples": _samples_evaluated(task, entries), "skipped": len(ds.skipped)}
    settings = {"batch_size": batch_size, "max_samples": max_samples, "device": device, "teacher_text": teacher_text}
    report = build_report(task, info, chosen, entries, {**settings, "ranks": distributed.world_size()})
    out_dir = Path(out_dir)
    if distributed.is_main():
        write_report(report, out_dir)
    return {**report, "out_dir": str(out_dir)}
