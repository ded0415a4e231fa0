"""Torch-free runtime: bundle verification, embedding parity with torch, zero-shot classification, preprocessing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.export import shared_bundle
from helpers.images import encode, scene
from PIL import Image

from dcclip.runtime import (
    BundleError,
    BundleIntegrityError,
    BundleModel,
    BundleVersionError,
    EmptyLabelsError,
    ImageDecodeError,
    InvalidImageError,
    InvalidInputError,
    InvalidLabelError,
    InvalidTemplateError,
    InvalidTextError,
    TooManyLabelsError,
    UnknownLanguageError,
    ZeroShotClassifier,
    load_bundle_model,
    read_manifest,
    verify_bundle,
)
from dcclip.runtime.bundle import manifest_digest, seal_manifest
from dcclip.runtime.classifier import DEFAULT_TEMPLATES, softmax

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return shared_bundle(tmp_path_factory.getbasetemp())[0]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from dcclip.models.students import load_student_checkpoint

    return load_student_checkpoint(shared_bundle(tmp_path_factory.getbasetemp())[1])


@pytest.fixture(scope="module")
def classifier(bundle) -> ZeroShotClassifier:
    return ZeroShotClassifier.from_bundle(bundle, threads=1)


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _torch_images(loaded, images) -> np.ndarray:
    pixels = torch.from_numpy(loaded.preprocess.batch(images).astype(np.float32))
    with torch.no_grad():
        return torch.nn.functional.normalize(loaded.model.image.embed(pixels), dim=-1).numpy()


def _torch_texts(loaded, texts) -> np.ndarray:
    ids, mask = loaded.tokenizer.encode(texts, loaded.max_text_len)
    with torch.no_grad():
        emb = loaded.model.text(torch.from_numpy(ids), torch.from_numpy(mask))
    return torch.nn.functional.normalize(emb, dim=-1).numpy()


# --------------------------------------------------------------------------------------------------------------------
# Bundle verification
# --------------------------------------------------------------------------------------------------------------------


def test_verify_accepts_the_exported_bundle(bundle):
    manifest = verify_bundle(bundle)
    assert manifest == read_manifest(bundle / "manifest.json")


@pytest.mark.parametrize("name", ["text.int8.onnx", "tokenizer.json"])
def test_tampered_file_is_refused_naming_it(bundle_copy, name):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=rf"{name}: sha256 .* does not match") as caught:
        verify_bundle(bundle_copy)
    assert caught.value.file == name
    with pytest.raises(BundleIntegrityError):
        load_bundle_model(bundle_copy, "int8")


def test_missing_or_resized_file_is_refused(bundle_copy):
    (bundle_copy / "image.onnx").write_bytes((bundle_copy / "image.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleIntegrityError, match=r"image\.onnx: \d+ bytes, the manifest records"):
        verify_bundle(bundle_copy)
    (bundle_copy / "image.onnx").unlink()
    with pytest.raises(BundleIntegrityError, match=r"image\.onnx: listed in the manifest but missing"):
        verify_bundle(bundle_copy)


def _edit_manifest(bundle: Path, **changes) -> None:
    """Change manifest fields and re-seal it, as a deliberate (test) edit: the field checks are what is tested."""
    manifest = json.loads((bundle / "manifest.json").read_text("utf-8"))
    manifest.update(changes)
    (bundle / "manifest.json").write_text(json.dumps(seal_manifest(manifest)), "utf-8")


def test_unknown_format_version_is_refused_naming_it(bundle_copy):
    _edit_manifest(bundle_copy, format_version=7)
    with pytest.raises(BundleVersionError, match="format_version 7 is not supported") as caught:
        load_bundle_model(bundle_copy)
    assert caught.value.version == 7


def test_not_a_bundle(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        read_manifest(tmp_path / "nowhere")
    _edit_manifest(bundle_copy, format="something-else")
    with pytest.raises(BundleError, match="expected 'dcclip-bundle'"):
        read_manifest(bundle_copy)


def test_manifest_cannot_point_outside_the_bundle(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text("utf-8"))
    manifest["files"]["../escape.onnx"] = manifest["files"].pop("text.onnx")
    (bundle_copy / "manifest.json").write_text(json.dumps(seal_manifest(manifest)), "utf-8")
    with pytest.raises(BundleIntegrityError, match="not a file name inside the bundle"):
        verify_bundle(bundle_copy)


def test_missing_precision_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, precisions=["int8"])
    with pytest.raises(BundleError, match="no 'fp32' models"):
        BundleModel(bundle_copy, "fp32")


# --------------------------------------------------------------------------------------------------------------------
# BundleModel
# --------------------------------------------------------------------------------------------------------------------


def test_embeddings_match_torch_for_every_image_kind(bundle, loaded, tmp_path):
    model = load_bundle_model(bundle, intra_op_num_threads=1, max_batch_size=2)
    images = [scene(i) for i in range(5)]
    (tmp_path / "a.png").write_bytes(encode(images[2]))
    inputs = [images[0], encode(images[1]), tmp_path / "a.png", str(tmp_path / "a.png"), images[4]]
    out = model.embed_images(inputs)
    expected = _torch_images(loaded, [images[0], images[1], images[2], images[2], images[4]])
    assert out.dtype == np.float32 and out.shape == (5, 32)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert (out * expected).sum(1).min() >= 0.9999
    assert model.session_options.intra_op_num_threads == 1 and model.providers == ["CPUExecutionProvider"]


def test_text_embeddings_match_torch_and_batching_does_not_matter(bundle, loaded):
    texts = ["a red circle", "一个红色的圆形", "un cercle rouge", "دائرة حمراء", "एक लाल वृत्त " * 20]
    small = load_bundle_model(bundle, max_batch_size=2).embed_texts(texts)
    large = load_bundle_model(bundle, max_batch_size=64).embed_texts(texts)
    assert np.allclose(small, large, atol=1e-6)
    assert (small * _torch_texts(loaded, texts)).sum(1).min() >= 0.9999


def test_int8_model_runs(bundle):
    model = load_bundle_model(bundle, "int8")
    image, text = model.embed_images([scene(0), scene(1)]), model.embed_texts(["a red circle"])
    assert image.shape == (2, 32) and text.shape == (1, 32)
    fp32 = load_bundle_model(bundle).embed_images([scene(0), scene(1)])
    assert (image * fp32).sum(1).min() > 0.9


def test_bad_inputs_raise_specific_errors(bundle):
    model = load_bundle_model(bundle)
    assert model.embed_images([]).shape == (0, 32) and model.embed_texts([]).shape == (0, 32)
    with pytest.raises(InvalidImageError, match="cannot decode") as caught:
        model.embed_images([b"not an image"])
    assert isinstance(caught.value.__cause__, ImageDecodeError)
    with pytest.raises(InvalidImageError, match="got int"):
        model.embed_images([3])
    with pytest.raises(InvalidImageError, match="must be a list"):
        model.embed_images(scene(0))
    with pytest.raises(InvalidImageError, match="cannot read image file"):
        model.embed_images([Path("/no/such/file.png")])
    with pytest.raises(InvalidTextError, match=r"texts\[1\] is int"):
        model.embed_texts(["ok", 5])
    with pytest.raises(InvalidTextError, match="must be a list"):
        model.embed_texts("a single string")
    with pytest.raises(InvalidImageError, match=r"\[N, 3, 32, 32\]"):
        model.embed_pixels(np.zeros((1, 3, 16, 16), np.float32))


# --------------------------------------------------------------------------------------------------------------------
# ZeroShotClassifier
# --------------------------------------------------------------------------------------------------------------------

LABELS = ["circle", "square", "triangle", "star", "heart", "ring"]


def test_classify_probabilities_and_ordering(classifier):
    results = classifier.classify([scene(0), scene(1), scene(2)], LABELS, top_k=len(LABELS))
    assert len(results) == 3
    for row in results:
        assert sorted(label for label, _ in row) == sorted(LABELS)
        probs = [p for _, p in row]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert probs == sorted(probs, reverse=True)
    top2 = classifier.classify([scene(0)], LABELS, top_k=2)[0]
    assert [label for label, _ in top2] == [label for label, _ in results[0][:2]]
    assert [p for _, p in top2] == pytest.approx([p for _, p in results[0][:2]], abs=1e-5)
    assert len(classifier.classify([scene(0)], LABELS[:3], top_k=10)[0]) == 3


def test_classify_is_softmax_of_scaled_cosine_to_template_means(classifier):
    model = classifier.model
    templates = ["a photo of a {c}", "{c}"]
    image = model.embed_images([scene(3)])
    texts = model.embed_texts([t.replace("{c}", label) for label in LABELS for t in templates])
    classes = texts.reshape(len(LABELS), 2, -1).mean(1)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    expected = softmax(model.logit_scale * image @ classes.T)[0]
    got = dict(classifier.classify([scene(3)], LABELS, templates=templates, top_k=len(LABELS))[0])
    assert [got[label] for label in LABELS] == pytest.approx(list(expected), abs=1e-5)
    assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


class _CountingSession:
    """Wraps an onnxruntime session and counts run() calls."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def run(self, *args, **kwargs):
        self.calls += 1
        return self.inner.run(*args, **kwargs)


def test_label_cache_skips_the_text_session(bundle):
    clf = ZeroShotClassifier.from_bundle(bundle)
    counter = _CountingSession(clf.model.text_session)
    clf.model.text_session = counter
    first = clf.classify([scene(0)], LABELS, lang="fr")
    assert counter.calls == 1
    second = clf.classify([scene(0)], LABELS, lang="fr")
    assert counter.calls == 1 and second == first
    assert clf.cache.info()["hits"] == len(LABELS)
    clf.classify([scene(0)], [*LABELS[:2], "hexagon"], lang="fr")
    assert counter.calls == 2, "only the new label is embedded"
    clf.classify([scene(0)], LABELS[:2], lang="zh")
    assert counter.calls == 3, "another language is another key"
    clf.classify([scene(0)], LABELS[:2], lang="fr", templates=["{c}!"])
    assert counter.calls == 4, "other templates are another key"


def test_label_cache_is_bounded(bundle):
    clf = ZeroShotClassifier.from_bundle(bundle, cache_size=3)
    clf.classify([scene(0)], LABELS)
    assert clf.cache.info()["size"] == 3


def test_default_templates_cover_ten_languages():
    assert set(DEFAULT_TEMPLATES) == {"en", "zh", "ja", "ko", "fr", "de", "es", "ru", "ar", "hi"}
    assert all("{c}" in t for templates in DEFAULT_TEMPLATES.values() for t in templates)


def test_classify_rejects_bad_input(bundle):
    clf = ZeroShotClassifier.from_bundle(bundle, max_labels=4)
    image = [scene(0)]
    cases = [
        (EmptyLabelsError, {"labels": []}),
        (TooManyLabelsError, {"labels": LABELS}),
        (InvalidLabelError, {"labels": ["cat", 3]}),
        (InvalidLabelError, {"labels": "cat"}),
        (InvalidLabelError, {"labels": ["cat", " "]}),
        (InvalidLabelError, {"labels": ["cat", "cat"]}),
        (UnknownLanguageError, {"labels": ["cat"], "lang": "sw"}),
        (InvalidTemplateError, {"labels": ["cat"], "templates": ["no placeholder"]}),
        (InvalidTemplateError, {"labels": ["cat"], "templates": []}),
        (InvalidInputError, {"labels": ["cat"], "top_k": 0}),
    ]
    for error, kwargs in cases:
        with pytest.raises(error):
            clf.classify(image, **kwargs)
    with pytest.raises(InvalidImageError) as caught:
        clf.classify([b"\x89PNG broken"], ["cat"])
    assert isinstance(caught.value.__cause__, ImageDecodeError)
    assert all(issubclass(error, InvalidInputError) for error, _ in cases)


def test_bundle_without_languages_accepts_any(bundle_copy):
    _edit_manifest(bundle_copy, languages=[])
    manifest = json.loads((bundle_copy / "manifest.json").read_text("utf-8"))
    assert manifest["languages"] == []
    clf = ZeroShotClassifier.from_bundle(bundle_copy)
    assert len(clf.classify([scene(0)], ["cat", "dog"], lang="sw")[0]) == 2


def test_concurrent_classify_matches_sequential(bundle):
    clf = ZeroShotClassifier.from_bundle(bundle, cache_size=8)
    label_sets = [[f"{label} {i % 3}" for label in LABELS[: 2 + i % 4]] for i in range(16)]
    langs = ["en", "fr", "zh", "ar"]
    requests = [([scene(i), scene(i + 1)], labels, langs[i % 4]) for i, labels in enumerate(label_sets)]
    sequential = [ZeroShotClassifier.from_bundle(bundle).classify(*req) for req in requests]
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(worker_id: int) -> None:
        try:
            barrier.wait()
            for index in range(worker_id, len(requests), 8):
                results[index] = clf.classify(*requests[index])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index, expected in enumerate(sequential):
        got = results[index]
        assert [[label for label, _ in row] for row in got] == [[label for label, _ in row] for row in expected]
        assert np.allclose([[p for _, p in row] for row in got], [[p for _, p in row] for row in expected], atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Torch-free
# --------------------------------------------------------------------------------------------------------------------


def test_runtime_runs_without_torch_or_transformers(bundle, tmp_path):
    (tmp_path / "cat.png").write_bytes(encode(scene(7)))
    script = textwrap.dedent(
        f"""
        import sys
        import dcclip.runtime
        from dcclip.runtime.preprocess import Preprocess
        assert "onnxruntime" not in sys.modules, "importing the runtime package must stay light"
        from dcclip.runtime import ZeroShotClassifier
        clf = ZeroShotClassifier.from_bundle({str(bundle)!r}, threads=1)
        result = clf.classify([{str(tmp_path / "cat.png")!r}], ["circle", "square"], lang="en", top_k=1)
        assert len(result) == 1 and result[0][0][0] in ("circle", "square")
        heavy = [name for name in ("torch", "transformers", "timm", "open_clip") if name in sys.modules]
        assert not heavy, heavy
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --------------------------------------------------------------------------------------------------------------------
# Golden preprocessing: numpy/PIL Preprocess == torchvision's eval pipeline (what open_clip uses)
# --------------------------------------------------------------------------------------------------------------------


def _exif_rotated_jpeg() -> bytes:
    """A landscape JPEG whose EXIF says 'rotate 90° clockwise to display' (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(scene(11, (90, 40)), "JPEG", quality=95, exif=exif)


def _golden_images() -> dict[str, bytes]:
    """Encoded images of several sizes and modes."""
    rgb = scene(1, (300, 200))
    rgba = scene(2, (64, 97)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((64, 97)))
    return {
        "rgb": encode(rgb),
        "rgb-small": encode(scene(3, (17, 29))),
        "rgba": encode(rgba),
        "l": encode(scene(4, (50, 81)).convert("L")),
        "p": encode(scene(5, (120, 64)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)),
        "cmyk": encode(scene(6, (77, 77)).convert("CMYK"), "JPEG", quality=95),
        "jpeg-exif": _exif_rotated_jpeg(),
    }


@pytest.mark.parametrize("size, interpolation", [(32, "bicubic"), (224, "bicubic"), (64, "bilinear")])
def test_preprocess_matches_torchvision(size, interpolation):
    from torchvision import transforms as T

    from dcclip.runtime.preprocess import Preprocess, decode_image

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    ours = Preprocess(image_size=size, mean=mean, std=std, interpolation=interpolation)
    mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[interpolation]
    resize = T.Resize(size, interpolation=mode)
    reference = T.Compose([resize, T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
    for name, data in _golden_images().items():
        image = decode_image(data)
        if name == "jpeg-exif":
            assert image.size == (40, 90), "EXIF orientation applied"
        expected = reference(image.convert("RGB")).numpy()
        got = ours(image)
        assert got.shape == expected.shape == (3, size, size), name
        assert np.abs(got - expected).max() <= 1e-5, name


# --------------------------------------------------------------------------------------------------------------------
# Text that is not Unicode, bundle errors on the command line
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["\udc80", "caf\ud800e"])
def test_lone_surrogates_are_invalid_text_naming_the_index(classifier, bad):
    from dcclip.runtime.errors import InvalidLabelError, InvalidTemplateError, InvalidTextError

    with pytest.raises(InvalidTextError, match=r"texts\[1\] is not valid Unicode text: lone surrogate U\+D"):
        classifier.model.embed_texts(["ok", bad])
    with pytest.raises(InvalidLabelError, match=r"labels\[1\] is not valid Unicode"):
        classifier.classify([Image.new("RGB", (8, 8))], ["cat", bad], lang="en")
    with pytest.raises(InvalidTemplateError, match=r"templates\[0\] is not valid Unicode"):
        classifier.classify([Image.new("RGB", (8, 8))], ["cat"], lang="en", templates=["{c}" + bad])
    with pytest.raises(ValueError, match=r"texts\[0\] is not valid Unicode"):
        classifier.model.tokenizer.encode([bad], 8)


def test_cli_gives_one_line_errors_for_undecodable_labels_and_broken_bundles(bundle, bundle_copy, tmp_path, capsys):
    from dcclip.cli import main

    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    argv = ["classify", "--bundle", str(bundle), str(image), "--lang", "en"]
    assert main([*argv, "--labels", "cat,\udcff"]) == 1  # what Python makes of the argv byte 0xff
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "labels[1] is not valid Unicode" in err and "Traceback" not in err
    (bundle_copy / "manifest.json").write_text("{ not json", "utf-8")
    argv[2] = str(bundle_copy)
    assert main([*argv, "--labels", "cat,dog"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest.json" in err and "Traceback" not in err
    assert main(["serve", "--bundle", str(bundle_copy), "--port", "1"]) == 1  # refused before any port is opened
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest.json" in err and "Traceback" not in err


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_greyscale_keeps_its_tones_instead_of_turning_white(mode):
    import io

    from dcclip.runtime.preprocess import decode_image, to_rgb

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64)
    wide = Image.fromarray(ramp.astype(np.uint16 if mode == "I;16" else np.int32))
    assert wide.mode == mode
    images = [wide]
    if mode == "I;16":  # a 16-bit PNG file, decoded the way every image dcclip reads is
        buffer = io.BytesIO()
        wide.save(buffer, format="PNG")
        images.append(decode_image(buffer.getvalue()))
    for image in images:
        rgb = np.asarray(to_rgb(image))
        assert rgb.shape == (64, 64, 3) and rgb.min() == 0 and rgb.max() == 255
        assert abs(float(rgb[32, 0, 0]) - ramp[32, 0] / 257) <= 1  # mid-grey stays mid-grey


def test_degenerate_strips_are_refused_before_any_resize(classifier, tmp_path):
    import io

    from dcclip.runtime.preprocess import MAX_ASPECT_RATIO, Preprocess

    buffer = io.BytesIO()
    Image.new("L", (2_000_000, 1)).save(buffer, format="PNG", optimize=True)
    assert len(buffer.getvalue()) < 20_000
    for item in (buffer.getvalue(), Image.new("RGB", (int(48 * MAX_ASPECT_RATIO) + 48, 48))):
        with pytest.raises(InvalidImageError, match=r"more than 50 times longer than wide"):
            classifier.classify([item], ["cat", "dog"], lang="en")
    with pytest.raises(ImageDecodeError, match="longer than wide"):
        Preprocess(image_size=48)(Image.new("RGB", (3000, 2)))
    panorama = Image.new("RGB", (400, 100))  # 4:1 passes
    assert Preprocess(image_size=48)(panorama).shape == (3, 48, 48)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2.0}, r"format_version 2\.0 is not supported"),
        ({"embed_dim": "32"}, r"manifest field embed_dim is '32'"),
        ({"text_max_length": 0}, r"manifest field text_max_length is 0"),
        ({"logit_scale": float("nan")}, r"manifest field logit_scale"),
        ({"languages": "en"}, r"manifest field languages is 'en'"),
        ({"precisions": ["fp16"]}, r"manifest field precisions"),
        ({"image_preprocess": {"image_size": "224"}}, r"image_preprocess\.image_size is '224'"),
        ({"files": ["image.onnx"]}, r"manifest field files is 'list'"),
        ({"files": {"image.onnx": "abc"}}, r"files\['image\.onnx'\] is 'abc'"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_edited_manifest_fields_fail_at_load_naming_the_field(bundle_copy, change, message):
    _edit_manifest(bundle_copy, **change)
    with pytest.raises(BundleError, match=message):
        load_bundle_model(bundle_copy)


def test_mean_std_and_image_size_are_checked_against_the_graph(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text("utf-8"))
    pre = manifest["image_preprocess"]
    _edit_manifest(bundle_copy, image_preprocess={**pre, "std": [0.2, 0.0, 0.2]})
    with pytest.raises(BundleError, match=r"image_preprocess\.std"):
        load_bundle_model(bundle_copy)
    _edit_manifest(bundle_copy, image_preprocess={**pre, "image_size": pre["image_size"] + 16})
    with pytest.raises(BundleError, match=r"image graph takes .* image_preprocess\.image_size is"):
        load_bundle_model(bundle_copy)


def test_a_tokenizer_the_manifest_does_not_list_is_not_loaded(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text("utf-8"))
    del manifest["files"]["tokenizer.json"]
    (bundle_copy / "manifest.json").write_text(json.dumps(seal_manifest(manifest)), "utf-8")
    with pytest.raises(BundleError, match=r"tokenizer\.json is not listed"):
        load_bundle_model(bundle_copy)


def test_an_edited_manifest_is_detected_by_its_seal(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text("utf-8"))
    assert manifest["format_version"] == 3 and manifest["manifest_sha256"] == manifest_digest(manifest)
    manifest["logit_scale"] = manifest["logit_scale"] * 2  # valid, but not what was exported
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest, indent=4), "utf-8")
    with pytest.raises(BundleIntegrityError, match=r"does not match its manifest_sha256 .edited after export"):
        load_bundle_model(bundle_copy)
    (bundle_copy / "manifest.json").write_text(json.dumps(seal_manifest(manifest)), "utf-8")
    assert (
        load_bundle_model(bundle_copy).logit_scale == manifest["logit_scale"]
    )  # whitespace and key order do not count


def test_preprocessing_is_bit_identical_to_the_reference_formula_and_contiguous():
    import numpy as np
    from PIL import Image

    from dcclip.runtime.preprocess import Preprocess

    prep = Preprocess(image_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    reference = np.asarray(prep.resize(image), dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    reference = ((reference - np.float32(prep.mean)) / np.float32(prep.std)).transpose(2, 0, 1)
    out = prep(image)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"] and out.shape == (3, 32, 32)
    assert np.array_equal(out, reference)
