"""tests/edge runs only when named on the command line (``make test-arm64`` runs ``pytest tests/edge``): its tests
build and enter an emulated arm64 root (minutes, root rights, host tools), which a plain ``pytest`` must not start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def named_on_command_line(config: pytest.Config) -> bool:
    """Whether an argument of this pytest run is tests/edge or a path inside it."""
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (base / str(arg).split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave this folder out unless it was named (or ``DCCLIP_RUN_EDGE=1`` is set)."""
    if os.environ.get("DCCLIP_RUN_EDGE") == "1" or named_on_command_line(config):
        return None
    return True
