"""Helpers for the server tests (no tests here): a uvicorn server in a thread on 127.0.0.1, and an engine wrapper
at the engine seam that can hold batches (to fill the queue or pass a deadline) or fail them.

The wrapped engine is always the real :class:`decoding.torch_engine.TorchBeamEngine` on the tiny bundle; the
wrapper only adds a gate and counts what reached the model.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence

from fastapi import FastAPI

from decoding.bundle import Bundle
from decoding.engine import RetrievalEngine, RetrievalRequest, RetrievalResult
from server.engine_factory import EngineFactory, default_engine_factory
from server.settings import ServerSettings


class GatedEngine:
    """The real engine behind a gate: while ``hold()`` is in effect every batch waits (bounded) for ``release()``;
    ``fail()`` makes batches raise. ``requests_seen`` counts requests that reached the model."""

    def __init__(self, inner: RetrievalEngine) -> None:
        self.inner = inner
        self.name = inner.name
        self._open = threading.Event()
        self._open.set()
        self.entered = threading.Event()
        self.requests_seen = 0
        self.batch_sizes: list[int] = []
        self.failing = False

    def hold(self) -> None:
        self.entered.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def fail(self, on: bool = True) -> None:
        self.failing = on

    def retrieve_batch(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        self.requests_seen += len(requests)
        self.batch_sizes.append(len(requests))
        self.entered.set()
        self._open.wait(timeout=30.0)
        if self.failing:
            raise RuntimeError("/secret/path/engine.py exploded")
        return self.inner.retrieve_batch(requests)


def gated_factory(holder: list[GatedEngine]) -> EngineFactory:
    """An ``engine_factory`` that wraps the default engine and hands the wrapper to the test via ``holder``."""

    def factory(bundle: Bundle, settings: ServerSettings) -> RetrievalEngine:
        engine = GatedEngine(default_engine_factory(bundle, settings))
        holder.append(engine)
        return engine

    return factory


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (any free port) in a thread; yields the base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws="none",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="uvicorn-test")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server failed to start")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test server did not start within {timeout_s} s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30.0)
