"""Stumbles a new user met following the README (issue 29): each is an error that says what to do, or works."""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import tomllib
from helpers.images import jpeg_bytes
from helpers.serve_bundles import onnx_bundle

from dcclip.cli import main
from dcclip.data.shards import add_sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return onnx_bundle(tmp_path_factory.mktemp("newcomer") / "bundle")


def txt_only_shards(out: Path, n: int = 6) -> Path:
    """img2dataset-style shards: KEY.jpg + KEY.txt, no language anywhere."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "00000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(n):
            add_sample(tar, f"{i:09d}", {"jpg": jpeg_bytes(i), "txt": f"a red circle {i}".encode()})
    return out


# ------------------------------------------------------------------------------------ runs that do nothing fail


def test_csv_of_image_urls_is_refused_up_front_naming_img2dataset(tmp_path, capsys):
    url = "http://127.0.0.1:8000/images/0.jpg"
    (tmp_path / "pairs.csv").write_text(f"image,en\n{url},a red circle\n")
    assert main(["shards", "build", "--from", "csv", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "img2dataset" in err and url in err and "http:/127" not in err.replace(url, "")


def test_a_build_that_writes_no_sample_is_an_error(tmp_path, capsys):
    (tmp_path / "pairs.csv").write_text("image,en\nmissing.jpg,a red circle\n")
    assert main(["shards", "build", "--from", "csv", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "o")]) == 1
    assert "no usable sample" in capsys.readouterr().err


def test_wds_without_caption_language_is_an_error_naming_the_flag(tmp_path, capsys):
    shards = txt_only_shards(tmp_path / "in")
    assert main(["shards", "build", "--from", "wds", str(shards), "--out", str(tmp_path / "o")]) == 1
    assert "--caption-lang" in capsys.readouterr().err
    argv = ["shards", "build", "--from", "wds", str(shards), "--out", str(tmp_path / "o2"), "--caption-lang", "fr"]
    assert main([*argv, "--max-samples", "4"]) == 0
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert manifest["samples"] == 4 and manifest["langs"] == {"fr": 4}


class NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(404)

    def log_message(self, *args):
        pass


def test_wds_build_of_a_404_url_is_an_error(tmp_path, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/missing-00000.tar"
        argv = ["shards", "build", "--from", "wds", url, "--out", str(tmp_path / "o"), "--caption-lang", "en"]
        assert main(argv) == 1
    finally:
        server.shutdown()
    assert "404" in capsys.readouterr().err


def test_inspect_of_a_file_that_is_not_a_tar_fails(tmp_path, capsys):
    (tmp_path / "notes.tar").write_text("not a tar at all")
    assert main(["shards", "inspect", "--shards", str(tmp_path / "notes.tar")]) == 1
    assert "no sample could be read" in capsys.readouterr().err


def test_index_build_of_one_image_file(bundle, tmp_path, capsys):
    (tmp_path / "one.jpg").write_bytes(jpeg_bytes(3))
    argv = [
        "index",
        "build",
        "--bundle",
        str(bundle),
        "--images",
        str(tmp_path / "one.jpg"),
        "--out",
        str(tmp_path / "i"),
    ]
    assert main([*argv, "--no-progress", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1
    (tmp_path / "notes.txt").write_text("hello")
    argv = [
        "index",
        "build",
        "--bundle",
        str(bundle),
        "--images",
        str(tmp_path / "notes.txt"),
        "--out",
        str(tmp_path / "j"),
    ]
    assert main(argv) == 1
    assert "neither an image file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- one label rule


def test_classify_splits_labels_on_cjk_commas(bundle, tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(1))
    argv = [
        "classify",
        "--bundle",
        str(bundle),
        str(tmp_path / "a.jpg"),
        "--labels",
        "红色的圆形，红色的六边形、蓝色的正方形",
    ]
    assert main([*argv, "--lang", "zh", "--json"]) == 0
    labels = {row["label"] for row in json.loads(capsys.readouterr().out)[0]["labels"]}
    assert labels == {"红色的圆形", "红色的六边形", "蓝色的正方形"}


def test_the_api_splits_labels_by_the_same_rule(bundle):
    from fastapi.testclient import TestClient

    from dcclip.serve import create_app

    with TestClient(create_app(bundle)) as client:
        files = [("images", ("a.jpg", jpeg_bytes(1), "image/jpeg"))]
        answer = client.post(
            "/v1/classify", files=files, data={"labels": "دائرة حمراء، مربع أزرق,一个圆", "lang": "en"}
        )
    assert answer.status_code == 200, answer.text
    assert {p["label"] for p in answer.json()["results"][0]["predictions"]} == {"دائرة حمراء", "مربع أزرق", "一个圆"}


def test_search_default_templates_and_docs_offline(bundle, tmp_path):
    from fastapi.testclient import TestClient

    from dcclip.serve import create_app

    for name in ("a", "b"):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        (tmp_path / "imgs" / f"{name}.jpg").write_bytes(jpeg_bytes(ord(name)))
    assert main(["index", "build", "--bundle", str(bundle), "--images", str(tmp_path / "imgs"), "--out",
                 str(tmp_path / "idx"), "--no-progress"]) == 0  # fmt: skip
    with TestClient(create_app(bundle, index=tmp_path / "idx")) as client:
        body = {"text": "a red circle", "lang": "fr", "k": 2, "templates": ["default"]}
        assert client.post("/v1/search", json=body).status_code == 200
        docs = client.get("/docs")
        script = client.get("/docs.js")
    assert docs.status_code == 200 and script.status_code == 200
    assert "http://" not in docs.text and "https://" not in docs.text + script.text  # nothing from a CDN
    assert "/openapi.json" in script.text


# ------------------------------------------------------------------------------- missing extras name themselves


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [("uvicorn", ["serve", "--bundle", "b"], "serve"), ("torch", ["distill"], "train")],
)
def test_a_missing_extra_is_named(blocked, argv, extra):
    code = f"import sys; sys.modules[{blocked!r}] = None\nfrom dcclip.cli import main\nsys.exit(main({argv!r}))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert f'pip install "dcclip[{extra}]"' in done.stderr


def test_the_data_packages_are_declared():
    """Every folder setuptools ships (package data included) is a declared package: no 'would be ignored' warnings."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(tool["packages"])
    for package, folder in tool["package-dir"].items():
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_dir() and "__pycache__" not in path.parts and any(p.is_file() for p in path.iterdir()):
                name = ".".join([package, *path.relative_to(ROOT / folder).parts])
                assert name in declared, f"{path.relative_to(ROOT)} is shipped but not declared as {name}"


# -------------------------------------------------------------------------------------------- said once, clearly


def test_language_less_samples_are_reported_once_with_the_flag(caplog):
    from dcclip.data.pipeline import SkipStats

    stats = SkipStats()
    reason = "sample {key}: one .txt caption and no 'captions' object; give its language with data.caption_lang"
    with caplog.at_level(logging.WARNING, logger="dcclip"):
        for i in range(200):
            stats.record(f"{i:09d}", reason.format(key=f"{i:09d}"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--caption-lang" in warnings[0]
    assert stats.count == 200


def test_cached_features_with_augmentation_are_refused(monkeypatch):
    import dcclip.stages.build as build
    from dcclip.config import ConfigError, load_config

    monkeypatch.setattr(build, "find_cached_features", lambda train, features: (features, {}))
    cfg = load_config("demo", ["data.features=/data/features"])
    assert cfg.data.augment != "none"
    with pytest.raises(ConfigError, match=r"data\.augment=none"):
        build.teacher_side(cfg, True, None, "cpu")


def test_a_big_tokenizer_says_what_it_costs(caplog):
    from dcclip.models.students import build_student

    with caplog.at_level(logging.INFO, logger="dcclip"):
        build_student("test-student", embed_dim=32, vocab_size=250002)
    line = next(r.getMessage() for r in caplog.records if "text tower" in r.getMessage())
    assert "250002-piece" in line and "MB" in line and "tokenizer train" in line


def test_throughput_keeps_two_significant_figures():
    from dcclip.engine.metrics import format_rate

    assert [format_rate(x) for x in (0.87, 0.0123, 12.4, 1234.0)] == ["0.87", "0.012", "12", "1200"]
