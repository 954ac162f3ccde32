"""uvicorn's HTTP/1.1 protocol with a read guard: a request must arrive whole, and its header block small, in time.

uvicorn bounds neither how long a client may take to send a request nor (with httptools) how large its header
block may grow: a client sending a byte every few seconds (slow-loris), or a connection opened and left silent,
holds its connection (and, mid-body, a request task) for ever. The guard closes that hole per connection:

- ``read_timeout_s``: from the moment a connection opens, or the first byte of a later request on a kept-alive
  connection, the request line, headers and body must all arrive within this many seconds; otherwise the client
  gets ``408`` (the one error body, code ``request_timeout``, ``Connection: close``; nothing when a response has
  already begun) and the connection is closed. A request the app is already serving is left alone (its deadline
  is the batcher's). A request cut off mid-body reaches the app as a client disconnect.
- ``max_header_bytes``: bytes received before the header block is complete (request line included) beyond this
  answer ``431`` (code ``headers_too_large``) and close the connection.

:class:`GuardedConfig` is a ``uvicorn.Config`` carrying :class:`ReadLimits`; it picks the guarded httptools
protocol where httptools is installed (as uvicorn's ``auto`` would), else the guarded h11 protocol (whose own
incomplete-event bound is set to the same header limit). This binds to uvicorn 0.54's protocol classes
(``connection_made``, ``data_received``, ``connection_lost``, ``cycle`` with ``more_body``,
``response_started``, ``response_complete``), pinned in ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from server.errors import error_body

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsBase

    HAVE_HTTPTOOLS = True
except ImportError:  # httptools not installed: GuardedConfig serves with the h11 protocol
    _HttpToolsBase = H11Protocol  # type: ignore[misc,assignment]  # same interface; never picked then
    HAVE_HTTPTOOLS = False


@dataclass(frozen=True)
class ReadLimits:
    read_timeout_s: float = 10.0
    max_header_bytes: int = 16384

    def __post_init__(self) -> None:
        if not 0.05 <= self.read_timeout_s <= 600.0:
            raise ValueError(f"read_timeout_s must be in [0.05, 600], given {self.read_timeout_s}")
        if not 1024 <= self.max_header_bytes <= 1 << 20:
            raise ValueError(f"max_header_bytes must be in [1024, 1048576], given {self.max_header_bytes}")


class _Cycle(Protocol):
    more_body: bool
    response_started: bool
    response_complete: bool
    disconnected: bool

    @property
    def scope(self) -> Mapping[str, object]: ...


def _header_block_size(scope: Mapping[str, object]) -> int:
    """Bytes of a parsed request line and headers (as sent, give or take separators)."""
    raw_path, query, headers = scope.get("raw_path"), scope.get("query_string"), scope.get("headers")
    size = 16 + (len(raw_path) if isinstance(raw_path, bytes) else 0) + (len(query) if isinstance(query, bytes) else 0)
    if isinstance(headers, list):
        size += sum(len(name) + len(value) + 4 for name, value in headers)
    return size


def _raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode("ascii")
    return head + body


class ReadGuard:
    """The per-connection guard; the protocol calls it around its own handlers."""

    def __init__(self, limits: ReadLimits, loop: asyncio.AbstractEventLoop,
                 current_cycle: Callable[[], _Cycle | None]) -> None:
        self._limits = limits
        self._loop = loop
        self._cycle = current_cycle
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    def _reading_headers(self) -> bool:
        cycle = self._cycle()
        return cycle is None or cycle.response_complete

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(self._limits.read_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: int, reason: str, message: str, code: str) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        cycle = self._cycle()
        if cycle is None or cycle.response_complete or not cycle.response_started:
            transport.write(_raw_error(status, reason, message, code))
        transport.close()

    def _timed_out(self) -> None:
        self._timer = None
        cycle = self._cycle()
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            return  # read whole; the app is serving it
        self._refuse(408, "Request Timeout",
                     f"the request was not received within {self._limits.read_timeout_s:g} s", "request_timeout")

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._arm()

    def before_data(self, size: int) -> None:
        """Called with each chunk's size before the protocol parses it: counts header bytes, arms the timer."""
        if self._reading_headers():
            self._arm()
            self._header_bytes += size

    def after_data(self, cycle_before: _Cycle | None) -> None:
        cycle = self._cycle()
        too_large = False
        if cycle is not cycle_before and cycle is not None:  # a new request's header block completed
            self._header_bytes = 0
            too_large = _header_block_size(cycle.scope) > self._limits.max_header_bytes
            if too_large:
                cycle.disconnected = True  # its app task (already created) sees a client that went away
        elif self._reading_headers() and self._header_bytes > self._limits.max_header_bytes:
            too_large = True
        if too_large:
            self._disarm()
            self._refuse(431, "Request Header Fields Too Large",
                         f"the request line and headers must be at most {self._limits.max_header_bytes} bytes",
                         "headers_too_large")
            return
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            self._disarm()  # read whole

    def connection_lost(self) -> None:
        self._disarm()
        self._transport = None


def limits_of(config: uvicorn.Config) -> ReadLimits:
    return config.read_limits if isinstance(config, GuardedConfig) else ReadLimits()


class _Guarded(asyncio.Protocol):
    """The read guard around a uvicorn HTTP protocol; mixed in before the protocol class (whose methods ``super()``
    reaches), so both protocols share one body."""

    cycle: Any
    loop: asyncio.AbstractEventLoop
    guard: ReadGuard

    def _start_guard(self, config: uvicorn.Config) -> None:
        self.guard = ReadGuard(limits_of(config), self.loop, lambda: self.cycle)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.guard.connection_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        self.guard.before_data(len(data))
        super().data_received(data)
        self.guard.after_data(before)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.connection_lost()
        super().connection_lost(exc)


class GuardedH11Protocol(_Guarded, H11Protocol):
    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        H11Protocol.__init__(self, config, server_state, app_state, _loop)
        self._start_guard(config)


class GuardedHttpToolsProtocol(_Guarded, _HttpToolsBase):
    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        _HttpToolsBase.__init__(self, config, server_state, app_state, _loop)
        self._start_guard(config)


class GuardedConfig(uvicorn.Config):
    """``uvicorn.Config`` with :class:`ReadLimits` and a guarded protocol: ``protocol="auto"`` is httptools where
    installed (as uvicorn's own ``auto``), else h11."""

    def __init__(self, app: Any, *, read_limits: ReadLimits, protocol: Literal["auto", "h11", "httptools"] = "auto",
                 **kwargs: Any) -> None:
        if protocol == "httptools" and not HAVE_HTTPTOOLS:
            raise ValueError("protocol 'httptools' needs httptools installed")
        use_httptools = protocol == "httptools" or (protocol == "auto" and HAVE_HTTPTOOLS)
        http: type[asyncio.Protocol] = GuardedHttpToolsProtocol if use_httptools else GuardedH11Protocol
        super().__init__(app, http=http, h11_max_incomplete_event_size=read_limits.max_header_bytes, **kwargs)
        self.read_limits = read_limits
