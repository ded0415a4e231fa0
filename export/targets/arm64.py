"""aarch64 Linux target (Raspberry Pi / Jetson class): the torch-free runtime in a Debian arm64 root under qemu-user,
checked against this machine's runtime on the same bundle, images and labels.

The root is made once with mmdebstrap (Debian ``SUITE``, python3 + venv) and gets a venv with PyPI's aarch64 wheels of
the four runtime packages, pinned to the versions of constraints.txt so both sides run the same libraries. It is cached
outside the repository (``~/.cache/dcclip/arm64/<suite-and-versions>``), built under a temporary name and renamed, so
a killed build never leaves half a cache. Each run installs dcclip itself (a wheel built here from the source tree)
into a throw-away folder inside the root, runs ``probe`` there (verify, embed, classify, index build + search through
the runtime API) and ``dcclip classify --json``, does the same here, and compares the final answers, not only the
embeddings.

Two traps of emulation, both silent or fatal, shape how the root is entered:

- the root is entered with ``chroot`` and nothing mounted: with the host's ``/sys`` visible, onnxruntime's CPU
  detection reads x86 topology and segfaults at import;
- numpy's bundled OpenBLAS picks a kernel for the CPU qemu reports that qemu runs wrongly (matrix products off by up
  to ~1, classification agreeing on 1 image of 10), so ``OPENBLAS_CORETYPE=ARMV8`` (the generic ARMv8 kernels) is
  set inside; ``probe`` also checks a numpy matrix product against a BLAS-free one so a wrong kernel is caught.

Speed under emulation says nothing about a device: nothing here times the runtime.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from dcclip.io import atomic_dir, remove_stale_temps, temp_name, write_json_atomic

SUITE = "trixie"
RECIPE = 1  # bump when the root's recipe changes: the cache key changes with it
RUNTIME_PACKAGES = ("onnxruntime", "numpy", "pillow", "tokenizers")
ROOT_PACKAGES = ("python3", "python3-venv", "ca-certificates")
VENV = "/opt/dcclip-venv"
WHEELS = "/opt/dcclip-wheels"
EMULATION_ENV = {"OPENBLAS_CORETYPE": "ARMV8"}  # see the module docstring: qemu runs OpenBLAS's chosen kernel wrongly
HOST_TOOLS = ("mmdebstrap", "arch-test", "qemu-aarch64-static", "chroot")
APT_PACKAGES = "mmdebstrap arch-test qemu-user-static binfmt-support"
APT_HINT = f"sudo apt-get install -y {APT_PACKAGES}"
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
BINFMT_HINT = (
    "sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc (if not mounted); "
    "sudo update-binfmts --enable qemu-aarch64"
)
REPO = Path(__file__).resolve().parents[2]
SOURCE_ITEMS = ("pyproject.toml", "README.md", "dcclip", "stages", "export", "configs")  # what the wheel is built from
FP32_TOLERANCE = 1e-5  # max abs difference of fp32 embeddings between the two machines
INT8_TOLERANCE = 1e-3  # int8: an activation that lands on the other side of a rounding step moves a value by a step
MAX_IMAGES = 10
MAX_LANGS = 3
MAX_TEXTS = 16
SEARCH_QUERIES = 3
TIMEOUTS = {"root": 3600, "pip": 1800, "probe": 3600}


class Arm64SetupError(RuntimeError):
    """The host lacks what the emulated root needs (tools, binfmt, root rights); the message says what to run."""


class Arm64RunError(RuntimeError):
    """A command inside the emulated root (or a host step building it) failed; the message holds its output."""


# ------------------------------------------------------------------------------------------------ host checks


def missing_tools() -> list[str]:
    """Host commands the target needs that are not on PATH."""
    return [tool for tool in HOST_TOOLS if shutil.which(tool) is None]


def check_host() -> None:
    """Raise Arm64SetupError naming what to install or enable when the host cannot build or enter an arm64 root."""
    missing = missing_tools()
    if missing:
        raise Arm64SetupError(f"missing {', '.join(missing)}: install them with `{APT_HINT}`")
    if not _binfmt_enabled():
        raise Arm64SetupError(f"{BINFMT}: qemu-aarch64 is not registered with binfmt_misc; run `{BINFMT_HINT}`")
    if os.geteuid() != 0:
        raise Arm64SetupError("the arm64 root is built (mmdebstrap) and entered (chroot) as root: run this as root")


def _binfmt_enabled() -> bool:
    """Whether the kernel hands aarch64 binaries to qemu (mmdebstrap and chroot both rely on it)."""
    try:
        return BINFMT.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------------------------------------------ the cached root


def pinned_versions(constraints: Path | None = None) -> dict[str, str]:
    """The runtime packages' versions: pins of constraints.txt (what x86 CI uses), else the versions installed here."""
    path = constraints if constraints is not None else REPO / "constraints.txt"
    pins: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
            if match:
                pins[_norm(match.group(1))] = match.group(2)
    elif constraints is not None:
        raise FileNotFoundError(f"{path}: no such constraints file")
    versions = {}
    for name in RUNTIME_PACKAGES:
        version = pins.get(_norm(name)) or _installed_version(name)
        if version is None:
            raise Arm64SetupError(f"{path}: no pin for {name}, and {name} is not installed here to copy its version")
        versions[name] = version
    return versions


def _norm(name: str) -> str:
    """A distribution name normalised as PyPI compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_version(name: str) -> str | None:
    """The version of ``name`` installed in this interpreter, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cache_key(suite: str, versions: dict[str, str]) -> str:
    """The cache folder name: Debian suite, every wheel version and the recipe number."""
    return "-".join([suite, *(f"{name}{versions[name]}" for name in sorted(versions)), f"r{RECIPE}"])


def default_cache_dir() -> Path:
    """``$DCCLIP_ARM64_CACHE``, else ``$XDG_CACHE_HOME/dcclip/arm64`` (``~/.cache/dcclip/arm64``): outside the repo."""
    if os.environ.get("DCCLIP_ARM64_CACHE"):
        return Path(os.environ["DCCLIP_ARM64_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dcclip" / "arm64"


@dataclass(frozen=True)
class CachedRoot:
    """A finished root: where it is, what it holds, and whether this call built it."""

    path: Path
    info: dict[str, Any]
    built: bool

    @property
    def root(self) -> Path:
        return self.path / "root"


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` so concurrent runs build a root once and the others wait for it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_root(
    cache_dir: Path | None = None, suite: str = SUITE, versions: dict[str, str] | None = None, log=print
) -> CachedRoot:
    """The cached root for ``suite`` + ``versions``, built first when missing (into a temporary name, then renamed)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    versions = versions if versions is not None else pinned_versions()
    final = cache_dir / cache_key(suite, versions)
    check_host()
    with _locked(cache_dir / f".{final.name}.lock"):
        if (final / "cache.json").is_file():
            return CachedRoot(final, json.loads((final / "cache.json").read_text("utf-8")), built=False)
        started = time.monotonic()
        with atomic_dir(final, tag="partial") as staging:
            info = build_root(staging, suite, versions, log)
            info["build_seconds"] = round(time.monotonic() - started, 1)
            write_json_atomic(staging / "cache.json", info)
        return CachedRoot(final, info, built=True)


def build_root(out: Path, suite: str, versions: dict[str, str], log=print) -> dict[str, Any]:
    """Make ``out/root``: a Debian ``suite`` arm64 root whose venv holds the pinned runtime wheels; returns its info."""
    root = out / "root"
    log(f"arm64: mmdebstrap {suite} into {root} (several minutes under emulation)")
    make_debian_root(root, suite)
    python = root_python_version(root)
    check_python_supported(python)
    log(f"arm64: root python {python}; downloading aarch64 wheels here, installing them in the root's venv")
    wheels = download_wheels(root / WHEELS.lstrip("/"), versions, python, root_glibc(root))
    install_venv(root, [f"{WHEELS}/{wheel.name}" for wheel in wheels])
    shutil.rmtree(root / WHEELS.lstrip("/"))  # installed: the cache keeps their names, not 50 MB of zips
    return {"suite": suite, "python": python, "versions": versions, "wheels": sorted(w.name for w in wheels)}


def make_debian_root(root: Path, suite: str) -> None:
    """Run mmdebstrap for an arm64 ``suite`` root with python3 and venv (dpkg runs under qemu through binfmt)."""
    command = [
        "mmdebstrap", "--arch=arm64", "--variant=apt", f"--include={','.join(ROOT_PACKAGES)}",
        "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*", suite, str(root),
    ]  # fmt: skip
    _host_run(command, TIMEOUTS["root"])


def root_python_version(root: Path) -> str:
    """The root's python3 version as ``MAJOR.MINOR``, read from its /usr/bin/python3 link (no emulation needed)."""
    target = os.readlink(root / "usr/bin/python3")
    match = re.fullmatch(r"python(\d+\.\d+)", Path(target).name)
    if match is None:
        raise Arm64RunError(f"{root / 'usr/bin/python3'}: links to {target!r}, not to a pythonX.Y")
    return match.group(1)


def check_python_supported(python: str) -> None:
    """Refuse a root whose Python is older than dcclip's requires-python floor."""
    floor = _requires_python_floor()
    if tuple(map(int, python.split("."))) < floor:
        raise Arm64RunError(
            f"the root's Python {python} is older than dcclip's requires-python >={'.'.join(map(str, floor))}"
        )


def _requires_python_floor() -> tuple[int, ...]:
    """The ``>=X.Y`` of pyproject.toml's requires-python (from the source tree, else the installed metadata)."""
    text = (REPO / "pyproject.toml").read_text("utf-8") if (REPO / "pyproject.toml").is_file() else ""
    match = re.search(r'requires-python\s*=\s*">=\s*([\d.]+)"', text)
    spec = match.group(1) if match else (metadata.metadata("dcclip").get("Requires-Python") or ">=3.10")
    return tuple(int(part) for part in re.findall(r"\d+", spec)[:2])


def root_glibc(root: Path) -> tuple[int, int]:
    """The root's glibc version (from dpkg's status file): wheels tagged for a newer glibc would not load there."""
    status = (root / "var/lib/dpkg/status").read_text("utf-8", errors="replace")
    match = re.search(r"^Package: libc6\n(?:[^\n]+\n)*?Version: (\d+)\.(\d+)", status, re.MULTILINE)
    if match is None:
        raise Arm64RunError(f"{root / 'var/lib/dpkg/status'}: no libc6 version found")
    return int(match.group(1)), int(match.group(2))


def platform_tags(glibc: tuple[int, int]) -> list[str]:
    """pip ``--platform`` values an aarch64 wheel may carry to load with ``glibc``."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_aarch64" for m in range(minor, 16, -1)]
    return [*tags, "manylinux2014_aarch64", "linux_aarch64"]


def download_wheels(dest: Path, versions: dict[str, str], python: str, glibc: tuple[int, int]) -> list[Path]:
    """Download the aarch64 wheels (and their dependencies) for ``python`` here with pip: no resolving under qemu."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:"]
    command += [f"--platform={tag}" for tag in platform_tags(glibc)]
    command += [f"--python-version={python}", "--implementation=cp", "-d", str(dest)]
    if (REPO / "constraints.txt").is_file():
        command += ["-c", str(REPO / "constraints.txt")]
    _host_run([*command, *(f"{name}=={version}" for name, version in versions.items())], TIMEOUTS["pip"])
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise Arm64RunError(f"{dest}: pip downloaded no wheels")
    return wheels


def install_venv(root: Path, wheels: list[str]) -> None:
    """Create the root's venv and pip-install the downloaded wheels in it (no index, no resolving: all are given).

    Under emulation every step is slow, so the venv gets no pip of its own (Debian's pip wheel runs from its zip) and
    nothing is byte-compiled up front: the import check at the end compiles just the modules the runtime imports."""
    run_in_root(root, ["/usr/bin/python3", "-m", "venv", "--without-pip", VENV], TIMEOUTS["pip"])
    run_in_root(root, [*root_pip(root), *wheels], TIMEOUTS["pip"])
    run_in_root(root, [f"{VENV}/bin/python", "-c", "import numpy, onnxruntime, PIL, tokenizers"], TIMEOUTS["pip"])


def root_pip(root: Path) -> list[str]:
    """``pip install`` for the root's venv, run from the pip wheel that Debian's python3-venv ships."""
    found = sorted((root / "usr/share/python-wheels").glob("pip-*.whl"))
    if not found:
        raise Arm64RunError(f"{root / 'usr/share/python-wheels'}: no pip wheel (python3-venv ships one)")
    pip = f"{inside(root, found[-1])}/pip"
    return [
        f"{VENV}/bin/python",
        pip,
        "install",
        "-q",
        "--disable-pip-version-check",
        "--no-index",
        "--no-deps",
        "--no-compile",
    ]


# ------------------------------------------------------------------------------------------------ running commands


def root_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment a command inside the root gets: nothing of the host's leaks in."""
    env = {
        "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **EMULATION_ENV,
    }
    return {**env, **(extra or {})}


def run_in_root(
    root: Path, argv: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``root`` with chroot (no /sys, /proc or /dev mounted: see the module docstring)."""
    return _host_run(["chroot", str(root), *argv], timeout, env=root_env(env))


def _host_run(
    command: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, raising Arm64RunError with the command and the tail of its output when it fails."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise Arm64RunError(f"{' '.join(command)}: still running after {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise Arm64RunError(f"{' '.join(command)}: exit status {done.returncode}\n{tail}")
    return done


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
    suffixes = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)[:max_images]
    if not files:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(sorted(suffixes))})")
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


# ------------------------------------------------------------------------------------------------ one run


def build_dcclip_wheel(out: Path) -> Path:
    """dcclip's wheel built here from the source tree (copied first, so the build writes nothing into the repo)."""
    missing = [name for name in SOURCE_ITEMS if not (REPO / name).exists()]
    if missing:
        raise Arm64SetupError(f"{REPO}: not a dcclip source tree (missing {', '.join(missing)}); run from a clone")
    src = out / "src"
    src.mkdir(parents=True)
    for name in SOURCE_ITEMS:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")} if (REPO / name).is_dir() else {}
        copy(REPO / name, src / name, **kwargs)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(out),
        str(src),
    ]
    _host_run(command, TIMEOUTS["pip"])
    shutil.rmtree(src)
    return next(out.glob("dcclip-*.whl"))


@contextlib.contextmanager
def run_dir(root: Path) -> Iterator[Path]:
    """A throw-away folder inside the root for one run (removed after; a killed run's is removed by the next)."""
    path = root / "tmp" / "dcclip-arm64-run"
    remove_stale_temps(path)
    staging = temp_name(path)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def inside(root: Path, path: Path) -> str:
    """``path`` (under ``root`` here) as the root sees it."""
    return "/" + str(path.relative_to(root))


def write_spec(work: Path, bundle: Path, inputs: Inputs, precisions: list[str]) -> Path:
    """Copy the bundle and images into ``work`` and write the probe's spec there (paths relative to it)."""
    shutil.copytree(bundle, work / "bundle")
    queries = {lang: names[:SEARCH_QUERIES] for lang, names in list(inputs.labels.items())[:1]}
    spec = {
        "bundle": "bundle",
        "image_dir": str(inputs.images[0].parent.relative_to(work)),
        "images": [str(p.relative_to(work)) for p in inputs.images],
        "labels": inputs.labels,
        "texts": inputs.texts,
        "precisions": precisions,
        "queries": queries,
    }
    return write_json_atomic(work / "spec.json", spec)


def install_dcclip(root: Path, work: Path) -> str:
    """pip-install dcclip's wheel (no dependencies: the venv has them) into ``work/site`` inside the root."""
    wheel = build_dcclip_wheel(work / "wheel")
    site = work / "site"
    run_in_root(root, [*root_pip(root), "--target", inside(root, site), inside(root, wheel)], TIMEOUTS["pip"])
    return inside(root, site)


def classify_command(labels: list[str], lang: str, images: list[str], bundle: str) -> list[str]:
    """The ``dcclip classify --json`` arguments both machines run (the manifest's recommended precision)."""
    return ["classify", "--bundle", bundle, "--labels", ",".join(labels), "--lang", lang, "--json", *images]


def run_arm64(root: Path, work: Path, spec: Path, site: str, cli_args: list[str]) -> tuple[dict, list]:
    """The probe and ``dcclip classify`` inside the root; returns (probe result, classify JSON)."""
    env = {"PYTHONPATH": site}
    out = work / "arm64"
    module = [f"{VENV}/bin/python", "-m", "dcclip.export.targets.arm64", "--probe", inside(root, spec)]
    run_in_root(root, [*module, "--probe-out", inside(root, out)], TIMEOUTS["probe"], env=env)
    done = run_in_root(root, [f"{site}/bin/dcclip", *_inside_args(root, cli_args)], TIMEOUTS["probe"], env=env)
    return json.loads((out / "result.json").read_text("utf-8")), json.loads(done.stdout)


def _inside_args(root: Path, args: list[str]) -> list[str]:
    """Arguments with paths under ``root`` rewritten as the root sees them."""
    prefix = str(root)
    return ["/" + str(Path(a).relative_to(root)) if a.startswith(prefix + "/") else a for a in args]


def run_x86(work: Path, spec: Path, cli_args: list[str]) -> tuple[dict, list]:
    """The same probe and ``dcclip classify`` on this machine with the installed dcclip."""
    result = probe(spec, work / "x86")
    done = _host_run([sys.executable, "-m", "dcclip", *cli_args], TIMEOUTS["probe"])
    return result, json.loads(done.stdout)


# ------------------------------------------------------------------------------------------------ comparing


def _max_abs(a: Any, b: Any) -> float:
    """Max abs difference of two nested lists of numbers (inf when the shapes differ)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max()) if a.shape == b.shape and a.size else (0.0 if a.shape == b.shape else np.inf)


def compare_precision(x86: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
    """Embedding and probability differences and top-1 agreement for one precision."""
    langs = {}
    for lang, ours in x86["classify"].items():
        theirs = arm["classify"][lang]
        same = sum(a == b for a, b in zip(ours["top1"], theirs["top1"], strict=True))
        langs[lang] = {
            "top1_identical": same,
            "images": len(ours["top1"]),
            "prob_max_abs": _max_abs(ours["probs"], theirs["probs"]),
        }
    return {
        "image_max_abs": _max_abs(x86["image_embeddings"], arm["image_embeddings"]),
        "text_max_abs": _max_abs(x86["text_embeddings"], arm["text_embeddings"]),
        "classify": langs,
    }


def int8_agreement(result: dict[str, Any]) -> dict[str, float] | None:
    """Per language, the share of images whose int8 top-1 equals the fp32 top-1 on one machine (None without int8)."""
    precisions = result["precisions"]
    if "int8" not in precisions or "fp32" not in precisions:
        return None
    out = {}
    for lang, fp32 in precisions["fp32"]["classify"].items():
        int8 = precisions["int8"]["classify"][lang]["top1"]
        out[lang] = sum(a == b for a, b in zip(fp32["top1"], int8, strict=True)) / max(1, len(int8))
    return out


def compare_cli(x86: list[dict], arm: list[dict]) -> dict[str, Any]:
    """``dcclip classify --json`` on both machines: top-1 identical count and max abs probability difference."""
    top1 = sum(a["labels"][0]["label"] == b["labels"][0]["label"] for a, b in zip(x86, arm, strict=True))
    probs = [[[p["probability"] for p in r["labels"]] for r in rows] for rows in (x86, arm)]
    labels_same = all(
        [p["label"] for p in a["labels"]] == [p["label"] for p in b["labels"]] for a, b in zip(x86, arm, strict=True)
    )
    return {
        "top1_identical": top1,
        "images": len(x86),
        "ranking_identical": labels_same,
        "prob_max_abs": _max_abs(*probs),
    }


def compare_index(x86: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
    """Index rows and text-search hits: same keys in the same order, score and stored-row differences."""
    keys = [[[h[0] for h in hits] for hits in x86["hits"][lang]] for lang in x86["hits"]]
    arm_keys = [[[h[0] for h in hits] for hits in arm["hits"][lang]] for lang in x86["hits"]]
    scores = [[[h[1] for h in hits] for hits in side["hits"][lang]] for side in (x86, arm) for lang in x86["hits"]]
    half = len(scores) // 2
    return {
        "count": [x86["count"], arm["count"]],
        "keys_identical": x86["keys"] == arm["keys"],
        "hits_identical": keys == arm_keys,
        "score_max_abs": _max_abs(scores[:half], scores[half:]),
        "embeddings_max_abs": _max_abs(x86["embeddings"], arm["embeddings"]),
    }


def compare(x86: dict[str, Any], arm: dict[str, Any], cli_x86: list[dict], cli_arm: list[dict]) -> dict[str, Any]:
    """The parity report: per precision, the classify CLI, the index, int8 agreement, BLAS checks and errors."""
    return {
        "precisions": {p: compare_precision(x86["precisions"][p], arm["precisions"][p]) for p in x86["precisions"]},
        "cli": compare_cli(cli_x86, cli_arm),
        "index": compare_index(x86["index"], arm["index"]),
        "int8_agreement": {"x86": int8_agreement(x86), "arm64": int8_agreement(arm)},
        "blas_check_max_abs": {"x86": x86["blas_check_max_abs"], "arm64": arm["blas_check_max_abs"]},
        "errors_identical": x86["errors"] == arm["errors"],
        "errors": {"x86": x86["errors"], "arm64": arm["errors"]},
    }


def parity_failures(
    report: dict[str, Any], fp32_tol: float = FP32_TOLERANCE, int8_tol: float = INT8_TOLERANCE
) -> list[str]:
    """Every way the arm64 answers miss the x86 ones (empty: parity holds)."""
    failures = []
    for precision, figures in report["precisions"].items():
        tol = fp32_tol if precision == "fp32" else int8_tol
        for what in ("image_max_abs", "text_max_abs"):
            if not figures[what] <= tol:
                failures.append(f"{precision} {what} {figures[what]:.3g} > {tol:g}")
        for lang, row in figures["classify"].items():
            if row["top1_identical"] != row["images"]:
                failures.append(f"{precision} {lang}: top-1 identical on {row['top1_identical']}/{row['images']}")
    cli, index = report["cli"], report["index"]
    if cli["top1_identical"] != cli["images"] or not cli["ranking_identical"]:
        failures.append(f"dcclip classify: top-1 identical on {cli['top1_identical']}/{cli['images']}")
    if not (index["keys_identical"] and index["hits_identical"]):
        failures.append("index: rows or search hits differ")
    if not report["errors_identical"]:
        failures.append(f"typed errors differ: {report['errors']}")
    return failures


# ------------------------------------------------------------------------------------------------ entry points


def check_parity(
    bundle: Path,
    images: Path | None = None,
    labels: dict[str, list[str]] | None = None,
    max_images: int = MAX_IMAGES,
    cache_dir: Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the bundle on the emulated arm64 root and here; return the report (figures, failures, what ran where)."""
    from dcclip.runtime import read_manifest

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    steps: dict[str, float] = {}
    with _timed("root", steps, log):
        cached = ensure_root(cache_dir, log=log)
    log(f"arm64: root {'built' if cached.built else 'reused'}: {cached.path}")
    with run_dir(cached.root) as work:
        inputs = collect_inputs(images, work / "images", manifest.get("languages") or [], labels, max_images)
        spec = write_spec(work, bundle, inputs, list(manifest.get("precisions") or ["fp32"]))
        with _timed("install_dcclip", steps, log):
            site = install_dcclip(cached.root, work)
        lang, names = next(iter(inputs.labels.items()))
        cli_args = classify_command(names, lang, [str(p) for p in inputs.images], str(work / "bundle"))
        with _timed("arm64_probe_and_cli", steps, log):
            arm, cli_arm = run_arm64(cached.root, work, spec, site, cli_args)
        with _timed("x86_probe_and_cli", steps, log):
            x86, cli_x86 = run_x86(work, spec, cli_args)
    report = compare(x86, arm, cli_x86, cli_arm)
    report["accuracy"] = {"x86": _accuracy(x86, inputs), "arm64": _accuracy(arm, inputs)}
    report["failures"] = parity_failures(report)
    report["inputs"] = {
        "source": inputs.source,
        "images": len(inputs.images),
        "labels": {k: len(v) for k, v in inputs.labels.items()},
        "texts": len(inputs.texts),
    }
    report["root"] = {"cache": str(cached.path), "built": cached.built, **cached.info}
    report["platform"] = {"x86": x86["platform"], "arm64": arm["platform"]}
    report["bundle"] = {"path": str(bundle), "precisions": tower_precisions(manifest), "source": manifest.get("source")}
    report["harness_seconds"] = {"note": "wall time of each step here, under emulation: not a device's speed", **steps}
    return report


@contextlib.contextmanager
def _timed(name: str, steps: dict[str, float], log) -> Iterator[None]:
    """Record a step's wall time (for planning CI time only: emulated time says nothing about a device)."""
    started = time.monotonic()
    yield
    steps[name] = round(time.monotonic() - started, 1)
    log(f"arm64: {name} took {steps[name]} s")


def tower_precisions(manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
    """For each precision the bundle lists, what each tower really ships (an int8 bundle may keep a tower fp32)."""
    from dcclip.runtime.bundle import shipped_precision

    return {
        precision: {role: shipped_precision(manifest, role, precision) for role in ("image", "text")}
        for precision in manifest.get("precisions") or ["fp32"]
    }


def _accuracy(result: dict[str, Any], inputs: Inputs) -> dict[str, dict[str, int]] | None:
    """Top-1 correct counts per precision and language when the images' classes are known."""
    if inputs.truth is None:
        return None
    out = {}
    for precision, figures in result["precisions"].items():
        out[precision] = {
            lang: sum(inputs.labels[lang][t] == top for t, top in zip(inputs.truth, row["top1"], strict=True))
            for lang, row in figures["classify"].items()
        }
    return out


def build(bundle: Path, out: Path, **options: Any) -> dict[str, Any]:
    """Target contract (see targets/__init__.py): check the bundle on arm64 and write ``out/arm64_parity.json``."""
    report = check_parity(Path(bundle), **options)
    write_json_atomic(Path(out) / "arm64_parity.json", report)
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few human lines: the figures that matter, then any failures."""
    lines = []
    for precision, figures in report["precisions"].items():
        top1 = ", ".join(f"{lang} {r['top1_identical']}/{r['images']}" for lang, r in figures["classify"].items())
        lines.append(
            f"{precision}: embeddings max abs image {figures['image_max_abs']:.2g} text {figures['text_max_abs']:.2g}; "
            f"top-1 identical {top1}"
        )
    cli = report["cli"]
    lines.append(
        f"dcclip classify: top-1 identical {cli['top1_identical']}/{cli['images']}, "
        f"prob max abs {cli['prob_max_abs']:.2g}"
    )
    lines.append(f"int8 vs fp32 top-1 agreement: {report['int8_agreement']}")
    lines += [f"FAIL {failure}" for failure in report["failures"]] or ["parity: OK"]
    return lines


def parse_labels(text: str | None, lang: str) -> dict[str, list[str]] | None:
    """``--labels a,b,c`` as {lang: [...]}, or None."""
    if not text:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    return {lang: names}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dcclip.export.targets.arm64 --bundle B [--images DIR] [--out report.json]`` (exit 1 on a miss)."""
    parser = argparse.ArgumentParser(prog="python -m dcclip.export.targets.arm64", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="bundle directory (manifest.json, image.onnx, text.onnx, tokenizer.json)")
    parser.add_argument("--images", help="clip_benchmark set, ImageFolder or folder of images (default: toy world)")
    parser.add_argument("--labels", help="comma-separated labels (needed for a plain folder of images)")
    parser.add_argument("--lang", default="en", help="language of --labels")
    parser.add_argument("--max-images", type=int, default=MAX_IMAGES)
    parser.add_argument("--out", help="write the report JSON here")
    parser.add_argument("--cache", help=f"root cache folder (default {default_cache_dir()})")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: run the probe of this spec here
    parser.add_argument("--probe-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(Path(args.probe), Path(args.probe_out))
        return 0
    if not args.bundle:
        parser.error("--bundle is required")
    try:
        report = check_parity(
            Path(args.bundle),
            Path(args.images) if args.images else None,
            parse_labels(args.labels, args.lang),
            args.max_images,
            Path(args.cache) if args.cache else None,
            log=lambda line: print(line, file=sys.stderr),
        )
    except (Arm64SetupError, Arm64RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_json_atomic(Path(args.out), report)
    print("\n".join(summary_lines(report)))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
