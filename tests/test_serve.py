"""HTTP service: a real uvicorn server over a tiny real bundle, good and bad requests, limits, errors, concurrency.

The bundle is exported once per module from a random-weight test student; the server runs in a subprocess on a free
loopback port exactly as ``dcclip serve --workers N`` starts each worker (uvicorn factory + environment settings).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.images import encode, scene
from helpers.server_process import STARTUP_SECONDS, ServerProcess, free_port
from helpers.threads import torch_threads
from PIL import Image

from dcclip.runtime.classifier import ZeroShotClassifier
from dcclip.runtime.errors import BundleError
from dcclip.serve.errors import ERROR_CODES
from dcclip.serve.limits import ServeLimits, ServeSettings

pytestmark = pytest.mark.usefixtures("restore_pil_pixel_limit")

LANGS = ["en", "fr", "zh"]
MB = 1024 * 1024
LIMITS = ServeLimits(max_request_bytes=2 * MB)  # small enough to test cheaply; everything else at the defaults
LABELS = "cat,dog,red circle,blue square"
TIMEOUT = httpx.Timeout(20.0)


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: a bundle, a running server, images
# --------------------------------------------------------------------------------------------------------------------


def export_tiny_bundle(root: Path) -> Path:
    """Tokenizer -> test student (random weights) -> checkpoint -> fp32 bundle, all under ``root``."""
    import torch

    from dcclip.export.bundle import export_bundle
    from dcclip.models.students import build_student, save_student_checkpoint
    from dcclip.models.tokenizers import TextTokenizer, train_tokenizer

    words = ["a red circle", "un cercle rouge", "一个红色的圆形", "a blue square", "un carré bleu", "蓝色方块"]
    tok_path = train_tokenizer([f"{text} {i}" for i in range(40) for text in words], 300, root / "tokenizer")
    tok = TextTokenizer.from_path(tok_path)
    with torch_threads(1):  # tiny models on a shared CPU: avoid OpenMP spin-waiting
        torch.manual_seed(0)
        student = build_student("test-student", embed_dim=32, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
        checkpoint = save_student_checkpoint(root / "run", 1, student, tok_path, LANGS, max_text_len=16)
        export_bundle(checkpoint, root / "bundle", precision="fp32")
    return root / "bundle"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def classifier(bundle) -> ZeroShotClassifier:
    """The same bundle in-process: what the server's answers must agree with."""
    return ZeroShotClassifier.from_bundle(bundle)


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def uvicorn_server(bundle: Path, limits: ServeLimits, log: Path) -> ServerProcess:
    """A uvicorn subprocess serving the bundle on 127.0.0.1 through the app factory, as ``dcclip serve`` workers do."""
    env = {**os.environ, **ServeSettings(bundle, limits, "fp32", 1).to_env()}
    command = [sys.executable, "-m", "uvicorn", "dcclip.serve.app:app_from_env", "--factory"]
    return ServerProcess(lambda port: [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                         log, env)  # fmt: skip


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory) -> Iterator[ServerProcess]:
    running = uvicorn_server(bundle, LIMITS, tmp_path_factory.mktemp("serve-log") / "server.log")
    try:
        running.wait_ready()
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        yield http


def noise_png(seed: int, side: int = 64) -> bytes:
    """A PNG of random pixels (barely compressible, so truncating it cuts image data)."""
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)))


def png_bomb(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: a few tens of KB that would decode to hundreds of MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows_per_block = 1000
    compressor = zlib.compressobj(9)
    block = (b"\x00" + bytes(side // 8)) * rows_per_block  # filter byte + packed row, per row
    data = b"".join(compressor.compress(block) for _ in range(side // rows_per_block)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


GOOD_PNG = encode(scene(0))


def strip_png(width: int = 2_000_000) -> bytes:
    """A one-pixel-high strip: a few KB of PNG whose shortest-side resize would ask for gigabytes."""
    buffer = io.BytesIO()
    Image.new("L", (width, 1)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def image_files(*items: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"img{i}.png", data, "image/png")) for i, data in enumerate(items)]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A JSON error of exactly the documented shape, status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert ERROR_CODES[code][0] == status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text
    return body["error"]


def good_classify(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/v1/classify", files=image_files(GOOD_PNG), data={"labels": LABELS, "top_k": "2"})
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------------------------------------------------
# Good requests
# --------------------------------------------------------------------------------------------------------------------


def test_healthz_info_and_docs(client, bundle):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/info").json()
    manifest = json.loads((bundle / "manifest.json").read_text("utf-8"))
    assert info["limits"] == LIMITS.to_dict() and info["precision"] == "fp32"
    assert info["languages"] == LANGS and info["manifest"]["embed_dim"] == 32
    assert info["manifest"]["files"] == manifest["files"]
    assert "config" in manifest["source"] and "config" not in info["manifest"]["source"], "training config left out"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/embeddings/image", "/v1/embeddings/text", "/v1/info", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"images", "labels", "lang", "top_k", "templates"} <= set(body["properties"])


def test_classify_matches_the_runtime(client, classifier):
    images = [scene(1), scene(2, (80, 30))]
    response = client.post("/v1/classify", files=image_files(*map(encode, images)), data={"labels": LABELS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["lang"] == "en" and body["top_k"] == 5 and len(body["results"]) == 2
    expected = classifier.classify(images, LABELS.split(","), "en", top_k=5)
    for result, want, name in zip(body["results"], expected, ["img0.png", "img1.png"], strict=True):
        assert result["filename"] == name
        assert [p["label"] for p in result["predictions"]] == [label for label, _ in want], "top_k capped at 4 labels"
        np.testing.assert_allclose([p["probability"] for p in result["predictions"]], [p for _, p in want], atol=1e-6)
        assert sum(p["probability"] for p in result["predictions"]) == pytest.approx(1.0)


def test_classify_label_forms_languages_and_templates(client, classifier):
    files = image_files(GOOD_PNG)
    repeated = client.post("/v1/classify", files=files, data={"labels": ["red, dark", "blue"], "top_k": "1"})
    assert repeated.status_code == 200, repeated.text
    assert repeated.json()["results"][0]["predictions"][0]["label"] in {"red, dark", "blue"}
    as_json = client.post("/v1/classify", files=files, data={"labels": '["chat", "chien"]', "lang": "fr"})
    assert {p["label"] for p in as_json.json()["results"][0]["predictions"]} == {"chat", "chien"}
    templates = ["a drawing of a {c}", "{c}"]
    with_templates = client.post(
        "/v1/classify", files=files, data={"labels": "猫,狗", "lang": "zh", "templates": json.dumps(templates)}
    )
    assert with_templates.status_code == 200, with_templates.text
    want = classifier.classify([scene(0)], ["猫", "狗"], "zh", templates, top_k=5)[0]
    got = with_templates.json()["results"][0]["predictions"]
    assert [(p["label"], round(p["probability"], 6)) for p in got] == [(label, round(p, 6)) for label, p in want]


def test_embedding_endpoints(client, classifier):
    images = client.post("/v1/embeddings/image", files=image_files(GOOD_PNG, encode(scene(3))))
    assert images.status_code == 200, images.text
    body = images.json()
    assert body["count"] == 2 and body["dim"] == 32 and np.asarray(body["embeddings"]).shape == (2, 32)
    np.testing.assert_allclose(body["embeddings"], classifier.embed_images([scene(0), scene(3)]), atol=1e-5)
    texts = ["a red circle", "un carré bleu", "蓝色方块"]
    answer = client.post("/v1/embeddings/text", json={"texts": texts})
    assert answer.status_code == 200, answer.text
    emb = np.asarray(answer.json()["embeddings"])
    assert emb.shape == (3, 32) and answer.json()["dim"] == 32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, classifier.embed_texts(texts), atol=1e-5)


def test_eight_parallel_classify_requests(server, classifier):
    images = [scene(10 + i) for i in range(8)]
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:

        def one(image: Image.Image) -> httpx.Response:
            return http.post("/v1/classify", files=image_files(encode(image)), data={"labels": LABELS, "top_k": "1"})

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(one, images))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses if r.status_code != 200]
    expected = classifier.classify(images, LABELS.split(","), top_k=1)
    assert [r.json()["results"][0]["predictions"][0]["label"] for r in responses] == [e[0][0] for e in expected]


# --------------------------------------------------------------------------------------------------------------------
# Bad requests: each a 4xx JSON error, and the server answers a good request right after
# --------------------------------------------------------------------------------------------------------------------


def _multipart_raw(field: str, value: bytes) -> dict[str, Any]:
    """A hand-built multipart body with one text field holding raw bytes (httpx would encode a str as UTF-8)."""
    body = b"--bnd\r\n" + f'Content-Disposition: form-data; name="{field}"\r\n\r\n'.encode() + value
    body += b"\r\n--bnd\r\n" + b'Content-Disposition: form-data; name="images"; filename="a.png"\r\n'
    body += b"Content-Type: image/png\r\n\r\n" + GOOD_PNG + b"\r\n--bnd--\r\n"
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=bnd"}}


def _truncated_png() -> bytes:
    data = noise_png(5)
    return data[: len(data) // 2]


Case = tuple[str, str, Callable[[], dict[str, Any]], int, str]
BAD_REQUESTS: list[Case] = [
    ("corrupt image", "/v1/classify", lambda: {"files": image_files(b"\x00garbage" * 64), "data": {"labels": LABELS}},
     415, "unsupported_media_type"),
    ("truncated png", "/v1/classify", lambda: {"files": image_files(_truncated_png()), "data": {"labels": LABELS}},
     400, "invalid_image"),
    ("empty image", "/v1/classify", lambda: {"files": image_files(b""), "data": {"labels": LABELS}},
     400, "invalid_image"),
    ("no labels", "/v1/classify", lambda: {"files": image_files(GOOD_PNG)}, 400, "empty_labels"),
    ("blank labels", "/v1/classify", lambda: {"files": image_files(GOOD_PNG), "data": {"labels": " , ,"}},
     400, "empty_labels"),
    ("10,000 labels in one field", "/v1/classify",
     lambda: {"files": image_files(GOOD_PNG), "data": {"labels": ",".join(f"label{i}" for i in range(10_000))}},
     413, "too_many_labels"),
    ("10,000 repeated label fields", "/v1/classify",
     lambda: {"files": image_files(GOOD_PNG), "data": {"labels": [f"label{i}" for i in range(10_000)]}},
     413, "too_many_labels"),
    ("duplicate labels", "/v1/classify", lambda: {"files": image_files(GOOD_PNG), "data": {"labels": "cat,dog,cat"}},
     400, "invalid_label"),
    ("label too long", "/v1/classify", lambda: {"files": image_files(GOOD_PNG), "data": {"labels": "x" * 1001}},
     413, "text_too_long"),
    ("unknown language", "/v1/classify",
     lambda: {"files": image_files(GOOD_PNG), "data": {"labels": LABELS, "lang": "de"}}, 400, "unknown_language"),
    ("template without {c}", "/v1/classify",
     lambda: {"files": image_files(GOOD_PNG), "data": {"labels": LABELS, "templates": "a photo"}},
     400, "invalid_template"),
    ("top_k zero", "/v1/classify", lambda: {"files": image_files(GOOD_PNG), "data": {"labels": LABELS, "top_k": "0"}},
     422, "validation_error"),
    ("non-UTF-8 label field", "/v1/classify", lambda: _multipart_raw("labels", b"chat,\xff\xfechien"),
     400, "invalid_encoding"),
    ("URL instead of an image", "/v1/classify",
     lambda: {"data": {"labels": LABELS, "images": "https://example.com/cat.jpg"}, "files": {"other": ("x", b"")}},
     400, "url_not_allowed"),
    ("URL uploaded as the file", "/v1/classify",
     lambda: {"files": image_files(b"http://example.com/cat.jpg"), "data": {"labels": LABELS}},
     400, "url_not_allowed"),
    ("no images", "/v1/classify", lambda: {"data": {"labels": LABELS}, "files": {"other": ("x", b"")}},
     400, "missing_images"),
    ("17 images", "/v1/classify", lambda: {"files": image_files(*[GOOD_PNG] * 17), "data": {"labels": LABELS}},
     413, "too_many_images"),
    ("classify as JSON", "/v1/classify", lambda: {"json": {"labels": LABELS}}, 415, "unsupported_media_type"),
    ("malformed multipart", "/v1/classify",
     lambda: {"content": b"nonsense", "headers": {"content-type": "multipart/form-data; boundary=zz"}},
     400, "invalid_multipart"),
    ("image embeddings without images", "/v1/embeddings/image", lambda: {"files": {"other": ("x", b"")}},
     400, "missing_images"),
    ("invalid JSON body", "/v1/embeddings/text",
     lambda: {"content": b'{"texts": ["a",', "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ("non-UTF-8 JSON body", "/v1/embeddings/text",
     lambda: {"content": b'{"texts": ["\xff\xfe"]}', "headers": {"content-type": "application/json"}},
     400, "invalid_encoding"),
    ("labels x templates over the prompt budget", "/v1/classify",
     lambda: {"files": image_files(GOOD_PNG), "data": {"labels": ",".join(f"{i:03d}" + "x" * 300 for i in range(700))}},
     413, "too_many_prompt_chars"),
    ("a 2,000,000 x 1 strip", "/v1/classify", lambda: {"files": image_files(strip_png()), "data": {"labels": LABELS}},
     400, "invalid_image"),
    ("lone surrogate in JSON texts", "/v1/embeddings/text",
     lambda: {"content": b'{"texts": ["ok", "\\ud800"]}', "headers": {"content-type": "application/json"}},
     400, "invalid_text"),
    ("lone surrogate in a JSON label list", "/v1/classify",
     lambda: {"files": image_files(GOOD_PNG), "data": {"labels": '["cat", "\\udc80"]'}}, 400, "invalid_label"),
    ("lone surrogate in a JSON template list", "/v1/classify",
     lambda: {"files": image_files(GOOD_PNG), "data": {"labels": LABELS, "templates": '["{c} \\ud800"]'}},
     400, "invalid_template"),
    ("texts not strings", "/v1/embeddings/text", lambda: {"json": {"texts": [1, 2]}}, 422, "validation_error"),
    ("texts missing", "/v1/embeddings/text", lambda: {"json": {"text": ["a"]}}, 422, "validation_error"),
    ("empty texts", "/v1/embeddings/text", lambda: {"json": {"texts": []}}, 400, "invalid_text"),
    ("129 texts", "/v1/embeddings/text", lambda: {"json": {"texts": ["a"] * 129}}, 413, "too_many_texts"),
    ("text too long", "/v1/embeddings/text", lambda: {"json": {"texts": ["a" * 1001]}}, 413, "text_too_long"),
    ("texts as a form", "/v1/embeddings/text", lambda: {"data": {"texts": "a"}}, 415, "unsupported_media_type"),
    ("over the byte limit", "/v1/embeddings/image", lambda: {"files": image_files(bytes(3 * MB))},
     413, "request_too_large"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "make", "status", "code"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_request_is_a_json_error_and_the_server_goes_on(client, path, make, status, code):
    assert_error(client.post(path, **make()), status, code)
    assert good_classify(client)["results"][0]["predictions"]


def test_unknown_path_and_method(client):
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/classify"), 405, "method_not_allowed")


def test_decompression_bomb_is_refused_from_its_header(client, server, monkeypatch):
    bomb = png_bomb()
    assert len(bomb) < 200_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # this check only reads the header, here in the test
    with Image.open(io.BytesIO(bomb)) as image:
        assert image.size == (20_000, 20_000) and image.mode == "1"  # a real PNG, 400 MB once decoded by PIL
    before = rss_kib(server.process.pid)
    start = time.perf_counter()
    error = assert_error(
        client.post("/v1/classify", files=image_files(bomb), data={"labels": LABELS}), 413, "image_too_large"
    )
    elapsed = time.perf_counter() - start
    assert "20000x20000" in error["message"] or "pixels" in error["message"]
    assert elapsed < 2.0, f"refusing a bomb took {elapsed:.2f} s: was it decoded?"
    assert rss_kib(server.process.pid) - before < 100 * 1024, "server memory grew by >100 MB: the bomb was decoded"
    assert_error(client.post("/v1/embeddings/image", files=image_files(bomb)), 413, "image_too_large")
    assert good_classify(client)


def test_declared_oversized_body_is_refused_before_reading_it(server, client):
    """Only headers are sent: a 413 must come back without the server waiting for a 100 MB body."""
    request = (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert good_classify(client)


def test_streamed_oversized_body_is_refused(client):
    """A chunked upload (no Content-Length) is counted as it streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'--zz\r\nContent-Disposition: form-data; name="images"; filename="big.png"\r\n\r\n'
        for _ in range(48):  # 3 MB in 64 KiB pieces, over the 2 MB limit
            yield bytes(65536)

    headers = {"content-type": "multipart/form-data; boundary=zz"}
    response = client.post("/v1/embeddings/image", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "request_too_large")
    assert good_classify(client)


def test_client_that_hangs_up_mid_upload_does_not_hurt_the_server(server, client):
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + b'--x\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n')
        sock.sendall(GOOD_PNG[:100])
    assert good_classify(client)


def test_server_log_has_no_tracebacks(server, client):
    """Every bad request above was answered by a handler: nothing reached uvicorn as an unhandled exception."""
    assert client.get("/healthz").status_code == 200
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


# --------------------------------------------------------------------------------------------------------------------
# In process: 500s, the event loop stays free, no torch, serve()
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(bundle):
    from dcclip.serve.app import create_app

    return create_app(bundle, ServeLimits(max_concurrent_inference=2))


def test_unexpected_error_is_a_logged_500_without_traceback(app, monkeypatch, caplog):
    from fastapi.testclient import TestClient

    def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(app.state.service, "embed_texts", broken)
    with caplog.at_level("ERROR", logger="dcclip.serve"), TestClient(app, raise_server_exceptions=False) as http:
        response = http.post("/v1/embeddings/text", json={"texts": ["a"]})
        assert http.get("/healthz").status_code == 200
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in error["message"]
    assert any("secret internal detail" in str(r.exc_info[1]) for r in caplog.records if r.exc_info), "not logged"


def test_inference_runs_off_the_event_loop(app, monkeypatch):
    """While a classify request is stuck inside the model, /healthz still answers."""
    release, entered = threading.Event(), threading.Event()
    waited: list[bool] = []  # filled once the model call stops waiting
    original = app.state.service.classify

    def stuck(query: Any) -> Any:
        entered.set()
        waited.append(release.wait(timeout=5))
        return original(query)

    monkeypatch.setattr(app.state.service, "classify", stuck)

    async def scenario() -> tuple[int, bool, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=TIMEOUT) as http:
            files = image_files(GOOD_PNG)
            pending = asyncio.ensure_future(http.post("/v1/classify", files=files, data={"labels": LABELS}))
            for _ in range(500):  # until the request is inside the model (bounded: 5 s)
                if entered.is_set():
                    break
                await asyncio.sleep(0.01)
            health = await asyncio.wait_for(http.get("/healthz"), timeout=2)
            answered_while_stuck = entered.is_set() and not waited
            release.set()
            return health.status_code, answered_while_stuck, (await asyncio.wait_for(pending, timeout=10)).status_code

    try:
        health, answered_while_stuck, classified = asyncio.run(scenario())
    finally:
        release.set()
    assert health == 200 and classified == 200
    assert answered_while_stuck, "/healthz waited for the model: inference ran on the event loop"
    assert waited == [True]


def test_serve_imports_no_torch(bundle):
    script = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from dcclip.serve import create_app\n"
        f"app = create_app({str(bundle)!r})\n"
        "with TestClient(app) as http:\n"
        "    assert http.post('/v1/embeddings/text', json={'texts': ['a']}).status_code == 200\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_serve_runs_uvicorn_in_process_or_as_a_factory(bundle, monkeypatch):
    import uvicorn
    from fastapi import FastAPI

    from dcclip.serve import app_from_env, serve
    from dcclip.serve.limits import ENV_BUNDLE, ENV_LIMITS, ENV_PRECISION, ENV_THREADS

    for name in (ENV_BUNDLE, ENV_LIMITS, ENV_PRECISION, ENV_THREADS):
        monkeypatch.setenv(name, "")  # restored (removed) after the test, whatever serve() sets
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    limits = ServeLimits(max_images=3)
    serve(bundle, port=8123, limits=limits)
    assert isinstance(calls[0][0], FastAPI) and calls[0][1]["host"] == "127.0.0.1" and calls[0][1]["port"] == 8123
    serve(bundle, host="127.0.0.1", port=8124, workers=2, limits=limits, threads=1)
    target, options = calls[1]
    assert target == "dcclip.serve.app:app_from_env" and options["factory"] is True and options["workers"] == 2
    worker_app = app_from_env()  # what each worker process builds from the environment
    assert worker_app.state.service.limits == limits and worker_app.state.service.bundle == bundle.resolve()
    with pytest.raises(BundleError):
        serve(bundle.parent / "run", workers=2)
    assert len(calls) == 2, "a bad bundle must fail before uvicorn starts"
    with pytest.raises(ValueError, match="workers"):
        serve(bundle, workers=0)


def test_limits_are_checked_and_travel_through_the_environment(bundle):
    with pytest.raises(ValueError, match="max_images"):
        ServeLimits(max_images=0)
    with pytest.raises(ValueError, match="unknown serve limits"):
        ServeLimits.from_dict({"max_imagez": 3})
    settings = ServeSettings(bundle, ServeLimits(max_labels=7), "fp32", 2)
    assert ServeSettings.from_env(settings.to_env()) == ServeSettings(
        bundle.resolve(), ServeLimits(max_labels=7), "fp32", 2
    )
    with pytest.raises(RuntimeError, match="DCCLIP_SERVE_BUNDLE"):
        ServeSettings.from_env({})


def test_stalled_clients_are_disconnected_and_the_server_keeps_answering(bundle, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "dcclip", "serve", "--bundle", str(bundle), "--port", str(port)]
    command += ["--read-timeout", "1", "--threads", "1"]
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        half_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        half_body = b"POST /v1/embeddings/text HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b'{"te'
        stalled = []
        for payload in (half_header, half_body) * 5:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(payload)
            stalled.append(sock)
        assert httpx.get(url, timeout=5.0).status_code == 200  # stalled clients do not block others
        start = time.monotonic()
        for sock in stalled:
            assert sock.recv(1) == b"", "the server closes a connection whose client stalls"
            sock.close()
        assert time.monotonic() - start < 8
        assert httpx.get(url, timeout=5.0).status_code == 200
        assert "nothing received for 1 s" in (tmp_path / "server.log").read_text()
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_repeated_accept_errors_are_logged_once_per_interval(caplog):
    import logging

    from dcclip.serve.protocol import RepeatFilter

    logger = logging.getLogger("dcclip.test.accept")
    repeat = RepeatFilter(interval=60.0)
    logger.addFilter(repeat)
    try:
        with caplog.at_level(logging.ERROR, logger="dcclip.test.accept"):
            for _ in range(500):
                logger.error("socket.accept() out of system resource")
        assert len(caplog.records) == 1
        repeat._last = {k: (v[0] - 61.0, v[1]) for k, v in repeat._last.items()}  # the interval has passed
        with caplog.at_level(logging.ERROR, logger="dcclip.test.accept"):
            logger.error("socket.accept() out of system resource")
        assert "499 more like this" in caplog.records[-1].getMessage()
    finally:
        logger.removeFilter(repeat)


def test_several_workers_start_answer_and_keep_the_read_timeout(bundle, tmp_path):
    """``--workers 2`` spawns processes: the protocol with its timeouts must reach them (it once failed to pickle)."""
    command = [sys.executable, "-m", "dcclip", "serve", "--bundle", str(bundle), "--workers", "2", "--threads", "1"]
    running = ServerProcess(lambda port: [*command, "--port", str(port), "--read-timeout", "1"], tmp_path / "log")
    try:
        running.wait_ready()
        with httpx.Client(base_url=running.url, timeout=TIMEOUT) as http:
            assert http.post("/v1/classify", files=image_files(GOOD_PNG), data={"labels": LABELS}).status_code == 200
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert sock.recv(1) == b"", "a worker closes a connection whose client stalls"
        sock.close()
    finally:
        running.close()
    assert "nothing received for 1 s" in (tmp_path / "log").read_text()
