"""MODEL_CARD.md and the manifest's card: generated at export, refreshed from an eval or demo report, re-sealed so the
runtime loads the bundle and notices a card edited afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.data import write_shard_set
from helpers.serve_bundles import student_bundle

from dcclip.export.card import CARD_FILE, NOT_MEASURED, card_from_manifest, render_card, update_card
from dcclip.runtime.bundle import BundleIntegrityError, load_bundle_model, verify_bundle

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # each test exports a bundle
LANGS = ["en", "fr", "zh"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The test student exported with fp32 + int8 and a license (the bundle the card tests start from)."""
    from dcclip.export.bundle import export_bundle

    root = tmp_path_factory.mktemp("card")
    student_bundle(root)
    export_bundle(root / "run", root / "both", precision="both", exporter="torchscript", license="apache-2.0")
    return root / "both"


@pytest.fixture
def bundle(exported, tmp_path) -> Path:
    """A private copy of the exported bundle (update_card rewrites it)."""
    return Path(shutil.copytree(exported, tmp_path / "bundle"))


def front_matter(text: str) -> dict:
    """The YAML between the two leading '---' lines."""
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def eval_report(bundle: Path) -> dict:
    """A `dcclip eval zeroshot` report (built by the eval code) over a teacher and the bundle's two precisions."""
    from dcclip.eval.report import build_report

    def entry(name: str, ref: str, top1: dict[str, float]) -> dict:
        results = {lang: {"top1": t, "top5": min(1.0, t + 0.2), "mean_per_class_recall": t, "n": 100}
                   for lang, t in top1.items()}  # fmt: skip
        return {"name": name, "ref": ref, "kind": "x", "results": results, "seconds": {"total": 1.0}}

    entries = [
        entry("teacher", "openclip:/somewhere/teacher", {"en": 0.8, "fr": 0.3, "zh": 0.2}),
        entry("bundle fp32", str(bundle), {"en": 0.6, "fr": 0.5, "zh": 0.4}),
        entry("bundle int8", f"{bundle}@int8", {"en": 0.55, "fr": 0.5, "zh": 0.35}),
    ]
    dataset = {"path": "/data/shapes", "type": "classification", "classes": 90, "langs": LANGS}
    return build_report("zeroshot", dataset, LANGS, entries, {})


def write(path: Path, payload: dict) -> Path:
    path.write_text(json.dumps(payload), "utf-8")
    return path


def test_export_writes_a_sealed_card(exported):
    manifest = verify_bundle(exported)
    assert manifest["files"][CARD_FILE]["role"] == "card"
    text = (exported / CARD_FILE).read_text("utf-8")
    meta = front_matter(text)
    assert meta["language"] == manifest["languages"] and meta["license"] == "apache-2.0"
    assert "dcclip" in meta["tags"] and meta["pipeline_tag"] == "zero-shot-image-classification"
    card = manifest["card"]
    assert card["license"] == "apache-2.0" and card["evaluation"] == NOT_MEASURED
    assert card["teacher"] == NOT_MEASURED, "the test checkpoint records no teacher: said, not invented"
    for role in ("image", "text"):
        tower = manifest["parity"]["int8"]["towers"][role]
        assert card["int8_agreement"][role]["top1_agreement"] == tower["top1_agreement"]
        assert card["int8_agreement"][role]["shipped"] == tower["shipped"]
    assert card["size_bytes"]["files"]["image.onnx"] == manifest["files"]["image.onnx"]["bytes"]
    assert card["speed"]["phone"] == NOT_MEASURED
    assert "Zero-shot accuracy: not measured" in text


def test_license_unset_is_said_as_unset(exported):
    manifest = verify_bundle(exported)
    text = render_card(card_from_manifest(manifest))
    assert front_matter(text)["license"] == "other"
    assert "License: not set" in text


def test_card_records_teacher_data_and_recipe(exported, tmp_path):
    shards = write_shard_set(
        tmp_path / "shards", n=6, per_shard=3, langs_of=lambda i: ["en", "fr"] if i % 2 else ["en"]
    )
    shard_manifest = json.loads((shards / "manifest.json").read_text("utf-8"))
    shard_manifest["translation"] = {"counts": {"fr": {"machine": 1, "kept": 2}}}
    (shards / "manifest.json").write_text(json.dumps(shard_manifest), "utf-8")
    manifest = verify_bundle(exported)
    run = {"stage": "align", "data": {"train": str(shards), "machine_captions": True}, "train": {"seed": 7}}
    teacher = {"spec": "openclip:ViT-B-32/laion2b_s34b_b79k", "fingerprint": "f" * 64, "embed_dim": 512}
    manifest["source"]["config"] = {**manifest["source"]["config"], "teacher": teacher, "run_config": run}
    card = card_from_manifest(manifest, "mit")
    assert card["teacher"] == teacher
    data = card["training_data"][0]
    assert data["samples"] == 6 and data["captions_per_language"] == shard_manifest["langs"]
    assert data["machine_translated_share"] == {"fr": pytest.approx(1 / 3)}
    assert card["recipe"]["stages"][0]["seed"] == 7 and card["recipe"]["stages"][0]["stage"] == "align"
    text = render_card(card)
    assert front_matter(text)["base_model"] == teacher["spec"]
    assert "| fr | 3 | 33.3% |" in text and "| en | 6 | not measured |" in text


def test_card_numbers_equal_the_eval_report(bundle, tmp_path):
    report = eval_report(bundle)
    manifest = update_card(bundle, write(tmp_path / "report.json", report))
    evaluation = manifest["card"]["evaluation"]
    figures = evaluation["zeroshot"]["shapes"]
    assert set(figures["models"]) == {"bundle fp32", "bundle int8"}
    assert figures["models"]["bundle int8"]["precision"] == "int8"
    teacher_en = report["results"]["teacher"]["en"]["top1"]
    for name, model in figures["models"].items():
        for lang in LANGS:
            row, source = model["per_lang"][lang], report["results"][name][lang]
            assert row["top1"] == source["top1"] and row["ci95"] == source["top1_ci95"] and row["n"] == source["n"]
            assert row["retention"] == pytest.approx(source["top1"] / teacher_en)
        assert model["mean"]["top1"] == report["mean"][name]["top1"]
    text = (bundle / CARD_FILE).read_text("utf-8")
    assert "| fr | 100 | 50.0% [" in text and "62.5%" in text  # 0.5 / 0.8 retention


def test_card_numbers_equal_the_demo_report(bundle, tmp_path):
    from dcclip.demo.report import accuracy_table

    report = eval_report(bundle)
    renamed = {"teacher": "teacher", "bundle fp32": "student ONNX fp32", "bundle int8": "student ONNX int8"}
    summary = {"results": {renamed[k]: v for k, v in report["results"].items()}}
    summary["mean"] = {renamed[k]: v for k, v in report["mean"].items()}
    demo = {"top1": {"zeroshot_shapes": accuracy_table({"zeroshot_shapes": summary}, "zeroshot_shapes")}}
    demo["speed_size"] = {
        "note": "batch 1",
        "rows": [{"model": "student", "image_ms": 1.5, "text_ms": 0.5, "bytes": 9}],
    }
    manifest = update_card(bundle, write(tmp_path / "report.json", demo))
    table = demo["top1"]["zeroshot_shapes"]
    figures = manifest["card"]["evaluation"]["zeroshot"]["zeroshot_shapes"]
    for name in ("student ONNX fp32", "student ONNX int8"):
        for lang in LANGS:
            row = figures["models"][name]["per_lang"][lang]
            assert row["top1"] == table["values"][name][lang] and row["ci95"] == table["ci95"][name][lang]
            assert row["retention"] == table["retention"][name][lang]
    assert manifest["card"]["speed"]["demo_bench"]["rows"][0]["image_ms"] == 1.5


def test_refreshed_bundle_loads_and_a_later_card_edit_is_caught(bundle, tmp_path):
    update_card(bundle, write(tmp_path / "report.json", eval_report(bundle)))
    model = load_bundle_model(bundle)
    assert model.embed_texts(["a red circle"]).shape == (1, 32)
    assert not [p.name for p in bundle.parent.iterdir() if p.name.startswith(".")], "no staging left behind"
    with open(bundle / CARD_FILE, "a", encoding="utf-8") as handle:
        handle.write("\nBest model ever.\n")
    with pytest.raises(BundleIntegrityError, match=CARD_FILE):
        verify_bundle(bundle)
    with pytest.raises(BundleIntegrityError, match=CARD_FILE):
        update_card(bundle, tmp_path / "report.json")  # an altered bundle is refused, never re-sealed


def test_report_without_the_bundle_is_a_clear_error(bundle, tmp_path):
    report = eval_report(tmp_path / "another-bundle")
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="no model evaluated from"):
        update_card(bundle, write(tmp_path / "report.json", report))
    with pytest.raises(FileNotFoundError, match="no such report"):
        update_card(bundle, tmp_path / "missing.json")
    assert (bundle / "manifest.json").read_bytes() == before


def test_cli_card_refreshes_by_model_name(bundle, tmp_path, capsys):
    from dcclip.cli import main

    report = eval_report(tmp_path / "moved-away")  # refs no longer name the bundle: pick the rows by name
    path = write(tmp_path / "report.json", report)
    assert main(["card", "--bundle", str(bundle), "--report", str(path), "--model", "bundle fp32"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed["evaluation"]["zeroshot"]["shapes"]["models"]) == ["bundle fp32"]
    assert verify_bundle(bundle)["card"]["evaluation"]["report"] == str(path)
    assert main(["card", "--bundle", str(tmp_path / "none"), "--report", str(path)]) == 1
