"""The work behind each endpoint, run in worker threads so the event loop (and /healthz) never waits on a model.

Images are checked from their header first (size, format) and decoded only when they pass, then handed to the
thread-safe ZeroShotClassifier as PIL images; a capacity limiter bounds how many requests run the model at once so a
burst queues instead of oversubscribing the CPU.
"""

from __future__ import annotations

import ctypes
import functools
import io
import json
import platform
import threading
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
from dcclip.serve.errors import ApiError
from dcclip.serve.forms import ClassifyQuery, ImageUpload
from dcclip.serve.limits import ServeLimits

__all__ = ["Service", "decode_upload", "info_manifest", "probe_image", "release_memory"]

T = TypeVar("T")
MAX_INFO_ENTRY_BYTES = 16 * 1024  # manifest entries bigger than this are left out of /v1/info


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


def decode_upload(upload: ImageUpload, max_pixels: int, where: str, size_hint: int | None = None) -> Image.Image:
    """Header checks, then a full decode (JPEGs at a reduced scale with ``size_hint``); a truncated or corrupt image is
    a 400 naming the upload."""
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
    ) -> None:
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
        self._limiter: anyio.CapacityLimiter | None = None
        self._decodes = threading.BoundedSemaphore(limits.max_concurrent_decodes)

    @property
    def manifest(self) -> dict[str, Any]:
        """The loaded bundle's manifest."""
        return self.classifier.model.manifest

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` in a worker thread, at most ``max_concurrent_inference`` at a time."""
        if self._limiter is None:  # created lazily: a limiter belongs to the running event loop
            self._limiter = anyio.CapacityLimiter(self.limits.max_concurrent_inference)
        return await anyio.to_thread.run_sync(partial(func, *args), limiter=self._limiter)

    def model_pixels(self, uploads: list[ImageUpload]) -> np.ndarray:
        """Every upload as model input [N, 3, S, S], decoded one at a time (at most ``max_concurrent_decodes`` in the
        process) and dropped once preprocessed: a request holds one decoded image, not all of them. The pixels all
        images decode to are summed from their headers first and refused (413) over ``max_request_pixels``."""
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
                    pixels[index] = model.preprocess(decode_upload(item, limits.max_image_pixels, where[index], hint))
        finally:
            release_memory()
        return pixels

    def classify(self, query: ClassifyQuery) -> list[list[tuple[str, float]]]:
        """Decode the images and classify them against the labels (worker thread)."""
        pixels = self.model_pixels(query.images)
        return self.classifier.classify_pixels(pixels, query.labels, query.lang, query.templates, query.top_k)

    def embed_images(self, uploads: list[ImageUpload]) -> np.ndarray:
        """Decode and embed images (worker thread)."""
        return self.classifier.model.embed_pixels(self.model_pixels(uploads))

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
