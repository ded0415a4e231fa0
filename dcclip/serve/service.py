"""The work behind each endpoint, run in worker threads so the event loop (and /healthz) never waits on a model.

Images are checked from their header first (size, format) and decoded only when they pass, then handed to the
thread-safe ZeroShotClassifier as PIL images; a capacity limiter bounds how many requests run the model at once so a
burst queues instead of oversubscribing the CPU. With ``batch_max`` > 1 the image tower runs behind a micro-batcher
(dcclip/serve/batching.py): concurrent requests' images share one model call. ``timings`` dicts collect where a
classify request's time went (the Server-Timing header, when the app is built with ``server_timing``).
"""

from __future__ import annotations

import ctypes
import functools
import io
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
from PIL import Image, UnidentifiedImageError

from dcclip.runtime.classifier import ZeroShotClassifier
from dcclip.runtime.preprocess import ImageDecodeError, decode_image
from dcclip.serve.batching import DEFAULT_BATCH_MAX, DEFAULT_BATCH_WAIT_MS, BatchedModel, check_batching
from dcclip.serve.errors import ApiError
from dcclip.serve.forms import ClassifyQuery, ImageUpload
from dcclip.serve.limits import ServeLimits

__all__ = ["Service", "decode_upload", "info_manifest", "probe_image", "release_memory"]

T = TypeVar("T")
MAX_INFO_ENTRY_BYTES = 16 * 1024  # manifest entries bigger than this are left out of /v1/info
# Requests decoding fewer pixels than this skip malloc_trim: the few MB they free are reused by the next request,
# and trimming them back cost ~0.1-0.5 ms a request (the trim, then page faults to grow again) at 224 px
TRIM_MIN_PIXELS = 1_000_000


def probe_image(upload: ImageUpload, max_pixels: int, where: str, size_hint: int | None = None) -> int:
    """Read only the header: refuse non-images (415) and images over ``max_pixels`` (413) before any decoding.

    Returns the pixels decoding will allocate (fewer than the header's for a JPEG decoded at a reduced scale)."""
    if not upload.data:
        raise ApiError("invalid_image", f"{where} ({upload.filename}) is empty")
    try:
        with Image.open(io.BytesIO(upload.data)) as image:
            width, height = image.size
            if size_hint is not None and image.format == "JPEG" and width * height <= max_pixels:
                image.draft(image.mode, (size_hint, size_hint))
            decoded = image.width * image.height
    except Image.DecompressionBombError as exc:
        raise ApiError("image_too_large", f"{where} ({upload.filename}): {exc}") from exc
    except UnidentifiedImageError as exc:
        message = f"{where} ({upload.filename}) is not an image in a format this server reads"
        raise ApiError("unsupported_media_type", message) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ApiError("invalid_image", f"{where} ({upload.filename}): cannot read the image header: {exc}") from exc
    if width * height > max_pixels:
        message = f"{where} ({upload.filename}) is {width}x{height} pixels, over max_image_pixels={max_pixels}"
        raise ApiError("image_too_large", message)
    return decoded


def decode_upload(
    upload: ImageUpload, max_pixels: int, where: str, size_hint: int | None = None, probed: bool = False
) -> Image.Image:
    """Header checks (unless the caller ``probed`` already), then a full decode (JPEGs at a reduced scale with
    ``size_hint``); a truncated or corrupt image is a 400 naming the upload."""
    if not probed:
        probe_image(upload, max_pixels, where, size_hint)
    try:
        return decode_image(upload.data, max_pixels=max_pixels, size_hint=size_hint)
    except ImageDecodeError as exc:
        raise ApiError("invalid_image", f"{where} ({upload.filename}): {exc}") from exc


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it in per-thread arenas otherwise: 2.6 GB was still
    held 30 s after a burst of large images); a no-op elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None off glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def info_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without the training config it embeds and without any other oversized entry."""
    out: dict[str, Any] = {}
    for key, value in manifest.items():
        if key == "source" and isinstance(value, dict):
            value = {name: item for name, item in value.items() if name != "config"}
        if len(json.dumps(value, default=str)) <= MAX_INFO_ENTRY_BYTES:
            out[key] = value
    return out


class Service:
    """One loaded classifier, the limits, and a limiter on concurrent model runs."""

    def __init__(
        self,
        bundle: Path,
        limits: ServeLimits,
        precision: str = "fp32",
        threads: int | None = None,
        allow_unsealed: bool = False,
        batch_max: int = DEFAULT_BATCH_MAX,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    ) -> None:
        check_batching(batch_max, batch_wait_ms)
        threads = default_threads(limits.max_concurrent_inference) if threads is None else threads
        self.bundle = Path(bundle)
        self.limits = limits
        self.precision = precision
        self.classifier = ZeroShotClassifier.from_bundle(
            self.bundle,
            precision=precision,
            threads=threads,
            max_labels=limits.max_labels,
            max_image_pixels=limits.max_image_pixels,
            max_text_chars=limits.max_text_chars,
            allow_unsealed=allow_unsealed,
        )
        self.batched: BatchedModel | None = None
        if batch_max > 1:
            self.batched = BatchedModel(self.classifier.model, batch_max, batch_wait_ms / 1000)
            self.classifier.model = self.batched  # type: ignore[assignment] - same interface, batched embed_pixels
        # batching: requests waiting on the batcher hold a worker thread, so a batch can only fill with that many
        self.capacities = {
            False: limits.max_concurrent_inference,
            True: max(limits.max_concurrent_inference, batch_max),
        }
        self._limiters: dict[bool, anyio.CapacityLimiter] = {}
        self._decodes = threading.BoundedSemaphore(limits.max_concurrent_decodes)

    @property
    def manifest(self) -> dict[str, Any]:
        """The loaded bundle's manifest."""
        return self.classifier.model.manifest

    async def run(
        self, func: Callable[..., T], *args: Any, timings: dict[str, float] | None = None, images: bool = False
    ) -> T:
        """Run ``func(*args)`` in a worker thread, at most ``max_concurrent_inference`` at a time; work on ``images``
        (classify, image embeddings) up to ``batch_max`` at a time when batching, so batches can fill (the model
        itself still runs one batch at a time). ``timings['queue']`` gets the milliseconds it waited for a thread."""
        batched = images and self.batched is not None
        if batched not in self._limiters:  # created lazily: a limiter belongs to the running event loop
            self._limiters[batched] = anyio.CapacityLimiter(self.capacities[batched])
        call = partial(func, *args)
        if timings is not None:
            call = partial(_timed_start, call, timings, time.perf_counter())
        return await anyio.to_thread.run_sync(call, limiter=self._limiters[batched])

    def close(self) -> None:
        """Stop the micro-batcher thread, if any (the app's shutdown)."""
        if self.batched is not None:
            self.batched.batcher.close()

    def model_pixels(self, uploads: list[ImageUpload]) -> np.ndarray:
        """Every upload as model input [N, 3, S, S], decoded one at a time (at most ``max_concurrent_decodes`` in the
        process) and dropped once preprocessed: a request holds one decoded image, not all of them. The pixels all
        images decode to are summed from their headers first and refused (413) over ``max_request_pixels``; freed
        heap goes back to the system after requests of at least TRIM_MIN_PIXELS."""
        model = self.classifier.model
        hint = 2 * model.preprocess.image_size  # JPEGs decode at 1/2..1/8 scale, still twice the model's input
        limits = self.limits
        where = [f"images[{i}]" for i in range(len(uploads))]
        total = sum(probe_image(item, limits.max_image_pixels, w, hint) for item, w in zip(uploads, where, strict=True))
        if total > limits.max_request_pixels:
            most = limits.max_request_pixels
            message = f"the images decode to {total} pixels in total, over max_request_pixels={most}"
            raise ApiError("request_pixels_too_large", message)
        size = model.preprocess.image_size
        pixels = np.empty((len(uploads), 3, size, size), np.float32)
        try:
            for index, item in enumerate(uploads):
                with self._decodes:
                    image = decode_upload(item, limits.max_image_pixels, where[index], hint, probed=True)
                    pixels[index] = model.preprocess(image)
        finally:
            if total >= TRIM_MIN_PIXELS:
                release_memory()
        return pixels

    def classify(self, query: ClassifyQuery, timings: dict[str, float] | None = None) -> list[list[tuple[str, float]]]:
        """Decode the images and classify them against the labels (worker thread); ``timings`` gets milliseconds per
        stage: decode (+ preprocess), labels (the label cache, or the text tower on a miss), model (the image tower
        and ranking; with batching batch_wait, image and the batch's size too)."""
        start = time.perf_counter()
        pixels = self._pixels_for_batch(query.images)
        if timings is None:
            return self.classifier.classify_pixels(pixels, query.labels, query.lang, query.templates, query.top_k)
        decoded = time.perf_counter()
        self.classifier.class_embeddings(query.labels, query.lang, query.templates)  # cached for the call below
        labelled = time.perf_counter()
        ranked = self.classifier.classify_pixels(pixels, query.labels, query.lang, query.templates, query.top_k)
        timings |= {"decode": _ms(decoded - start), "labels": _ms(labelled - decoded)}
        timings["model"] = _ms(time.perf_counter() - labelled)
        if self.batched is not None:
            stats = self.batched.batcher.last_stats()
            timings |= {"batch_wait": _ms(stats.wait_s), "image": _ms(stats.run_s), "batch": float(stats.batch)}
        return ranked

    def _pixels_for_batch(self, uploads: list[ImageUpload]) -> np.ndarray:
        """``model_pixels``, announced to the micro-batcher while it decodes so a gathering batch waits for it."""
        if self.batched is None:
            return self.model_pixels(uploads)
        with self.batched.batcher.expecting():
            return self.model_pixels(uploads)

    def embed_images(self, uploads: list[ImageUpload]) -> np.ndarray:
        """Decode and embed images (worker thread)."""
        return self.classifier.model.embed_pixels(self._pixels_for_batch(uploads))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed texts (worker thread); ``check_texts`` has applied the limits."""
        return self.classifier.embed_texts(texts)

    def check_texts(self, texts: list[str]) -> None:
        """At least one text, no more than max_texts, none longer than max_text_chars."""
        if not texts:
            raise ApiError("invalid_text", "texts is empty: give at least one text")
        if len(texts) > self.limits.max_texts:
            raise ApiError("too_many_texts", f"{len(texts)} texts exceed max_texts={self.limits.max_texts}")
        for index, text in enumerate(texts):
            if len(text) > self.limits.max_text_chars:
                message = f"texts[{index}] has {len(text)} characters, over max_text_chars={self.limits.max_text_chars}"
                raise ApiError("text_too_long", message)


def default_threads(concurrent: int) -> int:
    """onnxruntime intra-op threads when none are given: the cores shared by the model runs allowed at once, at least
    one. onnxruntime's own default (every core per session) with 2 runs at once on 2 cores cost 7.0 ms of CPU per
    classify request against 4.8 ms at 1 thread, and p99 73 ms against 55 ms (benchmarks/results/serve_load.md)."""
    return max(1, (os.cpu_count() or 1) // concurrent)


def _timed_start(call: Callable[[], T], timings: dict[str, float], submitted: float) -> T:
    """``call()``, after noting in ``timings['queue']`` how long it waited for a worker thread."""
    timings["queue"] = _ms(time.perf_counter() - submitted)
    return call()


def _ms(seconds: float) -> float:
    """Seconds as milliseconds rounded to microseconds (what Server-Timing carries)."""
    return round(seconds * 1000, 3)
