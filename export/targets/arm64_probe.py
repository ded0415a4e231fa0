"""What the aarch64 target runs on: the inputs (images, labels, texts) collected here, and ``probe``, run on each
machine through the runtime API (verify, embed, classify, index build + search, typed errors). See arm64.py."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcclip.export.targets.arm64_root import (
    EMULATION_ENV,
    MAX_IMAGES,
    MAX_LANGS,
    MAX_TEXTS,
    RUNTIME_PACKAGES,
    _installed_version,
)
from dcclip.io import write_json_atomic
from dcclip.runtime.constants import IMAGE_EXTENSIONS
from dcclip.runtime.preprocess import is_image_file

# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Inputs:
    """What both machines embed and classify: image files, labels per language (and truth when known), texts."""

    images: list[Path]
    labels: dict[str, list[str]]
    truth: list[int] | None
    texts: list[str]
    source: str


def collect_inputs(
    images: Path | None,
    out: Path,
    bundle_langs: Sequence[str],
    labels: dict[str, list[str]] | None = None,
    max_images: int = MAX_IMAGES,
) -> Inputs:
    """Images written to ``out`` as PNG with their labels: from a clip_benchmark set, an ImageFolder, a plain folder
    (``labels`` needed) or, when ``images`` is None, a freshly generated toy-world eval set."""
    out.mkdir(parents=True, exist_ok=True)
    if images is None:
        images, source = _toy_world_eval(out.parent / "world"), "toy world eval/shapes (generated, seed 0)"
    else:
        images, source = Path(images), str(images)
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: not a folder of images or an eval set")
    dataset = _open_dataset(images, max_images)
    if dataset is None:
        files = _plain_images(images, max_images)
        if not labels:
            raise ValueError(f"{images}: a plain folder of images needs labels (--labels a,b,c)")
        paths = [_save_png(_open_image(path), out / f"{i:03d}.png") for i, path in enumerate(files)]
        return Inputs(paths, labels, None, _texts(labels), source)
    pairs = list(dataset.samples())
    paths = [_save_png(image, out / f"{i:03d}.png") for i, (image, _) in enumerate(pairs)]
    chosen = labels or _dataset_labels(dataset.classnames, dataset.langs, bundle_langs)
    return Inputs(paths, chosen, [label for _, label in pairs], _texts(chosen), source)


def _toy_world_eval(root: Path) -> Path:
    """Generate a small toy world and return its shapes eval set (clip_benchmark layout)."""
    from dcclip.data.world import generate_world

    generate_world(root, train_samples=8, seed=0, eval_samples=90, image_size=64, shard_size=40)
    return root / "eval" / "shapes"


def _open_dataset(images: Path, max_images: int) -> Any:
    """A clip_benchmark set or an ImageFolder at ``images`` (first ``max_images``), or None for a plain folder."""
    from dcclip.eval.datasets import open_imagefolder, open_wds_classification

    if any((images / name).is_file() for name in ("classnames.txt", "classnames.json")) and (images / "test").is_dir():
        return open_wds_classification(images, max_samples=max_images)
    if any(p.is_dir() and not p.name.startswith((".", "_")) for p in images.iterdir()):
        return open_imagefolder(images, max_samples=max_images)
    return None


def _plain_images(folder: Path, max_images: int) -> list[Path]:
    """The first ``max_images`` image files of a folder, sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))[:max_images]
    if not files:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _open_image(path: Path) -> Any:
    """Decode an image file with the runtime's decoder (errors name the file)."""
    from dcclip.runtime.preprocess import decode_image

    try:
        return decode_image(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _save_png(image: Any, path: Path) -> Path:
    """Save an image losslessly, so both machines decode the same pixels."""
    image.convert("RGB").save(path, format="PNG")
    return path


def _dataset_labels(
    classnames: dict[str, list[str]], dataset_langs: Sequence[str], bundle_langs: Sequence[str]
) -> dict[str, list[str]]:
    """Class names in up to MAX_LANGS languages the bundle knows (English first)."""
    langs = [lang for lang in dataset_langs if not bundle_langs or lang in bundle_langs][:MAX_LANGS]
    if not langs:
        raise ValueError(f"the eval set's languages {list(dataset_langs)} share none with the bundle's {bundle_langs}")
    return {lang: list(classnames[lang]) for lang in langs}


def _texts(labels: dict[str, list[str]]) -> list[str]:
    """Bare class names from every language, for the text-embedding comparison."""
    per_lang = max(1, MAX_TEXTS // len(labels))
    return [name for names in labels.values() for name in names[:per_lang]]


# ------------------------------------------------------------------------------------------------ the probe


def probe(spec_path: Path, out_dir: Path) -> dict[str, Any]:
    """On the machine it runs on: verify the bundle, embed, classify, build and search an index; writes result.json.

    Everything is through the torch-free runtime API (this runs inside the arm64 root with no torch installed)."""
    spec = json.loads(Path(spec_path).read_text("utf-8"))
    base = Path(spec_path).parent
    bundle, images = base / spec["bundle"], [base / p for p in spec["images"]]
    result = {"platform": platform_info(), "blas_check_max_abs": blas_check(), "precisions": {}}
    from dcclip.runtime import verify_bundle

    verify_bundle(bundle)
    for precision in spec["precisions"]:
        result["precisions"][precision] = _probe_precision(bundle, precision, images, spec["labels"], spec["texts"])
    result["index"] = _probe_index(bundle, base / spec["image_dir"], out_dir / "index", spec["queries"])
    result["errors"] = _probe_errors(bundle)
    write_json_atomic(out_dir / "result.json", result)
    return result


def platform_info() -> dict[str, Any]:
    """Machine, Python and the runtime libraries' versions where the probe ran."""
    versions = {name: _installed_version(name) for name in RUNTIME_PACKAGES}
    env = {name: os.environ.get(name) for name in EMULATION_ENV}
    return {"machine": platform.machine(), "python": platform.python_version(), "versions": versions, "env": env}


def blas_check(size: int = 64, seed: int = 0) -> float:
    """Max abs difference between numpy's BLAS matrix product and a BLAS-free one (a wrong kernel shows here)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((size, size)), rng.standard_normal((size, size))
    plain = (a[:, :, None] * b[None, :, :]).sum(axis=1)
    single = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float64)
    return float(max(np.abs(a @ b - plain).max(), np.abs(single - plain).max()))


def _probe_precision(
    bundle: Path, precision: str, images: list[Path], labels: dict[str, list[str]], texts: list[str]
) -> dict[str, Any]:
    """Embeddings of images and texts, and for every language the full probability table and the top-1 labels."""
    from dcclip.runtime import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_bundle(bundle, precision=precision)
    out: dict[str, Any] = {
        "image_embeddings": classifier.embed_images([str(p) for p in images]).tolist(),
        "text_embeddings": classifier.embed_texts(texts).tolist(),
        "classify": {},
    }
    for lang, names in labels.items():
        ranked = classifier.classify([str(p) for p in images], names, lang=lang, top_k=len(names))
        probs = [[dict(row)[name] for name in names] for row in ranked]
        out["classify"][lang] = {"top1": [row[0][0] for row in ranked], "probs": probs}
    return out


def _probe_index(bundle: Path, image_dir: Path, index_dir: Path, queries: dict[str, list[str]]) -> dict[str, Any]:
    """Build an fp32 image index of ``image_dir`` and search it by text through the runtime API."""
    import numpy as np

    from dcclip.runtime import BundleModel, ImageIndex, search_text
    from dcclip.search import build_index

    build_index(bundle, image_dir, index_dir, precision="fp32", progress=False)
    model, index = BundleModel(bundle, "fp32"), ImageIndex.open(index_dir)
    hits = {
        lang: [[[h.key, h.score] for h in search_text(model, index, q, lang, k=5)] for q in texts]
        for lang, texts in queries.items()
    }
    stored = np.asarray(index.embeddings, dtype=np.float32)
    return {
        "count": len(index),
        "keys": [item["key"] for item in index.items],
        "embeddings": stored.tolist(),
        "hits": hits,
    }


def _probe_errors(bundle: Path) -> dict[str, str]:
    """The runtime's typed errors for bad input: the same class on both machines."""
    from dcclip.runtime import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_bundle(bundle, precision="fp32")
    cases = {
        "empty_labels": lambda: classifier.classify([], [], "en"),
        "bad_image": lambda: classifier.embed_images([b"not an image"]),
        "bad_top_k": lambda: classifier.classify([], ["a"], "en", top_k=0),
    }
    found = {}
    for name, call in cases.items():
        try:
            call()
            found[name] = "no error"
        except Exception as exc:
            found[name] = type(exc).__name__
    return found
