"""uvicorn's HTTP/1.1 protocol with a read timeout, and a rate limit on repeated accept-error log lines.

uvicorn (0.54) times out idle keep-alive connections only after a response: a client that sends half a request line
or half a body and then stalls keeps its connection, and a file descriptor, forever; ~1,000 of them and ``/healthz``
stops answering. ``ReadTimeoutH11Protocol`` closes a connection whose client has sent nothing for ``read_timeout``
seconds while the server waits on it (headers or body incomplete, or idle between requests); a request the app is
still answering is never cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("dcclip.serve")


class ReadTimeoutH11Protocol(H11Protocol):
    """H11Protocol that closes connections on which the client stalls (see the module docstring)."""

    read_timeout: float = 15.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_read_timer()

    def data_received(self, data: bytes) -> None:
        self._arm_read_timer()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

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


def protocol_with_timeout(read_timeout: float) -> type[ReadTimeoutH11Protocol]:
    """A protocol class for ``uvicorn.run(http=...)`` with this read timeout."""
    if not read_timeout > 0:
        raise ValueError(f"read_timeout must be > 0 seconds, got {read_timeout!r}")
    return type("ReadTimeoutH11Protocol", (ReadTimeoutH11Protocol,), {"read_timeout": float(read_timeout)})


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
