"""The app's pure ASGI middlewares (no request object is built, nothing is buffered).

Contract:
- :class:`BodyLimitMiddleware`: a body over ``max_bytes`` answers 413 with the one error body
  (code ``body_too_large``) and ``Connection: close``. A too-large ``Content-Length`` is refused before anything is
  read; otherwise the streamed bytes are counted as they arrive, reading stops at the limit, and whatever the app
  would have answered is replaced by the 413. ``on_reject`` is called once per refusal (the rejection metric).
- :class:`ShedMiddleware`: while ``shed_reason()`` says the server is overloaded (the batcher's estimated wait for
  even one more beam row exceeds its bound), ``POST /retrieve`` answers 503 + ``Retry-After`` (code ``queue_wait``)
  before its body is read or parsed: under overload a refusal must cost next to nothing, or refusals eat the
  capacity that serves the accepted requests. ``on_reject`` is called once per refusal.
- :class:`RequestMetricsMiddleware`: every answer of one path (``/retrieve``) is counted by status and its duration
  observed by outcome (ok, invalid, rejected, timeout, cancelled, error); a request cancelled because its client
  went away counts as status 499 (``CLIENT_CLOSED_STATUS``), which no client ever sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import CLIENT_CLOSED_STATUS, error_body
from server.metrics import ServerMetrics


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: a too-large Content-Length is refused unread; streamed bytes are
    counted as they arrive and reading stops at the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_reject: Callable[[], None] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def _refuse(self, send: Send) -> None:
        if self.on_reject is not None:
            self.on_reject()
        body = JSONResponse(error_body(f"the body must be at most {self.max_bytes} bytes", "invalid_request_error",
                                       None, "body_too_large"), status_code=413, headers={"Connection": "close"})
        await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        seen = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # whatever the app answers after the limit tripped, the client gets the 413
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if exceeded and not started:
            await self._refuse(send)


class ShedMiddleware:
    """503 at once, body unread, while ``shed_reason()`` returns a message (see the module docstring)."""

    def __init__(self, app: ASGIApp, shed_reason: Callable[[], str | None], retry_after_s: int,
                 on_reject: Callable[[], None] | None = None, path: str = "/retrieve") -> None:
        self.app = app
        self.shed_reason = shed_reason
        self.retry_after = str(retry_after_s)
        self.on_reject = on_reject
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == "POST":
            reason = self.shed_reason()
            if reason is not None:
                if self.on_reject is not None:
                    self.on_reject()
                body = JSONResponse(error_body(reason, "overloaded_error", None, "queue_wait"), status_code=503,
                                    headers={"Retry-After": self.retry_after})
                await send({"type": "http.response.start", "status": 503, "headers": body.raw_headers})
                await send({"type": "http.response.body", "body": body.body})
                return
        await self.app(scope, receive, send)


class RequestMetricsMiddleware:
    """Counts ``/retrieve`` answers by status and observes their duration by outcome."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, path: str = "/retrieve") -> None:
        self.app = app
        self.metrics = metrics
        self.path = path

    @staticmethod
    def outcome(status: int) -> str:
        if status < 400:
            return "ok"
        return {503: "rejected", 504: "timeout", CLIENT_CLOSED_STATUS: "cancelled"}.get(
            status, "invalid" if status < 500 else "error")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED_STATUS
            raise
        finally:
            self.metrics.requests.labels(status=str(status)).inc()
            self.metrics.request_duration.labels(outcome=self.outcome(status)).observe(time.monotonic() - t0)
