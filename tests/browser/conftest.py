"""Fixtures of the browser tests: a toy world, a real exported bundle, an image index, ``dcclip serve`` on loopback and
a headless Chromium driven by selenium.

Run with ``make test-browser`` (or ``pytest tests/browser``); plain ``pytest`` does not recurse here (pyproject's
norecursedirs), because these tests need Chromium. The browser is Debian's ``chromium`` with its ``chromedriver``,
both given to selenium by path: selenium-manager never runs, so nothing downloads a browser or a driver.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers.serve_bundles import student_bundle  # tests/ is on sys.path: pytest imported tests/conftest.py from there
from helpers.server_process import ServerProcess

REPO = Path(__file__).resolve().parents[2]

CHROMIUM = os.environ.get("DCCLIP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DCCLIP_CHROMEDRIVER", "/usr/bin/chromedriver")
DESKTOP = (1200, 900)
WORLD_SAMPLES = 32


@dataclass(frozen=True)
class WorldImage:
    """One toy-world image written to disk, with the shape class it shows (when it shows exactly one object)."""

    path: Path
    colour: str | None
    shape: str | None


@dataclass(frozen=True)
class World:
    """The toy world's training shards (the index is built from them) and some of their images as files."""

    shards: Path
    images: list[WorldImage]


def _object_class(meta: dict) -> tuple[str | None, str | None]:
    """(colour, shape) of a one-object scene; (None, None) for other scenes."""
    objects = meta.get("objects") or []
    if len(objects) != 1:
        return None, None
    return objects[0].get("colour"), objects[0].get("shape")


def _extract_images(shards: Path, out: Path) -> list[WorldImage]:
    """Every jpg of the shards as a file, with its class read from the sample's JSON."""
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {member.name: member for member in tar.getmembers()}
            for name, member in sorted(members.items()):
                if not name.endswith(".jpg"):
                    continue
                key = name[: -len(".jpg")]
                meta_member = members.get(f"{key}.json")
                meta = json.load(io.BytesIO(tar.extractfile(meta_member).read())) if meta_member else {}
                path = out / Path(name).name
                path.write_bytes(tar.extractfile(member).read())
                images.append(WorldImage(path, *_object_class(meta)))
    return images


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """A small toy world: its training shards and their images as files."""
    from dcclip.data.world import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, train_samples=WORLD_SAMPLES, seed=3, eval_samples=10, image_size=128, shard_size=WORLD_SAMPLES)
    return World(root / "train", _extract_images(root / "train", root / "images"))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """The random-weight test student, really exported (languages en, fr, zh)."""
    return student_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="session")
def index(bundle, world, tmp_path_factory) -> Path:
    """An image index of the world's training images, built from the same bundle."""
    from dcclip.search.build import build_index

    out = tmp_path_factory.mktemp("index") / "index"
    build_index(bundle, world.shards, out, progress=False)
    return out


def dcclip_server(bundle: Path, index: Path | None, log: Path) -> ServerProcess:
    """``dcclip serve`` in a subprocess on 127.0.0.1, exactly as a user starts it (with an image index if given)."""
    command = [sys.executable, "-m", "dcclip", "serve", "--bundle", str(bundle), "--threads", "1"]
    command += ["--index", str(index)] if index is not None else []
    return ServerProcess(lambda port: [*command, "--port", str(port)], log)


@pytest.fixture(scope="session")
def server(bundle, index, tmp_path_factory) -> Iterator[ServerProcess]:
    running = dcclip_server(bundle, index, tmp_path_factory.mktemp("server") / "server.log")
    try:
        running.wait_ready()
        yield running
    finally:
        running.close()


@pytest.fixture(scope="session")
def api(server) -> Iterator[httpx.Client]:
    """A plain HTTP client of the same server: what the page shows must equal what the API answers."""
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        yield client


def chrome_options():
    """Headless Chromium from the system, with the browser console captured."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--lang=en-US",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@pytest.fixture(scope="session")
def driver() -> Iterator:
    """One headless Chromium for the session; each test loads the page afresh."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"missing {missing}: run make test-browser (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # The driver's path is given: selenium-manager (which would download one) is never consulted.
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=chrome_options())
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()
