"""``serve``: run the API with uvicorn, in-process for one worker or as an import-string factory for several."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dcclip.runtime.bundle import verify_bundle
from dcclip.serve.batching import DEFAULT_BATCH_MAX, DEFAULT_BATCH_WAIT_MS, check_batching
from dcclip.serve.limits import ServeLimits, ServeSettings

__all__ = ["FACTORY", "serve"]

FACTORY = "dcclip.serve.app:app_from_env"
READ_TIMEOUT_S = 15.0  # a client silent this long while the server waits on its request is disconnected
REQUEST_TIMEOUT_S = 30.0  # a request's head and body must arrive within this, however the bytes trickle in
KEEP_ALIVE_S = 5  # idle keep-alive connections close after this (uvicorn's timeout_keep_alive)
MAX_CONNECTIONS = 512  # open connections / requests in flight before 503s (uvicorn's limit_concurrency)
log = logging.getLogger("dcclip.serve")


def serve(
    bundle: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    limits: ServeLimits | None = None,
    precision: str | None = None,
    threads: int | None = None,
    read_timeout: float = READ_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    ui: bool = True,
    index: Path | None = None,
    allow_unsealed: bool = False,
    request_timeout: float = REQUEST_TIMEOUT_S,
    batch_max: int = DEFAULT_BATCH_MAX,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    server_timing: bool = False,
) -> None:
    """Serve ``bundle`` over HTTP until interrupted; the bundle (and ``index``) are checked before any worker starts.

    ``ui`` serves the web page at ``/``; ``index`` is an image index for /v1/search, refused here when it was built
    from another bundle.

    Connections: a client that sends nothing for ``read_timeout`` seconds while the server waits on it is closed, one
    that has not sent a request's head and body within ``request_timeout`` seconds too (however it trickles), idle
    keep-alive connections after ``KEEP_ALIVE_S``; beyond ``max_connections`` connections waiting for their request
    the oldest is closed, and beyond ``max_connections`` requests in flight the server answers 503 at once.

    ``threads``: onnxruntime intra-op threads (None: the cores divided by the model runs allowed at once, at least 1).
    ``batch_max`` > 1 micro-batches the image tower across concurrent requests (each waits at most ``batch_wait_ms``
    for company, and only while others decode; 1 turns it off); ``server_timing`` adds a Server-Timing header to
    /v1/classify answers (benchmarks/serve_load.py).
    """
    import uvicorn

    from dcclip.serve.protocol import install_repeat_filter, protocol_with_timeout, worker_protocol

    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
        raise ValueError(f"max_connections must be a positive int, got {max_connections!r}")
    connection_options = {
        "http": protocol_with_timeout(read_timeout, request_timeout, max_connections),
        "timeout_keep_alive": KEEP_ALIVE_S,
        "limit_concurrency": max_connections,
    }
    install_repeat_filter()

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    check_batching(batch_max, batch_wait_ms)
    settings = ServeSettings(
        Path(bundle), limits or ServeLimits(), precision, threads, ui=ui, index=index, allow_unsealed=allow_unsealed,
        batch_max=batch_max, batch_wait_ms=batch_wait_ms, server_timing=server_timing,
    )  # fmt: skip
    manifest = verify_bundle(settings.bundle, allow_unsealed)  # a broken bundle fails here, once, not in every worker
    if workers == 1:
        from dcclip.serve.app import create_app

        app = create_app(
            settings.bundle, settings.limits, precision, threads, ui=ui, index=index, allow_unsealed=allow_unsealed,
            batch_max=batch_max, batch_wait_ms=batch_wait_ms, server_timing=server_timing,
        )  # fmt: skip
        uvicorn.run(app, host=host, port=port, log_level="info", **connection_options)
        return
    if index is not None:  # an index of another bundle fails here, once, not in every worker
        from dcclip.serve.search import open_index

        open_index(Path(index), manifest)
    # Worker processes need import strings: they rebuild the app and the protocol from the settings exported here.
    os.environ.update(settings.to_env())
    connection_options["http"] = worker_protocol(read_timeout, request_timeout, max_connections)
    log.info("starting %d workers on %s:%d", workers, host, port)
    uvicorn.run(FACTORY, factory=True, host=host, port=port, workers=workers, log_level="info", **connection_options)
