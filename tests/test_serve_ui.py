"""The web page of ``dcclip serve``: served with a strict CSP, only its own files, no inline code, off with --no-ui.

The app runs in-process (FastAPI's TestClient) over a tiny torch-free bundle; what the page does in a browser is
tested in tests/browser (``make test-browser``).
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers.serve_bundles import onnx_bundle

from dcclip.serve.app import create_app
from dcclip.serve.limits import ServeLimits, ServeSettings
from dcclip.serve.ui import ASSETS, CONTENT_SECURITY_POLICY, STATIC_DIR

pytestmark = pytest.mark.usefixtures("restore_pil_pixel_limit")

REPO = Path(__file__).resolve().parents[1]
STATIC_FILES = ("index.html", "app.js", "style.css")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return onnx_bundle(tmp_path_factory.mktemp("ui") / "bundle")


@pytest.fixture(scope="module")
def client(bundle) -> TestClient:
    return TestClient(create_app(bundle))


def static_text(name: str) -> str:
    return (STATIC_DIR / name).read_text("utf-8")


def assert_security_headers(response) -> None:
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


def test_the_page_is_served_with_a_strict_content_security_policy(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert_security_headers(response)
    policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY and "*" not in CONTENT_SECURITY_POLICY
    assert response.text == static_text("index.html")


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_the_page_files_are_served_with_their_types_and_headers(client, name):
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    media = {"app.js": "text/javascript", "style.css": "text/css"}[name]
    assert response.headers["content-type"] == f"{media}; charset=utf-8"
    assert_security_headers(response)
    assert response.text == static_text(name)


@pytest.mark.parametrize(
    "path",
    [
        "/static/index.html",  # the page is served at / only
        "/static/ui.py",
        "/static/..%2fui.py",
        "/static/%2e%2e%2fui.py",
        "/static/%2e%2e",
        "/static/..%5cui.py",
        "/static/app.js%00.png",
        "/static/",
        "/static",
        "/index.html",
        "/static/../serve/ui.py",
    ],
)
def test_nothing_but_the_page_files_can_be_fetched(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_page_holds_no_inline_code_and_loads_nothing_from_elsewhere():
    html = static_text("index.html")
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.S)
    assert scripts == [""], "one external script, no inline code"
    assert re.search(r'<script src="/static/app\.js"', html)
    assert '<link rel="stylesheet" href="/static/style.css">' in html
    assert "<style" not in html and not re.search(r"\sstyle=", html), "no inline styles"
    assert not re.search(r"\son[a-z]+\s*=", html), "no inline event handlers"
    for name in STATIC_FILES:
        text = static_text(name)
        assert not re.search(r"https?://|//cdn|@import|url\(", text), f"{name} must not load anything from elsewhere"


def test_the_script_builds_the_page_from_text_never_from_html():
    script = static_text("app.js")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", ".html("):
        assert sink not in script, sink
    assert 'setAttribute("style"' not in script and "cssText" not in script
    assert "textContent" in script and "createObjectURL" in script


def test_every_element_the_script_uses_is_on_the_page():
    ids_in_page = set(re.findall(r'\bid="([^"]+)"', static_text("index.html")))
    script = static_text("app.js")
    used = set(re.findall(r'byId\("([^"]+)"\)', script))
    templated = re.findall(r"byId\(`([^`]+)`\)", script)  # `tab-${name}`, `panel-${tab}`: one per tab
    used |= {re.sub(r"\$\{\w+\}", tab, pattern) for pattern in templated for tab in ("classify", "search")}
    assert used and used <= ids_in_page, sorted(used - ids_in_page)


def test_the_page_uses_only_the_public_api(client):
    script = static_text("app.js")
    called = set(re.findall(r'api\("(/[^"]*)"', script))
    assert called == {"/v1/info", "/v1/classify", "/v1/search"}
    documented = set(client.get("/openapi.json").json()["paths"])
    assert called <= documented
    assert "/" not in documented and "/static/{name}" not in documented, "the page stays out of the API schema"


def test_info_tells_the_page_its_limits_languages_and_index(client):
    info = client.get("/v1/info").json()
    assert info["limits"] == ServeLimits().to_dict() and info["limits"]["max_search_k"] >= 1
    assert info["languages"] == ["en", "fr", "zh"]
    assert info["index"] == {"loaded": False, "count": 0}


def test_no_ui_serves_the_api_only(bundle):
    client = TestClient(create_app(bundle, ui=False))
    for path in ("/", "/static/app.js", "/static/style.css"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
    assert client.get("/v1/info").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}


def test_ui_and_index_settings_reach_the_workers(bundle, tmp_path):
    settings = ServeSettings(bundle, ServeLimits(), "fp32", None, ui=False, index=tmp_path / "index")
    back = ServeSettings.from_env(settings.to_env())
    assert back.ui is False and back.index == (tmp_path / "index").resolve()
    default = ServeSettings.from_env(ServeSettings(bundle, ServeLimits()).to_env())
    assert default.ui is True and default.index is None


def test_the_serve_command_passes_no_ui_and_index(monkeypatch, tmp_path):
    import dcclip.serve
    from dcclip.cli import main

    calls: list[dict] = []
    monkeypatch.setattr(dcclip.serve, "serve", lambda bundle, **options: calls.append({"bundle": bundle, **options}))
    assert main(["serve", "--bundle", str(tmp_path), "--no-ui", "--index", str(tmp_path / "idx")]) == 0
    assert main(["serve", "--bundle", str(tmp_path)]) == 0
    assert calls[0]["ui"] is False and calls[0]["index"] == tmp_path / "idx"
    assert calls[1]["ui"] is True and calls[1]["index"] is None


def test_the_page_files_ship_in_the_wheel():
    """pyproject's package data for dcclip.serve covers every file of static/ (a miss works here, 404s installed)."""
    import tomllib

    package_data = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["package-data"]
    patterns = package_data["dcclip.serve"]
    files = {path.name for path in STATIC_DIR.iterdir()}
    shipped = {name for name in files if any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns)}
    assert shipped == files >= set(STATIC_FILES)
