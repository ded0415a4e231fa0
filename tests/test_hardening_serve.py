"""Hardening, round two (issue 27), HTTP classes: slow-drip clients and memory per request."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.serve_bundles import onnx_bundle
from helpers.server_process import STARTUP_SECONDS, free_port
from PIL import Image

from dcclip.serve.limits import ServeLimits

pytestmark = pytest.mark.usefixtures("restore_pil_pixel_limit")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return onnx_bundle(tmp_path_factory.mktemp("hardening-serve") / "bundle")


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _files(*items: bytes, kind: str = "png") -> list:
    return [("images", (f"i{n}.{kind}", data, f"image/{kind}")) for n, data in enumerate(items)]


# ------------------------------------------------------------------------------------------------ pixels per request


def test_decoded_pixels_per_request_are_bounded_from_the_headers(bundle):
    from fastapi.testclient import TestClient

    from dcclip.serve.app import create_app

    limits = ServeLimits(max_image_pixels=4_000_000, max_request_pixels=6_000_000)
    app = create_app(bundle, limits)
    decoded: list[int] = []
    original = app.state.service.classifier.model.preprocess

    class Counting:
        image_size = original.image_size

        def __call__(self, image):
            decoded.append(image.width * image.height)
            return original(image)

    app.state.service.classifier.model.preprocess = Counting()
    with TestClient(app) as http:
        # four uniform 2000x1000 PNGs: a few KB of body, each under max_image_pixels, 8 MP together
        response = http.post("/v1/embeddings/image", files=_files(*[_png(2000, 1000)] * 4))
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "request_pixels_too_large"
        assert decoded == [], "nothing may be decoded before the request's total is known"
        assert http.post("/v1/embeddings/image", files=_files(*[_png(2000, 1000)] * 3)).status_code == 200
        # JPEGs decode at a reduced scale, so 4 large JPEGs fit where 4 PNGs of the same size did not
        response = http.post(
            "/v1/classify", files=_files(*[_jpeg(2000, 1000)] * 4, kind="jpeg"), data={"labels": "a,b"}
        )
        assert response.status_code == 200, response.text
    assert max(decoded[3:]) <= 250 * 125 * 4  # 1/8 scale or at most twice the model's side: never 2000x1000
    assert app.state.service.limits.to_dict()["max_request_pixels"] == 6_000_000


def test_at_most_max_concurrent_decodes_images_are_decoded_at_once(bundle, monkeypatch):
    from dcclip.serve import service as service_module
    from dcclip.serve.service import Service

    service = Service(bundle, ServeLimits(max_concurrent_decodes=2))
    lock, now, most = threading.Lock(), [0], [0]
    original = service_module.decode_upload

    def slow_decode(*args, **kwargs):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.05)
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(service_module, "decode_upload", slow_decode)
    from dcclip.serve.forms import ImageUpload

    uploads = [ImageUpload(filename=f"{i}.png", data=_png(64, 64)) for i in range(3)]
    threads = [threading.Thread(target=service.embed_images, args=(uploads,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert most[0] == 2


# ------------------------------------------------------------------------------------------------ slow drip


def _start(bundle: Path, log: Path, *options: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "dcclip", "serve", "--bundle", str(bundle), "--port", str(port), *options]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return process, port
        except httpx.TransportError:
            time.sleep(0.1)


def _drip(port: int, lines: int, interval: float, stop: threading.Event, closed: list[float]) -> None:
    """One slow-drip client: a header line every ``interval`` s (never silent long enough for the read timeout)."""
    started = time.monotonic()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return
    with sock:
        try:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
            for n in range(lines):
                if stop.wait(interval):
                    return
                sock.sendall(f"X-Drip-{n}: {'a' * 20}\r\n".encode())
        except OSError:
            closed.append(time.monotonic() - started)


def test_slow_drip_clients_are_closed_and_healthz_keeps_answering(bundle, tmp_path):
    """30 connections (more than --max-connections) each trickling a header line every 0.5 s: a bounded attack."""
    log = tmp_path / "server.log"
    options = ("--read-timeout", "2", "--request-timeout", "3", "--max-connections", "20", "--threads", "1")
    process, port = _start(bundle, log, *options)
    stop, closed = threading.Event(), []
    drippers = [threading.Thread(target=_drip, args=(port, 16, 0.5, stop, closed)) for _ in range(30)]
    try:
        for thread in drippers:
            thread.start()
        time.sleep(1.0)
        codes = []
        for _ in range(4):  # while every dripper is still dripping
            codes.append(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5.0).status_code)
            time.sleep(0.3)
        assert codes == [200] * 4, codes
        for thread in drippers:
            thread.join(timeout=15)
        assert len(closed) == 30, "every slow-drip connection is closed before it finishes dripping (8 s)"
        assert max(closed) < 7
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5.0).status_code == 200
        text = log.read_text()
        assert "request not received in full within 3 s" in text or "oldest closed" in text
    finally:
        stop.set()
        process.terminate()
        process.wait(timeout=20)


def test_request_timeout_must_be_positive():
    from dcclip.serve.protocol import protocol_with_timeout

    with pytest.raises(ValueError, match="request_timeout"):
        protocol_with_timeout(15.0, 0)
    assert np.isclose(protocol_with_timeout(15.0, 2.5).request_timeout, 2.5)
