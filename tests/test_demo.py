"""`dcclip demo` at a tiny size: every artifact, a bundle that classifies, a consistent report, reuse and recovery."""

from __future__ import annotations

import json
import re

import pytest

from dcclip.demo import DemoSettings, DemoStepError, run_demo
from dcclip.demo import run as demo


def tiny(out) -> DemoSettings:
    return DemoSettings(
        out=out,
        train_samples=120,
        eval_samples=90,
        teacher_image_steps=3,
        teacher_text_steps=2,
        distill_steps=3,
        align_steps=2,
        vocab_size=600,
    )


def test_student_at_another_input_size_is_a_copy_of_the_shipped_one(tmp_path):
    from dcclip.models.students import load_student_config

    assert demo.student_arch(DemoSettings(out=tmp_path)) == []  # 48 px: the shipped architecture as is
    (override,) = demo.student_arch(DemoSettings(out=tmp_path, image_size=32))
    arch, _ = load_student_config(override.split("=", 1)[1])
    shipped, _ = load_student_config(demo.DEMO_STUDENT)
    assert arch["image"]["image_size"] == 32 and {**arch, "image": shipped["image"]} == shipped


@pytest.mark.slow
def test_tiny_demo_end_to_end_then_reuse_and_recover(tmp_path, monkeypatch, capsys):
    settings = tiny(tmp_path / "demo")
    report = run_demo(settings)
    out = settings.out
    for name in ("report.md", "report.json", "loss_curves.png", "speed_size.png", "zeroshot_shapes_top1.png"):
        assert (out / name).is_file(), name
    for name in ("image.onnx", "text.onnx", "image.int8.onnx", "text.int8.onnx", "tokenizer.json", "manifest.json"):
        assert (out / "bundle" / name).is_file(), name

    # the report's tables are the figures in report.json, which are the eval reports' figures
    saved = json.loads((out / "report.json").read_text())
    shapes = saved["top1"]["zeroshot_shapes"]
    eval_report = json.loads((out / "eval" / "zeroshot_shapes" / "report.json").read_text())
    for model in shapes["models"]:
        for lang in shapes["langs"][:-1]:
            assert shapes["values"][model][lang] == pytest.approx(eval_report["results"][model][lang]["top1"])
    lang = shapes["langs"][0]
    for model in shapes["models"]:  # every top-1 carries the eval report's interval and count
        assert shapes["ci95"][model][lang] == pytest.approx(eval_report["results"][model][lang]["top1_ci95"])
    assert shapes["n"][lang] == eval_report["results"]["teacher"][lang]["n"] == settings.eval_samples
    markdown = (out / "report.md").read_text()
    first_row = next(line for line in markdown.splitlines() if line.startswith(f"| {lang} |"))
    cells = [re.fullmatch(r"([\d.]+)% \[([\d.]+), ([\d.]+)\]", c.strip()) for c in first_row.split("|")[3:-1]]
    assert int(first_row.split("|")[2]) == shapes["n"][lang]
    for match, model in zip(cells, shapes["models"], strict=True):
        figures = [float(x) / 100 for x in match.groups()]
        assert figures == pytest.approx([shapes["values"][model][lang], *shapes["ci95"][model][lang]], abs=6e-4)
    assert {"teacher", "student stage 1", "student stage 2", "student ONNX fp32", "student ONNX int8"} == set(
        shapes["models"]
    )

    # retention: each student's top-1 over the teacher's English top-1; the headline summarises stage 1 and 2
    teacher_en = shapes["teacher_en"]["top1"]
    for model, ratios in shapes["retention"].items():
        expected = None if not teacher_en else shapes["values"][model][lang] / teacher_en
        assert ratios[lang] == (expected if expected is None else pytest.approx(expected))
    assert set(saved["headline"]["zeroshot_digits"]["retention"]) == {"student stage 1", "student stage 2"}
    assert "## Headline" in markdown and "Retention" in markdown

    # speed and size: every model in onnxruntime, the teacher's ONNX export checked against torch
    rows = report["speed_size"]["rows"]
    assert rows[0]["model"].startswith("teacher") and [r["precision"] for r in rows] == ["fp32", "fp32", "int8"]
    assert all("onnxruntime" in r["model"] and r["image_ms"] > 0 and r["bytes"] > 0 for r in rows)
    assert report["speed_size"]["teacher_onnx"]["parity"]["min_cosine"] >= 0.9999

    # the bundle classifies, without torch, through the public API
    from dcclip.runtime.classifier import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_bundle(out / "bundle")
    example = next((out / "examples").glob("*.jpg"))
    ranked = classifier.classify([example], ["red circle", "blue square", "green triangle"], lang="en", top_k=2)
    assert len(ranked[0]) == 2 and sum(p for _, p in ranked[0]) <= 1.0 + 1e-6

    # a re-run reuses every step
    capsys.readouterr()
    run_demo(settings)
    assert len(re.findall(r": reused", capsys.readouterr().out)) == len(demo.build_steps(settings))

    # a broken step stops the demo with its name; the next run continues from it
    broken = DemoSettings(**{**vars(settings), "align_steps": 3})

    def fail(_settings):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "step_export", fail)
    with pytest.raises(DemoStepError, match=r"step 'export'.*disk full"):
        run_demo(broken)
    monkeypatch.undo()
    capsys.readouterr()
    run_demo(broken)
    log = capsys.readouterr().out
    assert "toy world: shards + eval sets: reused" in log and "stage 1: feature distillation: reused" in log
    assert "stage 2: contrastive alignment: reused" in log  # finished before the failure, kept
    assert "export ONNX bundle (fp32 + int8): done" in log
