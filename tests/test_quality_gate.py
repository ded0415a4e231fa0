"""The quality gate: a reduced demo (stand-in teacher, stage 1, stage 2, export, eval) must show real distillation.

The recipe, statistics and floors live in dcclip/demo/gate.py; the floors sit between the working recipe's and the
broken recipes' distributions over seeds (``benchmarks/quality_gate.py``, README "Quality gate"). Environment:
``DCCLIP_GATE_SEED`` (default 0) picks the seed; ``DCCLIP_GATE_FAULT`` (one of dcclip.demo.gate.FAULTS) runs the
gate on a deliberately broken recipe, which must then fail with a message saying what was lost.
"""

from __future__ import annotations

import json
import os

import pytest

from dcclip.demo.gate import FAULTS, FLOORS, GATE_LANGS, failures, run_gate


def test_gate_verdict_names_what_was_lost():
    """Each statistic under its floor gives a message naming the student, the tower or the knowledge lost."""
    healthy = {"image_cosine": 0.9, "text_cosine": dict.fromkeys(GATE_LANGS, 0.9), "retention": 0.6}
    figures = {
        "teacher": {"zeroshot_digits": 0.5, "zeroshot_shapes": 0.2},
        "students": {"student stage 1": dict(healthy), "student ONNX fp32": {"retention": 0.6}},
        "fp32_min_cosine": 1.0,
        "onnx_vs_torch_top1": dict.fromkeys(GATE_LANGS, 0.0),
        "int8": {"top1_agreement": 0.99},
    }
    assert failures(figures) == []
    figures["students"]["student stage 1"]["image_cosine"] = FLOORS["image_cosine"] - 0.01
    figures["students"]["student stage 1"]["text_cosine"]["ar"] = FLOORS["text_cosine"] - 0.01
    figures["students"]["student ONNX fp32"]["retention"] = FLOORS["retention"] - 0.01
    figures["int8"]["top1_agreement"] = 0.9
    found = failures(figures)
    assert len(found) == 4, found
    assert found[0].startswith("student stage 1: the image tower lost the teacher")
    assert found[1].startswith("student stage 1: the text tower lost the teacher in 'ar'")
    assert found[2].startswith("student ONNX fp32: zero-shot knowledge lost")
    assert "int8 agrees with fp32 on 90.0%" in found[3]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_reduced_pipeline_keeps_the_teachers_knowledge(tmp_path):
    seed = int(os.environ.get("DCCLIP_GATE_SEED", "0"))
    fault = os.environ.get("DCCLIP_GATE_FAULT", "none")
    assert fault in FAULTS, f"DCCLIP_GATE_FAULT={fault!r}: choose one of {', '.join(FAULTS)}"
    result = run_gate(tmp_path / "gate", seed, fault)
    print(json.dumps({k: result[k] for k in ("seed", "fault", "teacher", "students")}, indent=1))
    assert not result["failures"], f"quality gate (seed {seed}, {FAULTS[fault]}):\n" + "\n".join(result["failures"])
