"""`dcclip target ort`: .ort files that load and match their .onnx, an ops config covering both towers, a README whose
constants are the manifest's, and clear errors for a missing or altered bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers.serve_bundles import student_bundle

from dcclip.runtime.bundle import MANIFEST_FILE, BundleError, BundleIntegrityError

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # each test exports a bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The real test-student export, re-exported with fp32 and int8 (the bar at 0 so both towers ship int8)."""
    from dcclip.export.bundle import export_bundle

    root = tmp_path_factory.mktemp("ort")
    student_bundle(root)
    export_bundle(root / "run", root / "both", precision="both", exporter="torchscript", min_agreement=0.0)
    return root / "both"


@pytest.fixture(scope="module")
def target(bundle, tmp_path_factory) -> tuple[Path, dict]:
    """The ORT target of ``bundle`` built through the edge-target entry point, and its summary."""
    from dcclip.export.targets import build_target

    out = tmp_path_factory.mktemp("ort-out") / "ort"
    return out, build_target("ort", bundle, out)


def test_ort_files_load_and_take_the_bundle_io(target):
    out, summary = target
    assert set(summary["files"]) == {"fp32", "int8"}
    for roles in summary["files"].values():
        for role, name in roles.items():
            session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            assert names == (["pixel_values"] if role == "image" else ["input_ids", "attention_mask"])
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "manifest.json", "required_operators.config"}


def test_parity_is_measured_and_within_tolerance(target):
    out, summary = target
    recorded = json.loads((out / "parity.json").read_text("utf-8"))
    assert recorded["parity"] == summary["parity"]
    for precision, figures in summary["parity"].items():
        assert figures["shipped"] == {"image": precision, "text": precision}
        for role in ("image", "text"):
            assert figures[role]["min_cosine"] >= 0.999 and figures[role]["max_abs_diff"] < 1e-2
            assert figures[role]["vectors"] > 0
        assert set(figures["top1_agreement"]["per_lang"]) == {"en", "fr", "zh"}
        assert figures["top1_agreement"]["min"] >= 0.95


def test_ort_and_onnx_agree_on_a_fresh_input(bundle, target):
    out, _ = target
    pixels = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    onnx_out = ort.InferenceSession(str(bundle / "image.int8.onnx")).run(None, {"pixel_values": pixels})[0]
    ort_out = ort.InferenceSession(str(out / "image.int8.ort")).run(None, {"pixel_values": pixels})[0]
    np.testing.assert_allclose(ort_out, onnx_out, atol=1e-3)


def test_ops_config_lists_the_ops_of_every_model(target):
    from onnxruntime.tools.ort_format_model.ort_model_processor import OrtFormatModelProcessor

    from dcclip.export.targets.ort import read_ops_config

    out, summary = target
    config = read_ops_config(out / "required_operators.config")
    for roles in summary["files"].values():
        for name in roles.values():
            used: dict = {}
            OrtFormatModelProcessor(str(out / name), used, None).process()
            for domain, opsets in used.items():
                for opset, ops in opsets.items():
                    assert ops <= config[f"{domain};{opset}"], (name, domain, opset)
    assert "Conv" in config["ai.onnx;11"] and any("QLinear" in op for ops in config.values() for op in ops)


def test_readme_carries_the_manifest_constants(bundle, target):
    out, _ = target
    manifest = json.loads((bundle / MANIFEST_FILE).read_text("utf-8"))
    readme = (out / "README.md").read_text("utf-8")
    pre = manifest["image_preprocess"]
    assert f"const val IMAGE_SIZE = {pre['image_size']}" in readme
    assert f"let imageSize = {pre['image_size']}" in readme
    assert "val MEAN = floatArrayOf(" + ", ".join(f"{float(v)!r}f" for v in pre["mean"]) + ")" in readme
    assert "let std: [Float] = [" + ", ".join(f"{float(v)!r}" for v in pre["std"]) + "]" in readme
    assert f'RESIZE_MODE = "{pre["resize_mode"]}"  // interpolation: {pre["interpolation"]}' in readme
    assert f"const val TEXT_MAX_LENGTH = {manifest['text_max_length']}" in readme
    assert f"const val PAD_ID = {manifest['pad_id']}L" in readme
    assert "--minimal_build" in readme and "--include_ops_by_config" in readme


def test_tokenizer_vectors_match_the_runtime_tokenizer(bundle, target):
    from dcclip.runtime.tokenizer import TextTokenizer

    out, _ = target
    vectors = json.loads((out / "tokenizer_vectors.json").read_text("utf-8"))["texts"]
    tokenizer = TextTokenizer.from_path(bundle / "tokenizer.json")
    assert {v["lang"] for v in vectors} == {"en", "fr", "zh"}
    for vector in vectors:
        ids, _ = tokenizer.encode([vector["text"]], 16)
        assert ids[0].tolist() == vector["input_ids"]


def test_missing_bundle_is_a_clear_error(tmp_path):
    from dcclip.export.targets import build_target

    with pytest.raises(BundleError, match="not a dcclip bundle"):
        build_target("ort", tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_altered_bundle_is_refused(bundle, tmp_path):
    import shutil

    from dcclip.export.targets import build_target

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / "text.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleIntegrityError, match=r"text\.onnx"):
        build_target("ort", broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_to_replace_an_unrelated_directory(bundle, tmp_path):
    from dcclip.export.errors import ExportError
    from dcclip.export.targets import build_target

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a dcclip ORT target"):
        build_target("ort", bundle, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
