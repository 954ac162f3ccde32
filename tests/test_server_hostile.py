"""Hostile input, hand-written, against the real app and engine over real sockets on 127.0.0.1, served with the
runner's own uvicorn configuration (``server.runner.uvicorn_config``: the guarded protocol of
``server/protocol.py``): huge history, deep nesting, wrong types, non-UTF-8 bytes, unknown fields, a body or
header block sent slowly, a client that disconnects mid-request, many connections held open, oversized headers.

Every case gets a 4xx (or a closed connection) within bounded time, never a 5xx or a hang; afterwards no
connection, request task or in-flight request is left, ``radgr_requests_total`` shows no 5xx, and a normal request
is served promptly.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from test_bundle_fixtures import make_tiny_bundle

from server.app import create_app
from server.runner import uvicorn_config
from server.settings import ServerSettings
from server.state import ServingState

READ_TIMEOUT_S = 1.0
NORMAL = {"query": "cordless drill", "beam_width": 8, "top_k": 5}


@dataclass
class Live:
    url: str
    port: int
    server: uvicorn.Server
    state: ServingState


@contextlib.contextmanager
def _serve(bundle: Path, protocol: Literal["auto", "h11", "httptools"] = "auto") -> Iterator[Live]:
    settings = ServerSettings(bundle=bundle, engine="torch", host="127.0.0.1", port=0, log_level="critical",
                              request_read_timeout_s=READ_TIMEOUT_S, warmup_beam_width=8, max_wait_ms=1)
    app = create_app(settings)
    config = uvicorn_config(app, settings)
    if protocol != "auto":
        from server.protocol import GuardedConfig, ReadLimits

        config = GuardedConfig(app, read_limits=ReadLimits(READ_TIMEOUT_S), protocol=protocol,
                               host="127.0.0.1", port=0, lifespan="on", ws="none", log_level="critical")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name=f"uvicorn-hostile-{protocol}")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield Live(f"http://127.0.0.1:{port}", port, server, app.state.serving)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("hostile"))
    with _serve(bundle) as srv:
        yield srv


def _status_5xx(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "radgr_requests_total" and s.labels["status"].startswith("5"))


def _assert_clean_and_serving(live: Live) -> None:
    """Nothing left over, no 5xx recorded, and a normal request answered promptly."""
    deadline = time.monotonic() + READ_TIMEOUT_S + 4
    state = live.server.server_state
    while (state.tasks or state.connections or live.state.in_flight) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not state.tasks and not state.connections, (len(state.tasks), len(state.connections))
    assert live.state.in_flight == 0 and live.state.batcher is not None and live.state.batcher.queued_requests == 0
    assert _status_5xx(live.url) == 0
    t0 = time.monotonic()
    r = httpx.post(f"{live.url}/retrieve", json=NORMAL, timeout=10)
    assert r.status_code == 200 and time.monotonic() - t0 < 3.0


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return _read_to_close(s, timeout)


def _read_to_close(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError(f"the server did not close the connection within {timeout} s: {b''.join(chunks)[:200]!r}")


def _deep(n: int) -> str:
    return '{"query": ' + "[" * n + "]" * n + "}"


BODIES: dict[str, tuple[bytes, int]] = {
    # huge history: over the item bound (422) and over the body limit (413)
    "history_1001": (json.dumps({"query": "q", "history": [f"item{i}" for i in range(1001)]}).encode(), 422),
    "history_5mb": (json.dumps({"query": "q", "history": ["x" * 100] * 50_000}).encode(), 413),
    "history_long_ids": (json.dumps({"history": ["x" * 129]}).encode(), 422),
    # deep nesting: past the JSON decoder's recursion limit, and within it (a wrong type)
    "nested_100k": (_deep(100_000).encode(), 422),
    "nested_500": (_deep(500).encode(), 422),
    "nested_profile": (('{"profile": ' + '{"a": ' * 20_000 + "1" + "}" * 20_000 + "}").encode(), 422),
    # wrong types
    "beam_string": (b'{"beam_width": "wide"}', 422),
    "top_k_float": (b'{"top_k": 1.5}', 422),
    "top_k_huge": (b'{"top_k": 100000000000000000000000000000000000000}', 422),
    "beam_inf": (b'{"beam_width": 1e400}', 422),
    "beam_nan": (b'{"beam_width": NaN}', 422),
    "history_string": (b'{"history": "item001"}', 422),
    "history_ints": (b'{"history": [1, 2, 3]}', 422),
    "profile_list": (b'{"profile": ["a", "b"]}', 422),
    "profile_nested": (b'{"profile": {"a": {"b": "c"}}}', 422),
    "query_object": (b'{"query": {"text": "drill"}}', 422),
    "query_null": (b'{"query": null}', 422),
    "debug_object": (b'{"debug": {"on": true}}', 422),
    "top_level_array": (b"[1, 2, 3]", 422),
    "top_level_string": (b'"cordless drill"', 422),
    "top_level_null": (b"null", 422),
    "empty_body": (b"", 422),
    "truncated_json": (b'{"query": "dri', 422),
    # unknown fields
    "unknown_field": (b'{"query": "q", "temperature": 0.7}', 422),
    "many_unknown_fields": (json.dumps({f"f{i}": i for i in range(5000)}).encode(), 422),
    # bytes that are not UTF-8, and text the tokenizer may choke on
    "latin1_bytes": (b'{"query": "\xe9t\xe9 \xff\xfe"}', 422),
    "invalid_continuation": (b'{"query": "\xc3\x28"}', 422),
    "nul_bytes": (b'{"query": "\x00\x00"}', 422),
    "lone_surrogate": (b'{"query": "\\ud800 drill"}', 422),
    "escaped_nul_and_controls": (b'{"query": "\\u0000\\u0007 drill\\u202e"}', 200),
    "bom_prefixed": (b'\xef\xbb\xbf{"query": "drill"}', 200),  # json.loads accepts a UTF-8 BOM
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_hostile_bodies_get_4xx_never_5xx(live: Live, name: str) -> None:
    body, expected = BODIES[name]
    r = httpx.post(f"{live.url}/retrieve", content=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == expected, r.text[:300]
    if expected >= 400:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert "Traceback" not in r.text and ".py" not in r.text and len(r.text) < 2000


def test_wrong_method_content_type_and_framing(live: Live) -> None:
    assert httpx.get(f"{live.url}/retrieve", timeout=5).status_code == 405
    assert httpx.post(f"{live.url}/retrieve", content=b'{"query": "q"}', headers={"Content-Type": "text/plain"},
                      timeout=5).status_code == 422
    for raw in (b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
                b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello on plain HTTP
                b"GARBAGE\r\n\r\n"):
        answer = _raw(live.port, raw)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]
    _assert_clean_and_serving(live)


def test_all_hostile_cases_left_nothing_behind(live: Live) -> None:
    _assert_clean_and_serving(live)


def _slow(port: int, head: bytes, drip: bytes, every_s: float) -> tuple[bytes, float]:
    """Send ``head`` then ``drip`` one byte at a time; returns what the server answered and when it closed."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        for byte in drip:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            s.settimeout(every_s)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            rest = b"" if not chunk else _read_to_close(s, 5.0)
            return chunk + rest, time.monotonic() - t0
        return _read_to_close(s, 5.0), time.monotonic() - t0
    raise AssertionError("unreachable")


SLOW_CASES = {
    "headers": (b"POST /retrieve HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"),
    "body": (b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n",
             b'{"query": "' + b"a" * 186 + b'"}'),
    "request_line": (b"", b"POST /retrieve?" + b"a" * 200 + b" HTTP/1.1\r\n\r\n"),
}


@pytest.mark.parametrize("case", sorted(SLOW_CASES))
def test_slow_clients_get_408_and_are_closed(live: Live, case: str) -> None:
    head, drip = SLOW_CASES[case]
    answer, seconds = _slow(live.port, head, drip, every_s=0.05)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert READ_TIMEOUT_S - 0.1 < seconds < READ_TIMEOUT_S + 2.0
    _assert_clean_and_serving(live)


def test_headers_over_the_bound_get_431(live: Live) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))  # ~22 KB > 16 KiB
    answer = _raw(live.port, b"POST /retrieve HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ") or answer == b"", answer[:200]
    answer = _raw(live.port, b"GET /live?" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 4") or answer == b"", answer[:200]
    _assert_clean_and_serving(live)


def test_clients_that_disconnect_mid_request(live: Live) -> None:
    body = json.dumps(NORMAL).encode()
    for _ in range(10):
        # mid-body: half the declared body, then gone
        with socket.create_connection(("127.0.0.1", live.port), timeout=5) as s:
            s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
        # mid-headers
        with socket.create_connection(("127.0.0.1", live.port), timeout=5) as s:
            s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Ty")
        # the whole request, gone before the answer (queued or in the engine)
        with socket.create_connection(("127.0.0.1", live.port), timeout=5) as s:
            s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
        # reset instead of a clean close (SO_LINGER 0)
        with socket.create_connection(("127.0.0.1", live.port), timeout=5) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
    _assert_clean_and_serving(live)


def test_many_connections_held_open(live: Live) -> None:
    n = 200
    socks: list[socket.socket] = []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", live.port), timeout=5)
            if i % 2:  # half send a partial request, half nothing at all
                s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        t0 = time.monotonic()
        r = httpx.post(f"{live.url}/retrieve", json=NORMAL, timeout=10)
        assert r.status_code == 200 and time.monotonic() - t0 < 3.0
        assert httpx.get(f"{live.url}/live", timeout=5).status_code == 200
        # the server closes every one of them after the read timeout (with a 408)
        closed_by = time.monotonic() + READ_TIMEOUT_S + 5
        for s in socks:
            answer = _read_to_close(s, max(0.1, closed_by - time.monotonic()))
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    finally:
        for s in socks:
            s.close()
    _assert_clean_and_serving(live)


def test_keep_alive_connection_is_guarded_between_requests(live: Live) -> None:
    """A kept-alive connection that starts a second request and stalls gets the same 408."""
    body = json.dumps(NORMAL).encode()
    request = (b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:
        s.sendall(request)
        first = b""
        while b"\r\n\r\n" not in first or not first.rstrip().endswith(b"}"):
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHo")
        answer = _read_to_close(s, READ_TIMEOUT_S + 3)
    assert answer.startswith(b"HTTP/1.1 408 ")
    _assert_clean_and_serving(live)


def test_the_h11_protocol_is_guarded_the_same_way(tmp_path: Path) -> None:
    """Where httptools is not installed uvicorn serves with h11: the same limits hold."""
    with _serve(make_tiny_bundle(tmp_path), protocol="h11") as srv:
        head, drip = SLOW_CASES["body"]
        answer, seconds = _slow(srv.port, head, drip, every_s=0.05)
        assert answer.startswith(b"HTTP/1.1 408 ") and seconds < READ_TIMEOUT_S + 2.0
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
        answer = _raw(srv.port, b"POST /retrieve HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]
        r = httpx.post(f"{srv.url}/retrieve", content=b'{"query": "\xff"}', timeout=10)
        assert r.status_code == 422
        _assert_clean_and_serving(srv)

