"""The HTTP API over dcclip.runtime: ``create_app`` (FastAPI), ``serve`` (uvicorn) and ``ServeLimits``.

Names resolve lazily, so ``import dcclip.serve`` works without the serve extra and a missing dependency is reported
with the command that installs it, when a name is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ServeLimits": "limits",
    "ServeSettings": "limits",
    "create_app": "app",
    "app_from_env": "app",
    "serve": "server",
    "ApiError": "errors",
    "ERROR_CODES": "errors",
}
_SERVE_EXTRA = {"fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "pydantic", "anyio"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use, with an install hint if the serve extra is missing."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dcclip.serve' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f"dcclip.serve.{module}"), name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _SERVE_EXTRA:
            raise
        raise ImportError(f"dcclip serve needs {exc.name}: pip install 'dcclip[serve]'") from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Module attributes plus the lazily exported names."""
    return sorted({*globals(), *_EXPORTS})
