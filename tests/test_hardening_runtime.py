"""Hardening, round two (issue 27), runtime and CLI classes: the manifest seal that a version downgrade skipped, one
text limit for API, CLI and HTTP, labels made of invisible characters, and --threads that must be positive."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from helpers.serve_bundles import onnx_bundle
from PIL import Image

import dcclip.runtime.bundle as runtime_bundle
from dcclip.runtime.bundle import MANIFEST_DIGEST_KEY, load_bundle_model, seal_manifest
from dcclip.runtime.classifier import ZeroShotClassifier
from dcclip.runtime.errors import BundleIntegrityError, InvalidLabelError, InvalidTextError

MAX_TEXT_CHARS = getattr(runtime_bundle, "MAX_TEXT_CHARS", 1000)


@pytest.fixture
def bundle(tmp_path) -> Path:
    return onnx_bundle(tmp_path / "bundle")


def _write(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest), "utf-8")


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text("utf-8"))


def _downgrade(bundle: Path, version: int, keep_digest: bool) -> None:
    """What the issue did: an older format_version, then edited fields that change every answer."""
    manifest = _manifest(bundle)
    manifest["format_version"] = version
    manifest["logit_scale"] = manifest["logit_scale"] * 3
    manifest["image_preprocess"]["mean"] = [0.1, 0.1, 0.1]
    if not keep_digest:
        manifest.pop(MANIFEST_DIGEST_KEY)
    _write(bundle, manifest)


@pytest.mark.parametrize(("version", "keep_digest"), [(2, True), (2, False), (1, False)])
def test_downgrading_format_version_does_not_skip_the_seal(bundle, version, keep_digest):
    _downgrade(bundle, version, keep_digest)
    with pytest.raises(BundleIntegrityError, match=r"manifest_sha256|unsealed"):
        load_bundle_model(bundle)
    with pytest.raises(BundleIntegrityError):
        ZeroShotClassifier.from_bundle(bundle)


def test_an_unsealed_old_bundle_loads_only_when_asked_and_says_what_is_unverified(bundle, caplog):
    manifest = _manifest(bundle)
    manifest.pop(MANIFEST_DIGEST_KEY)
    manifest["format_version"] = 2
    _write(bundle, manifest)
    with pytest.raises(BundleIntegrityError, match=r"--allow-unsealed"):
        load_bundle_model(bundle)
    with caplog.at_level(logging.WARNING, logger="dcclip"):
        model = load_bundle_model(bundle, allow_unsealed=True)
    assert model.embed_texts(["a red circle"]).shape == (1, 16)
    assert "not verified" in caplog.text and "logit_scale" in caplog.text
    # a sealed old-format bundle (written by an exporter that sealed it) still loads without any opt-in
    _write(bundle, seal_manifest(manifest))
    assert load_bundle_model(bundle).manifest["format_version"] == 2


def test_cli_classify_refuses_a_downgraded_bundle_and_has_the_opt_in(bundle, tmp_path, capsys):
    from dcclip.cli import main

    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), "red").save(image)
    _downgrade(bundle, 2, keep_digest=False)
    argv = ["classify", "--bundle", str(bundle), str(image), "--labels", "a red circle,a blue square", "--lang", "en"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "unsealed" in err and "Traceback" not in err
    assert main([*argv, "--allow-unsealed"]) == 0


def test_one_text_limit_owned_by_the_runtime(bundle):
    classifier = ZeroShotClassifier.from_bundle(bundle)
    long_text = "a" * (MAX_TEXT_CHARS + 1)
    assert classifier.embed_texts(["b" * MAX_TEXT_CHARS]).shape == (1, 16)
    with pytest.raises(InvalidTextError, match=rf"texts\[1\] has {MAX_TEXT_CHARS + 1} characters"):
        classifier.embed_texts(["ok", long_text])
    with pytest.raises(InvalidLabelError, match=rf"labels\[0\] has {MAX_TEXT_CHARS + 1} characters"):
        classifier.classify([Image.new("RGB", (8, 8))], [long_text], lang="en")
    # a label and a template each at the limit still make one prompt
    assert classifier.classify([Image.new("RGB", (8, 8))], ["c" * MAX_TEXT_CHARS], lang="en", templates=["{c}."])


def test_the_http_text_limit_is_the_runtime_one():
    from dcclip.serve.limits import ServeLimits

    assert ServeLimits().max_text_chars == MAX_TEXT_CHARS


@pytest.mark.parametrize("label", ["\u200b", "\ufeff\u200b", "\u0301\u0308", " \u200d\u2060 ", "\u00ad"])
def test_labels_made_only_of_invisible_characters_are_refused(bundle, label):
    classifier = ZeroShotClassifier.from_bundle(bundle)
    with pytest.raises(InvalidLabelError, match=r"labels\[1\] has no visible character"):
        classifier.classify([Image.new("RGB", (8, 8))], ["cat", label], lang="en")


def test_labels_with_joiners_or_marks_beside_letters_still_pass(bundle):
    classifier = ZeroShotClassifier.from_bundle(bundle)
    assert classifier.classify([Image.new("RGB", (8, 8))], ["cafe\u0301", "\u0915\u094d\u200d\u0937"], lang="en")


@pytest.mark.parametrize("command", ["classify", "serve", "search"])
@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_threads_must_be_a_positive_integer(command, value, capsys):
    from dcclip.cli import main

    argv = {
        "classify": ["classify", "--bundle", "b", "x.png", "--labels", "a"],
        "serve": ["serve", "--bundle", "b"],
        "search": ["search", "--index", "i", "--lang", "en", "text"],
    }[command]
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--threads", value])
    assert caught.value.code == 2
    assert "--threads" in capsys.readouterr().err
