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
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcclip.export.targets.arm64_compare import (  # noqa: F401 - the parts of the split stay importable from arm64
    compare,
    compare_cli,
    compare_index,
    compare_precision,
    int8_agreement,
    parity_failures,
)
from dcclip.export.targets.arm64_probe import (  # noqa: F401 - the parts of the split stay importable from arm64
    Inputs,
    blas_check,
    collect_inputs,
    platform_info,
    probe,
)
from dcclip.export.targets.arm64_root import (  # noqa: F401 - the parts of the split stay importable from arm64
    APT_HINT,
    APT_PACKAGES,
    BINFMT,
    BINFMT_HINT,
    EMULATION_ENV,
    FP32_TOLERANCE,
    HOST_TOOLS,
    INT8_TOLERANCE,
    MAX_IMAGES,
    MAX_LANGS,
    MAX_TEXTS,
    RECIPE,
    REPO,
    ROOT_PACKAGES,
    RUNTIME_PACKAGES,
    SEARCH_QUERIES,
    SOURCE_ITEMS,
    SUITE,
    TIMEOUTS,
    VENV,
    WHEELS,
    Arm64RunError,
    Arm64SetupError,
    _installed_version,
    check_python_supported,
    download_wheels,
    inside,
    install_venv,
    make_debian_root,
    platform_tags,
    root_env,
    root_glibc,
    root_pip,
    root_python_version,
    run_in_root,
)
from dcclip.export.targets.arm64_run import (  # noqa: F401 - the parts of the split stay importable from arm64
    build_dcclip_wheel,
    classify_command,
    install_dcclip,
    run_arm64,
    run_dir,
    run_x86,
    write_spec,
)
from dcclip.io import atomic_dir, remove_stale_temps, write_json_atomic

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
        remove_stale_temps(final)  # a killed build's half root (its process gone) is removed, reused or not
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
