"""The web target in headless Chromium: parity with the Python runtime and in-browser milliseconds per image and text.

    python benchmarks/web_target.py [--bundle runs/demo/bundle] [--images 200] [--repeat 10]

Builds the web target from the bundle (default runs/demo/bundle; `--bundle test-student` exports the random-weight
test student instead), serves it from 127.0.0.1 with cross-origin isolation (so onnxruntime-web may use threads),
and measures in Debian's Chromium: token ids, embedding cosines and zero-shot top-1 agreement against
dcclip.runtime on toy-world eval images, then the median ms per image (fetch + decode + preprocess + image tower,
batch 1; decode + preprocess also apart) and per text (tokenise + text tower, batch 1) after a warm-up, with 1 thread
and onnxruntime-web's default thread count. The Python runtime's ms (onnxruntime, 1 thread) is given beside them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "browser"))
from _common import markdown_table, write_result
from web_target_fixtures import (
    StaticServer,
    both_precisions_bundle,
    call,
    extract_eval_images,
    open_page,
    start_driver,
)

from dcclip.data.world.grammar import class_names, class_templates
from dcclip.demo.report import median_ms
from dcclip.export.targets import build_target
from dcclip.runtime.bundle import BundleModel
from dcclip.runtime.classifier import ZeroShotClassifier
from dcclip.runtime.prompts import fill_templates

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "runs" / "demo" / "bundle"


def resolve_bundle(name: str, scratch: Path) -> Path:
    """The bundle to measure: a path, or the test student exported on the spot."""
    if name == "test-student":
        return both_precisions_bundle(scratch / "student")
    path = Path(name)
    if not (path / "manifest.json").is_file():
        raise SystemExit(f"no bundle at {path}: run `dcclip demo --out runs/demo` or pass --bundle (or test-student)")
    return path


def prompts_for(languages: list[str]) -> list[str]:
    """Every shapes and digits class prompt of the toy world in the bundle's languages (all ten when unrecorded)."""
    texts = []
    for task in ("shapes", "digits"):
        names, templates = class_names(task), class_templates(task)
        for lang in languages or list(names):
            if lang in names:
                texts += fill_templates(names[lang], templates[lang])
    return texts


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between two embedding sets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def js(browser, method: str, *args: Any) -> Any:
    """Await ``window.dcclip[method](...args)`` in the page."""
    return call(browser, f"return await window.dcclip.{method}(...args);", *args)


def agreement(got: list, expected: list[str]) -> float:
    """Share of images whose browser top-1 label is the Python one."""
    return float(np.mean([g[0]["label"] == e for g, e in zip(got, expected, strict=True)]))


def parity(browser, bundle: Path, images: list[Path], prompts: list[str], lang: str) -> dict[str, Any]:
    """Token ids, cosines and top-1 agreement of the page (fp32, and int8 when present) against Python fp32."""
    model = BundleModel(bundle, "fp32")
    batches = [prompts[s : s + 256] for s in range(0, len(prompts), 256)]  # both sides pad to the batch's longest
    ids = [row for batch in batches for row in model.tokenizer.encode(batch, model.text_max_length)[0].tolist()]
    js_ids = [row for batch in batches for row in js(browser, "tokenize", batch)]
    urls = [f"testdata/{p.name}" for p in images]
    labels = class_names("shapes")[lang]
    expected = [r[0][0] for r in ZeroShotClassifier(model).classify([str(p) for p in images], labels, lang, top_k=1)]
    result = {
        "prompts": len(prompts),
        "token_ids_equal": float(np.mean([a == b for a, b in zip(ids, js_ids, strict=True)])),
        "text_cosine_min": cosine_min(model.embed_texts(prompts), js(browser, "embedTexts", prompts)),
        "images": len(images),
        "image_cosine_min": cosine_min(model.embed_images([str(p) for p in images]), js(browser, "embedImages", urls)),
    }
    for precision in model.manifest["precisions"]:
        js(browser, "load", precision)
        result[f"top1_agreement_{precision}"] = agreement(js(browser, "classify", urls, labels, lang, 1), expected)
    js(browser, "load", "fp32")
    return result


def browser_timings(server: StaticServer, image: Path, text: str, repeat: int) -> list[dict[str, Any]]:
    """Median ms per image and per text in the page, at 1 thread and at onnxruntime-web's default."""
    rows = []
    for threads in (1, 0):
        browser = start_driver()
        try:
            open_page(browser, f"{server.url}/index.html?threads={threads}")
            info = call(browser, "return [crossOriginIsolated, navigator.hardwareConcurrency];")
            image_ms = js(browser, "time", "image", [f"testdata/{image.name}"], repeat)
            pixels_ms = js(browser, "time", "pixels", [f"testdata/{image.name}"], repeat)
            text_ms = js(browser, "time", "text", [text], repeat)
        finally:
            browser.quit()
        rows.append({
            "where": "browser (onnxruntime-web WASM)",
            "threads": "1" if threads == 1 else f"default (isolated={info[0]}, cores={info[1]})",
            "ms_per_image": float(np.median(image_ms)),
            "ms_decode_preprocess": float(np.median(pixels_ms)),
            "ms_per_text": float(np.median(text_ms)),
        })  # fmt: skip
    return rows


def python_timings(bundle: Path, image: Path, text: str, repeat: int) -> dict[str, Any]:
    """The Python runtime on the same image file and text, 1 thread, batch 1."""
    model = BundleModel(bundle, "fp32", intra_op_num_threads=1)
    return {
        "where": "python (onnxruntime CPU)",
        "threads": "1",
        "ms_per_image": median_ms(lambda: model.embed_images([str(image)]), repeat, warmup=2),
        "ms_decode_preprocess": median_ms(lambda: model.preprocess(model.load_image(str(image))), repeat, warmup=2),
        "ms_per_text": median_ms(lambda: model.embed_texts([text]), repeat, warmup=2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle directory, or test-student")
    parser.add_argument("--images", type=int, default=200, help="eval images for the parity figures")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per figure (median reported)")
    parser.add_argument("--lang", default="en", help="language of the zero-shot labels")
    args = parser.parse_args()
    from dcclip.data.world import generate_world

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        bundle = resolve_bundle(args.bundle, scratch)
        generate_world(scratch / "world", train_samples=8, seed=5, eval_samples=max(args.images, 1), image_size=128)
        images = [p for p, _ in extract_eval_images(scratch / "world", scratch / "images", args.images)]
        started = time.perf_counter()
        summary = build_target("web", bundle, scratch / "site")
        build_s = time.perf_counter() - started
        (scratch / "site" / "testdata").mkdir()
        for path in images:
            (scratch / "site" / "testdata" / path.name).write_bytes(path.read_bytes())
        languages = BundleModel(bundle, "fp32").languages
        prompts = prompts_for(languages)
        server = StaticServer(scratch / "site", isolate=True)
        try:
            browser = start_driver()
            try:
                open_page(browser, f"{server.url}/index.html")
                figures = parity(browser, bundle, images, prompts, args.lang)
            finally:
                browser.quit()
            rows = browser_timings(server, images[0], prompts[0], args.repeat)
        finally:
            server.close()
        rows.append(python_timings(bundle, images[0], prompts[0], args.repeat))
    table = markdown_table(rows, ["where", "threads", "ms_per_image", "ms_decode_preprocess", "ms_per_text"])
    table += "\n\n" + markdown_table([figures], list(figures))
    command = "python benchmarks/web_target.py " + " ".join(sys.argv[1:])
    payload = {"bundle": args.bundle, "build_seconds": build_s, "site_bytes": summary["bytes"], "parity": figures,
               "timings": rows}  # fmt: skip
    write_result("web_target", payload, table, command.strip())
    print(table)


if __name__ == "__main__":
    main()
