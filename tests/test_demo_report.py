"""The demo report's tables from constructed eval summaries: intervals, retention, the headline, the markdown."""

from __future__ import annotations

import json

import pytest

from dcclip.demo.report import (
    accuracy_table,
    attribute_breakdown,
    breakdown_markdown,
    eval_classes,
    headline,
    headline_markdown,
    interleaved_ms,
    markdown,
    retention_markdown,
    speed_markdown,
)
from dcclip.eval.stats import mean_interval, wilson_interval, with_intervals

LANGS = ("en", "zh", "hi")
N = 200
CORRECT = {  # images right at top-1, per model and language
    "teacher": {"en": 120, "zh": 10, "hi": 4},
    "student stage 1": {"en": 100, "zh": 90, "hi": 60},
    "student stage 2": {"en": 110, "zh": 102, "hi": 96},
    "student ONNX fp32": {"en": 110, "zh": 102, "hi": 96},
    "student ONNX int8": {"en": 108, "zh": 100, "hi": 90},
}


def eval_summary(with_ci: bool = True) -> dict:
    """What the demo's eval step keeps of a zero-shot report (results and means), built from CORRECT."""
    results, means = {}, {}
    for model, correct in CORRECT.items():
        per_lang = {lang: {"top1": correct[lang] / N, "top5": 1.0, "n": N} for lang in LANGS}
        if with_ci:
            per_lang = {lang: with_intervals(f, {"top1": "n", "top5": "n"}) for lang, f in per_lang.items()}
        results[model] = per_lang
        means[model] = {"top1": sum(correct.values()) / N / len(LANGS)}
        if with_ci:
            top1 = [f["top1"] for f in per_lang.values()]
            means[model] |= {"top1_ci95": list(mean_interval(top1, [N] * len(LANGS))), "n": N}
    return {"zeroshot_shapes": {"results": results, "mean": means}}


def test_accuracy_table_has_intervals_counts_and_retention():
    table = accuracy_table(eval_summary(), "zeroshot_shapes", "top1", classes=90)
    assert table["langs"] == [*LANGS, "mean"] and table["models"] == list(CORRECT)
    assert table["values"]["student stage 1"]["zh"] == pytest.approx(90 / N)
    assert table["ci95"]["student stage 1"]["zh"] == pytest.approx(wilson_interval(90, N))
    assert table["n"] == {"en": N, "zh": N, "hi": N, "mean": N}
    teacher = table["teacher_en"]
    assert teacher["top1"] == pytest.approx(0.6) and teacher["ci95"] == pytest.approx(wilson_interval(120, N))
    assert teacher["chance"] == pytest.approx(1 / 90) and teacher["above_chance"] is True
    assert "teacher" not in table["retention"]
    assert table["retention"]["student stage 2"]["hi"] == pytest.approx(96 / 120)
    assert table["retention"]["student stage 2"]["mean"] == pytest.approx((110 + 102 + 96) / 3 / 120)
    summary = table["retention_summary"]["student stage 1"]
    assert summary["min_lang"] == "hi" and summary["min"] == pytest.approx(0.5)
    assert summary["mean"] == pytest.approx((100 + 90 + 60) / 3 / 120) and summary["langs"] == 3


def test_intervals_are_recomputed_for_summaries_written_before_intervals():
    old, new = accuracy_table(eval_summary(False), "zeroshot_shapes"), accuracy_table(eval_summary(), "zeroshot_shapes")
    assert old["ci95"] == new["ci95"] and old["n"] == new["n"]
    assert old["teacher_en"]["chance"] is None and old["teacher_en"]["above_chance"] is None


def test_retention_without_a_measurable_teacher_is_none():
    summary = eval_summary()
    summary["zeroshot_shapes"]["results"]["teacher"]["en"]["top1"] = 0.0
    table = accuracy_table(summary, "zeroshot_shapes")
    assert table["retention"]["student stage 1"]["en"] is None
    assert table["retention_summary"]["student stage 1"]["min"] is None
    del summary["zeroshot_shapes"]["results"]["teacher"]
    assert accuracy_table(summary, "zeroshot_shapes")["teacher_en"] is None


def test_markdown_tables_show_intervals_and_retention():
    table = accuracy_table(eval_summary(), "zeroshot_shapes")
    lines = markdown(table).splitlines()
    assert lines[0] == "| language | n | " + " | ".join(CORRECT) + " |"
    low, high = wilson_interval(90, N)
    assert lines[3].startswith(f"| zh | {N} | ") and f"45.0% [{low * 100:.1f}, {high * 100:.1f}]" in lines[3]
    assert lines[-1].startswith("| **mean** | **200** |")
    retention = retention_markdown(table).splitlines()
    assert retention[0] == "| language | student stage 1 | student stage 2 | student ONNX fp32 | student ONNX int8 |"
    assert retention[4] == "| hi | 50.0% | 80.0% | 80.0% | 75.0% |"


def test_headline_names_the_teacher_and_the_worst_language():
    tables = {"zeroshot_shapes": accuracy_table(eval_summary(), "zeroshot_shapes", classes=90)}
    head = headline(tables)
    assert set(head["zeroshot_shapes"]["retention"]) == {"student stage 1", "student stage 2"}
    text = headline_markdown({"headline": head})
    low, high = wilson_interval(120, N)
    assert f"| colour × shape | 60.0% [{low * 100:.1f}, {high * 100:.1f}] (n = 200, chance 1.1%) |" in text
    assert "50.0% (hi) · 69.4%" in text and "80.0% (hi) · 85.6%" in text and "over the 3 languages" in text
    assert "noise" not in text
    tables["zeroshot_shapes"]["teacher_en"]["above_chance"] = False
    assert "does not clear chance" in headline_markdown({"headline": headline(tables)})


def test_eval_classes_reads_the_eval_report(tmp_path):
    assert eval_classes(tmp_path) is None
    (tmp_path / "report.json").write_text(json.dumps({"dataset": {"classes": 90}}))
    assert eval_classes(tmp_path) == 90


def test_speed_markdown_names_towers_that_ship_another_precision():
    rows = [
        {"model": "teacher (onnxruntime fp32)", "precision": "fp32", "image_ms": 2.0, "text_ms": 1.0, "bytes": 4e6},
        {"model": "student (onnxruntime int8)", "precision": "int8", "image_ms": 0.5, "text_ms": 0.5, "bytes": 1e6,
         "tower_precisions": {"image": "fp32", "text": "int8"}},
    ]  # fmt: skip
    for row in rows:
        row |= {
            "image_speedup": 2.0 / row["image_ms"],
            "text_speedup": 1 / row["text_ms"],
            "size_ratio": 4e6 / row["bytes"],
        }
    bench = {"rows": rows, "note": "same session options", "teacher_onnx": {"parity": {"min_cosine": 0.9999991}}}
    text = speed_markdown(bench)
    assert "| student (onnxruntime int8): image tower ships fp32 | 0.50 | 0.50 | 1.0 | 4.0× | 2.0× | 4.0× |" in text
    assert "min cosine 0.999999" in text


def test_interleaved_ms_times_every_function_in_turn():
    calls: list[str] = []
    times = interleaved_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=4, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 4  # warm-up, then one call of each per round
    assert {key: len(values) for key, values in times.items()} == {"a": 4, "b": 4}
    assert all(value >= 0 for values in times.values() for value in values)


def test_breakdown_says_which_part_of_a_class_the_models_get_right():
    summary = eval_summary()
    assert attribute_breakdown(summary, "zeroshot_shapes") is None  # no class attributes: no breakdown
    for model, per_lang in summary["zeroshot_shapes"]["results"].items():
        for lang, figures in per_lang.items():
            figures |= {"top1_colour": 0.9, "top1_colour_ci95": [0.85, 0.93], "top1_shape": CORRECT[model][lang] / N}
    breakdown = attribute_breakdown(summary, "zeroshot_shapes")
    assert breakdown["metrics"] == ["top1", "top1_colour", "top1_shape"]
    stage2 = breakdown["models"]["student stage 2"]
    assert stage2["en"] == {"top1": 0.55, "top1_colour": 0.9, "top1_shape": 0.55}
    assert stage2["mean"]["top1_shape"] == pytest.approx((110 + 102 + 96) / N / 3)
    text = breakdown_markdown(breakdown)
    assert "colour right (en · mean)" in text and "| student stage 2 | 55.0% · 51.3% | 90.0% · 90.0% |" in text


def test_the_report_says_which_precision_each_stage_trained_in():
    from dcclip.demo.report import precision_line

    line = precision_line(
        {
            "distill": {"precision": "bf16", "reason": "bf16 1.50x fp32's speed"},
            "align": {"precision": "fp32", "reason": "configured"},
        }
    )
    assert line == "Precision: stage 1 bf16 (bf16 1.50x fp32's speed); stage 2 fp32 (configured).\n"
    assert precision_line({"distill": None, "align": None}) == ""
