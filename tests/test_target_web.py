"""The web target's build without a browser: layout, copied bundle files, CSP, config, and the missing-npm error.

The build runs `npm ci` (once per lock, into ~/.cache/dcclip/web): without npm these fail with the install hint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers.serve_bundles import onnx_bundle

from dcclip.export.targets import build_target, web
from dcclip.runtime.bundle import verify_bundle
from dcclip.runtime.classifier import DEFAULT_TEMPLATES


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    bundle = onnx_bundle(tmp_path_factory.mktemp("bundle") / "bundle")
    out = tmp_path_factory.mktemp("web") / "site"
    build_target("web", bundle, out)
    return out


def test_layout_and_bundle_files(site: Path) -> None:
    for name in web.PAGE_FILES:
        assert (site / name).is_file(), name
    assert sorted(p.name for p in (site / "vendor").iterdir()) == sorted(web.VENDOR_FILES.values())
    verify_bundle(site / "model")  # every manifest file copied, sha256 intact
    assert not (site / "node_modules").exists()


def test_csp_allows_only_own_origin(site: Path) -> None:
    html = (site / "index.html").read_text("utf-8")
    csp = re.search(r'Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'self'" in csp and "script-src 'self' 'wasm-unsafe-eval'" in csp
    assert "http" not in csp and "*" not in csp
    for source in (site / name for name in web.PAGE_FILES):
        assert not re.search(r"https?://", source.read_text("utf-8")), source.name


def test_config_carries_runtime_templates(site: Path) -> None:
    config = json.loads((site / "config.json").read_text("utf-8"))
    assert config["templates"]["fr"] == list(DEFAULT_TEMPLATES["fr"])
    assert config["pad_id"] == 0 and config["precisions"] == ["fp32"] and config["index"] is None
    assert config["resample_order"] in ("pillow13", "horizontal")


def test_missing_npm_names_what_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DCCLIP_WEB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(web.shutil, "which", lambda name: None)
    with pytest.raises(web.WebTargetError, match="npm"):
        build_target("web", onnx_bundle(tmp_path / "bundle"), tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_search_folder_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(web.WebTargetError, match="no images"):
        web.export_images(onnx_bundle(tmp_path / "bundle"), tmp_path / "empty", tmp_path)


def test_lock_pins_exact_versions() -> None:
    package = json.loads((web.SOURCES / "package.json").read_text("utf-8"))
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in package["dependencies"].values())
    lock = json.loads((web.SOURCES / "package-lock.json").read_text("utf-8"))
    assert "node_modules/@huggingface/transformers" not in lock["packages"]
