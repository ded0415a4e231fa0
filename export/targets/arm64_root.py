"""The aarch64 target's root: its recipe (Debian suite, packages, pinned wheels, timeouts, tolerances), how it is
built (mmdebstrap, the root's Python and glibc, aarch64 wheels downloaded here, the venv inside) and how commands run
inside it (chroot, nothing mounted) or here. The target's entry points are in arm64.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

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


def _installed_version(name: str) -> str | None:
    """The version of ``name`` installed in this interpreter, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def inside(root: Path, path: Path) -> str:
    """``path`` (under ``root`` here) as the root sees it."""
    return "/" + str(path.relative_to(root))
