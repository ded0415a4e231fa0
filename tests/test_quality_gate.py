"""The quality gate: a reduced demo (stand-in teacher, stage 1, stage 2, export, eval) must show real distillation.

Fixed seeds, about 50-90 s on 2 cores. It fails when distillation is broken: with a distillation loss weight of 0 or a
detached target the student stays near chance and its retention falls far under the bar (see the README's
"Quality gate" for the runs that show it). ``DCCLIP_GATE_OVERRIDES`` (comma-separated ``stage:key=value``, e.g.
``distill:loss.text_embed=0``) runs the same gate on a deliberately broken recipe.
"""

from __future__ import annotations

import json
import os

import pytest

from dcclip.demo import DemoSettings, run_demo

# The reduced pipeline and what it must reach (top-1, zero-shot; chance is 1.1% on shapes, 10% on digits).
GATE_LANGS = ("en", "zh", "ar", "hi")
GATE = DemoSettings(
    out=None,  # set per test
    train_samples=1200,
    eval_samples=180,
    teacher_image_steps=150,
    teacher_text_steps=40,
    distill_steps=120,
    align_steps=20,
    vocab_size=1500,
    full_report=False,  # zero-shot only: no retrieval / alignment eval, no speed and size table
    eval_langs=GATE_LANGS,
    image_size=32,  # teacher and student at 32 px: half the cost of a 48 px step
    exporter="torchscript",  # same fp32 parity checks, 2.4x faster than the dynamo exporter on these towers
)
# Measured with these settings on 2 AMD EPYC cores: teacher 40.6% digits / 16.7% shapes; students keep 56-63% of the
# teacher's digits in en, zh, ar, hi (53 s as a pytest call: world 4, teacher 16, stage 1 18, stage 2 4, export 7,
# eval 5; 68-86 s on a slower machine). With stage 1's image losses switched off the student's image tower learns
# nothing: stage 1 keeps 23-27% of the teacher's digits (chance is 25%) and the gate fails.
TEACHER_MIN = {"zeroshot_digits": 0.30, "zeroshot_shapes": 0.06}
RETENTION_MIN = 0.40  # student top-1 / teacher's English top-1, on digits, in every checked language
INT8_MIN_AGREEMENT = 0.97


def gate_overrides() -> dict[str, list[str]]:
    """``DCCLIP_GATE_OVERRIDES`` as {stage: [key=value, ...]}."""
    out: dict[str, list[str]] = {"distill": [], "align": []}
    for item in filter(None, os.environ.get("DCCLIP_GATE_OVERRIDES", "").split(",")):
        stage, override = item.split(":", 1)
        out[stage].append(override)
    return out


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_reduced_pipeline_keeps_the_teachers_knowledge(tmp_path):
    import dataclasses

    settings = dataclasses.replace(GATE, out=tmp_path / "gate", overrides=gate_overrides())
    report = run_demo(settings)
    top1 = report["top1"]
    print(json.dumps({task: top1[task]["values"] for task in TEACHER_MIN}, indent=1))
    for task, floor in TEACHER_MIN.items():
        teacher = top1[task]["values"]["teacher"]["en"]
        assert teacher >= floor, f"{task}: the teacher reaches only {teacher:.1%} (gate: {floor:.0%})"
    digits = top1["zeroshot_digits"]
    teacher_en = digits["values"]["teacher"]["en"]
    for model in ("student stage 1", "student stage 2", "student ONNX fp32"):
        for lang in GATE_LANGS:
            retention = digits["values"][model][lang] / teacher_en
            assert retention >= RETENTION_MIN, f"{model} [{lang}]: retention {retention:.0%} < {RETENTION_MIN:.0%}"
    assert digits["values"]["student ONNX fp32"] == pytest.approx(digits["values"]["student stage 2"], abs=0.01)
    manifest = json.loads((settings.out / "bundle" / "manifest.json").read_text())
    assert manifest["parity"]["fp32"]["min_cosine"] >= 0.9999
    int8 = manifest["parity"]["int8"]  # what the int8 bundle ships (a tower under the bar ships fp32) agrees with fp32
    assert int8["top1_agreement"] >= INT8_MIN_AGREEMENT, int8
    assert {int8["towers"][tower]["shipped"] for tower in ("image", "text")} <= {"int8", "fp32"}
