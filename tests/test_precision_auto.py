"""``export --precision auto``: int8 per tower only where it is faster and agrees; the runtime follows the choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.export import make_checkpoint

from dcclip.export.bundle import export_bundle
from dcclip.export.precision import (
    TimingPlan,
    choice_table,
    choose_precision,
    onnx_timer,
    time_towers,
    timing_feeds,
)
from dcclip.runtime.bundle import BundleModel, read_manifest, seal_manifest, verify_bundle
from dcclip.runtime.errors import BundleError
from dcclip.runtime.tokenizer import TextTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# fp32 ms per (file, batch) the fake timer reports: int8 image 1.6x slower, int8 text 2x faster
FAKE_MS = {
    ("image.onnx", 1): 10.0,
    ("image.onnx", 4): 40.0,
    ("image.int8.onnx", 1): 16.0,
    ("image.int8.onnx", 4): 64.0,
    ("text.onnx", 1): 4.0,
    ("text.onnx", 4): 8.0,
    ("text.int8.onnx", 1): 2.0,
    ("text.int8.onnx", 4): 4.0,
}


def fake_timer(path: Path, feed: dict) -> float:
    """Milliseconds from FAKE_MS by file name and batch: the choice does not depend on this machine's speed."""
    return FAKE_MS[Path(path).name, len(next(iter(feed.values())))]


@pytest.mark.parametrize(
    ("speedups", "agreement", "choice", "reason"),
    [
        ([1.9, 2.0], 0.996, "int8", "int8: 1.9x faster, agreement 99.6%"),
        ([0.625, 0.7], 0.999, "fp32", "fp32: int8 1.6x slower"),
        ([2.5, 3.0], 0.951, "fp32", "fp32: int8 agreement 95.1% < 97%"),
        ([1.05, 1.2], 0.99, "fp32", "fp32: int8 only 1.05x faster (< 1.10x)"),
        ([1.0, 1.0], 1.0, "fp32", "fp32: int8 only 1.00x faster (< 1.10x)"),
        ([0.98], 1.0, "fp32", "fp32: int8 1.02x slower"),
        ([1.1, 1.5], 0.97, "int8", "int8: 1.10x faster, agreement 97%"),  # both bars are inclusive
        ([3.0, 0.9], 1.0, "fp32", "fp32: int8 1.11x slower"),  # must be faster at every timed batch
    ],
)
def test_choice_is_int8_only_when_faster_and_agreeing(speedups, agreement, choice, reason):
    assert choose_precision(speedups, agreement, 0.97) == (choice, reason)


def test_timings_take_the_timer_per_file_and_batch():
    files = {role: {"fp32": Path(f"{role}.onnx"), "int8": Path(f"{role}.int8.onnx")} for role in ("image", "text")}
    feeds = {b: {role: {"x": [0] * b} for role in ("image", "text")} for b in (1, 4)}
    timings = time_towers(files, feeds, lambda path, feed: FAKE_MS[path.name, len(feed["x"])])
    assert timings["image"] == {
        "fp32_ms": {"1": 10.0, "4": 40.0},
        "int8_ms": {"1": 16.0, "4": 64.0},
        "speedup": {"1": 0.625, "4": 0.625},
    }
    assert timings["text"]["speedup"] == {"1": 2.0, "4": 2.0}


def test_timing_plan_refuses_nonsense():
    with pytest.raises(ValueError, match="positive integers"):
        TimingPlan(batches=(0,))
    with pytest.raises(ValueError, match="invalid timing plan"):
        TimingPlan(repeats=0)


@pytest.fixture(scope="module")
def auto_bundle(tmp_path_factory) -> Path:
    """A tiny student exported with --precision auto (fake timings: image int8 slower, text int8 faster)."""
    root = tmp_path_factory.mktemp("precision-auto")
    checkpoint = make_checkpoint(root)
    plan = TimingPlan(batches=(1, 4), warmup=0, repeats=1, threads=1)
    export_bundle(checkpoint, root / "bundle", "auto", min_agreement=0.0, timing=plan, timer=fake_timer)
    return root / "bundle"


def test_manifest_records_timings_machine_and_choice_and_still_verifies(auto_bundle):
    manifest = verify_bundle(auto_bundle)  # the seal covers the new fields
    assert manifest["format_version"] == 3 and manifest["precisions"] == ["fp32", "int8"]
    assert manifest["recommended_precision"] == {"image": "fp32", "text": "int8"}
    choice = manifest["precision_choice"]
    assert choice["policy"]["batches"] == [1, 4] and choice["policy"]["min_speedup"] == 1.1
    assert {"cpu", "cores", "threads", "onnxruntime"} <= set(choice["machine"])
    image, text = choice["towers"]["image"], choice["towers"]["text"]
    assert image["fp32_ms"] == {"1": 10.0, "4": 40.0} and image["int8_ms"] == {"1": 16.0, "4": 64.0}
    assert (image["choice"], image["reason"]) == ("fp32", "fp32: int8 1.6x slower")
    assert text["choice"] == "int8" and text["reason"].startswith("int8: 2.0x faster, agreement ")
    assert text["top1_agreement"] == manifest["quantization"]["text"]["top1_agreement"]
    # the int8 files stay real int8 graphs: an explicit --precision int8 on another machine still gets them
    assert manifest["files"]["image.int8.onnx"]["shipped_precision"] == "int8"
    table = choice_table(choice)
    assert "image  1" in table and "fp32: int8 1.6x slower" in table


def _files(model: BundleModel) -> dict[str, str]:
    """The model file each tower session was opened on."""
    return {role: Path(getattr(model, f"{role}_session")._model_path).name for role in ("image", "text")}


def test_runtime_follows_the_manifest_unless_told(auto_bundle):
    model = BundleModel(auto_bundle)
    assert model.file_precisions == {"image": "fp32", "text": "int8"} and model.precision == "auto"
    assert _files(model) == {"image": "image.onnx", "text": "text.int8.onnx"}
    assert model.embed_texts(["a red circle"]).shape == (1, 32)
    for precision in ("fp32", "int8"):
        explicit = BundleModel(auto_bundle, precision)
        assert explicit.precision == precision
        assert _files(explicit) == {"image": f"image{'.int8' * (precision == 'int8')}.onnx",
                                    "text": f"text{'.int8' * (precision == 'int8')}.onnx"}  # fmt: skip


def _rewrite(bundle: Path, out: Path, **changes) -> Path:
    """A copy of ``bundle`` whose manifest has ``changes`` applied (None deletes a key), sealed again."""
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    for key, value in changes.items():
        if value is None:
            del manifest[key]
        else:
            manifest[key] = value
    (out / "manifest.json").write_text(json.dumps(seal_manifest(manifest)), "utf-8")
    return out


def test_bundles_without_a_recommendation_load_fp32_as_before(auto_bundle, tmp_path):
    old = _rewrite(auto_bundle, tmp_path / "old", recommended_precision=None, precision_choice=None)
    model = BundleModel(old)
    assert model.precision == "fp32" and _files(model) == {"image": "image.onnx", "text": "text.onnx"}
    int8_only = _rewrite(old, tmp_path / "int8-only", precisions=["int8"])
    with pytest.raises(BundleError, match="no 'fp32' models"):  # as before: the default was fp32
        BundleModel(int8_only, verify=False)


@pytest.mark.parametrize(
    "value", [{"image": "fp16", "text": "int8"}, {"image": "fp32"}, "int8", {"image": "int8", "text": "bf16"}]
)
def test_a_broken_recommendation_fails_at_load(auto_bundle, tmp_path, value):
    broken = _rewrite(auto_bundle, tmp_path / "broken", recommended_precision=value)
    with pytest.raises(BundleError, match="manifest field recommended_precision"):
        read_manifest(broken)


def test_onnx_timer_times_a_real_tower(auto_bundle):
    plan = TimingPlan(batches=(2,), warmup=1, repeats=2, threads=1)
    files = {role: {"fp32": auto_bundle / f"{role}.onnx", "int8": auto_bundle / f"{role}.int8.onnx"}
             for role in ("image", "text")}  # fmt: skip
    manifest = read_manifest(auto_bundle)
    tokenizer = TextTokenizer.from_path(auto_bundle / "tokenizer.json")
    size = manifest["image_preprocess"]["image_size"]
    feeds = {2: timing_feeds(size, lambda texts: tokenizer.encode(texts, 16), ["a red circle", "un carré"], 2)}
    timer, calls = onnx_timer(plan), []

    def recording(path: Path, feed: dict) -> float:
        calls.append((path, ms := timer(path, feed)))
        return ms

    timings = time_towers(files, feeds, recording)
    # every tower file, fp32 and int8, was run once per batch, and each figure is the one measured on its own file
    assert sorted(str(path) for path, _ in calls) == sorted(str(f) for tower in files.values() for f in tower.values())
    measured = {path: ms for path, ms in calls}
    for role, tower in timings.items():
        for precision in ("fp32", "int8"):
            assert tower[f"{precision}_ms"] == {"2": round(measured[files[role][precision]], 4)}
            assert tower[f"{precision}_ms"]["2"] > 0
        assert tower["speedup"]["2"] == round(tower["fp32_ms"]["2"] / tower["int8_ms"]["2"], 3)


def test_onnx_timer_reports_the_median_run_in_milliseconds(auto_bundle, monkeypatch):
    """A clock that advances 2.5 ms per reading: each timed run lasts 2.5 ms, so the timer must say 2.5 (ms)."""
    from types import SimpleNamespace

    from dcclip.export import precision

    ticks = iter(range(10_000))
    monkeypatch.setattr(precision, "time", SimpleNamespace(perf_counter=lambda: 0.0025 * next(ticks)))
    tokenizer = TextTokenizer.from_path(auto_bundle / "tokenizer.json")
    feed = timing_feeds(16, lambda texts: tokenizer.encode(texts, 16), ["a red circle"], 1)["text"]
    plan = TimingPlan(batches=(1,), warmup=1, repeats=3, threads=1)
    assert onnx_timer(plan)(auto_bundle / "text.onnx", feed) == pytest.approx(2.5)
