"""Image preprocessing in numpy + PIL, shared by training, feature caching and the exported runtime.

One implementation everywhere means a bundle sees exactly the pixels the student was trained on. The arithmetic
mirrors torchvision's ``Resize`` (short side) -> ``CenterCrop`` -> ``ToTensor`` -> ``Normalize`` on PIL images, so
teachers preprocessed by open_clip / torchvision get the same input too.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from dcclip.runtime.constants import IMAGE_EXTENSIONS

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
INTERPOLATIONS = tuple(_RESAMPLE)
RESIZE_MODES = ("shortest", "squash")  # shortest side then centre crop, or both sides to the input size
IMAGE_SIZE_RANGE = (8, 4096)
MEAN_RANGE, STD_RANGE = (-10.0, 10.0), (1e-6, 10.0)


def is_image_file(name: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    """Whether a file name ends in one of ``extensions`` (any case)."""
    return os.path.splitext(os.fspath(name))[1].lower().lstrip(".") in extensions


class PreprocessConfigError(ValueError):
    """An image preprocessing setting out of type or range; ``field``, ``value`` and ``expected`` say which."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        super().__init__(f"image preprocessing {field} is {value!r}; expected {expected}")
        self.field, self.value, self.expected = field, value, expected


def _is_number(value: Any, low: float, high: float) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and low <= value <= high


def check_preprocess_config(pre: Mapping[str, Any]) -> None:
    """The one check of an image preprocessing dict (bundle manifest, student config): image_size, mean, std,
    resize_mode and interpolation of the right type and range; PreprocessConfigError naming the first that is not."""
    if not isinstance(pre, Mapping):
        raise PreprocessConfigError("", pre, "an object")
    low, high = IMAGE_SIZE_RANGE
    size = pre.get("image_size")
    if type(size) is not int or not low <= size <= high:
        raise PreprocessConfigError("image_size", size, f"an integer in [{low}, {high}]")
    for name, (low_v, high_v) in (("mean", MEAN_RANGE), ("std", STD_RANGE)):
        values = pre.get(name)
        if (
            not isinstance(values, list | tuple)
            or len(values) != 3
            or not all(_is_number(v, low_v, high_v) for v in values)
        ):
            raise PreprocessConfigError(name, values, f"3 numbers in [{low_v:g}, {high_v:g}]")
    for name, choices, default in (
        ("resize_mode", RESIZE_MODES, "shortest"),
        ("interpolation", INTERPOLATIONS, "bicubic"),
    ):
        if pre.get(name, default) not in choices:
            raise PreprocessConfigError(name, pre.get(name), f"one of {choices}")


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image (corrupt, truncated, unsupported)."""


# CLIP's image normalisation (OpenAI); the default of every model that does not name its own.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """Resize, centre-crop and normalise an image to the model's input; torch-free."""

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"

    @classmethod
    def from_config(cls, cfg: Any) -> Preprocess:
        """Build from a manifest or checkpoint dict, or anything with the same fields."""
        get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)
        return cls(
            image_size=int(get("image_size", 224)),
            mean=tuple(float(v) for v in get("mean", cls.mean)),
            std=tuple(float(v) for v in get("std", cls.std)),
            resize_mode=str(get("resize_mode", "shortest")),
            interpolation=str(get("interpolation", "bicubic")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
        }

    def resize(self, image: Image.Image) -> Image.Image:
        """Geometric part: resize (short side or squash) and centre crop to image_size x image_size."""
        size = self.image_size
        resample = _RESAMPLE[self.interpolation]
        check_geometry(*image.size)
        if self.resize_mode == "squash":
            return image.resize((size, size), resample)
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample)
        return center_crop(image, size)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image (any mode) -> float32 array [3, H, W], normalised."""
        image = self.resize(to_rgb(image))
        # one float copy, laid out [3, H, W], then the same operations in the same order in place: bit-identical to
        # ((x / 255 - mean) / std) and several times faster than building a temporary per step (serving's hot path)
        array = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32, order="C")
        array /= np.float32(255.0)
        array -= np.asarray(self.mean, dtype=np.float32)[:, None, None]
        array /= np.asarray(self.std, dtype=np.float32)[:, None, None]
        return array

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Stack preprocessed images into [N, 3, H, W] float32."""
        return np.stack([self(img) for img in images]) if images else np.zeros((0, 3, self.image_size, self.image_size))


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Centre crop with torchvision's rounding (pads with black when the image is smaller)."""
    width, height = image.size
    if width < size or height < size:
        canvas = Image.new(image.mode, (max(width, size), max(height, size)))
        canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
        image, (width, height) = canvas, canvas.size
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greyscale (PNG, TIFF) as PIL decodes it


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, RGBA, CMYK, I;16...) to RGB, the way CLIP pipelines do it.

    16-bit greyscale is scaled to 8 bits first (65535 -> 255): PIL's own conversion clips it, so every pixel above 255
    of 65535 would turn white. Mode ``I`` is read as 16-bit data, which is what PIL gives for 16-bit PNGs and TIFFs.
    """
    if image.mode == "RGB":
        return image
    if image.mode in WIDE_GREY_MODES:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


# Longest side / shortest side beyond which an image is refused: the shortest-side resize of a 2,000,000 x 1 strip
# would allocate gigabytes for a 6 KB file. Panoramas (4:1) and scrolls (10:1) pass.
MAX_ASPECT_RATIO = 50.0


def check_geometry(width: int, height: int, max_pixels: int | None = None) -> None:
    """Refuse, from the header alone, an image whose pixels or whose resize would cost too much memory or time."""
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image of {width}x{height} pixels has no area")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageDecodeError(
            f"image of {width}x{height} pixels is more than {MAX_ASPECT_RATIO:g} times longer than wide; resizing "
            "it to the model's input would take far more memory than the image holds"
        )


def open_image(data: bytes, max_pixels: int | None = None, size_hint: int | None = None) -> Image.Image:
    """Open image bytes without decoding pixels: header checked (``check_geometry``) and, with ``size_hint``, set to
    decode at a reduced scale where the format allows (JPEG's DCT scaling: 1/2, 1/4 or 1/8, both sides staying at
    least ``size_hint``). ``size`` is then what decoding will allocate."""
    if not data:
        raise ImageDecodeError("empty image data")
    try:
        image = Image.open(io.BytesIO(data))
        check_geometry(image.width, image.height, max_pixels)
        if size_hint is not None and image.format == "JPEG":
            image.draft(image.mode, (size_hint, size_hint))
        return image
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def decode_image(data: bytes, max_pixels: int | None = None, size_hint: int | None = None) -> Image.Image:
    """Decode image bytes fully, applying the EXIF orientation; raises ImageDecodeError on anything unusable.

    ``max_pixels`` and the aspect-ratio bound refuse decompression bombs and degenerate strips from the header alone,
    before any pixel is decoded. ``size_hint`` (the server passes twice the model's input side) decodes large JPEGs
    at a reduced scale (see ``open_image``). The image is transposed in place: no second copy of its pixels.
    """
    image = open_image(data, max_pixels, size_hint)
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
