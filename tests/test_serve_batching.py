"""Micro-batching of the image tower (dcclip serve batch_max / batch_wait_ms) and the Server-Timing header."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.images import jpeg_bytes
from helpers.serve_bundles import onnx_bundle

from dcclip.runtime.bundle import BundleModel
from dcclip.serve.batching import BatchedModel, MicroBatcher, check_batching
from dcclip.serve.limits import ServeLimits, ServeSettings

pytestmark = pytest.mark.usefixtures("restore_pil_pixel_limit")

LABELS = "a red circle,a blue square,a green triangle"
JOIN_S = 10  # liveness bound for threads in these tests (a hang fails instead of blocking the run)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return onnx_bundle(tmp_path_factory.mktemp("batching") / "bundle")


def doubled(pixels: np.ndarray) -> np.ndarray:
    """A stand-in model: one output row per input, its value depending only on that input."""
    return pixels.reshape(len(pixels), -1)[:, :2] * 2


def in_threads(count: int, target: Any) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads; their results (or exceptions) by index."""
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            results[index] = target(index)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)
    assert not any(thread.is_alive() for thread in threads), "a submit never returned"
    return results


@pytest.fixture
def gated() -> Iterator[tuple[MicroBatcher, list[int], threading.Event]]:
    """A batcher whose first model call blocks until released, so the next requests queue behind it."""
    sizes: list[int] = []
    release = threading.Event()

    def run(pixels: np.ndarray) -> np.ndarray:
        sizes.append(len(pixels))
        release.wait(JOIN_S)
        if pixels.shape[1:] != (3, 2, 2):
            raise ValueError(f"pixels of shape {pixels.shape}")
        if np.isnan(pixels).any():
            raise ValueError("a NaN pixel")
        return doubled(pixels)

    batcher = MicroBatcher(run, max_batch=8, max_wait_s=0.0)
    yield batcher, sizes, release
    release.set()
    batcher.close()


def wait_until(condition: Any) -> None:
    """Poll ``condition()`` for up to JOIN_S seconds."""
    event = threading.Event()
    for _ in range(JOIN_S * 100):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError("condition never held")


def test_concurrent_requests_share_one_call_with_the_same_results(gated):
    batcher, sizes, release = gated
    inputs = [np.full((1, 3, 2, 2), float(i), np.float32) for i in range(6)]
    first = threading.Thread(target=batcher.submit, args=(inputs[0],))
    first.start()
    wait_until(lambda: sizes == [1])  # the model is busy with the first request
    results: list[Any] = [None] * 6

    def submit(index: int) -> None:
        results[index] = batcher.submit(inputs[index])

    others = [threading.Thread(target=submit, args=(i,)) for i in range(1, 6)]
    for thread in others:
        thread.start()
    wait_until(lambda: batcher.queued() == 5)
    release.set()
    for thread in [first, *others]:
        thread.join(JOIN_S)
    assert sizes == [1, 5], "the five queued requests should run as one batch"
    for index in range(1, 6):
        np.testing.assert_allclose(results[index], doubled(inputs[index]), atol=1e-5)


def test_an_error_in_one_request_does_not_fail_the_others(gated):
    batcher, sizes, release = gated
    first = threading.Thread(target=batcher.submit, args=(np.zeros((1, 3, 2, 2), np.float32),))
    first.start()
    wait_until(lambda: sizes == [1])
    inputs = [np.full((1, 3, 2, 2), float(i), np.float32) for i in range(4)]
    inputs[2][0, 0, 0, 0] = np.nan
    inputs.append(np.zeros((1, 5), np.float32))  # a wrong shape: the batch cannot even be concatenated

    def submit(index: int) -> Any:
        if index == len(inputs) - 1:
            wait_until(lambda: batcher.queued() == len(inputs) - 1)  # queued last, in the same batch
        return batcher.submit(inputs[index])

    def release_when_queued() -> None:
        wait_until(lambda: batcher.queued() == len(inputs))
        release.set()

    releaser = threading.Thread(target=release_when_queued)
    releaser.start()
    results = in_threads(len(inputs), submit)
    releaser.join(JOIN_S)
    first.join(JOIN_S)
    assert isinstance(results[2], ValueError) and "NaN" in str(results[2])
    assert isinstance(results[4], ValueError)  # concatenate's shape error, or the model's, for that request only
    for index in (0, 1, 3):
        np.testing.assert_allclose(results[index], doubled(inputs[index]), atol=1e-5)


def test_a_request_alone_does_not_wait_for_company():
    calls: list[int] = []
    batcher = MicroBatcher(lambda p: calls.append(len(p)) or doubled(p), max_batch=8, max_wait_s=60.0)
    try:
        # nobody else announced: the 60 s bound is not waited out (the thread would still be running)
        result = in_threads(1, lambda _: batcher.submit(np.ones((1, 3, 2, 2), np.float32)))[0]
        np.testing.assert_allclose(result, doubled(np.ones((1, 3, 2, 2), np.float32)))
        assert calls == [1]
    finally:
        batcher.close()


def test_a_request_waits_for_an_announced_one_at_most_the_bound():
    batcher = MicroBatcher(doubled, max_batch=8, max_wait_s=0.05)
    left = threading.Event()
    announced = threading.Event()

    def slow_decoder() -> None:  # announces a request and never submits it (until the test ends)
        with batcher.expecting():
            announced.set()
            left.wait(JOIN_S)

    decoder = threading.Thread(target=slow_decoder)
    decoder.start()
    try:
        announced.wait(JOIN_S)
        stats = in_threads(1, lambda _: (batcher.submit(np.ones((1, 3, 2, 2), np.float32)), batcher.last_stats()))[0]
        assert stats[1].batch == 1 and stats[1].wait_s >= 0.05  # waited for the announced one, then went alone
    finally:
        left.set()
        decoder.join(JOIN_S)
        batcher.close()


def test_batching_settings_are_checked():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_max"):
            check_batching(bad, 2)
    for bad in (-1, 1000, "2", None):
        with pytest.raises(ValueError, match="batch_wait_ms"):
            check_batching(8, bad)
    check_batching(1, 0)


def test_batched_embeddings_match_the_model_one_by_one(bundle):
    model = BundleModel(bundle)
    rng = np.random.default_rng(0)
    size = model.preprocess.image_size
    pixels = [rng.standard_normal((1 + i % 2, 3, size, size)).astype(np.float32) for i in range(6)]
    batched = BatchedModel(model, max_batch=8, max_wait_s=0.01)
    try:
        results = in_threads(len(pixels), lambda i: batched.embed_pixels(pixels[i]))
    finally:
        batched.batcher.close()
    for index, item in enumerate(pixels):
        np.testing.assert_allclose(results[index], model.embed_pixels(item), atol=1e-5)
    assert batched.embed_dim == model.embed_dim  # everything else is the model's


def classify_all(app: Any, images: list[bytes]) -> list[httpx.Response]:
    """POST one classify request per image, all at once, through the ASGI app."""

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=20) as http:
            calls = [
                http.post("/v1/classify", files=[("images", ("i.jpg", data, "image/jpeg"))], data={"labels": LABELS})
                for data in images
            ]
            return await asyncio.gather(*calls)

    return asyncio.run(scenario())


def test_served_scores_are_the_same_batched_or_not_and_a_bad_image_fails_alone(bundle):
    from dcclip.serve.app import create_app

    images = [jpeg_bytes(seed) for seed in range(6)]
    images[3] = b"not an image at all"
    plain = create_app(bundle, ServeLimits(max_concurrent_inference=1), ui=False, batch_max=1)
    batched = create_app(bundle, ServeLimits(), ui=False, batch_max=4, server_timing=True)
    try:
        expected = [classify_all(plain, [image])[0] for image in images]  # one by one
        answers = classify_all(batched, images)
    finally:
        batched.state.service.close()
    assert plain.state.service.batched is None and batched.state.service.batched is not None
    assert [r.status_code for r in answers] == [200, 200, 200, 415, 200, 200] == [r.status_code for r in expected]
    for got, want in zip(answers, expected, strict=True):
        if want.status_code != 200:
            assert got.json()["error"]["code"] == want.json()["error"]["code"]
            continue
        got_rows, want_rows = got.json()["results"][0]["predictions"], want.json()["results"][0]["predictions"]
        assert [p["label"] for p in got_rows] == [p["label"] for p in want_rows]
        np.testing.assert_allclose([p["probability"] for p in got_rows], [p["probability"] for p in want_rows], 1e-5)
    stages = dict(item.split(";dur=") for item in answers[0].headers["server-timing"].split(", "))
    assert {"parse", "queue", "decode", "labels", "model", "batch", "json", "handler"} <= set(stages)
    assert "server-timing" not in expected[0].headers  # off unless asked for


def test_batching_settings_travel_to_workers_and_are_refused_early(bundle, monkeypatch):
    import uvicorn

    from dcclip.serve import serve

    settings = ServeSettings(bundle, ServeLimits(), batch_max=8, batch_wait_ms=2.5, server_timing=True)
    assert ServeSettings.from_env(settings.to_env()) == ServeSettings(
        bundle.resolve(), ServeLimits(), batch_max=8, batch_wait_ms=2.5, server_timing=True
    )
    with pytest.raises(ValueError, match="DCCLIP_SERVE_BATCH"):
        ServeSettings.from_env({**settings.to_env(), "DCCLIP_SERVE_BATCH": "eight"})
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("uvicorn started"))
    with pytest.raises(ValueError, match="batch_wait_ms"):
        serve(bundle, batch_max=8, batch_wait_ms=-1)


def test_onnxruntime_threads_default_to_the_cores_per_model_run(bundle):
    import os

    from dcclip.serve.service import Service, default_threads

    assert default_threads(2) == max(1, (os.cpu_count() or 1) // 2) and default_threads(10_000) == 1
    service = Service(bundle, ServeLimits(max_concurrent_inference=2), batch_max=1)
    assert service.classifier.model.session_options.intra_op_num_threads == default_threads(2)
    assert Service(bundle, ServeLimits(), threads=3).classifier.model.session_options.intra_op_num_threads == 3
