"""Fixtures of the web-target tests: a real fp32 + int8 bundle, toy-world eval images, the built static folder served
from a loopback static server, and a headless Chromium that records every network request it makes.

Shared with benchmarks/web_target.py (same server, same driver), so the benchmark measures what the tests check.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
EVAL_IMAGES = 200
LOAD_TIMEOUT_S = 120


class QuietHandler(SimpleHTTPRequestHandler):
    """Static files with the right types for ES modules and WASM, no access log; COOP/COEP when ``isolate``."""

    isolate = False
    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def end_headers(self) -> None:
        if self.isolate:  # cross-origin isolation lets onnxruntime-web use threads (SharedArrayBuffer)
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StaticServer:
    """``python -m http.server`` in a thread on 127.0.0.1 with a free port."""

    def __init__(self, root: Path, isolate: bool = False) -> None:
        handler = type("Handler", (QuietHandler,), {"isolate": isolate})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_driver():
    """Headless system Chromium (never a downloaded one) with the DevTools performance log switched on."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"missing {missing}: run make test-browser (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-extensions", "--disable-background-networking", "--lang=en-US"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_script_timeout(LOAD_TIMEOUT_S)
    browser.set_page_load_timeout(60)
    return browser


def open_page(browser, url: str) -> None:
    """Load the page and wait until its model is ready (window.dcclip.ready resolved)."""
    browser.get(url)
    call(browser, "return await window.dcclip.ready;")


def call(browser, body: str, *args: Any) -> Any:
    """Run an async JS body with ``args`` (as ``args``) and return its value; JS errors fail with their message."""
    script = (
        "const done = arguments[arguments.length - 1]; const args = Array.from(arguments).slice(0, -1);"
        f"(async () => {{ {body} }})().then(v => done({{ok: v}}), e => done({{error: String(e && e.stack || e)}}));"
    )
    result = browser.execute_async_script(script, *args)
    if "error" in result:
        raise AssertionError(f"page error: {result['error']}")
    return result["ok"]


def requested_urls(browser) -> list[str]:
    """Every URL the browser asked for since the last call (DevTools Network.requestWillBeSent)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def extract_eval_images(world: Path, out: Path, count: int) -> list[tuple[Path, int]]:
    """The first ``count`` images of the world's shapes eval set as files, with their class index."""
    out.mkdir(parents=True, exist_ok=True)
    items = []
    with tarfile.open(world / "eval" / "shapes" / "test" / "0.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith(".jpg") and len(items) < count:
                key = name[: -len(".jpg")]
                (out / Path(name).name).write_bytes(tar.extractfile(members[name]).read())
                label = int(tar.extractfile(members[f"{key}.cls"]).read().decode().strip())
                items.append((out / Path(name).name, label))
    return items


def both_precisions_bundle(root: Path) -> Path:
    """The random-weight test student exported with fp32 and int8 towers (~40 s)."""
    from helpers.serve_bundles import student_bundle

    from dcclip.export.bundle import export_bundle

    fp32 = student_bundle(root / "fp32")
    checkpoint = Path(json.loads((fp32 / "manifest.json").read_text("utf-8"))["source"]["checkpoint"])
    export_bundle(checkpoint, root / "both", precision="both")
    return root / "both"


@pytest.fixture(scope="session")
def web_bundle(tmp_path_factory) -> Path:
    return both_precisions_bundle(tmp_path_factory.mktemp("web_bundle"))


@pytest.fixture(scope="session")
def eval_world(tmp_path_factory) -> Path:
    """A toy world with 200 images per eval set (64 px, so the 32 px student downsizes them)."""
    from dcclip.data.world import generate_world

    root = tmp_path_factory.mktemp("web_world")
    generate_world(root, train_samples=8, seed=5, eval_samples=EVAL_IMAGES, image_size=64, shard_size=1000)
    return root


@pytest.fixture(scope="session")
def web_site(web_bundle, eval_world, tmp_path_factory) -> Path:
    """The built web target, with 12 eval images exported for search and every eval image under testdata/."""
    from dcclip.export.targets import build_target

    gallery = tmp_path_factory.mktemp("gallery")
    images = extract_eval_images(eval_world, tmp_path_factory.mktemp("eval_images"), EVAL_IMAGES)
    for path, _ in images[:12]:
        shutil.copyfile(path, gallery / path.name)
    site = tmp_path_factory.mktemp("web") / "site"
    build_target("web", web_bundle, site, images=gallery)
    shutil.copytree(images[0][0].parent, site / "testdata")
    return site


@pytest.fixture(scope="session")
def web_server(web_site) -> Iterator[StaticServer]:
    server = StaticServer(web_site)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def web_browser(web_server) -> Iterator[Any]:
    """One Chromium with the page open and its model loaded (fp32)."""
    browser = start_driver()
    try:
        open_page(browser, f"{web_server.url}/index.html")
        yield browser
    finally:
        browser.quit()


def png_bytes(image, **save: Any) -> bytes:
    """Encode a PIL image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()
