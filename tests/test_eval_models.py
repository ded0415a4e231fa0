"""Evaluation with real models and real data: a tiny student checkpoint, a saved teacher, the toy world's eval sets."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcclip.eval.datasets import ClassificationDataset, RetrievalDataset, open_dataset
from dcclip.eval.models import (
    ModelLoadError,
    OnnxEvalModel,
    RememberedTexts,
    StudentModel,
    TeacherModel,
    load_model,
)
from dcclip.eval.report import run_eval

WORLD_LANGS = ["en", "zh", "ja", "ko", "fr", "de", "es", "ru", "ar", "hi"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small toy world: 40 samples in each eval set."""
    from dcclip.data.world import generate_world

    root = tmp_path_factory.mktemp("eval_world")
    generate_world(root, train_samples=20, eval_samples=40, image_size=64)
    return root


@pytest.fixture(scope="module")
def student_run(world, tmp_path_factory) -> Path:
    """A run directory holding one checkpoint of a tiny random student, saved the way training saves it."""
    from dcclip.data.shards import iter_captions
    from dcclip.models.students import build_student, save_student_checkpoint
    from dcclip.models.tokenizers import TextTokenizer, train_tokenizer

    tok_path = train_tokenizer(iter_captions(world / "train"), 300, tmp_path_factory.mktemp("eval_tok"))
    tok = TextTokenizer.from_path(tok_path)
    student = build_student("test-student", embed_dim=32, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    run_dir = tmp_path_factory.mktemp("eval_run") / "tiny"
    save_student_checkpoint(run_dir, 1, student, tok_path, ["en", "fr"], max_text_len=16)
    return run_dir


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(n)]


def assert_unit_rows(x: np.ndarray, rows: int) -> None:
    assert x.dtype == np.float32 and x.shape[0] == rows
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# The toy world's eval sets
# --------------------------------------------------------------------------------------------------------------------


def test_reads_the_toy_world_eval_sets(world):
    shapes = open_dataset(world / "eval" / "shapes")
    assert isinstance(shapes, ClassificationDataset) and shapes.layout == "wds"
    assert shapes.n_classes == 90 and shapes.langs == WORLD_LANGS
    samples = list(shapes.samples())
    assert len(samples) == 40 and all(0 <= label < 90 for _, label in samples)
    assert samples[0][0].size == (64, 64)
    digits = open_dataset(world / "eval" / "digits", max_samples=7)
    assert digits.n_classes == 10 and len(list(digits.samples())) == 7
    assert all("{c}" in t for lang in WORLD_LANGS for t in digits.templates[lang])

    retrieval = open_dataset(world / "eval" / "retrieval")
    assert isinstance(retrieval, RetrievalDataset)
    assert retrieval.langs[0] == "en" and sorted(retrieval.langs) == sorted(WORLD_LANGS)
    captions = [s.captions for s in retrieval.samples()]
    assert len(captions) == 40 and all(sorted(c) == sorted(WORLD_LANGS) for c in captions)
    assert len({c["en"][0] for c in captions}) == 40  # every retrieval caption names one image


# --------------------------------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------------------------------


def test_load_model_student_from_run_and_checkpoint_dir(student_run):
    from_run = load_model(student_run)
    assert isinstance(from_run, StudentModel) and from_run.name == "tiny"
    checkpoint = next((student_run / "checkpoints").iterdir())
    from_ckpt = load_model(checkpoint, name="label")
    assert from_ckpt.name == "label" and StudentModel(checkpoint).name == "tiny/step-00000001"
    batch = images(5)
    img = from_run.embed_images(batch)
    assert_unit_rows(img, 5)
    assert img.shape[1] == 32
    from_ckpt.batch_size = 2  # batching must not change the figures
    np.testing.assert_allclose(from_ckpt.embed_images(batch), img, atol=1e-5)
    txt = from_run.embed_texts(["a red circle", "un cercle rouge", "红色的圆形"])
    assert_unit_rows(txt, 3)
    with pytest.raises(TypeError, match="single string"):
        from_run.embed_texts("a red circle")


def test_load_model_teacher_spec(saved_teacher_spec):
    teacher = load_model(saved_teacher_spec)
    assert isinstance(teacher, TeacherModel) and teacher.name == "openclip:teacher.pt#test-vit"
    assert_unit_rows(teacher.embed_images(images(3)), 3)
    assert_unit_rows(teacher.embed_texts(["a photo of a dog", "a cat"]), 2)


def test_load_model_bundle_dir_uses_the_runtime_or_says_it_is_missing(tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"format": "dcclip-bundle", "version": 1}))
    monkeypatch.setitem(sys.modules, "dcclip.runtime.bundle", None)  # as if the runtime were not there
    with pytest.raises(ModelLoadError, match="bundle runtime"):
        load_model(bundle)

    class FakeRuntime:
        def embed_images(self, imgs):
            return np.full((len(imgs), 4), 2.0, dtype=np.float32)

        def embed_texts(self, texts):
            return np.full((len(texts), 4), 3.0, dtype=np.float32)

    opened = []
    fake = types.ModuleType("dcclip.runtime.bundle")
    fake.load_bundle_model = lambda path, precision="fp32": opened.append((Path(path), precision)) or FakeRuntime()
    monkeypatch.setitem(sys.modules, "dcclip.runtime.bundle", fake)
    model = load_model(bundle)
    assert isinstance(model, OnnxEvalModel) and model.name == "bundle"
    assert_unit_rows(model.embed_images(images(3)), 3)
    assert_unit_rows(model.embed_texts(["x"]), 1)
    assert load_model(f"{bundle}@int8").name == "bundle@int8"
    assert opened == [(bundle, None), (bundle, "int8")]  # no precision asked: the manifest decides


def test_load_model_errors_say_what_was_expected(tmp_path, student_run):
    with pytest.raises(ModelLoadError, match="checkpoint"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="openclip:"):
        load_model(tmp_path / "missing")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "dcclip-shards"}))
    with pytest.raises(ModelLoadError, match="dcclip-shards"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="not a teacher"):
        load_model(student_run, text_spec="openclip:x")


# --------------------------------------------------------------------------------------------------------------------
# run_eval end to end
# --------------------------------------------------------------------------------------------------------------------


def test_run_eval_compare_student_and_teacher_on_the_world(world, student_run, saved_teacher_spec, tmp_path):
    out = tmp_path / "zs"
    report = run_eval(
        "zeroshot",
        [str(student_run), saved_teacher_spec],
        world / "eval" / "digits",
        ["en", "fr"],
        out,
        batch_size=16,
        max_samples=20,
        progress=False,
    )
    assert [m["kind"] for m in report["models"]] == ["student", "teacher"]
    assert report["dataset"]["samples"] == 20 and report["dataset"]["classes"] == 10
    for per_lang in report["results"].values():
        assert set(per_lang) == {"en", "fr"}
        assert all(0.0 <= figures["top1"] <= figures["top5"] <= 1.0 for figures in per_lang.values())
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "zeroshot_top1.png"}

    retrieval = run_eval("retrieval", [student_run], world / "eval" / "retrieval", ["en", "zh"], tmp_path / "ret")
    assert retrieval["results"]["tiny"]["zh"]["n_texts"] == 40
    aligned = run_eval("alignment", [student_run], world / "eval" / "retrieval", ["ar"], tmp_path / "al")
    assert set(aligned["results"]["tiny"]) == {"ar"} and aligned["results"]["tiny"]["ar"]["n"] == 40


@pytest.mark.slow
def test_remembered_texts_embed_each_caption_once_with_the_same_report(world, student_run, tmp_path):
    class Counting:
        """The student, counting the texts that reach it."""

        def __init__(self, model):
            self.model, self.name, self.ref, self.kind, self.texts = model, model.name, model.ref, model.kind, 0

        def embed_images(self, images):
            return self.model.embed_images(images)

        def embed_texts(self, texts):
            self.texts += len(texts)
            return self.model.embed_texts(texts)

    plain = load_model(student_run, name="tiny")
    counted = Counting(plain)
    shared = RememberedTexts(counted)
    retrieval = world / "eval" / "retrieval"
    for task in ("retrieval", "alignment"):
        expected = run_eval(task, [plain], retrieval, ["en", "zh"], tmp_path / f"{task}_plain", progress=False)
        got = run_eval(task, [shared], retrieval, ["en", "zh"], tmp_path / task, progress=False, names=["tiny"])
        for lang, figures in expected["results"]["tiny"].items():
            for key, value in figures.items():
                assert got["results"]["tiny"][lang][key] == pytest.approx(value, abs=1e-6), (task, lang, key)
    captions = run_eval("retrieval", [plain], retrieval, ["en", "zh"], tmp_path / "n", progress=False)["results"]
    distinct = counted.texts
    assert distinct <= sum(figures["n_texts"] for figures in captions["tiny"].values())  # alignment added none
    shared.embed_texts(["a caption nobody wrote", "a caption nobody wrote"])
    assert counted.texts == distinct + 1
