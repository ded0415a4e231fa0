"""aarch64 Linux target: the torch-free runtime in an emulated Debian arm64 root answers like the runtime here.

``make test-arm64`` runs this folder (plain ``pytest`` does not: tests/edge is in norecursedirs). It needs root,
mmdebstrap, arch-test and qemu-user-static with binfmt (the make target installs them). The first run builds the root
into ~/.cache/dcclip/arm64 (``$DCCLIP_ARM64_CACHE`` overrides): several minutes under emulation; later runs reuse it.
The unit tests at the top need none of that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dcclip.export.targets import arm64

# a cold run builds the root (mmdebstrap and pip under qemu) inside the fixture: far beyond the default 600 s
pytestmark = pytest.mark.timeout(3600)


# ------------------------------------------------------------------------------------------------ no emulation


def test_missing_tools_are_named_with_the_apt_command(monkeypatch):
    monkeypatch.setattr(arm64.shutil, "which", lambda tool: None if tool == "mmdebstrap" else f"/usr/bin/{tool}")
    with pytest.raises(arm64.Arm64SetupError, match=r"missing mmdebstrap: .*apt-get install -y mmdebstrap arch-test"):
        arm64.check_host()


def test_binfmt_off_is_named_with_the_command(monkeypatch, tmp_path):
    monkeypatch.setattr(arm64.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(arm64, "BINFMT", tmp_path / "qemu-aarch64")
    with pytest.raises(arm64.Arm64SetupError, match=r"update-binfmts --enable qemu-aarch64"):
        arm64.check_host()


def test_cache_key_follows_the_constraints_pins(tmp_path):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# pins\nnumpy==2.0.1\nonnxruntime==1.20.0\nPillow==11.0.0\ntokenizers==0.21.0\ntorch==9\n")
    versions = arm64.pinned_versions(constraints)
    assert versions == {"onnxruntime": "1.20.0", "numpy": "2.0.1", "pillow": "11.0.0", "tokenizers": "0.21.0"}
    key = arm64.cache_key("trixie", versions)
    assert key.startswith("trixie-") and "onnxruntime1.20.0" in key and "numpy2.0.1" in key and "torch" not in key


def test_a_failed_or_killed_build_leaves_no_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(arm64, "check_host", lambda: None)
    versions = {name: "1.0" for name in arm64.RUNTIME_PACKAGES}
    key = arm64.cache_key("trixie", versions)
    killed = tmp_path / f".{key}.partial-999999999"  # what a SIGKILLed build leaves: a dead pid's partial folder
    (killed / "root").mkdir(parents=True)

    def failing(out: Path, *_args, **_kw):
        (out / "root" / "etc").mkdir(parents=True)
        raise arm64.Arm64RunError("mmdebstrap: exit status 1")

    monkeypatch.setattr(arm64, "build_root", failing)
    with pytest.raises(arm64.Arm64RunError):
        arm64.ensure_root(tmp_path, "trixie", versions, log=lambda _: None)
    assert not (tmp_path / key).exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]

    monkeypatch.setattr(arm64, "build_root", lambda out, *_a, **_k: (out / "root").mkdir() or {"python": "3.13"})
    built = arm64.ensure_root(tmp_path, "trixie", versions, log=lambda _: None)
    assert built.built and (tmp_path / key / "cache.json").is_file()
    monkeypatch.setattr(arm64, "build_root", failing)  # a finished cache is reused, never rebuilt
    (killed / "root").mkdir(parents=True)  # and a half root killed meanwhile is removed on reuse too
    again = arm64.ensure_root(tmp_path, "trixie", versions, log=lambda _: None)
    assert not again.built and again.info["python"] == "3.13" and not killed.exists()


# ------------------------------------------------------------------------------------------------ emulated runs


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The test student exported with fp32 and int8 towers (helpers.serve_bundles.student_bundle's checkpoint)."""
    from helpers.serve_bundles import student_bundle
    from helpers.threads import torch_threads

    from dcclip.export.bundle import export_bundle

    root = tmp_path_factory.mktemp("arm64_student")
    student_bundle(root)
    with torch_threads(1):
        export_bundle(root / "run", root / "bundle-both", precision="both")  # a run directory: its latest step
    return root / "bundle-both"


@pytest.fixture(scope="module")
def report(bundle, toy_world, tmp_path_factory) -> dict:
    """The parity report of ``main`` on the toy world's shapes eval set (10 images, 90 labels, up to 3 languages)."""
    out = tmp_path_factory.mktemp("arm64_report") / "report.json"
    images = toy_world / "eval" / "shapes"
    code = arm64.main(["--bundle", str(bundle), "--images", str(images), "--out", str(out)])
    result = json.loads(out.read_text("utf-8"))
    assert code == (1 if result["failures"] else 0)
    return result


def test_the_arm64_side_ran_on_aarch64_with_the_pinned_wheels(report):
    arm, x86 = report["platform"]["arm64"], report["platform"]["x86"]
    assert arm["machine"] == "aarch64" and x86["machine"] == "x86_64"
    assert arm["python"].rsplit(".", 1)[0] == report["root"]["python"]
    assert arm["versions"] == arm64.pinned_versions()
    assert arm["env"] == arm64.EMULATION_ENV


def test_numpy_blas_is_right_inside_the_root(report):
    assert report["blas_check_max_abs"]["arm64"] < 1e-3  # a wrong OpenBLAS kernel is off by ~1


def test_the_bundle_ships_both_precisions(report):
    precisions = report["bundle"]["precisions"]  # what each tower really computes in (int8 may keep a tower fp32)
    assert list(precisions) == ["fp32", "int8"] and precisions["int8"]["text"] == "int8"


def test_fp32_embeddings_match_within_1e_5(report):
    fp32 = report["precisions"]["fp32"]
    assert fp32["image_max_abs"] <= 1e-5 and fp32["text_max_abs"] <= 1e-5


def test_int8_embeddings_stay_close(report):
    int8 = report["precisions"]["int8"]
    assert int8["image_max_abs"] <= arm64.INT8_TOLERANCE and int8["text_max_abs"] <= arm64.INT8_TOLERANCE


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_top1_and_probabilities_match_in_every_language(report, precision):
    langs = report["precisions"][precision]["classify"]
    assert len(langs) >= 2
    for row in langs.values():
        assert row["images"] == 10 and row["top1_identical"] == 10
        assert row["prob_max_abs"] <= 1e-4


def test_int8_agreement_is_reported_and_the_same_on_both(report):
    agreement = report["int8_agreement"]
    assert agreement["x86"] is not None and agreement["arm64"] == agreement["x86"]


def test_dcclip_classify_cli_gives_the_same_answers(report):
    cli = report["cli"]
    assert cli["top1_identical"] == cli["images"] == 10 and cli["ranking_identical"]
    assert cli["prob_max_abs"] <= 1e-4


def test_index_build_and_text_search_match(report):
    index = report["index"]
    assert index["count"] == [10, 10] and index["keys_identical"] and index["hits_identical"]
    assert index["embeddings_max_abs"] <= 1e-3  # float16 rows: one rounding step at most
    assert index["score_max_abs"] <= 1e-3


def test_typed_errors_are_the_same(report):
    assert report["errors_identical"]
    assert report["errors"]["arm64"]["empty_labels"] == "EmptyLabelsError"


def test_no_parity_failures_and_nothing_left_in_the_root(report):
    assert report["failures"] == []
    leftovers = list((Path(report["root"]["cache"]) / "root" / "tmp").glob(".dcclip-arm64-run*"))
    assert [p for p in leftovers if p.name.endswith(f"-{os.getpid()}")] == []
