"""Model architectures are data: JSON files under configs/models/{students,teachers}/, found by name.

As in open_clip's factory, a new architecture is a JSON file, not code. Users add their own directories with
``register_model_dir`` or pass a path to a JSON file wherever a model name is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KINDS = ("student", "teacher")
_extra_dirs: list[Path] = []


def _builtin_dir() -> Path:
    from dcclip.configs import MODEL_CONFIG_DIR

    return MODEL_CONFIG_DIR


def register_model_dir(path: str | Path) -> None:
    """Add a directory with ``students/`` and/or ``teachers/`` JSON files; later directories win on name clashes."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model config directory {path} does not exist")
    _extra_dirs.append(path)


def _scan() -> dict[str, dict[str, Path]]:
    found: dict[str, dict[str, Path]] = {kind: {} for kind in KINDS}
    for root in [_builtin_dir(), *_extra_dirs]:
        for kind in KINDS:
            for path in sorted((root / f"{kind}s").glob("*.json")):
                found[kind][path.stem] = path
    return found


def list_models(kind: str | None = None) -> list[str]:
    """Names of the registered architectures, optionally of one kind ('student' or 'teacher')."""
    found = _scan()
    kinds = [kind] if kind else list(KINDS)
    return sorted(name for k in kinds for name in found[k])


def model_config_path(name: str, kind: str) -> Path:
    """Path of an architecture JSON by registered name, or the name itself when it is a JSON file."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    as_path = Path(name)
    if as_path.suffix == ".json" and as_path.is_file():
        return as_path
    found = _scan()[kind]
    if name not in found:
        import difflib

        close = difflib.get_close_matches(name, list(found), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown {kind} architecture {name!r}.{hint} Known: {', '.join(sorted(found))}")
    return found[name]


def get_model_config(name: str, kind: str) -> dict[str, Any]:
    """Load an architecture JSON (by name or path) as a dict, naming the file when it is malformed."""
    path = model_config_path(name, kind)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: the top level must be an object")
    return cfg
