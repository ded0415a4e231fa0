"""The model card every bundle carries: ``MODEL_CARD.md`` (Hugging Face layout, YAML front matter) and the ``card``
object of the manifest, both generated from what export and eval measured.

``card_from_manifest`` gathers the facts: the teacher (spec, fingerprint), the training data (shard sources and
their manifests: samples, captions per language, share of machine-translated captions where the shard manifest
records translations), the recipe (each stage's run config, steps, seed, samples seen), int8 agreement per tower
(export's parity record), size and speed per precision. Anything not recorded is said to be ``not measured``; no
figure is typed by hand. ``add_card`` puts both into a bundle being exported (export/bundle.py calls it before it
seals the manifest). The demo and ``dcclip eval`` evaluate after export, so ``update_card`` reads an eval report
(``dcclip eval zeroshot`` report.json, or the demo's report.json), adds zero-shot top-1 per language with 95%
intervals and retention against the teacher, re-hashes the card and re-seals the manifest, swapping the whole bundle
directory in one rename (dcclip.io) so a reader never sees a card that does not match its manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcclip import __version__
from dcclip.io import atomic_dir, write_json_atomic, write_text_atomic
from dcclip.runtime.bundle import verify_bundle
from dcclip.runtime.manifest import MANIFEST_FILE, check_bundle_manifest, file_entry, seal_manifest, sha256_file

__all__ = [
    "CARD_FILE",
    "NOT_MEASURED",
    "add_card",
    "card_from_manifest",
    "render_card",
    "seal_with_card",
    "update_card",
]

log = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"
CARD_KEY = "card"
CARD_VERSION = 1
NOT_MEASURED = "not measured"
LICENSE_UNSET = "other"  # what the Hugging Face front matter says when the exporter gave no --license
TAGS = ("dcclip", "clip", "multilingual", "knowledge-distillation", "zero-shot-image-classification", "onnx")
DEMO_STUDENTS = {"student ONNX fp32": "fp32", "student ONNX int8": "int8"}  # the demo's names of the bundle
TEACHER_PREFIXES = ("openclip:", "hf:", "mclip:")
PIVOT = "en"  # retention is a student rate over the teacher's English top-1, as the demo report defines it


# --- facts from the manifest and the files it names ---------------------------------------------------------------
def card_from_manifest(manifest: dict[str, Any], license: str | None = None) -> dict[str, Any]:
    """The card object of a bundle manifest (evaluation not measured yet)."""
    config = (manifest.get("source") or {}).get("config") or {}
    stages = _stages(manifest)
    return {
        "card_version": CARD_VERSION,
        "generated_by": f"dcclip {__version__}",
        "license": license or None,
        "model": _model_facts(manifest),
        "teacher": _teacher(config),
        "training_data": [_data_facts(s) for s in stages if s["data"] != NOT_MEASURED] or NOT_MEASURED,
        "recipe": {"dcclip_version": config.get("dcclip_version", NOT_MEASURED), "stages": stages or NOT_MEASURED},
        "int8_agreement": _int8_agreement(manifest),
        "size_bytes": _sizes(manifest),
        "speed": _speed(manifest),
        "evaluation": NOT_MEASURED,
    }


def _model_facts(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the bundle is: student architecture, embedding width, languages, input sizes, precisions."""
    source = manifest.get("source") or {}
    return {
        "student": source.get("student", NOT_MEASURED),
        "checkpoint_step": source.get("step", NOT_MEASURED),
        "embed_dim": manifest["embed_dim"],
        "languages": list(manifest.get("languages") or []),
        "image_size": manifest["image_preprocess"].get("image_size"),
        "text_max_length": manifest["text_max_length"],
        "precisions": list(manifest["precisions"]),
        "bundle_format_version": manifest.get("format_version"),
    }


def _teacher(config: dict[str, Any]) -> dict[str, Any] | str:
    """Teacher spec, embedding width and fingerprint, as the checkpoint recorded them."""
    teacher = config.get("teacher")
    if not isinstance(teacher, dict) or not teacher.get("spec"):
        return NOT_MEASURED
    return {key: teacher.get(key, NOT_MEASURED) for key in ("spec", "fingerprint", "embed_dim")}


def _stages(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The exported checkpoint's stage and, through ``train.init``, the stages before it (oldest first)."""
    source = manifest.get("source") or {}
    config, checkpoint = source.get("config") or {}, source.get("checkpoint")
    stages, seen = [], set()
    while config and len(stages) < 4:
        stages.append(_stage(config, checkpoint))
        init = ((config.get("run_config") or {}).get("train") or {}).get("init")
        if not init or init in seen:
            break
        seen.add(init)
        checkpoint, config = _read_checkpoint_config(init)
    return stages[::-1]


def _read_checkpoint_config(path: str) -> tuple[str | None, dict[str, Any]]:
    """(checkpoint dir, config.json) of a checkpoint or run directory; empty when it is gone or unreadable."""
    try:
        from dcclip.checkpoint import read_config, resolve_checkpoint

        resolved = resolve_checkpoint(path)
        return str(resolved), read_config(resolved)
    except Exception as exc:  # a moved run, no torch installed: the stage is then not recorded
        log.info("model card: stage before %s not readable (%s)", path, exc)
        return None, {}


def _stage(config: dict[str, Any], checkpoint: str | None) -> dict[str, Any]:
    """One training stage: name, steps, seed, samples seen, data source and the run config as saved."""
    run = config.get("run_config") or {}
    train, data = run.get("train") or {}, run.get("data") or {}
    return {
        "stage": config.get("stage", run.get("stage", NOT_MEASURED)),
        "step": config.get("step", NOT_MEASURED),
        "seed": train.get("seed", NOT_MEASURED),
        "samples_seen": _samples_seen(checkpoint),
        "data": data.get("train", NOT_MEASURED),
        "features": data.get("features") or None,
        "machine_captions": data.get("machine_captions", NOT_MEASURED),
        "run_config": run or NOT_MEASURED,
    }


def _samples_seen(checkpoint: str | None) -> int | str:
    """Samples the stage trained on, from the checkpoint's trainer state (torch needed to read it)."""
    if not checkpoint:
        return NOT_MEASURED
    try:
        from dcclip.checkpoint import read_trainer_state

        return int(read_trainer_state(Path(checkpoint))["samples_seen"])
    except Exception as exc:  # no torch, no state file, a moved checkpoint
        log.info("model card: samples seen of %s not readable (%s)", checkpoint, exc)
        return NOT_MEASURED


def _data_facts(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage's shard source with what its shard manifest records (samples, captions and machine share per lang)."""
    facts = {"stage": stage["stage"], "source": stage["data"], "machine_captions_used": stage["machine_captions"]}
    manifest = _shard_manifest(stage["data"])
    if manifest is None:
        return facts | {"samples": NOT_MEASURED, "captions_per_language": NOT_MEASURED,
                        "machine_translated_share": NOT_MEASURED}  # fmt: skip
    captions = {lang: int(n) for lang, n in (manifest.get("langs") or {}).items()}
    return facts | {
        "samples": manifest.get("samples", NOT_MEASURED),
        "captions_per_language": captions or NOT_MEASURED,
        "machine_translated_share": _machine_share(manifest),
    }


def _shard_manifest(source: Any) -> dict[str, Any] | None:
    """The checked ``manifest.json`` of a local shard directory (None for remote sources or when there is none)."""
    from dcclip.data.shard_manifest import ShardError, read_manifest

    if not isinstance(source, str) or not source or "://" in source or source.startswith("pipe:"):
        return None
    try:
        return dict(read_manifest(source))
    except ShardError:
        return None


def _machine_share(manifest: dict[str, Any]) -> dict[str, float] | str:
    """Per language, the share of captions ``dcclip shards translate`` wrote (only it records this)."""
    counts = (manifest.get("translation") or {}).get("counts")
    if not isinstance(counts, dict):
        return NOT_MEASURED
    shares = {}
    for lang, entry in counts.items():
        total = int(entry.get("machine", 0)) + int(entry.get("kept", 0))
        shares[lang] = int(entry.get("machine", 0)) / total if total else 0.0
    return shares


def _int8_agreement(manifest: dict[str, Any]) -> dict[str, Any] | str:
    """Per tower: top-1 agreement of int8 with fp32, what shipped and why (export's parity record)."""
    towers = ((manifest.get("parity") or {}).get("int8") or {}).get("towers")
    if not isinstance(towers, dict):
        return NOT_MEASURED
    figures: dict[str, Any] = {}
    for role in ("image", "text"):
        tower = towers.get(role) or {}
        figures[role] = {key: tower.get(key) for key in ("top1_agreement", "decisions", "shipped", "reason")}
    combined = towers.get("combined_int8") or {}
    figures["both_int8"] = {"top1_agreement": combined.get("top1_agreement")}
    figures["bar"] = towers.get("min_top1_agreement")
    figures["sample"] = towers.get("source")
    return figures


def _sizes(manifest: dict[str, Any]) -> dict[str, Any]:
    """Bytes per precision (both towers) and per file, from the manifest's file entries."""
    sizes: dict[str, Any] = {"files": {}}
    for name, entry in manifest["files"].items():
        if entry.get("role") in ("image", "text"):
            sizes["files"][name] = entry.get("bytes")
            key = f"{entry.get('precision')}_towers"
            sizes[key] = sizes.get(key, 0) + int(entry.get("bytes") or 0)
    return sizes


def _speed(manifest: dict[str, Any]) -> dict[str, Any]:
    """Per target, the timings recorded so far: export --precision auto (this bundle's CPU), else not measured."""
    choice = manifest.get("precision_choice")
    if not isinstance(choice, dict):
        return {"onnxruntime_cpu": NOT_MEASURED, "phone": NOT_MEASURED, "browser": NOT_MEASURED}
    return {"onnxruntime_cpu": {"source": "export --precision auto", "timings": choice.get("timings"),
                                "machine": choice.get("machine")},
            "phone": NOT_MEASURED, "browser": NOT_MEASURED}  # fmt: skip


# --- evaluation from a report --------------------------------------------------------------------------------------
def evaluation_from_report(report: dict[str, Any], bundle: Path, models: Sequence[str] | None = None) -> dict:
    """Zero-shot figures of the bundle's models in an eval report or a demo report (per language, 95% intervals,
    retention against the teacher's English top-1)."""
    if "top1" in report and isinstance(report.get("top1"), dict):
        return _from_demo_report(report, models)
    if report.get("format") == "dcclip-eval-report":
        return _from_eval_report(report, bundle, models)
    raise ValueError("report is neither a `dcclip eval` report.json nor a demo report.json (no 'format' or 'top1')")


def _from_demo_report(report: dict[str, Any], models: Sequence[str] | None) -> dict[str, Any]:
    """The demo's tables: its ONNX rows are the bundle."""
    chosen = list(models) if models else list(DEMO_STUDENTS)
    sets = {}
    for task, table in report["top1"].items():
        names = [m for m in chosen if m in table["values"]]
        if not names:
            raise ValueError(f"demo report: task {task} has none of the models {chosen} (it has {table['models']})")
        sets[task] = {
            "teacher_en": table.get("teacher_en"),
            "models": {m: _demo_rows(table, m) | {"precision": DEMO_STUDENTS.get(m)} for m in names},
        }
    speed = report.get("speed_size")
    return {"source": "demo report", "zeroshot": sets, "speed": speed if isinstance(speed, dict) else None}


def _demo_rows(table: dict[str, Any], model: str) -> dict[str, Any]:
    """Per language (and the mean row): top-1, interval, count and retention of one model of a demo table."""
    retention = (table.get("retention") or {}).get(model) or {}
    rows = {
        lang: {
            "top1": table["values"][model][lang],
            "ci95": table["ci95"][model][lang],
            "n": table["n"].get(lang),
            "retention": retention.get(lang),
        }
        for lang in table["langs"]
    }
    mean = rows.pop("mean", None)
    return {"per_lang": rows, "mean": mean}


def _from_eval_report(report: dict[str, Any], bundle: Path, models: Sequence[str] | None) -> dict[str, Any]:
    """A ``dcclip eval zeroshot`` report: the models evaluated from this bundle (by path, or named in ``models``)."""
    if report.get("task") != "zeroshot":
        raise ValueError(f"eval report task is {report.get('task')!r}; the card takes zero-shot reports")
    entries = report.get("models") or []
    names = list(models) if models else [e["name"] for e in entries if _precision_of(e.get("ref"), bundle)]
    missing = [n for n in names if n not in report["results"]]
    if not names or missing:
        refs = [f"{e['name']} ({e.get('ref')})" for e in entries]
        raise ValueError(f"eval report has no model evaluated from {bundle} (models: {refs}); name one with --model")
    teacher = _teacher_english(report, entries)
    figures = {}
    for name in names:
        ref = next((e.get("ref") for e in entries if e["name"] == name), None)
        rows = {lang: _eval_row(f, teacher) for lang, f in report["results"][name].items()}
        figures[name] = {"per_lang": rows, "mean": _eval_row(report["mean"][name], teacher),
                         "precision": _precision_of(ref, bundle)}  # fmt: skip
    dataset = report.get("dataset") or {}
    key = Path(str(dataset.get("path", "dataset"))).name or "dataset"
    return {"source": "eval report", "zeroshot": {key: {"teacher_en": teacher, "models": figures}}, "speed": None}


def _precision_of(ref: Any, bundle: Path) -> str | None:
    """'fp32' / 'int8' when an eval ref names this bundle (``DIR`` or ``DIR@int8``), else None."""
    if not isinstance(ref, str):
        return None
    path, _, precision = ref.partition("@")
    try:
        same = Path(path).resolve() == Path(bundle).resolve()
    except OSError:
        return None
    return (precision or "fp32") if same else None


def _teacher_english(report: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The teacher's English top-1 (with interval and count) when the report evaluated a teacher spec."""
    for entry in entries:
        if str(entry.get("ref", "")).startswith(TEACHER_PREFIXES) or entry.get("name") == "teacher":
            figures = report["results"].get(entry["name"], {}).get(PIVOT)
            if figures:
                return {"lang": PIVOT, "model": entry["name"], "top1": figures["top1"],
                        "ci95": figures.get("top1_ci95"), "n": figures.get("n")}  # fmt: skip
    return None


def _eval_row(figures: dict[str, Any], teacher: dict[str, Any] | None) -> dict[str, Any]:
    """top-1, interval, count and retention (over the teacher's English top-1) of one report row."""
    reference = teacher["top1"] if teacher else None
    return {"top1": figures["top1"], "ci95": figures.get("top1_ci95"), "n": figures.get("n"),
            "retention": figures["top1"] / reference if reference else None}  # fmt: skip


# --- markdown ------------------------------------------------------------------------------------------------------
def render_card(card: dict[str, Any]) -> str:
    """MODEL_CARD.md: YAML front matter (language, license, tags, base_model) and one section per fact group."""
    parts = [
        _front_matter(card),
        _summary_md(card),
        _teacher_md(card),
        _data_md(card),
        _recipe_md(card),
        _evaluation_md(card),
        _int8_md(card),
        _size_speed_md(card),
        _use_md(card),
        f"_Generated by {card['generated_by']} from the bundle's manifest, the checkpoint's records and the eval "
        "report named above; nothing here is typed by hand, and what was not measured says so._",
    ]
    return "\n\n".join(parts) + "\n"


def _yaml_str(value: Any) -> str:
    """A YAML scalar (JSON strings are valid YAML)."""
    return json.dumps(str(value), ensure_ascii=False)


def _front_matter(card: dict[str, Any]) -> str:
    langs = card["model"]["languages"]
    teacher = card["teacher"]["spec"] if isinstance(card["teacher"], dict) else None
    lines = ["---", "language:", *(f"- {_yaml_str(lang)}" for lang in langs)] if langs else ["---"]
    lines += [f"license: {_yaml_str(card['license'] or LICENSE_UNSET)}", "tags:", *(f"- {t}" for t in TAGS)]
    lines += [f"base_model: {_yaml_str(teacher)}"] if teacher else []
    lines += ["pipeline_tag: zero-shot-image-classification", "---"]
    return "\n".join(lines)


def _value(value: Any) -> str:
    return NOT_MEASURED if value is None else str(value)


def _summary_md(card: dict[str, Any]) -> str:
    m = card["model"]
    license_line = card["license"] or "not set (exported without --license; the front matter says 'other')"
    return "\n".join(
        [
            f"# {m['student']} (dcclip bundle)",
            "",
            f"A multilingual CLIP-style student distilled by dcclip: {m['embed_dim']}-d embeddings, images at "
            f"{m['image_size']} px, texts up to {m['text_max_length']} tokens, languages "
            f"{', '.join(m['languages']) or NOT_MEASURED}; ONNX towers in {', '.join(m['precisions'])} "
            f"(checkpoint step {m['checkpoint_step']}).",
            "",
            f"- License: {license_line}",
        ]
    )


def _teacher_md(card: dict[str, Any]) -> str:
    teacher = card["teacher"]
    if not isinstance(teacher, dict):
        return f"## Teacher\n\n{NOT_MEASURED} (the checkpoint records no teacher)."
    return "\n".join(
        [
            "## Teacher",
            "",
            f"- spec: `{teacher['spec']}`",
            f"- fingerprint: `{teacher['fingerprint']}`",
            f"- embedding width: {teacher['embed_dim']}",
        ]
    )


def _data_md(card: dict[str, Any]) -> str:
    data = card["training_data"]
    if not isinstance(data, list):
        return f"## Training data\n\n{NOT_MEASURED} (the checkpoint records no run config)."
    lines = ["## Training data", ""]
    for item in data:
        lines += [
            f"### {item['stage']}: `{item['source']}`",
            "",
            f"- samples: {item['samples']}; machine-translated captions allowed (data.machine_captions): "
            f"{item['machine_captions_used']}",
        ]
        captions, share = item["captions_per_language"], item["machine_translated_share"]
        if isinstance(captions, dict):
            lines += ["", "| language | captions | machine-translated share |", "|---|---:|---:|"]
            for lang, count in captions.items():
                cell = f"{share[lang]:.1%}" if isinstance(share, dict) and lang in share else NOT_MEASURED
                lines.append(f"| {lang} | {count} | {cell} |")
        else:
            lines.append(f"- captions per language: {NOT_MEASURED} (no readable shard manifest)")
        lines.append("")
    return "\n".join(lines).rstrip()


def _recipe_md(card: dict[str, Any]) -> str:
    recipe = card["recipe"]
    lines = ["## Training recipe", "", f"dcclip version that trained the checkpoint: {recipe['dcclip_version']}."]
    if isinstance(recipe["stages"], list):
        lines += ["", "| stage | steps | seed | samples seen |", "|---|---:|---:|---:|"]
        lines += [f"| {s['stage']} | {s['step']} | {s['seed']} | {s['samples_seen']} |" for s in recipe["stages"]]
        lines += ["", "The full run config of each stage is in manifest.json (`card.recipe.stages[].run_config`)."]
    else:
        lines += ["", f"Stages: {NOT_MEASURED}."]
    return "\n".join(lines)


def _rate(value: Any, interval: Any = None) -> str:
    if not isinstance(value, int | float):
        return NOT_MEASURED
    text = f"{value:.1%}"
    if isinstance(interval, list | tuple) and len(interval) == 2:
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text


def _evaluation_md(card: dict[str, Any]) -> str:
    evaluation = card["evaluation"]
    if not isinstance(evaluation, dict):
        return f"## Evaluation\n\nZero-shot accuracy: {NOT_MEASURED} (refresh with `dcclip card --report`)."
    lines = ["## Evaluation", "", f"From {evaluation['source']} `{evaluation.get('report', '')}`."]
    for dataset, figures in evaluation["zeroshot"].items():
        teacher = figures.get("teacher_en")
        lines += ["", f"### Zero-shot top-1: {dataset}", ""]
        lines.append(
            f"Teacher, English prompts: {_rate(teacher['top1'], teacher.get('ci95'))} (n = {teacher.get('n')}). "
            "Retention = the student's top-1 in a language / that figure."
            if teacher
            else f"Teacher: {NOT_MEASURED} in this report, so retention is {NOT_MEASURED}."
        )
        models = list(figures["models"])
        lines += ["", "| language | n | " + " | ".join(f"{m}: top-1 [95% CI] · retention" for m in models) + " |"]
        lines.append("|---|---:|" + "---:|" * len(models))
        first = figures["models"][models[0]]
        for lang in [*first["per_lang"], "mean"]:
            rows = [fig["per_lang"].get(lang) if lang != "mean" else fig["mean"] for fig in figures["models"].values()]
            count = next((r.get("n") for r in rows if r), None)
            cells = [_rate(r["top1"], r.get("ci95")) + " · " + _rate(r.get("retention")) if r else "–" for r in rows]
            lines.append(f"| {lang} | {_value(count)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _int8_md(card: dict[str, Any]) -> str:
    figures = card["int8_agreement"]
    if not isinstance(figures, dict):
        return f"## int8\n\nAgreement of int8 with fp32: {NOT_MEASURED} (no int8 export)."
    lines = ["## int8 agreement with fp32 (export's parity check)", "", f"Agreement sample: {figures.get('sample')}."]
    lines += ["", "| tower | top-1 agreement | decisions | ships |", "|---|---:|---:|---|"]
    for role in ("image", "text"):
        tower = figures[role]
        lines.append(
            f"| {role} | {_rate(tower['top1_agreement'])} | {_value(tower['decisions'])} | {tower['shipped']} |"
        )
    lines.append(f"| both in int8 | {_rate(figures['both_int8']['top1_agreement'])} | | |")
    lines += ["", f"Bar: {_rate(figures['bar'])} of top-1 decisions kept; a tower below it ships fp32."]
    return "\n".join(lines)


def _size_speed_md(card: dict[str, Any]) -> str:
    sizes = card["size_bytes"]
    lines = ["## Size and speed", "", "| file | bytes |", "|---|---:|"]
    lines += [f"| {name} | {size:,} |" for name, size in sizes["files"].items()]
    speed = card["speed"]
    lines.append("")
    for target, figures in speed.items():
        if target == "demo_bench" and isinstance(figures, dict):
            lines.append(f"- {target}: {figures.get('note', '')}")
            for row in figures.get("rows", []):
                lines.append(
                    f"  - {row.get('model')}: image {row.get('image_ms', 0):.2f} ms, text {row.get('text_ms', 0):.2f} "
                    f"ms, {row.get('bytes', 0):,} bytes"
                )
        elif isinstance(figures, dict):
            lines.append(f"- {target}: measured by {figures.get('source')} (timings in manifest.json, card.speed)")
        else:
            lines.append(f"- {target}: {figures}")
    return "\n".join(lines)


def _use_md(card: dict[str, Any]) -> str:
    m = card["model"]
    langs = ", ".join(m["languages"]) or NOT_MEASURED
    lines = [
        "## Intended use",
        "",
        f"Zero-shot image classification and text-image search in {langs} with the torch-free dcclip runtime "
        "(`dcclip classify`, `dcclip serve`) or onnxruntime on edge devices.",
        "",
        "## Known limits",
        "",
        f"- Languages outside {langs} were not trained and not measured.",
        f"- Texts are cut to {m['text_max_length']} tokens; images are resized to {m['image_size']} px.",
        "- The student learned from the teacher above and inherits its behaviour and biases.",
    ]
    evaluation = card["evaluation"]
    if isinstance(evaluation, dict):
        lines.append(f"- Accuracy was measured only on the eval sets above ({', '.join(evaluation['zeroshot'])}).")
    else:
        lines.append(f"- Accuracy: {NOT_MEASURED}.")
    int8 = card["int8_agreement"]
    if isinstance(int8, dict):
        for role in ("image", "text"):
            if int8[role].get("reason"):
                lines.append(f"- int8 {role} tower ships fp32: {int8[role]['reason']}.")
    return "\n".join(lines)


# --- writing -------------------------------------------------------------------------------------------------------
def add_card(manifest: dict[str, Any], staging: Path, license: str | None = None) -> dict[str, Any]:
    """Write MODEL_CARD.md into a bundle being built and return the (unsealed) manifest with its card and entry."""
    card = card_from_manifest(manifest, license)
    write_text_atomic(staging / CARD_FILE, render_card(card))
    files = {**manifest["files"], CARD_FILE: file_entry(staging / CARD_FILE, "card", None)}
    return {**manifest, CARD_KEY: card, "files": files}


def seal_with_card(staging: Path, manifest: dict[str, Any], license: str | None = None) -> dict[str, Any]:
    """Export's hook: add the card to a bundle staged with its sealed manifest, re-seal and rewrite manifest.json."""
    manifest = add_card(manifest, staging, license)
    manifest = check_bundle_manifest(manifest, staging / MANIFEST_FILE) or seal_manifest(manifest)  # schema, then seal
    write_json_atomic(staging / MANIFEST_FILE, manifest)
    return manifest


def update_card(
    bundle: str | os.PathLike, report_json: str | os.PathLike, models: Sequence[str] | None = None
) -> dict[str, Any]:
    """Refresh a bundle's card from an eval or demo ``report.json``; re-hash, re-seal, swap the bundle in one rename.

    The bundle is verified first (an altered bundle is refused, not re-sealed). Returns the new manifest.
    """
    bundle, report_path = Path(bundle), Path(report_json)
    manifest = verify_bundle(bundle)
    report = _read_report(report_path)
    card = manifest.get(CARD_KEY) or card_from_manifest(manifest)  # a bundle from before cards gets one now
    evaluation = evaluation_from_report(report, bundle, models)
    speed = evaluation.pop("speed")
    card = {**card, "evaluation": {**evaluation, "report": str(report_path), "report_sha256": sha256_file(report_path)}}
    if speed:
        card["speed"] = {**card["speed"], "demo_bench": speed}
    text = render_card(card)
    with atomic_dir(bundle) as staging:
        _link_all(bundle, staging, skip={CARD_FILE, MANIFEST_FILE})
        write_text_atomic(staging / CARD_FILE, text)
        files = {**manifest["files"], CARD_FILE: file_entry(staging / CARD_FILE, "card", None)}
        manifest = {**manifest, CARD_KEY: card, "files": files}
        manifest = check_bundle_manifest(manifest, staging / MANIFEST_FILE) or seal_manifest(manifest)
        write_json_atomic(staging / MANIFEST_FILE, manifest)
    log.info("model card of %s refreshed from %s", bundle, report_path)
    return manifest


def _read_report(path: Path) -> dict[str, Any]:
    """A report.json as a dict; ValueError / FileNotFoundError naming the file."""
    try:
        report = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: no such report") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(report, dict):
        raise ValueError(f"{path}: a report is a JSON object, got {type(report).__name__}")
    return report


def _link_all(src: Path, dst: Path, skip: set[str]) -> None:
    """Every entry of ``src`` but ``skip`` into ``dst``: files hard-linked (copied where links fail), folders copied."""
    for item in src.iterdir():
        if item.name in skip:
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
            continue
        try:
            os.link(item, dst / item.name)
        except OSError:
            shutil.copy2(item, dst / item.name)
