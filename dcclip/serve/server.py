"""``serve``: run the API with uvicorn, in-process for one worker or as an import-string factory for several."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dcclip.runtime.bundle import verify_bundle
from dcclip.serve.limits import ServeLimits, ServeSettings

__all__ = ["FACTORY", "serve"]

FACTORY = "dcclip.serve.app:app_from_env"
log = logging.getLogger("dcclip.serve")


def serve(
    bundle: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    limits: ServeLimits | None = None,
    precision: str = "fp32",
    threads: int | None = None,
) -> None:
    """Serve ``bundle`` over HTTP until interrupted; the bundle is verified before any worker starts."""
    import uvicorn

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    settings = ServeSettings(Path(bundle), limits or ServeLimits(), precision, threads)
    verify_bundle(settings.bundle)  # a broken bundle fails here, once, not in every worker
    if workers == 1:
        from dcclip.serve.app import create_app

        app = create_app(settings.bundle, settings.limits, precision, threads)
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    # Worker processes need an import string: they rebuild the app from the settings exported here.
    os.environ.update(settings.to_env())
    log.info("starting %d workers on %s:%d", workers, host, port)
    uvicorn.run(FACTORY, factory=True, host=host, port=port, workers=workers, log_level="info")
