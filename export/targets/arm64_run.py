"""One run of the aarch64 target: dcclip's wheel built here and installed into a throw-away folder of the root, the
probe and ``dcclip classify`` on both machines. See arm64.py."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from dcclip.export.targets.arm64_probe import (
    Inputs,
    probe,
)
from dcclip.export.targets.arm64_root import (
    REPO,
    SEARCH_QUERIES,
    SOURCE_ITEMS,
    TIMEOUTS,
    VENV,
    Arm64SetupError,
    _host_run,
    inside,
    root_pip,
    run_in_root,
)
from dcclip.io import remove_stale_temps, temp_name, write_json_atomic

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
