"""Drawing the toy world: shape scenes over textured backgrounds, scene layout, and scikit-learn's handwritten digits.

Deterministic: every sample draws from its own numpy Generator seeded by (seed, stream, index).
"""

from __future__ import annotations

import colorsys
import functools
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dcclip.data.world.registry import COLOURS, POSITIONS, SHAPES, SIZES, Thing

DIGIT_FRACTION = 0.25  # share of training samples that are sklearn's handwritten digits
JPEG_QUALITY = 90

# Palette centres; object colours are jittered around them but always stay nearest to their own name.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 40),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 40),
    "green": (45, 160, 65),
    "blue": (35, 85, 215),
    "purple": (130, 55, 175),
    "pink": (240, 130, 185),
    "brown": (125, 80, 45),
    "black": (25, 25, 30),
    "white": (240, 240, 240),
}
_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)

# Random streams: (seed, stream, index) seeds one Generator, so samples never share draws across splits.
_TRAIN, _EVAL_SHAPES, _EVAL_DIGITS, _EVAL_RETRIEVAL, _PLAN = 1, 2, 3, 4, 5
_DIGIT_SPLIT_SEED = (20240601, 0, 0)  # fixed: the held-out digits are the same for every world seed
_DIGIT_TRAIN_FRACTION = 0.7


# ----------------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------------

_SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down, for clean anti-aliased edges
_BACKGROUNDS = ("plain", "stripes", "dots", "checker", "gradient")
# Object radius as a fraction of the image side, per size category; "tiny" only appears in the hard eval set.
_RADIUS = {"tiny": (0.05, 0.08), "small": (0.08, 0.14), "medium": (0.16, 0.22), "large": (0.25, 0.34)}
_MARGIN = 0.02
_MIN_CONTRAST = 90.0  # RGB distance every background tone keeps from every object colour


def _polygon(points: int, radius_ratio: float = 1.0) -> np.ndarray:
    """Unit polygon with ``points`` corners (alternating with an inner radius for stars), first corner up."""
    n = points * (2 if radius_ratio != 1.0 else 1)
    angles = -math.pi / 2 + np.arange(n) * 2 * math.pi / n
    radii = np.where(np.arange(n) % 2 == 0, 1.0, radius_ratio) if radius_ratio != 1.0 else np.ones(n)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    """Unit heart outline from the classic parametric curve, point up at the bottom."""
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1)


def _plus(arm: float = 0.36) -> np.ndarray:
    """Unit plus sign with arms ``arm`` wide (half-width relative to the radius)."""
    a = arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=np.float64,
    )


def _unit(points: np.ndarray) -> np.ndarray:
    """Scale an outline so its farthest point is at radius 1: every shape then fits the circle it is placed in."""
    return points / np.linalg.norm(points, axis=1).max()


_UNIT_SHAPES: dict[str, np.ndarray] = {
    "square": _unit(_polygon(4)),
    "triangle": _unit(_polygon(3)),
    "star": _unit(_polygon(5, 0.45)),
    "hexagon": _unit(_polygon(6)),
    "cross": _unit(_plus()),
    "heart": _unit(_heart()),
}
_MAX_TILT = {"heart": 25.0}  # degrees; hearts stay roughly upright, the rest turn freely


@dataclass(frozen=True)
class Placed:
    """One drawn object: class, size category, where it sits (pixels) and how it is turned."""

    colour: str
    shape: str
    size: str
    pos: str | None
    cx: float
    cy: float
    r: float
    angle: float
    aspect: float = 1.0  # minor/major axis ratio, ellipses only


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The Generator of one sample: independent of generation order and of every other split."""
    return np.random.default_rng([seed, stream, index])


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of a square image, cached per size."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return xx, yy


def _hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] to an RGB float vector in [0, 255]."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32) * 255


def _contrast(tones: list[np.ndarray], avoid: list[np.ndarray]) -> float:
    """Smallest RGB distance between any background tone and any object colour."""
    if not avoid:
        return float("inf")
    return min(float(np.linalg.norm(t - a)) for t in tones for a in avoid)


def _background_tones(rng: np.random.Generator, avoid: list[np.ndarray], paper: bool) -> list[np.ndarray]:
    """Two related muted tones for the background, far enough from every object colour to keep objects visible."""
    best: list[np.ndarray] = []
    best_score = -1.0
    for _ in range(24):
        h = rng.random()
        s = rng.uniform(0.0, 0.12) if paper else rng.uniform(0.0, 0.35)
        v = rng.uniform(0.82, 0.98) if paper else rng.uniform(0.3, 0.95)
        dv = rng.uniform(0.06, 0.2) * (1 if rng.random() < 0.5 else -1)
        tones = [_hsv_rgb(h, s, v), _hsv_rgb(h + rng.normal(0, 0.04), s * rng.uniform(0.6, 1.4), v + dv)]
        score = _contrast(tones, avoid)
        if score >= _MIN_CONTRAST:
            return tones
        if score > best_score:
            best, best_score = tones, score
    return best


def _pattern(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """Mixing weights in [0, 1] between the two background tones for texture ``kind``."""
    xx, yy = _grid(size)
    theta = rng.uniform(0, math.pi)
    period = size * rng.uniform(0.06, 0.2)
    if kind == "stripes":
        u = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        return ((u % 1.0) < rng.uniform(0.3, 0.6)).astype(np.float32)
    if kind == "dots":
        dx, dy = (xx % period) - period / 2, (yy % period) - period / 2
        return (dx * dx + dy * dy < (period * rng.uniform(0.15, 0.35)) ** 2).astype(np.float32)
    if kind == "checker":
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    if kind == "gradient":
        u = xx * math.cos(theta * 2) + yy * math.sin(theta * 2)
        return ((u - u.min()) / max(float(u.max() - u.min()), 1e-6)).astype(np.float32)
    raise ValueError(f"unknown background texture {kind!r}")


def _background(
    rng: np.random.Generator, size: int, avoid: list[np.ndarray], paper: bool = False
) -> tuple[np.ndarray, str]:
    """A textured background as float RGB (size, size, 3) and the name of its texture."""
    textures = ("plain", "gradient") if paper else _BACKGROUNDS
    kind = textures[int(rng.integers(len(textures)))]
    c1, c2 = _background_tones(rng, avoid, paper)
    image = np.empty((size, size, 3), np.float32)
    image[:] = c1
    if kind != "plain":
        image += (c2 - c1) * _pattern(rng, kind, size)[..., None]
    return image, kind


def _nearest_colour(rgb: np.ndarray) -> str:
    """Palette name nearest to an RGB colour."""
    return COLOURS[int(np.argmin(((_PALETTE_ARRAY - rgb) ** 2).sum(axis=1)))]


def _object_rgb(rng: np.random.Generator, name: str, jitter: float) -> np.ndarray:
    """A jittered shade of palette colour ``name`` that is still nearest to ``name`` (so labels stay true)."""
    base = np.array(PALETTE[name], np.float32)
    for _ in range(8):
        rgb = np.clip((base + rng.uniform(-jitter, jitter, 3)) * rng.uniform(0.9, 1.06), 0, 255).astype(np.float32)
        if _nearest_colour(rgb) == name:
            return rgb
    return base


def _shape_points(obj: Placed, scale: float) -> list[tuple[float, float]]:
    """Polygon corners of a placed object, in pixels of a canvas ``scale`` times the image."""
    if obj.shape == "ellipse":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        unit = np.stack([np.cos(t), obj.aspect * np.sin(t)], axis=1)
    else:
        unit = _UNIT_SHAPES[obj.shape]
    a = math.radians(obj.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = (unit @ rot.T) * obj.r + (obj.cx, obj.cy)
    return [(float(x) * scale, float(y) * scale) for x, y in pts]


def _shape_mask(obj: Placed, size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) in [0, 1] of one object."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    if obj.shape in ("circle", "ring"):
        x, y, r = obj.cx * s, obj.cy * s, obj.r * s
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        if obj.shape == "ring":
            inner = r * 0.55
            draw.ellipse((x - inner, y - inner, x + inner, y + inner), fill=0)
    else:
        draw.polygon(_shape_points(obj, s), fill=255)
    return np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0


def _box(cx: float, cy: float, r: float, size: int) -> tuple[slice, slice]:
    """Rows and columns an object of radius ``r`` can touch: painting only there keeps generation fast."""
    lo_x, hi_x = max(0, int(cx - r) - 2), min(size, int(cx + r) + 3)
    lo_y, hi_y = max(0, int(cy - r) - 2), min(size, int(cy + r) + 3)
    return slice(lo_y, hi_y), slice(lo_x, hi_x)


def _paint(image: np.ndarray, mask: np.ndarray, rgb: np.ndarray, box: tuple[slice, slice]) -> None:
    """Blend a flat colour into ``image`` through ``mask`` inside ``box``, in place."""
    region, m = image[box], mask[box][..., None]
    region *= 1.0 - m
    region += rgb * m


def _draw_strokes(rng: np.random.Generator, image: Image.Image, count: int) -> None:
    """Clutter: thin lines and arcs in random palette shades, drawn over the scene."""
    draw = ImageDraw.Draw(image)
    size = image.size[0]
    width = max(1, round(size / 128))
    for _ in range(count):
        rgb = tuple(int(v) for v in _object_rgb(rng, COLOURS[int(rng.integers(len(COLOURS)))], 30))
        p = rng.uniform(0, size, 4)
        w = int(width * rng.integers(1, 3))
        if rng.random() < 0.5:
            draw.line([(p[0], p[1]), (p[2], p[3])], fill=rgb, width=w)
        else:
            box = (min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]) + 4, max(p[1], p[3]) + 4)
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(40, 200)), fill=rgb, width=w)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Sensor-like noise of std ``sigma``: mostly Gaussian luminance plus a uniform per-channel part (cheap to draw)."""
    if sigma <= 0:
        return np.zeros(shape, np.float32)
    chroma = rng.random(shape, dtype=np.float32)
    chroma -= np.float32(0.5)
    chroma *= np.float32(0.6 * math.sqrt(12.0) * sigma)  # uniform with std 0.6 * sigma
    chroma += rng.standard_normal((*shape[:-1], 1), dtype=np.float32) * np.float32(0.8 * sigma)
    return chroma


def _finish(rng: np.random.Generator, image: np.ndarray, noise: float, strokes: int) -> bytes:
    """Clutter, pixel noise and JPEG encoding with fixed settings (same pixels, same bytes)."""
    pixels = image
    if strokes:
        pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
        _draw_strokes(rng, pil, strokes)
        pixels = np.asarray(pil, dtype=np.float32)
    jitter = _noise(rng, pixels.shape, noise)
    jitter += pixels
    jitter += np.float32(0.5)  # round to nearest on the uint8 cast
    out = Image.fromarray(np.clip(jitter, 0, 255, out=jitter).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def _render_shapes(
    rng: np.random.Generator, objects: list[Placed], size: int, jitter: float, noise: float, strokes: int
) -> tuple[bytes, str]:
    """Draw objects over a contrasting textured background; returns JPEG bytes and the texture name."""
    colours = [_object_rgb(rng, o.colour, jitter) for o in objects]
    image, texture = _background(rng, size, colours)
    for obj, rgb in zip(objects, colours, strict=True):
        _paint(image, _shape_mask(obj, size), rgb, _box(obj.cx, obj.cy, obj.r, size))
    return _finish(rng, image, noise, strokes), texture


# ----------------------------------------------------------------------------------------------------------------
# Scene layout
# ----------------------------------------------------------------------------------------------------------------


def _radius(rng: np.random.Generator, category: str, size: int) -> float:
    """Object radius in pixels for a size category."""
    lo, hi = _RADIUS[category]
    return max(float(rng.uniform(lo, hi)) * size, 3.0)  # at least 3 px, so tiny objects stay recognisable


def _pose(rng: np.random.Generator, shape: str) -> tuple[float, float]:
    """Rotation in degrees (limited for hearts) and aspect ratio (ellipses only)."""
    tilt = _MAX_TILT.get(shape)
    angle = float(rng.uniform(-tilt, tilt)) if tilt else float(rng.uniform(0, 360))
    aspect = float(rng.uniform(0.45, 0.65)) if shape == "ellipse" else 1.0
    return angle, aspect


def _span(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform draw in [lo, hi], or the midpoint when the range is empty."""
    return float(rng.uniform(lo, hi)) if hi > lo else (lo + hi) / 2


def _single_centre(rng: np.random.Generator, pos: str | None, r: float, size: int) -> tuple[float, float]:
    """Centre of a lone object so that its position word (left, top, centre, ...) is plainly true."""
    lo, hi = r + _MARGIN * size, size - r - _MARGIN * size
    if pos is None:
        return _span(rng, lo, hi), _span(rng, lo, hi)
    if pos == "centre":
        return _span(rng, 0.44 * size, 0.56 * size), _span(rng, 0.44 * size, 0.56 * size)
    along = _span(rng, lo, max(lo, 0.3 * size))
    across = _span(rng, max(lo, 0.3 * size), min(hi, 0.7 * size))
    along = size - along if pos in ("right", "bottom") else along
    return (along, across) if pos in ("left", "right") else (across, along)


def _plan_single(
    rng: np.random.Generator, size: int, colour: str, shape: str, sizes: tuple[str, ...], placed: bool
) -> Placed:
    """One object of a given class; ``placed`` lets it take a captionable position when its size allows."""
    category = sizes[int(rng.integers(len(sizes)))]
    r = _radius(rng, category, size)
    pos = None
    if placed and rng.random() < 0.6:
        side_ok = r <= 0.22 * size
        pos = POSITIONS[int(rng.integers(5))] if side_ok else "centre"
    cx, cy = _single_centre(rng, pos, r, size)
    return Placed(colour, shape, category, pos, cx, cy, r, *_pose(rng, shape))


_PAIR_SIZES = (
    ("small", "small"),
    ("small", "medium"),
    ("medium", "small"),
    ("medium", "medium"),
    ("small", "large"),
    ("large", "small"),
)


def _plan_pair(
    rng: np.random.Generator, size: int, classes: list[tuple[str, str]], sizes: tuple[str, str], vertical: bool
) -> list[Placed]:
    """Two objects side by side (or one above the other), never overlapping; the first is left/top."""
    ra, rb = (_radius(rng, c, size) for c in sizes)
    gap, margin = 0.04 * size, _MARGIN * size
    deficit = 2 * (ra + rb) + gap + 2 * margin - size
    if deficit > 0:  # only a large partner can overflow; shrink it, it stays in the large range
        ra, rb = (ra - deficit / 2, rb) if ra > rb else (ra, rb - deficit / 2)
    slack = max(0.0, size - 2 * margin - gap - 2 * (ra + rb))
    before, between, _ = rng.dirichlet((1.0, 1.0, 1.0)) * slack
    along_a = margin + before + ra
    along_b = along_a + ra + gap + between + rb
    names = ("top", "bottom") if vertical else ("left", "right")
    objects = []
    for (colour, shape), category, r, along, pos in zip(
        classes, sizes, (ra, rb), (along_a, along_b), names, strict=True
    ):
        across = _span(rng, r + margin, size - r - margin)
        cx, cy = (across, along) if vertical else (along, across)
        objects.append(Placed(colour, shape, category, pos, cx, cy, r, *_pose(rng, shape)))
    return objects


def _random_class(rng: np.random.Generator) -> tuple[str, str]:
    """A uniformly drawn (colour, shape)."""
    return COLOURS[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]


def _things(objects: list[Placed], say_size: bool, say_pos: bool) -> list[Thing]:
    """What captions say: sizes only for small/large objects, positions only where the layout makes them true."""
    return [
        Thing(o.colour, o.shape, o.size if say_size and o.size in SIZES else None, o.pos if say_pos else None)
        for o in objects
    ]


def _object_meta(objects: list[Placed], size: int) -> list[dict[str, Any]]:
    """Labels of drawn objects for the sample metadata (coordinates as fractions of the image side)."""
    return [
        {
            "colour": o.colour,
            "shape": o.shape,
            "size": o.size,
            "pos": o.pos,
            "x": round(o.cx / size, 4),
            "y": round(o.cy / size, 4),
            "r": round(o.r / size, 4),
            "angle": round(o.angle, 2),
        }
        for o in objects
    ]


# ----------------------------------------------------------------------------------------------------------------
# Digits (scikit-learn's 1,797 real 8x8 handwritten digits)
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sklearn digits (images 0-16, labels) and a fixed stratified 70/30 split of their indices."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - the train extra installs it
        raise ImportError("the toy world needs scikit-learn's digits: pip install 'dcclip[train]'") from exc
    data = load_digits()
    images, labels = data.images.astype(np.float32), data.target.astype(np.int64)
    rng = np.random.default_rng(list(_DIGIT_SPLIT_SEED))
    train, held = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        cut = round(len(idx) * _DIGIT_TRAIN_FRACTION)
        train.append(idx[:cut])
        held.append(idx[cut:])
    return images, labels, np.sort(np.concatenate(train)), np.concatenate(held)


def _digit_mask(rng: np.random.Generator, pixels: np.ndarray, size: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """An 8x8 digit upscaled with bicubic smoothing, sharpened into strokes, tilted and placed on the canvas."""
    side = int(size * rng.uniform(0.45, 0.85))
    small = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8), "L")
    big = small.resize((side, side), Image.BICUBIC).rotate(float(rng.uniform(-15, 15)), Image.BICUBIC)
    ink = np.clip((np.asarray(big, np.float32) / 255.0 - 0.15) / 0.55, 0.0, 1.0)
    mask = np.zeros((size, size), np.float32)
    x0, y0 = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    box = (slice(y0, y0 + side), slice(x0, x0 + side))
    mask[box] = ink
    return mask, box


def _render_digit(
    rng: np.random.Generator, pixels: np.ndarray, size: int, noise: float, strokes: int
) -> tuple[bytes, dict[str, Any]]:
    """A digit in dark ink on paper, or in a palette colour on a textured background."""
    paper = rng.random() < 0.6
    if paper:
        ink = np.array((20, 25, 60) if rng.random() < 0.3 else (25, 25, 30), np.float32) + rng.uniform(0, 25, 3)
        ink_name = "dark"
    else:
        ink_name = COLOURS[int(rng.integers(len(COLOURS)))]
        ink = _object_rgb(rng, ink_name, 20)
    image, texture = _background(rng, size, [ink], paper=paper)
    mask, box = _digit_mask(rng, pixels, size)
    _paint(image, mask, ink.astype(np.float32), box)
    return _finish(rng, image, noise, strokes), {"ink": ink_name, "background": texture}
