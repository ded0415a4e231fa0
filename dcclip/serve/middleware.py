"""Pure ASGI middleware: a request-body byte limit that holds for declared and streamed bodies, and a last-resort
guard that turns any unexpected exception into a logged 500 JSON answer instead of a traceback or a dropped socket."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dcclip.serve.errors import ERROR_CODES, error_body

__all__ = ["BodyLimitMiddleware", "ErrorGuardMiddleware", "RequestTooLargeError", "send_error"]

log = logging.getLogger("dcclip.serve")


class RequestTooLargeError(Exception):
    """Raised from ``receive`` once a streamed body passes the byte limit; the middleware answers 413."""


async def send_error(send: Send, code: str, message: str, close: bool = False) -> None:
    """Send a complete JSON error response straight through ASGI (no app involved)."""
    body = json.dumps(error_body(code, message)).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii"))]
    if close:  # the unread rest of the body makes the connection unusable for another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": ERROR_CODES[code][0], "headers": headers})
    await send({"type": "http.response.body", "body": body})


def declared_length(scope: Scope) -> int | None:
    """The Content-Length header as an int, None when absent; ValueError when malformed or repeated."""
    values = [value for name, value in scope.get("headers", ()) if name.lower() == b"content-length"]
    if not values:
        return None
    if len(set(values)) > 1 or not values[0].strip().isdigit():
        raise ValueError(f"invalid Content-Length {values!r}")
    return int(values[0])


class _StreamGuard:
    """Counts the body bytes one request streams in and replaces the app's answer with a 413 once over the limit."""

    def __init__(self, max_bytes: int, receive: Receive, send: Send) -> None:
        self.max_bytes = max_bytes
        self._receive = receive
        self._send = send
        self.received = 0
        self.exceeded = False
        self.started = False
        self.answered = False

    async def receive(self) -> Message:
        """The next ASGI message, raising RequestTooLargeError when the body passes the limit."""
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                self.exceeded = True
                raise RequestTooLargeError(f"request body exceeds the limit of {self.max_bytes} bytes")
        return message

    async def send(self, message: Message) -> None:
        """Pass the app's messages through, unless the body overflowed: then the 413 goes out instead."""
        if self.exceeded and not self.started:
            await self.answer()
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def answer(self) -> None:
        """Send the 413 once."""
        if not self.answered:
            self.answered = True
            await send_error(self._send, "request_too_large", self.message(), close=True)

    def message(self) -> str:
        """What the client is told."""
        return f"request body exceeds the limit of {self.max_bytes} bytes"


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: from Content-Length before reading anything, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, then run the app with a counting ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = declared_length(scope)
        except ValueError as exc:
            await send_error(send, "invalid_content_length", str(exc), close=True)
            return
        if declared is not None and declared > self.max_bytes:
            message = f"request body of {declared} bytes exceeds the limit of {self.max_bytes} bytes"
            await send_error(send, "request_too_large", message, close=True)
            return
        guard = _StreamGuard(self.max_bytes, receive, send)
        with contextlib.suppress(RequestTooLargeError):  # answered below; other exceptions go on to the error guard
            await self.app(scope, guard.receive, guard.send)
        if guard.exceeded and not guard.started:
            await guard.answer()


class ErrorGuardMiddleware:
    """Outermost guard: an exception no handler took is logged with its traceback and answered 500 JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; on an unexpected exception log it and answer 500 when no response has started."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = {"started": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            log.info("client went away during %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not state["started"]:
                await send_error(send, "internal_error", "internal server error (logged on the server)")
