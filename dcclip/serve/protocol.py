"""uvicorn's HTTP/1.1 protocol with a read timeout, and a rate limit on repeated accept-error log lines.

uvicorn (0.54) times out idle keep-alive connections only after a response: a client that sends half a request line
or half a body and then stalls keeps its connection, and a file descriptor, forever; ~1,000 of them and ``/healthz``
stops answering. ``ReadTimeoutH11Protocol`` closes a connection whose client has sent nothing for ``read_timeout``
seconds while the server waits on it (headers or body incomplete, or idle between requests); a request the app is
still answering is never cut.

A client that trickles a byte every few seconds never trips that timer, so two more bounds hold whatever arrives:
a request's head and body must be complete within ``request_timeout`` seconds of its first byte (of the connection,
for the first request), and at most ``max_pending`` connections may be waiting for their request at once (the
oldest is closed to make room: a real client sends its head in milliseconds, a slow-drip one is the oldest). The
connections still receiving their request do not count towards ``limit_concurrency`` (the 503 threshold), so
``/healthz`` and real requests keep their answers while slow-drip connections come and go.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("dcclip.serve")
ENV_PROTOCOL = "DCCLIP_SERVE_PROTOCOL"  # "READ_TIMEOUT,REQUEST_TIMEOUT,MAX_PENDING" for worker processes
WORKER_PROTOCOL = "dcclip.serve.protocol:WorkerH11Protocol"


class ReadTimeoutH11Protocol(H11Protocol):
    """H11Protocol that closes connections on which the client stalls or trickles (see the module docstring)."""

    read_timeout: float = 15.0
    request_timeout: float = 30.0
    max_pending: int = 512
    pending: OrderedDict[ReadTimeoutH11Protocol, None]  # per server class: connections still receiving a request

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        self._request_timer: asyncio.TimerHandle | None = None
        self._base_limit = self.limit_concurrency
        super().connection_made(transport)
        self._arm_read_timer()
        self._start_request()

    def data_received(self, data: bytes) -> None:
        self._arm_read_timer()
        if self._request_timer is None and self._waiting_on_client():
            self._start_request()  # the first bytes of the next request on a kept-alive connection
        if self._base_limit is not None:  # only connections past their request count towards the 503 threshold
            self.limit_concurrency = self._base_limit + len(self.pending)
        super().data_received(data)
        if not self._waiting_on_client():
            self._end_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        self._end_request()
        super().connection_lost(exc)

    def _start_request(self) -> None:
        """Start the clock on one request's head and body; make room among the connections waiting for theirs."""
        self._request_timer = self.loop.call_later(self.request_timeout, self._on_request_timeout)
        self.pending[self] = None
        while len(self.pending) > self.max_pending:
            oldest = next(iter(self.pending))
            oldest._close_pending(f"over {self.max_pending} connections waiting for their request; oldest closed")

    def _end_request(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
        self.pending.pop(self, None)

    def _on_request_timeout(self) -> None:
        self._request_timer = None
        if self._waiting_on_client():
            self._close_pending(f"request not received in full within {self.request_timeout:g} s")
        else:
            self.pending.pop(self, None)

    def _close_pending(self, why: str) -> None:
        """Close a connection whose request has not fully arrived (no app runs on it yet)."""
        self._end_request()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        log.info("closing %s: %s", client, why)
        self.transport.close()

    def _arm_read_timer(self) -> None:
        self._cancel_read_timer()
        self._read_timer = self.loop.call_later(self.read_timeout, self._on_read_timeout)

    def _cancel_read_timer(self) -> None:
        timer = getattr(self, "_read_timer", None)
        if timer is not None:
            timer.cancel()
            self._read_timer = None

    def _waiting_on_client(self) -> bool:
        """No request in progress, or one whose body has not fully arrived."""
        cycle = self.cycle
        return cycle is None or cycle.response_complete or cycle.more_body

    def _on_read_timeout(self) -> None:
        self._read_timer = None
        if not self._waiting_on_client():
            return  # the app is answering; the next data (or keep-alive) re-arms
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        log.info("closing %s: nothing received for %g s", client, self.read_timeout)
        self.transport.close()


def protocol_with_timeout(
    read_timeout: float, request_timeout: float = 30.0, max_pending: int = 512
) -> type[ReadTimeoutH11Protocol]:
    """A protocol class for ``uvicorn.run(http=...)`` with these timeouts and its own table of pending connections."""
    for name, value in (("read_timeout", read_timeout), ("request_timeout", request_timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        raise ValueError(f"max_pending must be a positive int, got {max_pending!r}")
    settings = {
        "read_timeout": float(read_timeout),
        "request_timeout": float(request_timeout),
        "max_pending": max_pending,
        "pending": OrderedDict(),
    }
    return type("ReadTimeoutH11Protocol", (ReadTimeoutH11Protocol,), settings)


def worker_protocol(read_timeout: float, request_timeout: float = 30.0, max_pending: int = 512) -> str:
    """For several uvicorn workers: check the settings, export them for the workers, return the protocol's import
    string (a class made at run time, as ``protocol_with_timeout`` makes, cannot be sent to a spawned worker)."""
    protocol_with_timeout(read_timeout, request_timeout, max_pending)  # the same checks
    os.environ[ENV_PROTOCOL] = f"{float(read_timeout)!r},{float(request_timeout)!r},{int(max_pending)}"
    return WORKER_PROTOCOL


class WorkerH11Protocol(ReadTimeoutH11Protocol):
    """``ReadTimeoutH11Protocol`` in a worker process, its settings read from DCCLIP_SERVE_PROTOCOL at first use."""

    configured = False  # configure_worker_protocol sets the timeouts and this process's pending table

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not WorkerH11Protocol.configured:
            configure_worker_protocol(os.environ.get(ENV_PROTOCOL, ""))
        super().connection_made(transport)


def configure_worker_protocol(text: str) -> None:
    """Set WorkerH11Protocol's timeouts from ``READ,REQUEST,MAX_PENDING`` (empty: the class defaults)."""
    if text:
        try:
            read, request, pending = text.split(",")
            checked = protocol_with_timeout(float(read), float(request), int(pending))
        except ValueError as exc:
            raise ValueError(
                f"{ENV_PROTOCOL} must be 'READ_TIMEOUT,REQUEST_TIMEOUT,MAX_PENDING', got {text!r}"
            ) from exc
        WorkerH11Protocol.read_timeout = checked.read_timeout
        WorkerH11Protocol.request_timeout = checked.request_timeout
        WorkerH11Protocol.max_pending = checked.max_pending
    WorkerH11Protocol.pending = OrderedDict()
    WorkerH11Protocol.configured = True


class RepeatFilter(logging.Filter):
    """Let the same message through at most once per ``interval`` seconds, then say how many were held back."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.msg}"
        now = time.monotonic()
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self.interval:
            self._last[key] = (last, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.interval:g} s were not logged)"
        self._last[key] = (now, 0)
        return True


def install_repeat_filter(names: Any = ("asyncio", "uvicorn.error"), interval: float = 10.0) -> None:
    """Rate-limit repeated lines of the loggers that report accept errors (e.g. out of file descriptors)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter(interval))
