"""Atomic writes: every file and directory dcclip produces is written under a temporary name beside its final one and
renamed into place, so a reader (or a run killed half-way) never sees half a file as the real one.

Temporary names are ``.NAME.TAG-PID`` beside ``NAME``: hidden, tied to the writing process and easy to recognise.
A writer killed with SIGKILL cannot remove its temporary, so every write first removes the temporaries of the same
final name whose process is gone (on this machine). Pure standard library, on the ground floor: the runtime uses it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_name(path: Path, tag: str = "tmp") -> Path:
    """The temporary sibling this process writes before renaming onto ``path``."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


TEMP_TAGS = ("tmp", "partial", "old")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` (``.NAME.TAG-PID``) left by processes that no longer run; returns them."""
    path = Path(path)
    stale = []
    for tag in TEMP_TAGS:
        for candidate in path.parent.glob(f".{glob.escape(path.name)}.{tag}-*"):
            pid = candidate.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                _remove(candidate)
                stale.append(candidate)
    return stale


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str], tag: str = "tmp", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_name(path, tag)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, fsync: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented UTF-8 JSON to ``path`` atomically; returns the path."""
    return write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=2))


@contextmanager
def atomic_dir(path: str | os.PathLike[str], tag: str = "tmp") -> Iterator[Path]:
    """Yield an empty staging directory beside ``path``; on success it replaces ``path`` whole (see
    ``replace_dir``), on error the staging directory is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    staging = temp_name(path, tag)
    _remove(staging)
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, path)
    finally:
        _remove(staging)


def replace_dir(staging: Path, path: Path) -> None:
    """Rename ``staging`` onto ``path``; an existing directory is swapped aside first and put back if that fails."""
    if not path.exists():
        os.replace(staging, path)
        return
    old = temp_name(path, "old")
    _remove(old)
    os.replace(path, old)
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)
