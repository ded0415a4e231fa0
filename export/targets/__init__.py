"""Edge targets built from an exported bundle: one module per target, each with its parity check.

``build_target(name, bundle, out)`` imports the target's module on first use (so ``dcclip target`` loads nothing it
does not run) and calls its ``build(bundle, out, **options) -> dict`` (a JSON-able summary with the parity figures).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

TARGETS = {
    "web": "static page with onnxruntime-web and a JS tokenizer: the bundle runs in the browser, no server",
    "ort": "ORT-format models (.ort) + reduced-operator config for onnxruntime mobile builds (Android, iOS)",
    "arm64": "the bundle on aarch64 Linux (Raspberry Pi / Jetson class), checked under qemu-user against x86",
}


def build_target(name: str, bundle: Path, out: Path, **options: Any) -> dict[str, Any]:
    """Build edge target ``name`` from ``bundle`` into ``out`` and return its summary (parity included)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    module = importlib.import_module(f"dcclip.export.targets.{name}")
    return module.build(Path(bundle), Path(out), **options)
