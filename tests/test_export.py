"""Export: ONNX towers with dynamic axes, int8 per tower, parity against torch, atomic bundles with a manifest."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from helpers.export import make_checkpoint, shared_bundle, write_eval_set
from helpers.images import scene

from dcclip.export import onnx as onnx_export
from dcclip.export.bundle import export_bundle
from dcclip.export.errors import ExportError
from dcclip.export.quantize import PLANS, ImageCalibrationReader, choose_method, count_ops, output_tail
from dcclip.export.validate import (
    FP32_MIN_COSINE,
    INT8_MIN_AGREEMENT,
    OnnxEncoder,
    TorchEncoder,
    prepare_inputs,
    validate_export,
)
from dcclip.models.students import load_student_checkpoint
from dcclip.runtime.bundle import sha256_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The shared tiny bundle, its checkpoint loaded, and the manifest."""
    bundle, checkpoint, shards = shared_bundle(tmp_path_factory.getbasetemp())
    manifest = json.loads((bundle / "manifest.json").read_text("utf-8"))
    return bundle, load_student_checkpoint(checkpoint), manifest, shards


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --------------------------------------------------------------------------------------------------------------------
# The bundle of the tiny student
# --------------------------------------------------------------------------------------------------------------------


def test_manifest_describes_the_bundle(tiny):
    bundle, loaded, manifest, _ = tiny
    assert manifest["format"] == "dcclip-bundle" and manifest["format_version"] == 3
    assert manifest["precisions"] == ["fp32", "int8"]
    assert manifest["embed_dim"] == 32
    assert manifest["logit_scale"] == pytest.approx(min(math.exp(loaded.model.logit_scale.item()), 100.0), rel=1e-6)
    assert manifest["image_preprocess"] == loaded.preprocess.to_dict()
    assert manifest["text_max_length"] == 16 and manifest["pad_id"] == loaded.tokenizer.pad_id
    assert manifest["languages"] == loaded.langs
    assert manifest["source"]["step"] == 1 and manifest["source"]["student"] == "test-student"
    assert set(manifest["files"]) == {
        "image.onnx", "text.onnx", "image.int8.onnx", "text.int8.onnx", "tokenizer.json", "MODEL_CARD.md"
    }  # fmt: skip
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(bundle / name) and entry["bytes"] == (bundle / name).stat().st_size
    assert manifest["files"]["image.int8.onnx"] == {**manifest["files"]["image.int8.onnx"], "role": "image"}
    assert {p.name for p in bundle.iterdir()} == {*manifest["files"], "manifest.json"}, "no side .onnx.data files"
    assert manifest["exporter"]["image"]["exporter"] == "dynamo" and manifest["exporter"]["text"]["opset"] >= 17
    assert manifest["quantization"]["image"]["method"] == "static_qdq"
    assert manifest["quantization"]["image"]["calibration"] == {"method": "MinMax", "images": 40, "source": "shards"}
    assert manifest["quantization"]["text"]["method"] == "dynamic"


def test_parity_figures_recorded(tiny):
    _, _, manifest, _ = tiny
    fp32, int8 = manifest["parity"]["fp32"], manifest["parity"]["int8"]
    assert fp32["min_cosine"] >= FP32_MIN_COSINE and fp32["max_abs_diff"] < 1e-4
    assert fp32["top1_agreement"] == 1.0 and fp32["flagged"] is False and fp32["reference"] == "torch"
    assert fp32["image"]["n"] == 32 and fp32["text"]["languages"] == sorted(["en", "zh", "fr", "ar", "hi"])
    for key in ("max_abs_diff", "mean_cosine", "min_cosine", "top1_agreement"):
        assert isinstance(int8[key], float)
    assert 0.9 < int8["min_cosine"] < 1.0, "int8 really is quantised, and not broken"
    assert int8["flagged"] is (int8["top1_agreement"] < int8["thresholds"]["min_top1_agreement"])
    towers = int8["towers"]
    for role in ("image", "text"):
        assert 0.0 <= towers[role]["top1_agreement"] <= 1.0 and towers[role]["shipped"] == "int8"
        assert manifest["quantization"][role]["top1_agreement"] == towers[role]["top1_agreement"]
        assert manifest["files"][f"{role}.int8.onnx"]["shipped_precision"] == "int8"
    assert towers["source"] == "captions" and towers["reference"] == int8["reference"] == "fp32 onnx"
    assert int8["top1_agreement"] == towers["shipped_top1_agreement"], "the gate and the record are one measurement"


def test_onnx_matches_torch_at_several_batches_and_lengths(tiny):
    bundle, loaded, _, _ = tiny
    reference = TorchEncoder(loaded.model)
    image = _session(bundle / "image.onnx")
    for batch in (1, 5):
        pixels = loaded.preprocess.batch([scene(i) for i in range(batch)]).astype(np.float32)
        out = image.run(None, {"pixel_values": pixels})[0]
        assert out.shape == (batch, 32)
        assert _cosines(out, reference.image(pixels)).min() >= FP32_MIN_COSINE
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5), "normalised inside the graph"
    text = _session(bundle / "text.onnx")
    rng = np.random.default_rng(0)
    for batch, length in ((1, 3), (5, 9), (2, 16)):
        ids = rng.integers(4, loaded.tokenizer.vocab_size, size=(batch, length))
        mask = np.ones_like(ids)
        mask[0, length // 2 :] = 0
        out = text.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        assert out.shape == (batch, 32)
        assert _cosines(out, reference.text(ids, mask)).min() >= FP32_MIN_COSINE


def test_int8_graphs_keep_dynamic_axes(tiny):
    bundle, loaded, _, _ = tiny
    image, text = _session(bundle / "image.int8.onnx"), _session(bundle / "text.int8.onnx")
    for batch in (1, 5):
        pixels = loaded.preprocess.batch([scene(i) for i in range(batch)]).astype(np.float32)
        assert image.run(None, {"pixel_values": pixels})[0].shape == (batch, 32)
        ids, mask = loaded.tokenizer.encode(["a red circle"] * batch, 16)
        assert text.run(None, {"input_ids": ids, "attention_mask": mask})[0].shape == (batch, 32)


def test_exported_graphs_declare_named_dynamic_axes(tiny):
    bundle, _, _, _ = tiny
    image = onnx_export.graph_io_shapes(onnx.load(str(bundle / "image.onnx")))
    text = onnx_export.graph_io_shapes(onnx.load(str(bundle / "text.onnx")))
    assert image["pixel_values"][1:] == [3, 32, 32] and isinstance(image["pixel_values"][0], str)
    assert isinstance(image["image_embeds"][0], str)
    assert all(isinstance(dim, str) for dim in text["input_ids"] + text["attention_mask"])
    onnx.checker.check_model(str(bundle / "image.onnx"), full_check=True)
    opsets = {op.domain: op.version for op in onnx.load(str(bundle / "text.onnx")).opset_import}
    assert opsets.get("", opsets.get("ai.onnx", 0)) >= 17


def test_quantised_image_tower_is_static_qdq_per_channel(tiny):
    bundle, _, _, _ = tiny
    model = onnx.load(str(bundle / "image.int8.onnx"))
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    assert "DynamicQuantizeLinear" not in ops
    inits = {init.name: init for init in model.graph.initializer}
    per_channel = [
        node
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[1]].dims not in ([], [1])
    ]
    assert per_channel, "conv weights carry one scale per output channel"
    text_ops = count_ops(bundle / "text.int8.onnx")
    assert text_ops["MatMulInteger"] > 0 or text_ops["DynamicQuantizeMatMul"] > 0


def test_zero_shot_agreement_on_an_eval_set(tiny, tmp_path):
    bundle, loaded, _, _ = tiny
    eval_set = write_eval_set(tmp_path / "eval")
    inputs = prepare_inputs(loaded.preprocess, [scene(i) for i in range(4)], None, eval_set, loaded.langs)
    encoder = OnnxEncoder(bundle / "image.onnx", bundle / "text.onnx")
    report = validate_export(TorchEncoder(loaded.model), encoder, inputs, loaded.tokenizer, 16, "fp32")
    zero_shot = report["zero_shot"]
    assert zero_shot["source"] == "eval_set" and zero_shot["images"] == 12 and zero_shot["classes"] == 3
    assert set(zero_shot["per_language"]) == {"en", "fr", "zh"} and zero_shot["top1_agreement"] == 1.0
    assert zero_shot["top1_accuracy_torch"] == zero_shot["top1_accuracy_onnx"]
    assert inputs.caption_source == "eval_set", "without shards, parity captions come from the eval set"
    assert report["text"]["languages"] == ["en", "fr", "zh"]
    assert inputs.captions[:3] == ["a red image", "a green image", "a blue image"]


def test_parity_captions_come_from_shards_else_eval_sets_else_built_in(tiny, tmp_path):
    _, loaded, _, shards = tiny
    from dcclip.export.validate import BUILT_IN_CAPTIONS, shard_captions

    given = shard_captions(shards, limit=10)
    inputs = prepare_inputs(loaded.preprocess, [scene(0)], given, write_eval_set(tmp_path / "eval"), loaded.langs)
    assert inputs.caption_source == "given" and inputs.captions == [text for _, text in given]
    built_in = prepare_inputs(loaded.preprocess, [scene(0)])
    assert built_in.caption_source == "built-in" and len(built_in.caption_langs) == 10
    assert built_in.captions == [text for texts in BUILT_IN_CAPTIONS.values() for text in texts]


# --------------------------------------------------------------------------------------------------------------------
# Validation verdicts
# --------------------------------------------------------------------------------------------------------------------


class _Noisy:
    """An encoder that adds noise to another's image embeddings (a broken export)."""

    def __init__(self, inner: TorchEncoder, scale: float, norm: float = 1.0) -> None:
        self.inner, self.scale, self.norm = inner, scale, norm

    def image(self, pixels: np.ndarray) -> np.ndarray:
        out = self.inner.image(pixels)
        noise = np.random.default_rng(len(pixels)).normal(size=out.shape).astype(np.float32)
        noisy = out + self.scale * noise
        return noisy / np.linalg.norm(noisy, axis=1, keepdims=True) * self.norm

    def text(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.inner.text(ids, mask)


def test_fp32_below_the_cosine_bar_fails_with_figures(tiny):
    _, loaded, _, _ = tiny
    reference = TorchEncoder(loaded.model)
    inputs = prepare_inputs(loaded.preprocess, [scene(i) for i in range(8)])
    with pytest.raises(ExportError, match=r"min cosine 0\.\d+ < 0\.9999 \(image min") as caught:
        validate_export(reference, _Noisy(reference, 0.05), inputs, loaded.tokenizer, 16, "fp32")
    assert caught.value.report["image"]["min_cosine"] < FP32_MIN_COSINE
    report = validate_export(reference, _Noisy(reference, 0.0), inputs, loaded.tokenizer, 16, "fp32")
    assert report["min_cosine"] >= FP32_MIN_COSINE


def test_outputs_that_are_not_unit_vectors_fail(tiny):
    _, loaded, _, _ = tiny
    reference = TorchEncoder(loaded.model)
    inputs = prepare_inputs(loaded.preprocess, [scene(i) for i in range(4)])
    with pytest.raises(ExportError, match="not unit vectors"):
        validate_export(reference, _Noisy(reference, 0.0, norm=2.0), inputs, loaded.tokenizer, 16, "int8")


def test_int8_with_low_agreement_is_flagged_not_failed(tiny):
    _, loaded, _, _ = tiny
    reference = TorchEncoder(loaded.model)
    inputs = prepare_inputs(loaded.preprocess, [scene(i) for i in range(16)])
    report = validate_export(reference, _Noisy(reference, 1.0), inputs, loaded.tokenizer, 16, "int8")
    assert report["flagged"] is True and report["top1_agreement"] < 0.98


# --------------------------------------------------------------------------------------------------------------------
# ONNX export details
# --------------------------------------------------------------------------------------------------------------------


def test_trace_with_batch_one_is_refused(tiny, tmp_path):
    _, loaded, _, _ = tiny
    with pytest.raises(ValueError, match="batch >= 2"):
        onnx_export.export_image_tower(loaded.model.image, tmp_path / "x.onnx", 32, batch=1)


def test_fixed_axes_are_detected():
    shapes = {"pixel_values": [1, 3, 32, 32], "image_embeds": ["batch", 32]}
    dynamic = {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}
    assert onnx_export.dynamic_axes_ok(shapes, dynamic) == ["pixel_values[0]=1"]
    assert onnx_export.dynamic_axes_ok({**shapes, "pixel_values": ["b", 3, 32, 32]}, dynamic) == []


def test_torchscript_fallback_when_dynamo_fails(tiny, tmp_path, monkeypatch):
    _, loaded, _, _ = tiny
    original = onnx_export._run_exporter

    def dynamo_breaks(name, *args, **kwargs):
        if name == "dynamo":
            raise RuntimeError("simulated dynamo failure")
        return original(name, *args, **kwargs)

    monkeypatch.setattr(onnx_export, "_run_exporter", dynamo_breaks)
    ids, mask = loaded.tokenizer.encode(["a red circle", "un cercle rouge"], 16)
    ids, mask = ids[:, :7], mask[:, :7]
    record = onnx_export.export_text_tower(loaded.model.text, tmp_path / "text.onnx", ids, mask)
    assert record.exporter == "torchscript" and "simulated dynamo failure" in record.fallback_reason
    shapes = onnx_export.graph_io_shapes(onnx.load(str(tmp_path / "text.onnx")))
    assert all(isinstance(dim, str) for dim in shapes["input_ids"])
    ids2, mask2 = loaded.tokenizer.encode(["un", "a red circle on blue", "x"], 16)
    out = _session(tmp_path / "text.onnx").run(None, {"input_ids": ids2, "attention_mask": mask2})[0]
    with torch.no_grad():
        ref = F.normalize(loaded.model.text(torch.from_numpy(ids2), torch.from_numpy(mask2)), dim=-1).numpy()
    assert _cosines(out, ref).min() >= FP32_MIN_COSINE


def test_all_exporters_failing_raises_export_error(tiny, tmp_path, monkeypatch):
    _, loaded, _, _ = tiny

    def broken(name, *args, **kwargs):
        raise RuntimeError(f"{name} is broken")

    monkeypatch.setattr(onnx_export, "_run_exporter", broken)
    with pytest.raises(ExportError, match=r"dynamo: RuntimeError: dynamo is broken.*torchscript"):
        onnx_export.export_image_tower(loaded.model.image, tmp_path / "x.onnx", 32)
    assert not (tmp_path / "x.onnx").exists()


def test_static_int8_keeps_projection_and_normalisation_in_float(tiny):
    bundle, _, manifest, _ = tiny
    tail = set(output_tail(onnx.load(str(bundle / "image.onnx"))))
    assert manifest["quantization"]["image"]["float_nodes"] == len(tail) >= 3
    model = onnx.load(str(bundle / "image.int8.onnx"))
    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {init.name for init in model.graph.initializer}
    gemm = next(node for node in model.graph.node if node.op_type in ("Gemm", "MatMul"))
    assert gemm.input[1] in inits, "projection weight stays a float initializer (no DequantizeLinear)"
    # a small embedding on a uint8 grid calibrated for larger ones rounds to zero; normalising zero gives zero
    downstream = [node for node in model.graph.node if gemm.output[0] in node.input]
    assert all(node.op_type != "QuantizeLinear" for node in downstream)
    assert all(producer[name].op_type != "DequantizeLinear" for name in gemm.input if name in producer)


def test_calibration_reader_feeds_batches_and_rewinds():
    pixels = np.zeros((5, 3, 8, 8), np.float32)
    reader = ImageCalibrationReader(pixels, batch_size=2)
    sizes = [len(batch["pixel_values"]) for batch in iter(reader.get_next, None)]
    assert sizes == [2, 2, 1] and reader.get_next() is None
    reader.rewind()
    assert len(reader.get_next()["pixel_values"]) == 2
    with pytest.raises(ValueError, match="non-empty"):
        ImageCalibrationReader(np.zeros((0, 3, 8, 8), np.float32))


def test_quantisation_method_follows_the_graph(tiny):
    bundle, _, _, _ = tiny
    assert choose_method(bundle / "image.onnx") == "static_qdq"
    assert choose_method(bundle / "text.onnx") == "dynamic"


# --------------------------------------------------------------------------------------------------------------------
# Bundle writing
# --------------------------------------------------------------------------------------------------------------------


def test_failed_export_leaves_nothing_behind(tiny, tmp_path, monkeypatch):
    import dcclip.export.bundle as bundle_module

    _, loaded, _, _ = tiny

    def fail(*args, **kwargs):
        raise ExportError("simulated parity failure")

    monkeypatch.setattr(bundle_module, "_export_fp32", fail)
    with pytest.raises(ExportError, match="simulated"):
        export_bundle(loaded.path, tmp_path / "out", "fp32", None, None)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_to_overwrite_a_foreign_directory(tiny, tmp_path):
    _, loaded, _, _ = tiny
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a dcclip bundle"):
        export_bundle(loaded.path, tmp_path / "out", "fp32", None, None)
    with pytest.raises(ValueError, match="precision"):
        export_bundle(loaded.path, tmp_path / "other", "fp16", None, None)


def test_publish_replaces_a_previous_bundle(tmp_path):
    from dcclip.export.bundle import _check_replaceable
    from dcclip.io import replace_dir

    out, staging = tmp_path / "bundle", tmp_path / ".staging"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "dcclip-bundle"}))
    (out / "old.onnx").write_text("old")
    staging.mkdir()
    (staging / "manifest.json").write_text("{}")
    _check_replaceable(out)
    replace_dir(staging, out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.slow
def test_demo_student_fp32_and_int8_static_qdq(tmp_path, monkeypatch):
    checkpoint = make_checkpoint(tmp_path, "demo-student")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    bundle = tmp_path / "bundle"
    manifest = export_bundle(checkpoint, bundle, "both", None, None)
    assert list(workdir.iterdir()) == [], "export leaves nothing in the working directory"
    assert manifest["parity"]["fp32"]["min_cosine"] >= FP32_MIN_COSINE
    quant = manifest["quantization"]
    image = quant["image"]
    assert image["method"] == "static_qdq" and image["per_channel"] is True and image["conv_nodes"] >= 4
    assert quant["text"]["method"] == "dynamic"
    bar = INT8_MIN_AGREEMENT
    for role in ("image", "text"):  # plans are tried in order until one clears the bar, and that one is kept
        tried = quant[role]["plans_tried"]
        assert [t["plan"] for t in tried] == list(PLANS[quant[role]["method"]][: len(tried)])
        assert all(t["top1_agreement"] < bar for t in tried[:-1]) and quant[role]["plan"] == tried[-1]["plan"]
    assert (image["calibration"] is None) == (image["plan"] == "weights_int8")  # weights alone need no data
    if image["calibration"] is not None:
        assert image["calibration"]["source"] == "synthetic"
    int8 = manifest["parity"]["int8"]
    assert int8["min_cosine"] > 0.9 and isinstance(int8["flagged"], bool)
    pair_agrees = int8["towers"]["combined_int8"]["top1_agreement"] >= bar
    for role in ("image", "text"):  # a tower ships int8 exactly when it and the pair clear the bar; fp32 says why
        shipped, reason = quant[role]["shipped"], quant[role]["reason"]
        agrees = quant[role]["top1_agreement"] >= bar
        if not agrees:
            assert shipped == "fp32" and f"int8 {role} tower agreed" in reason
        if agrees and pair_agrees:
            assert shipped == "int8" and reason is None
        assert (shipped == "fp32") == (reason is not None)
        assert manifest["files"][f"{role}.int8.onnx"]["shipped_precision"] == shipped
        same_bytes = sha256_file(bundle / f"{role}.int8.onnx") == sha256_file(bundle / f"{role}.onnx")
        assert same_bytes == (shipped == "fp32"), "an fp32 fallback is a copy of the fp32 tower, int8 is not"
    assert any(quant[role]["shipped"] == "int8" for role in ("image", "text")), (
        "this checkpoint's text tower clears the bar (dynamic int8 keeps its decisions): not every tower ships fp32"
    )
    assert manifest["validation_inputs"] == {"images": "synthetic", "captions": "built-in"}
    print("demo-student parity:", json.dumps({k: v["min_cosine"] for k, v in manifest["parity"].items()}))


@pytest.mark.slow
def test_exporter_choice_is_honoured(tiny, tmp_path, monkeypatch):
    import dcclip.export.bundle as bundle_module

    _, loaded, _, shards = tiny
    manifest = export_bundle(loaded.path, tmp_path / "ts", "fp32", str(shards), None, exporter="torchscript")
    assert {record["exporter"] for record in manifest["exporter"].values()} == {"torchscript"}
    assert manifest["parity"]["fp32"]["min_cosine"] >= 0.9999  # checked against torch like any other graph

    real = bundle_module._fp32_parity

    def always_drifts(records, *args):
        report = real(records, *args)
        report["image"]["min_cosine"] = 0.5
        raise ExportError("simulated parity failure", report)

    monkeypatch.setattr(bundle_module, "_fp32_parity", always_drifts)
    with pytest.raises(ExportError, match="simulated parity failure"):  # dynamo only: no TorchScript retry
        export_bundle(loaded.path, tmp_path / "dyn", "fp32", str(shards), None, exporter="dynamo")
    assert not (tmp_path / "dyn").exists()
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_bundle(loaded.path, tmp_path / "bad", "fp32", str(shards), None, exporter="onnxscript")


@pytest.mark.slow
def test_int8_only_bundle_and_torchscript_retry_after_failed_parity(tiny, tmp_path, monkeypatch):
    import dcclip.export.bundle as bundle_module

    _, loaded, _, shards = tiny
    real, calls = bundle_module._fp32_parity, []

    def dynamo_image_fails_parity(records, *args):
        calls.append({role: record.exporter for role, record in records.items()})
        report = real(records, *args)
        if len(calls) == 1:  # pretend the dynamo image graph drifted from torch
            report["image"]["min_cosine"] = 0.5
            raise ExportError("simulated parity failure", report)
        return report

    monkeypatch.setattr(bundle_module, "_fp32_parity", dynamo_image_fails_parity)
    manifest = export_bundle(loaded.path, tmp_path / "b", "int8", str(shards), None)
    assert calls == [{"image": "dynamo", "text": "dynamo"}, {"image": "torchscript", "text": "dynamo"}]
    assert manifest["exporter"]["image"]["exporter"] == "torchscript"
    assert "simulated parity failure" in manifest["exporter"]["image"]["fallback_reason"]
    assert manifest["exporter"]["image"]["file"] is None, "fp32 files are not part of an int8 bundle"
    assert manifest["precisions"] == ["int8"] and list(manifest["parity"]) == ["int8"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "MODEL_CARD.md",
        "image.int8.onnx",
        "manifest.json",
        "text.int8.onnx",
        "tokenizer.json",
    ]
