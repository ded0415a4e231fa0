"""Images for tests: one encoder to bytes, random images per seed (optionally with an EXIF orientation) and scenes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """Encode a PIL image (PNG unless told) to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def random_image_bytes(
    seed: int, size: tuple[int, int] = (32, 24), fmt: str = "JPEG", exif_orientation: int = 0, **options: object
) -> bytes:
    """A small image of random pixels (width, height), different for every seed, optionally with an EXIF orientation."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        options["exif"] = exif.tobytes()
    return encode(Image.fromarray(array), fmt, **options)


def jpeg_bytes(seed: int, size: int = 48) -> bytes:
    """A small random square JPEG, different for every seed."""
    return random_image_bytes(seed, (size, size), "JPEG", quality=90)


def scene(seed: int, size: tuple[int, int] = (57, 43)) -> Image.Image:
    """A random RGB image with some structure (blocks of colour), different per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.NEAREST)
