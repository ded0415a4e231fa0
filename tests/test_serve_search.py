"""POST /v1/search and GET /v1/index/thumbs/{id}: answers equal to the runtime's search, limits and errors in the API's
format, thumbnails by validated id only (no traversal, no other file), and an index of another bundle refused.

In-process (FastAPI's TestClient) over a tiny torch-free bundle and an index of a dozen generated images built with
``dcclip.search.build.build_index``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.serve_bundles import onnx_bundle
from PIL import Image

from dcclip.runtime import index as index_module
from dcclip.search import build
from dcclip.serve.app import create_app
from dcclip.serve.limits import ServeLimits

pytestmark = pytest.mark.usefixtures("restore_pil_pixel_limit")


IMAGES = 12
LIMITS = ServeLimits(max_search_k=5, max_templates=2, max_text_chars=40)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search")


@pytest.fixture(scope="module")
def bundle(root) -> Path:
    return onnx_bundle(root / "bundle")


@pytest.fixture(scope="module")
def index(root, bundle) -> Path:
    """An index of a folder of blocky colour images, one per seed."""
    folder = root / "images"
    folder.mkdir()
    for seed in range(IMAGES):
        blocks = np.random.default_rng(seed).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((48, 40), Image.Resampling.NEAREST).save(folder / f"scene-{seed:02d}.png")
    build.build_index(bundle, folder, root / "index", progress=False)
    return root / "index"


@pytest.fixture(scope="module")
def app(bundle, index):
    return create_app(bundle, LIMITS, index=index)


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app)


def search(client: TestClient, **body):
    return client.post("/v1/search", json=body)


def error_of(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


# --------------------------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lang", "templates"),
    [("a red circle", "en", None), ("一个红色的圆形", "zh", None), ("un carré bleu", "fr", ["une photo de {c}"])],
)
def test_search_answers_the_runtime_search(client, app, text, lang, templates):
    body = {"text": text, "lang": lang, "k": 4} | ({"templates": templates} if templates else {})
    response = search(client, **body)
    assert response.status_code == 200, response.text
    answer = response.json()
    model, loaded = app.state.service.classifier.model, app.state.index
    expected = index_module.search_text(model, loaded, text, lang, k=4, templates=templates)
    assert answer["lang"] == lang and answer["k"] == 4
    assert [(hit["id"], hit["key"]) for hit in answer["hits"]] == [(hit.id, hit.key) for hit in expected]
    assert [hit["score"] for hit in answer["hits"]] == pytest.approx([hit.score for hit in expected])
    scores = [hit["score"] for hit in answer["hits"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    for hit in answer["hits"]:
        assert set(hit) == {"id", "key", "score", "thumbnail"}, "the image's path on the server is not sent"
        assert hit["thumbnail"] == f"/v1/index/thumbs/{hit['id']}" and hit["key"].startswith("scene-")


def test_k_defaults_to_ten_within_the_server_limit(client):
    answer = search(client, text="a green triangle").json()
    assert answer["k"] == min(10, LIMITS.max_search_k) == len(answer["hits"]) and answer["lang"] == "en"


def test_info_reports_the_loaded_index(client):
    info = client.get("/v1/info").json()
    assert info["index"] == {"loaded": True, "count": IMAGES}
    assert info["limits"]["max_search_k"] == LIMITS.max_search_k


def test_thumbnails_are_served_by_id(client, app):
    for hit in search(client, text="a blue square", k=3).json()["hits"]:
        response = client.get(hit["thumbnail"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert response.content == app.state.index.thumbnail_path(hit["id"]).read_bytes()
    assert client.get(f"/v1/index/thumbs/{IMAGES - 1}").status_code == 200


# --------------------------------------------------------------------------------------------------------------------
# Thumbnail ids: integers the index knows, nothing else
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "thumb_id",
    [
        str(IMAGES),  # one past the last id
        "-1",
        "99999999999999999999999",
        "1.0",
        "0x1",
        "+1",
        "%201",
        "1%20",
        "%EF%BC%91",  # a full-width digit one: int() would read it, the route must not
        "abc",
        "%2e%2e",
        "..%2fmanifest.json",
        "%2e%2e%2fmanifest.json",
        "%2e%2e%2f%2e%2e%2fbundle%2fmanifest.json",
        "..%5cmanifest.json",
        "0.jpg",
        "0%00",
        "",
    ],
)
def test_thumbnail_ids_are_validated(client, thumb_id):
    response = client.get(f"/v1/index/thumbs/{thumb_id}")
    assert error_of(response) == (404, "not_found")


@pytest.mark.parametrize("path", ["/v1/index/thumbs/../manifest.json", "/v1/index/thumbs/0/../../manifest.json"])
def test_dot_segments_never_reach_a_file(client, path):
    response = client.get(path)
    assert response.status_code == 404 and response.headers["content-type"] == "application/json"


def test_a_thumbnail_that_points_outside_its_folder_is_not_served(bundle, index, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((copy / "thumbs" / "0.jpg").read_bytes())
    (copy / "thumbs" / "0.jpg").unlink()
    (copy / "thumbs" / "0.jpg").symlink_to(secret)
    client = TestClient(create_app(bundle, LIMITS, index=copy))
    assert error_of(client.get("/v1/index/thumbs/0")) == (404, "not_found")
    assert client.get("/v1/index/thumbs/1").status_code == 200


# --------------------------------------------------------------------------------------------------------------------
# Limits and errors, in the API's error format
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"text": "   "}, (400, "invalid_text")),
        ({"text": "x" * (LIMITS.max_text_chars + 1)}, (413, "text_too_long")),
        ({"text": "a cat", "lang": "xx"}, (400, "unknown_language")),
        ({"text": "a cat", "lang": ""}, (400, "unknown_language")),
        ({"text": "a cat", "k": 0}, (422, "validation_error")),
        ({"text": "a cat", "k": LIMITS.max_search_k + 1}, (422, "validation_error")),
        ({"text": "a cat", "k": "many"}, (422, "validation_error")),
        ({"text": "a cat", "templates": ["{c}", "a {c}", "the {c}"]}, (413, "too_many_templates")),
        ({"text": "a cat", "templates": ["{c}" + "x" * LIMITS.max_text_chars]}, (413, "text_too_long")),
        ({"text": "a cat", "templates": ["no placeholder"]}, (400, "invalid_template")),
        ({"text": "a cat", "templates": []}, (400, "invalid_template")),
        ({"text": "a cat", "extra": 1}, (422, "validation_error")),
        ({"text": 3}, (422, "validation_error")),
        ({}, (422, "validation_error")),
    ],
)
def test_search_requests_are_checked(client, body, expected):
    assert error_of(client.post("/v1/search", json=body)) == expected


def test_search_takes_json_only(client):
    response = client.post("/v1/search", content=b"text=a cat", headers={"content-type": "text/plain"})
    assert error_of(response) == (415, "unsupported_media_type")
    response = client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert error_of(response) == (400, "invalid_json")


def test_without_an_index_search_says_how_to_load_one(bundle):
    client = TestClient(create_app(bundle, LIMITS))
    response = search(client, text="a cat")
    assert error_of(response) == (404, "not_found") and "--index" in response.json()["error"]["message"]
    assert error_of(client.get("/v1/index/thumbs/0")) == (404, "not_found")
    assert client.get("/v1/info").json()["index"] == {"loaded": False, "count": 0}


# --------------------------------------------------------------------------------------------------------------------
# An index built from another bundle is refused before the server starts
# --------------------------------------------------------------------------------------------------------------------


def test_an_index_of_another_bundle_is_refused_at_start_up(root, index, monkeypatch, capsys):
    import uvicorn

    from dcclip.cli import main
    from dcclip.serve import serve
    from dcclip.serve.limits import ENV_BUNDLE, ENV_INDEX, ENV_LIMITS, ENV_PRECISION, ENV_THREADS, ENV_UI

    other = onnx_bundle(root / "other-bundle", seed=1)
    with pytest.raises(index_module.SearchIndexError, match="built with bundle"):
        create_app(other, LIMITS, index=index)
    for name in (ENV_BUNDLE, ENV_INDEX, ENV_LIMITS, ENV_PRECISION, ENV_THREADS, ENV_UI):
        monkeypatch.setenv(name, "")  # restored after the test, whatever serve() sets
    calls: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(app))
    for workers in (1, 2):
        with pytest.raises(index_module.SearchIndexError):
            serve(other, workers=workers, index=index)
    assert calls == [], "refused before uvicorn starts"
    assert main(["serve", "--bundle", str(other), "--index", str(index)]) != 0
    assert "built with bundle" in capsys.readouterr().err
    serve(other, workers=2)  # the same bundle without the index starts
    assert calls == ["dcclip.serve.app:app_from_env"]
