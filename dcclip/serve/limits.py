"""Request limits of the HTTP service and the settings handed to uvicorn worker processes through the environment.

Every limit has a safe default so a server started with no options cannot be made to decode a 400-megapixel image,
embed ten thousand labels or buffer a gigabyte upload; each can be raised or lowered per deployment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dcclip.runtime.errors import MAX_TEXT_CHARS
from dcclip.serve.batching import DEFAULT_BATCH_MAX, DEFAULT_BATCH_WAIT_MS

__all__ = [
    "ENV_BATCH",
    "ENV_BUNDLE",
    "ENV_INDEX",
    "ENV_LIMITS",
    "ENV_PRECISION",
    "ENV_SERVER_TIMING",
    "ENV_THREADS",
    "ENV_UI",
    "ServeLimits",
    "ServeSettings",
]

ENV_BUNDLE = "DCCLIP_SERVE_BUNDLE"
ENV_PRECISION = "DCCLIP_SERVE_PRECISION"
ENV_THREADS = "DCCLIP_SERVE_THREADS"
ENV_LIMITS = "DCCLIP_SERVE_LIMITS"
ENV_UI = "DCCLIP_SERVE_UI"
ENV_INDEX = "DCCLIP_SERVE_INDEX"
ENV_ALLOW_UNSEALED = "DCCLIP_SERVE_ALLOW_UNSEALED"
ENV_BATCH = "DCCLIP_SERVE_BATCH"  # "MAX,WAIT_MS" of the image tower's micro-batching
ENV_SERVER_TIMING = "DCCLIP_SERVE_SERVER_TIMING"
MB = 1024 * 1024
MAX_DEFAULT_CONCURRENCY = 4


def default_concurrency() -> int:
    """Model runs at once by default: one per CPU core, at most 4 (more only queue on the GIL and the cores)."""
    return max(1, min(MAX_DEFAULT_CONCURRENCY, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeLimits:
    """Upper bounds on one request (going over one is a 413 before the model runs) and on concurrent model runs."""

    max_request_bytes: int = 20 * MB
    max_image_pixels: int = 40_000_000
    # pixels all the images of one request decode to (JPEGs decode at a reduced scale): 16 images of 40 megapixels
    # each would otherwise take a 2 MiB body to 2.7 GB
    max_request_pixels: int = 64_000_000
    max_images: int = 16
    max_labels: int = 1000
    max_templates: int = 32
    max_texts: int = 128
    max_text_chars: int = MAX_TEXT_CHARS  # the runtime's own limit (Python API and CLI)
    # characters of all the prompts one classify request makes (each label in each template): bounds the tokenizer
    # and text-tower work of a request whatever mix of many labels, long labels and many templates it uses
    max_prompt_chars: int = 200_000
    max_field_bytes: int = 1 * MB
    max_search_k: int = 100  # images one /v1/search answer may return
    max_concurrent_inference: int = field(default_factory=default_concurrency)
    max_concurrent_decodes: int = 2  # full-size images decoded at once in a process, whatever the requests

    def __post_init__(self) -> None:
        """Refuse non-positive or non-integer limits at construction, not at the first request."""
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServeLimits.{item.name} must be a positive int, got {value!r}")

    def to_dict(self) -> dict[str, int]:
        """Plain dict, for /v1/info and the environment."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeLimits:
        """Build from a dict, naming any unknown key instead of ignoring it."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown serve limits {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class ServeSettings:
    """Everything create_app needs, in a form that survives the trip to a uvicorn worker via environment variables."""

    bundle: Path
    limits: ServeLimits
    precision: str | None = None  # None: each tower at the manifest's recommended precision
    threads: int | None = None
    ui: bool = True  # the web page at GET / (dcclip serve --no-ui turns it off)
    index: Path | None = None  # an image index for /v1/search (dcclip serve --index)
    allow_unsealed: bool = False  # load a format-1/2 manifest without manifest_sha256 (dcclip serve --allow-unsealed)
    batch_max: int = DEFAULT_BATCH_MAX  # image tower micro-batching: up to this many images per call (1: off)
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS  # ... gathered for at most this long after the first request
    server_timing: bool = False  # a Server-Timing header on /v1/classify (benchmarks)

    def to_env(self) -> dict[str, str]:
        """Environment variables that ``from_env`` reads back."""
        env = {
            ENV_BUNDLE: str(Path(self.bundle).resolve()),
            ENV_PRECISION: self.precision or "",
            ENV_LIMITS: json.dumps(self.limits.to_dict()),
            ENV_UI: "1" if self.ui else "0",
            ENV_INDEX: str(Path(self.index).resolve()) if self.index is not None else "",
            ENV_ALLOW_UNSEALED: "1" if self.allow_unsealed else "0",
            ENV_BATCH: f"{int(self.batch_max)},{float(self.batch_wait_ms):g}",
            ENV_SERVER_TIMING: "1" if self.server_timing else "0",
        }
        if self.threads is not None:
            env[ENV_THREADS] = str(int(self.threads))
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Read the settings a parent ``serve`` process exported; a clear error when they are missing."""
        environ = os.environ if environ is None else environ
        bundle = environ.get(ENV_BUNDLE)
        if not bundle:
            raise RuntimeError(f"{ENV_BUNDLE} is not set: start the server with dcclip serve --bundle DIR")
        limits = ServeLimits.from_dict(json.loads(environ[ENV_LIMITS])) if environ.get(ENV_LIMITS) else ServeLimits()
        threads = environ.get(ENV_THREADS)
        index = environ.get(ENV_INDEX)
        batch_max, batch_wait_ms = _batch_from_env(
            environ.get(ENV_BATCH) or f"{DEFAULT_BATCH_MAX},{DEFAULT_BATCH_WAIT_MS}"
        )
        return cls(
            Path(bundle),
            limits,
            environ.get(ENV_PRECISION) or None,
            int(threads) if threads else None,
            ui=environ.get(ENV_UI, "1") != "0",
            index=Path(index) if index else None,
            allow_unsealed=environ.get(ENV_ALLOW_UNSEALED, "0") == "1",
            batch_max=batch_max,
            batch_wait_ms=batch_wait_ms,
            server_timing=environ.get(ENV_SERVER_TIMING, "0") == "1",
        )


def _batch_from_env(text: str) -> tuple[int, float]:
    """``MAX,WAIT_MS`` from DCCLIP_SERVE_BATCH; a clear error naming the variable otherwise."""
    try:
        size, wait = text.split(",")
        return int(size), float(wait)
    except ValueError as exc:
        raise ValueError(f"{ENV_BATCH} must be 'MAX,WAIT_MS' (e.g. '8,2'), got {text!r}") from exc
