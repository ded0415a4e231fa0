"""The web target in headless Chromium against the Python runtime on the same inputs: token ids, pixels, embeddings,
zero-shot decisions, and no request to another origin. Needs npm (the build runs `npm ci` into a cache)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from web_target_fixtures import (
    EVAL_IMAGES,
    call,
    eval_world,
    extract_eval_images,
    png_bytes,
    requested_urls,
    web_browser,
    web_bundle,
    web_server,
    web_site,
)

from dcclip.data.world.grammar import class_names, class_templates
from dcclip.runtime.bundle import BundleModel
from dcclip.runtime.classifier import DEFAULT_TEMPLATES, ZeroShotClassifier
from dcclip.runtime.preprocess import Preprocess, decode_image
from dcclip.runtime.prompts import fill_templates

__all__ = ["eval_world", "web_browser", "web_bundle", "web_server", "web_site"]  # fixtures, imported for pytest

EDGE_TEXTS = [
    "ＡＢＣ　ｆｕｌｌ　ｗｉｄｔｈ　１２３",
    "🐱 cat 😀👍🏽 🇫🇷 👨‍👩‍👧",
    "mixed 猫 кошка قطة बिल्ली 고양이 ねこ",
    "  leading and trailing spaces  ",
    "a red circle " * 20,
    "一个红色的圆形" * 10,
    "x",
    "<0x41> literal byte token </s> <pad>",
    "ﬁ ligature, é composed, é decomposed",
    "zero\u200bwidth tab\tnew\nline",
]


@pytest.fixture(scope="module", autouse=True)
def need_npm() -> None:
    """CI has npm: a missing one is a failure with the fix in its message, never a silent skip."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.fail("the web target needs node and npm (apt-get install nodejs npm)")


def all_prompts() -> list[str]:
    """Every eval class prompt of the toy world (shapes and digits, all 10 languages) plus the runtime's templates."""
    prompts = []
    for task in ("shapes", "digits"):
        names, templates = class_names(task), class_templates(task)
        for lang in names:
            prompts += fill_templates(names[lang], templates[lang])
            prompts += fill_templates(names[lang][:3], DEFAULT_TEMPLATES.get(lang, ("{c}",)))
    return prompts + EDGE_TEXTS


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_token_ids_equal_python(web_browser, web_bundle) -> None:
    model = BundleModel(web_bundle, "fp32")
    prompts = all_prompts()
    mismatched = []
    for start in range(0, len(prompts), 256):
        batch = prompts[start : start + 256]
        ids, _ = model.tokenizer.encode(batch, model.text_max_length)
        js = call(web_browser, "return window.dcclip.tokenize(args[0]);", batch)
        mismatched += [text for text, row, js_row in zip(batch, ids.tolist(), js, strict=True) if row != js_row]
    assert len(prompts) > 4000
    assert not mismatched, f"{len(mismatched)} of {len(prompts)} prompts tokenised differently: {mismatched[:5]}"


def test_text_embeddings_match(web_browser, web_bundle) -> None:
    prompts = all_prompts()
    python = BundleModel(web_bundle, "fp32").embed_texts(prompts)
    js = np.asarray(call(web_browser, "return await window.dcclip.embedTexts(args[0]);", prompts))
    assert cosines(python, js).min() >= 0.9999


def test_resize_is_pixel_exact(web_browser) -> None:
    """The JS preprocessing of raw RGB equals Preprocess on the PIL image, bit for bit, up- and downscaling."""
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(1, 1), (5, 250), (7, 5), (31, 17), (64, 64), (225, 301), (301, 225), (640, 480), (1001, 21), (224, 224)]
    sizes += [tuple(int(v) for v in rng.integers(9, 400, 2)) for _ in range(30)]
    worst = 0.0
    for width, height in sizes:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for pre in (Preprocess(image_size=32), Preprocess(image_size=224, interpolation="bilinear")):
            expected = pre(Image.fromarray(pixels)).ravel()
            got = call(web_browser, "return window.dcclip.preprocessRaw(...args);", width, height,
                       pixels.ravel().tolist(), pre.to_dict())  # fmt: skip
            worst = max(worst, float(np.abs(np.asarray(got, np.float32) - expected).max()))
    assert worst == 0.0


def special_pngs() -> dict[str, bytes]:
    """PNGs the runtime converts in its own way: alpha (dropped, not composited), grey, 16-bit, palette, EXIF."""
    from PIL import Image

    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6
    wide = Image.fromarray(rng.integers(0, 65536, (40, 30), dtype=np.uint16))
    rgb16 = rng.integers(0, 65536, (21, 33, 3), dtype=np.uint16)
    return {
        "rgba.png": png_bytes(rgba),
        "la.png": png_bytes(rgba.convert("LA")),
        "grey.png": png_bytes(rgba.convert("L")),
        "palette.png": png_bytes(rgba.convert("RGB").quantize(50)),
        "one_bit.png": png_bytes(rgba.convert("1")),
        "grey16.png": png_bytes(wide),
        "rotated.png": png_bytes(rgba.convert("RGB"), exif=exif.tobytes()),
        "rgb16.png": _rgb16_png(rgb16),
    }


def _rgb16_png(values: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (PIL cannot write one)."""
    import struct
    import zlib

    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_png_decoding_matches_runtime(web_browser, web_server, web_site) -> None:
    pre = Preprocess(image_size=32)
    (web_site / "pngs").mkdir(exist_ok=True)
    for name, data in special_pngs().items():
        (web_site / "pngs" / name).write_bytes(data)
        width, height, rgb = call(web_browser, "return await window.dcclip.decode(args[0]);", f"pngs/{name}")
        image = decode_image(data)
        from dcclip.runtime.preprocess import to_rgb

        expected = np.asarray(to_rgb(image), np.uint8)
        assert (height, width) == expected.shape[:2], name
        assert np.array_equal(np.asarray(rgb, np.uint8).reshape(expected.shape), expected), name
        got = call(web_browser, "return window.dcclip.preprocessRaw(...args);", width, height, rgb, pre.to_dict())
        assert np.array_equal(np.asarray(got, np.float32), pre(image).ravel()), name


def test_eval_images_embed_and_classify_like_python(web_browser, web_bundle, eval_world, tmp_path) -> None:
    images = extract_eval_images(eval_world, tmp_path / "images", EVAL_IMAGES)
    urls = [f"testdata/{path.name}" for path, _ in images]
    python = BundleModel(web_bundle, "fp32").embed_images([str(path) for path, _ in images])
    js = np.asarray(call(web_browser, "return await window.dcclip.embedImages(args[0]);", urls))
    assert len(js) >= 200
    assert cosines(python, js).min() >= 0.9999
    labels = class_names("shapes")["en"]
    classifier = ZeroShotClassifier.from_bundle(web_bundle, precision="fp32")
    expected = [ranked[0][0] for ranked in classifier.classify([str(p) for p, _ in images], labels, "en", top_k=1)]
    got = call(web_browser, "return await window.dcclip.classify(args[0], args[1], 'en', 1);", urls, labels)
    assert [ranked[0]["label"] for ranked in got] == expected


def test_int8_agreement_reported(web_browser, web_bundle, eval_world, tmp_path) -> None:
    """int8 in the browser against fp32 in Python: reported, with only a sanity floor."""
    images = extract_eval_images(eval_world, tmp_path / "images", 100)
    urls = [f"testdata/{path.name}" for path, _ in images]
    labels = class_names("shapes")["fr"]
    classifier = ZeroShotClassifier.from_bundle(web_bundle, precision="fp32")
    expected = [ranked[0][0] for ranked in classifier.classify([str(p) for p, _ in images], labels, "fr", top_k=1)]
    try:
        assert call(web_browser, "return await window.dcclip.load('int8');") == "int8"
        got = call(web_browser, "return await window.dcclip.classify(args[0], args[1], 'fr', 1);", urls, labels)
    finally:
        call(web_browser, "return await window.dcclip.load('fp32');")
    agreement = float(np.mean([r[0]["label"] == e for r, e in zip(got, expected, strict=True)]))
    print(f"int8 (browser) vs fp32 (python) top-1 agreement: {agreement:.1%} on {len(images)} images")
    assert agreement >= 0.5


def test_search_ranks_exported_gallery(web_browser) -> None:
    hits = call(web_browser, "return await window.dcclip.search('a red circle');")
    assert len(hits) == 10 and all(h["url"].startswith("./gallery/") for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_nothing_requested_from_another_origin(web_browser, web_server) -> None:
    web_browser.get(f"{web_server.url}/index.html")
    call(web_browser, "return await window.dcclip.ready;")
    urls = requested_urls(web_browser)
    assert any(url.endswith(".wasm") for url in urls) and any("tokenizer.json" in url for url in urls)
    foreign = [url for url in urls if not url.startswith(web_server.url) and not url.startswith(("blob:", "data:"))]
    assert not foreign
    errors = [e for e in web_browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
