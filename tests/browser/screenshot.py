"""``make screenshot``: docs/ui.png, the README's picture of the page, from the demo bundle (``make demo`` first).

Serves the demo bundle with ``dcclip serve`` on loopback, picks toy-world eval images of different shape classes
that the bundle classifies correctly in every shown language (Chinese and Arabic), classifies them in the page once
per language in headless Chromium, and puts the two screenshots side by side. Tests never write this file.

    python tests/browser/screenshot.py [--bundle runs/demo/bundle] [--world runs/demo/world] [--out docs/ui.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # conftest and test_page here, serve_bundles / server_process in tests/

from conftest import CHROMEDRIVER, REPO, chrome_options, dcclip_server  # noqa: E402
from PIL import Image  # noqa: E402
from test_page import choose_images, classify, open_page, screenshot, shown_results  # noqa: E402

LANGS = ("zh", "ar")
IMAGES = 3
DISTRACTORS = 2


def correct_everywhere(bundle: Path, world: Path, out: Path) -> tuple[list[Path], list[int], list[str]]:
    """Eval images of distinct classes that the bundle gets right in every language (with distractor labels)."""
    from dcclip.eval.datasets import open_dataset
    from dcclip.runtime.classifier import ZeroShotClassifier

    dataset = open_dataset(world / "eval" / "shapes")
    classifier = ZeroShotClassifier.from_bundle(bundle)
    chosen: list[int] = []
    paths: list[Path] = []
    for open_image, label, _ in dataset.entries():
        if label in chosen:
            continue
        image = open_image()
        candidates = [label, *[c for c in range(dataset.n_classes) if c != label][:DISTRACTORS]]
        if all(_top_label(classifier, image, dataset.classnames[lang], candidates, lang) == label for lang in LANGS):
            paths.append(out / f"{len(chosen)}.png")
            image.save(paths[-1])
            chosen.append(label)
        if len(chosen) == IMAGES:
            return paths, chosen, [dataset.classnames[lang] for lang in LANGS]
    raise SystemExit(f"only {len(chosen)} eval images of {bundle} are right in {LANGS}: is this the demo bundle?")


def _top_label(classifier, image, names: list[str], candidates: list[int], lang: str) -> int:
    labels = [names[c] for c in candidates]
    return candidates[labels.index(classifier.classify([image], labels, lang, top_k=1)[0][0][0])]


def shoot(bundle: Path, world: Path, out: Path) -> None:
    """Classify the chosen images in the page, once per language, and write the side-by-side picture."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        paths, classes, names = correct_everywhere(bundle, world, tmp_path)
        labels = [[table[c] for c in classes] + [table[c] for c in _others(classes, len(table))] for table in names]
        server = dcclip_server(bundle, None, tmp_path / "server.log")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=chrome_options())
        try:
            server.wait_ready()
            shots = [
                _one_language(driver, server, paths, lang, lang_labels, tmp_path)
                for lang, lang_labels in zip(LANGS, labels, strict=True)
            ]
        finally:
            driver.quit()
            server.close()
        _side_by_side(shots, out)


def _others(classes: list[int], total: int) -> list[int]:
    return [c for c in range(total) if c not in classes][:DISTRACTORS]


def _one_language(driver, server, paths: list[Path], lang: str, labels: list[str], tmp: Path) -> Path:
    open_page(driver, server)
    choose_images(driver, paths)
    classify(driver, "\n".join(labels), lang, 3)
    shown = shown_results(driver, len(paths))
    expected = labels[: len(paths)]
    if [row[0] for row in shown] != expected:
        raise SystemExit(f"the page shows {shown} in {lang}, expected top labels {expected}")
    return screenshot(driver, tmp / f"{lang}.png")


def _side_by_side(shots: list[Path], out: Path) -> None:
    images = [Image.open(path).convert("RGB") for path in shots]
    canvas = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    print(f"wrote {out} ({canvas.width}x{canvas.height})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "runs" / "demo" / "bundle")
    parser.add_argument("--world", type=Path, default=REPO / "runs" / "demo" / "world")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ui.png")
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"{args.bundle}: no bundle there; run `make demo` first (it writes runs/demo/bundle)")
    shoot(args.bundle, args.world, args.out)


if __name__ == "__main__":
    main()
