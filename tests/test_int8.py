"""int8 that can be trusted: agreement with fp32 measured per tower, and a tower below the bar ships fp32."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.export import shared_bundle, write_eval_set
from helpers.images import scene

import dcclip.export.bundle as bundle_module
from dcclip.export.bundle import export_bundle, fallback_reasons
from dcclip.export.quantize import TowerQuantizer, calibration_images, count_ops, float_nodes, output_tail
from dcclip.export.validate import AgreementProbe, OnnxEncoder, prepare_inputs, tower_agreement
from dcclip.models.students import load_student_checkpoint
from dcclip.runtime.bundle import (
    IMAGE_INPUT,
    load_bundle_model,
    seal_manifest,
    sha256_file,
    shipped_precision,
    verify_bundle,
)
from dcclip.runtime.classifier import ZeroShotClassifier
from dcclip.runtime.errors import BundleError
from dcclip.runtime.preprocess import decode_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The shared tiny bundle (int8 kept whatever its agreement), its loaded checkpoint and shards."""
    bundle, checkpoint, shards = shared_bundle(tmp_path_factory.getbasetemp())
    return bundle, load_student_checkpoint(checkpoint), shards


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> Path:
    return write_eval_set(tmp_path_factory.mktemp("int8-eval") / "eval")


@pytest.fixture(scope="module")
def small_eval_set(tmp_path_factory) -> Path:
    return write_eval_set(tmp_path_factory.mktemp("int8-eval-small") / "eval", n=6)


def _figures(image: float, text: float, combined: float) -> dict:
    """A tower_agreement result with the given shares of 1000 decisions on one eval set."""
    share = {"image": image, "text": text, "combined": combined}
    figures = {}
    for mix, value in share.items():
        figure = {"top1_agreement": value, "decisions": 1000, "disagreements": round(1000 * (1 - value))}
        figures[mix] = {**figure, "worst_set": "shapes", "per_set": {"shapes": figure}}
    return figures


# --------------------------------------------------------------------------------------------------------------------
# Agreement per tower
# --------------------------------------------------------------------------------------------------------------------


class _NoisyTower:
    """fp32 graphs with one tower's embeddings pushed around (an int8 tower that changes decisions)."""

    def __init__(self, inner: OnnxEncoder, role: str, scale: float = 1.0) -> None:
        self.inner, self.role, self.scale = inner, role, scale

    def _noisy(self, out: np.ndarray) -> np.ndarray:
        noisy = out + self.scale * np.random.default_rng(len(out)).normal(size=out.shape).astype(np.float32)
        return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)

    def image(self, pixels: np.ndarray) -> np.ndarray:
        out = self.inner.image(pixels)
        return self._noisy(out) if self.role == "image" else out

    def text(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = self.inner.text(ids, mask)
        return self._noisy(out) if self.role == "text" else out


@pytest.mark.parametrize("role", ["image", "text"])
def test_agreement_is_measured_per_tower(tiny, eval_set, small_eval_set, role):
    bundle, loaded, _ = tiny
    fp32 = OnnxEncoder(bundle / "image.onnx", bundle / "text.onnx")
    sets = [eval_set, small_eval_set]
    inputs = prepare_inputs(loaded.preprocess, [scene(i) for i in range(8)], None, sets, loaded.langs)
    result = tower_agreement(fp32, _NoisyTower(fp32, role), inputs, loaded.tokenizer, 16)
    other = "text" if role == "image" else "image"
    assert result["source"] == "eval_set" and result["reference"] == "fp32 onnx"
    assert result[other]["top1_agreement"] == 1.0 and result[other]["disagreements"] == 0, "untouched tower agrees"
    assert result[role]["top1_agreement"] < 0.9 and result[role]["disagreements"] > 0
    assert result["combined"]["top1_agreement"] == result[role]["top1_agreement"]
    per_set = result[role]["per_set"]
    assert list(per_set) == [str(path) for path in sets]
    assert [figure["decisions"] for figure in per_set.values()] == [12 * 3, 6 * 3], "images x 3 languages"
    worst = min(per_set, key=lambda name: per_set[name]["top1_agreement"])
    assert result[role]["worst_set"] == worst and result[role] == {
        **per_set[worst],
        "worst_set": worst,
        "per_set": per_set,
    }


def test_agreement_without_an_eval_set_matches_captions_both_ways(tiny):
    bundle, loaded, _ = tiny
    fp32 = OnnxEncoder(bundle / "image.onnx", bundle / "text.onnx")
    inputs = prepare_inputs(loaded.preprocess, [scene(i) for i in range(8)])
    same = tower_agreement(fp32, fp32, inputs, loaded.tokenizer, 16)
    assert same["source"] == "captions"
    assert all(same[mix]["top1_agreement"] == 1.0 for mix in ("image", "text", "combined"))
    assert same["image"]["decisions"] == 8 + len(inputs.captions), "best caption per image, best image per caption"
    assert list(same["image"]["per_set"]) == ["captions"]
    noisy = tower_agreement(fp32, _NoisyTower(fp32, "image"), inputs, loaded.tokenizer, 16)
    assert noisy["text"]["top1_agreement"] == 1.0 and noisy["image"]["top1_agreement"] < 1.0


def test_fallback_is_decided_per_tower_then_for_the_pair():
    assert fallback_reasons(_figures(0.99, 0.98, 0.975), 0.97) == {}
    only_text = fallback_reasons(_figures(0.99, 0.90, 0.89), 0.97)
    assert list(only_text) == ["text"] and "90.0%" in only_text["text"] and "100 of 1000" in only_text["text"]
    pair = fallback_reasons(_figures(0.975, 0.98, 0.95), 0.97)
    assert list(pair) == ["image"] and "both towers in int8 agreed with fp32 on 95.0%" in pair["image"]
    assert set(fallback_reasons(_figures(1.0, 1.0, 1.0), 1.01)) == {"image", "text"}


def test_min_agreement_must_be_a_share(tiny, tmp_path):
    _, loaded, _ = tiny
    for bad in (-0.1, float("nan"), "0.97", True):
        with pytest.raises(ValueError, match="min_agreement"):
            export_bundle(loaded.path, tmp_path / "b", "both", None, None, min_agreement=bad)


# --------------------------------------------------------------------------------------------------------------------
# A tower below the bar ships fp32
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_towers_below_the_bar_ship_fp32_and_say_so(tiny, eval_set, tmp_path, monkeypatch, capsys, caplog):
    from dcclip.cli import main

    _, loaded, shards = tiny
    monkeypatch.setattr(bundle_module, "INT8_MIN_AGREEMENT", 1.01)  # nothing can reach it: both towers fall back
    out = tmp_path / "bundle"
    argv = ["export", "--checkpoint", str(loaded.path), "--out", str(out), "--calib-shards", str(shards)]
    assert main([*argv, "--eval-set", str(eval_set)]) == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = verify_bundle(out)
    assert manifest["format_version"] == 3
    for role in ("image", "text"):
        decision = manifest["quantization"][role]
        assert decision["requested"] == "int8" and decision["shipped"] == "fp32"
        assert decision["min_top1_agreement"] == 1.01 and "below the 101.0% bar" in decision["reason"]
        entry, fp32_entry = manifest["files"][f"{role}.int8.onnx"], manifest["files"][f"{role}.onnx"]
        assert entry["precision"] == "int8" and entry["shipped_precision"] == "fp32"
        assert entry["sha256"] == fp32_entry["sha256"] == sha256_file(out / f"{role}.int8.onnx")
        assert shipped_precision(manifest, role, "int8") == "fp32"
        assert shipped_precision(manifest, role, "fp32") == "fp32"
        towers = printed["parity"]["int8"]["towers"]
        assert towers[role]["shipped"] == "fp32" and towers[role]["reason"] == decision["reason"]
        assert f"{role} tower ships fp32 in the int8 bundle" in caplog.text
    assert printed["parity"]["int8"]["towers"]["shipped_top1_agreement"] == 1.0
    assert manifest["parity"]["int8"]["top1_agreement"] == 1.0, "the int8 bundle now computes in fp32"
    model = load_bundle_model(out, "int8")
    assert model.tower_precisions == {"image": "fp32", "text": "fp32"}
    images, labels = [scene(i) for i in range(3)], ["red", "green", "blue"]
    int8 = ZeroShotClassifier.from_bundle(out, precision="int8", threads=1).classify(images, labels, top_k=3)
    fp32 = ZeroShotClassifier.from_bundle(out, threads=1).classify(images, labels, top_k=3)
    assert [[label for label, _ in row] for row in int8] == [[label for label, _ in row] for row in fp32]


@pytest.mark.slow
def test_one_tower_below_the_bar_ships_fp32_the_other_int8(tiny, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="dcclip")
    _, loaded, shards = tiny
    real = AgreementProbe.score

    def text_disagrees(self, images=None, texts=None):
        result = real(self, images, texts)
        if texts is not None and images is None:  # the text tower on its own: pretend it changed half the decisions
            return result | {"top1_agreement": 0.5, "disagreements": result["decisions"] // 2}
        if images is not None and texts is None:  # the image tower on its own: pretend it changed none
            return result | {"top1_agreement": 1.0, "disagreements": 0}
        return result

    monkeypatch.setattr(AgreementProbe, "score", text_disagrees)
    manifest = export_bundle(loaded.path, tmp_path / "b", "int8", str(shards), None, min_agreement=0.97)
    quant = manifest["quantization"]
    assert quant["image"]["shipped"] == "int8" and quant["image"]["reason"] is None
    assert quant["text"]["shipped"] == "fp32" and "agreed with fp32 on 50.0%" in quant["text"]["reason"]
    assert manifest["parity"]["int8"]["towers"]["shipped_top1_agreement"] == 1.0
    assert "text tower ships fp32" in caplog.text and "image tower int8 (static_qdq, plan all_int8)" in caplog.text
    assert quant["image"]["plans_tried"] == [{"plan": "all_int8", "top1_agreement": 1.0}]
    assert [item["plan"] for item in quant["text"]["plans_tried"]] == ["all_int8"], "one plan for a dynamic tower"
    bundle = tmp_path / "b"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "MODEL_CARD.md",
        "image.int8.onnx",
        "manifest.json",
        "text.int8.onnx",
        "tokenizer.json",
    ], "an int8-only bundle carries the fp32 text graph under the int8 name"
    assert count_ops(bundle / "image.int8.onnx")["QuantizeLinear"] > 0
    assert not {"MatMulInteger", "DynamicQuantizeLinear"} & set(count_ops(bundle / "text.int8.onnx"))
    model = load_bundle_model(bundle, "int8")
    assert model.tower_precisions == {"image": "int8", "text": "fp32"} and "text fp32" in repr(model)
    assert model.embed_texts(["a red circle"]).shape == (1, 32)


# --------------------------------------------------------------------------------------------------------------------
# Reading manifests of both versions
# --------------------------------------------------------------------------------------------------------------------


def _rewrite_manifest(bundle: Path, edit) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text("utf-8"))
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(seal_manifest(manifest)), "utf-8")


def test_version_1_bundles_still_load(tiny, tmp_path):
    bundle = Path(shutil.copytree(tiny[0], tmp_path / "v1"))

    def as_version_1(manifest: dict) -> None:
        manifest["format_version"] = 1
        for entry in manifest["files"].values():
            entry.pop("shipped_precision", None)

    _rewrite_manifest(bundle, as_version_1)
    model = load_bundle_model(bundle, "int8")
    assert model.tower_precisions == {"image": "int8", "text": "int8"}
    assert model.embed_images([scene(0)]).shape == (1, 32)


def test_unknown_shipped_precision_is_refused(tiny, tmp_path):
    bundle = Path(shutil.copytree(tiny[0], tmp_path / "odd"))
    _rewrite_manifest(bundle, lambda manifest: manifest["files"]["text.int8.onnx"].update(shipped_precision="fp8"))
    with pytest.raises(BundleError, match="shipped_precision 'fp8'"):
        load_bundle_model(bundle, "int8")


# --------------------------------------------------------------------------------------------------------------------
# Quantisation settings
# --------------------------------------------------------------------------------------------------------------------


def test_dynamic_int8_keeps_the_projection_in_float(tiny):
    bundle, _, _ = tiny
    projection = output_tail(onnx.load(str(bundle / "text.onnx")))[0]
    nodes = {node.name: node.op_type for node in onnx.load(str(bundle / "text.int8.onnx")).graph.node}
    assert nodes.get(f"{projection}_MatMul") == "MatMul", "onnxruntime renames the Gemm; it must still stay float"
    assert not any(name.startswith(projection) and op == "MatMulInteger" for name, op in nodes.items())
    assert count_ops(bundle / "text.int8.onnx")["MatMulInteger"] > 0, "the encoder layers are int8"


def test_plans_keep_the_tail_and_then_the_first_quarter_in_float(tiny, tmp_path):
    bundle, loaded, shards = tiny
    pixels = loaded.preprocess.batch(calibration_images(shards, 8)).astype(np.float32)
    quantizer = TowerQuantizer(bundle / "image.onnx", tmp_path, pixels)
    assert quantizer.plans == ("all_int8", "early_fp32", "weights_int8")
    tail = output_tail(quantizer.model)
    assert float_nodes(quantizer.model, "all_int8") == tail
    early = float_nodes(quantizer.model, "early_fp32")
    convs = [node.name for node in quantizer.model.graph.node if node.op_type == "Conv"]
    assert set(tail) < set(early) and convs[0] in early and convs[-1] not in early
    assert sum(name in early for name in convs) == math.ceil(len(convs) / 4)
    info = quantizer.quantize(tmp_path / "early.int8.onnx", "early_fp32")
    assert info["plan"] == "early_fp32" and info["float_nodes"] == len(early)
    graph = onnx.load(str(tmp_path / "early.int8.onnx")).graph
    first_conv = next(node for node in graph.node if node.op_type == "Conv")
    assert first_conv.input[1] in {init.name for init in graph.initializer}, "the stem's weights stay float"
    with pytest.raises(ValueError, match="plan must be one of"):
        quantizer.quantize(tmp_path / "x.onnx", "everything_fp32")
    assert TowerQuantizer(bundle / "text.onnx", tmp_path / "text").plans == ("all_int8",)


def test_weight_only_int8_stores_int8_convolution_weights_and_keeps_activations_float(tiny, tmp_path):
    import onnxruntime as ort

    bundle, loaded, shards = tiny
    pixels = loaded.preprocess.batch(calibration_images(shards, 8)).astype(np.float32)
    quantizer = TowerQuantizer(bundle / "image.onnx", tmp_path, pixels)
    out = tmp_path / "weights.int8.onnx"
    info = quantizer.quantize(out, "weights_int8")
    assert info["plan"] == "weights_int8" and info["format"] == "weight-only" and info["activations"] == "float"
    graph = onnx.load(str(out)).graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    tail = set(output_tail(quantizer.model))
    convs = [node for node in graph.node if node.op_type == "Conv" and node.name not in tail]
    assert len(convs) == info["convs"] > 0
    for conv in convs:
        scale = producers[conv.input[1]]
        assert scale.op_type == "Mul" and producers[scale.input[0]].op_type == "Cast", conv.name
        codes = initializers[producers[scale.input[0]].input[0]]
        assert codes.data_type == onnx.TensorProto.INT8, f"{conv.name}: weights stored as int8"
    float_weights = {node.input[1] for node in quantizer.model.graph.node if node.op_type == "Conv"}
    assert not float_weights & set(initializers), "the float copies of the weights are gone"
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(count_ops(out)), "activations are not quantised"
    assert out.stat().st_size < 0.5 * (bundle / "image.onnx").stat().st_size
    fp32, int8 = (
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {IMAGE_INPUT: pixels})[0]
        for path in (bundle / "image.onnx", out)
    )
    assert np.min(np.sum(fp32 * int8, axis=1)) > 0.999, "8-bit weights alone barely move the embedding"


@pytest.mark.slow
def test_a_conv_tower_tries_weight_only_int8_when_both_static_plans_miss_the_bar(tiny, tmp_path, monkeypatch):
    _, loaded, shards = tiny
    real, plans = AgreementProbe.score, []
    real_quantize = TowerQuantizer.quantize

    def record(self, out_path, plan="all_int8"):
        plans.append(plan)
        return real_quantize(self, out_path, plan)

    def static_plans_disagree(self, images=None, texts=None):
        result = real(self, images, texts)
        if images is not None and texts is None and plans[-1] != "weights_int8":
            return result | {"top1_agreement": 0.9}
        return result | {"top1_agreement": 1.0}  # weight-only int8 (and the pair) clear the bar

    monkeypatch.setattr(TowerQuantizer, "quantize", record)
    monkeypatch.setattr(AgreementProbe, "score", static_plans_disagree)
    manifest = export_bundle(loaded.path, tmp_path / "b", "int8", str(shards), None, min_agreement=0.97)
    image = manifest["quantization"]["image"]
    assert [item["plan"] for item in image["plans_tried"]] == ["all_int8", "early_fp32", "weights_int8"]
    assert image["plan"] == "weights_int8" and image["shipped"] == "int8"
    assert count_ops(tmp_path / "b" / "image.int8.onnx")["Cast"] > 0


def test_calibration_images_come_from_every_shard(tiny):
    from dcclip.data.shards import image_field, iter_tar_samples, shard_paths

    _, _, shards = tiny
    paths = shard_paths(shards)
    assert len(paths) == 4
    images = calibration_images(shards, 8)
    expected = []
    for path in paths:
        samples = [sample for _, sample in zip(range(2), iter_tar_samples(path), strict=False)]
        expected += [decode_image(sample[image_field(sample)]).tobytes() for sample in samples]
    assert [image.tobytes() for image in images] == expected, "two from each of the four shards, in shard order"
    assert len(calibration_images(shards, 1000)) == 40
    with pytest.raises(ValueError, match="at least one image"):
        calibration_images(shards, 0)
