"""The uvicorn runner of ``radgr serve``: one worker, and a drain on SIGTERM.

Contract of ``run_server(settings, engine_factory=None) -> int``: serves ``create_app(settings, engine_factory)``
with one uvicorn worker on ``settings.host:settings.port``. On the first SIGTERM/SIGINT ``/ready`` and new
requests answer 503 (:meth:`server.state.ServingState.begin_drain`), in-flight requests get
``settings.drain_grace_s`` to finish, then the process exits: 0 after a clean drain, 1 (or uvicorn's exit code)
when start-up failed. A second signal exits at once. If an engine call is still running when the server has stopped
(a hung engine: it cannot be interrupted), the process exits at once with status 1 instead of waiting for it.
Behaviour under load: docs/serving.md "Serving behaviour".

``uvicorn_config(app, settings)`` is the one uvicorn configuration (tests serve with it too): the guarded HTTP
protocol of :mod:`server.protocol` (request read timeout, header-size bound), the keep-alive timeout, the
connection limit, no websockets.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from server.app import create_app
from server.engine_factory import EngineFactory
from server.protocol import GuardedConfig, ReadLimits
from server.settings import ServerSettings
from server.state import ServingState

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn with a drain: the first signal flips readiness and refuses new work, the process exits once
    in-flight requests finish or the grace period ends; a second signal exits at once."""

    def __init__(self, config: uvicorn.Config, state: ServingState, grace_s: float) -> None:
        super().__init__(config)
        self._state = state
        self._grace_s = grace_s
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:  # called from the signal handler
        if self._drain_deadline is not None or not self.started:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            return
        logger.info("signal %d: draining (grace %.1f s, %d in flight)", sig, self._grace_s, self._state.in_flight)
        self._state.begin_drain()
        self._drain_deadline = time.monotonic() + self._grace_s

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and not self.should_exit:
            now = time.monotonic()
            if self._state.in_flight == 0 or now >= self._drain_deadline:
                # uvicorn annotates this int but passes it to asyncio.wait_for, which takes float seconds
                self.config.timeout_graceful_shutdown = max(0.5, self._drain_deadline - now)  # type: ignore[assignment]  # float ok
                self.should_exit = True
        return await super().on_tick(counter)


def uvicorn_config(app: FastAPI, settings: ServerSettings) -> uvicorn.Config:
    """How uvicorn serves ``app`` under ``settings`` (see the module docstring)."""
    return GuardedConfig(
        app, read_limits=ReadLimits(settings.request_read_timeout_s, settings.max_header_bytes),
        host=settings.host, port=settings.port, workers=1, lifespan="on", ws="none", log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, int(settings.drain_grace_s)), timeout_keep_alive=settings.timeout_keep_alive_s,
        limit_concurrency=settings.max_connections)


def run_server(settings: ServerSettings, engine_factory: EngineFactory | None = None) -> int:
    """Serve until a signal; 0 after a clean drain, 1 if start-up failed."""
    app = create_app(settings, engine_factory)
    config = uvicorn_config(app, settings)
    server = DrainingServer(config, app.state.serving, settings.drain_grace_s)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when the lifespan start-up failed
        return int(exc.code or 1)
    state: ServingState = app.state.serving
    batcher = state.batcher
    if batcher is not None and batcher.engine_busy:  # the interpreter would wait for the hung engine thread
        logger.error("an engine batch is still running (hung engine): exiting without waiting for it")
        logging.shutdown()
        os._exit(1)
    return 0 if server.started else 1
