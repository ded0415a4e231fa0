"""The web target: a static folder (open it from any static host) where the bundle runs in the browser.

``build(bundle, out)`` writes ``index.html`` + the page's JS, ``vendor/`` (onnxruntime-web's WASM build and
tokenizers.js, pinned by ``web/package-lock.json``), ``model/`` (every file the bundle's manifest lists: fp32 and int8
towers, tokenizer.json, manifest.json) and ``config.json`` (prompt templates per language, pad id, precisions, the
Pillow pass order). With ``images``, a folder of images is embedded here with the Python runtime (fp32) and shipped as
``gallery/`` + ``gallery.f32`` for search; without it, the page searches the images the user classifies on it.

The JS packages come from ``npm ci`` run in a cache outside the repository (``~/.cache/dcclip/web/<lock sha>``, or
``$DCCLIP_WEB_CACHE``), never from another origin at run time: the page's CSP allows only its own origin.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from dcclip.io import atomic_dir, write_json_atomic
from dcclip.runtime.bundle import MANIFEST_FILE, verify_bundle
from dcclip.runtime.classifier import DEFAULT_TEMPLATES
from dcclip.runtime.constants import BROWSER_IMAGE_EXTENSIONS, TOKENIZER_FILE
from dcclip.runtime.tokenizer import TextTokenizer

SOURCES = Path(__file__).resolve().parent / "web"
PAGE_FILES = ("index.html", "style.css", "app.js", "dcclip.js", "decode.js", "preprocess.js")
LOCK_FILES = ("package.json", "package-lock.json")
# node_modules path -> name under vendor/ (the WASM-only ESM build of onnxruntime-web loads the .mjs/.wasm pair)
VENDOR_FILES = {
    "onnxruntime-web/dist/ort.wasm.min.mjs": "ort.wasm.min.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm",
    "@huggingface/tokenizers/dist/tokenizers.min.mjs": "tokenizers.min.mjs",
}
IMAGE_SUFFIXES = tuple(f".{ext}" for ext in BROWSER_IMAGE_EXTENSIONS)  # images every browser shows
NPM_HINT = "install Node.js 18+ with npm (Debian/Ubuntu: apt-get install nodejs npm; or https://nodejs.org)"
CSP_MARKER = "Content-Security-Policy"


class WebTargetError(RuntimeError):
    """The web target cannot be built (npm missing or failing, bad input folder)."""


def lock_digest() -> str:
    """sha256 of package.json + package-lock.json: names the npm cache directory, so a new lock installs afresh."""
    digest = hashlib.sha256()
    for name in LOCK_FILES:
        digest.update((SOURCES / name).read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """Where npm installs: ``$DCCLIP_WEB_CACHE`` or ``~/.cache/dcclip/web`` (never inside the repository)."""
    configured = os.environ.get("DCCLIP_WEB_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "dcclip" / "web"


def find_npm() -> str:
    """Path of npm, or WebTargetError saying what to install."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise WebTargetError(f"the web target needs node and npm (for onnxruntime-web and tokenizers.js): {NPM_HINT}")
    return npm


def node_modules() -> Path:
    """The installed node_modules for the current lock, running ``npm ci`` once per lock digest."""
    target = cache_root() / lock_digest()
    modules = target / "node_modules"
    if all((modules / path).is_file() for path in VENDOR_FILES):
        return modules
    npm = find_npm()
    with atomic_dir(target) as staging:
        for name in LOCK_FILES:
            shutil.copyfile(SOURCES / name, staging / name)
        # --ignore-scripts: protobufjs's postinstall is not needed for the browser files and must not run code
        command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        result = subprocess.run(command, cwd=staging, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise WebTargetError(f"`npm ci` failed in {staging} (exit {result.returncode}): {result.stderr.strip()}")
    return modules


def pillow_pass_order() -> str:
    """The order in which this Pillow resamples when both sides change (the Python runtime's resize)."""
    from PIL import __version__ as pillow_version

    return "pillow13" if int(pillow_version.split(".")[0]) >= 13 else "horizontal"


def page_config(bundle: Path, manifest: dict[str, Any], index: dict[str, Any] | None) -> dict[str, Any]:
    """What the page needs beyond the manifest: templates, pad id, precisions, pass order, the exported image set."""
    languages = list(manifest.get("languages") or DEFAULT_TEMPLATES)
    recommended = manifest.get("recommended_precision") or {}
    default = recommended.get("image") if recommended.get("image") == recommended.get("text") else None
    return {
        "templates": {lang: list(DEFAULT_TEMPLATES.get(lang, ("{c}",))) for lang in dict.fromkeys(languages)},
        "pad_id": TextTokenizer.from_path(bundle / TOKENIZER_FILE).pad_id,
        "precisions": list(manifest["precisions"]),
        "default_precision": default or "fp32",
        "resample_order": pillow_pass_order(),
        "label_separator": ",",
        "index": index,
    }


def export_images(bundle: Path, images: Path, out: Path) -> dict[str, Any]:
    """Embed every image of ``images`` (fp32, Python runtime) into ``out/gallery.f32`` and copy them to gallery/."""
    from dcclip.runtime.bundle import BundleModel

    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise WebTargetError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)}) to export for search")
    names = [f"{i:05d}{p.suffix.lower()}" for i, p in enumerate(files)]
    embeddings = BundleModel(bundle, "fp32").embed_images([str(p) for p in files])
    (out / "gallery").mkdir()
    for name, path in zip(names, files, strict=True):
        shutil.copyfile(path, out / "gallery" / name)
    np.ascontiguousarray(embeddings, dtype="<f4").tofile(out / "gallery.f32")
    return {"images": "gallery", "embeddings": "gallery.f32", "names": names, "dim": int(embeddings.shape[1])}


def copy_files(modules: Path, bundle: Path, manifest: dict[str, Any], staging: Path) -> None:
    """Page sources, vendored JS/WASM and every bundle file into the staging folder."""
    for name in PAGE_FILES:
        shutil.copyfile(SOURCES / name, staging / name)
    (staging / "vendor").mkdir()
    for source, name in VENDOR_FILES.items():
        shutil.copyfile(modules / source, staging / "vendor" / name)
    (staging / "model").mkdir()
    for name in [*manifest["files"], MANIFEST_FILE]:
        shutil.copyfile(bundle / name, staging / "model" / name)


def build(bundle: Path, out: Path, images: Path | None = None) -> dict[str, Any]:
    """Write the web target of ``bundle`` into ``out`` (replaced whole, atomically) and return its summary."""
    bundle, out = Path(bundle), Path(out)
    manifest = verify_bundle(bundle)
    modules = node_modules()
    with atomic_dir(out) as staging:
        copy_files(modules, bundle, manifest, staging)
        index = export_images(bundle, Path(images), staging) if images is not None else None
        write_json_atomic(staging / "config.json", page_config(bundle, manifest, index))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return {
        "target": "web",
        "out": str(out),
        "precisions": list(manifest["precisions"]),
        "files": len(files),
        "bytes": sum((out / f).stat().st_size for f in files),
        "search_images": len(index["names"]) if index else 0,
        "npm_lock": lock_digest(),
        "serve": f"python -m http.server -d {out} 8000  (then open http://127.0.0.1:8000/)",
    }
