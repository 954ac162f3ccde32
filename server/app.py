"""The FastAPI app around one engine, and the uvicorn runner with a SIGTERM drain.

Contract:
- ``create_app(settings, engine_factory=None)`` builds an app whose lifespan loads (and verifies) the bundle once,
  builds the engine with ``engine_factory(bundle, settings)`` (the PyTorch engine by default), starts the
  micro-batcher, runs one warm-up retrieval, then reports ready. Routes reach all of it through the
  ``get_state`` dependency (override it, or pass an ``engine_factory``, to put a fake at the seam).
- ``POST /retrieve`` (schemas in :mod:`server.schemas`), ``GET /live``, ``GET /ready``, ``GET /metrics``.
  Status codes and the one error body: serving.md. Auth (when ``RADGR_API_KEY`` is set) covers ``/retrieve``.
- Pure ASGI middlewares: the body limit (413, counting streamed bytes, refusing a too-large Content-Length
  before reading) and the request metrics of ``/retrieve``.
- A client that disconnects cancels its request (dropped from the queue if not yet batched).
- ``run_server(settings)``: one uvicorn worker; on the first SIGTERM/SIGINT ``/ready`` and new requests answer
  503, in-flight requests get ``drain_grace_s`` to finish, then the process exits (status 0). A second signal
  exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from decoding.bundle import Bundle, load_bundle
from decoding.engine import RetrievalEngine, RetrievalRequest, RetrievalResult
from decoding.prompt import PROMPT_VERSION
from decoding.request_prompt import EncodedPrompt, encode_request_prompt
from server import schemas
from server.batcher import BatcherClosed, BatcherConfig, DeadlineExceeded, MicroBatcher, QueueFull
from server.errors import ApiError, error_body, install_error_handlers
from server.metrics import CONTENT_TYPE, ServerMetrics
from server.settings import ServerSettings, load_settings

logger = logging.getLogger(__name__)

EngineFactory = Callable[[Bundle, ServerSettings], RetrievalEngine]
WARMUP_TIMEOUT_S = 600.0
CLIENT_CLOSED_STATUS = 499  # nginx's "client closed request": recorded in metrics, never seen by a client
VERSION = "0.1.0"


def torch_engine_factory(bundle: Bundle, settings: ServerSettings) -> RetrievalEngine:
    """The default engine: trie-constrained beam search in PyTorch on the bundle's model."""
    import torch

    from decoding.torch_engine import TorchBeamEngine

    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    if bundle.model is None:
        raise ValueError("the bundle was loaded without its model; the torch engine needs it")
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    bundle.model.to(device)
    return TorchBeamEngine(bundle.model, bundle.vocab, bundle.index, max_batch_rows=settings.max_batch_rows)


@dataclass
class ServingState:
    """Everything the routes need; filled by the lifespan."""

    settings: ServerSettings
    metrics: ServerMetrics
    bundle: Bundle | None = None
    engine: RetrievalEngine | None = None
    batcher: MicroBatcher | None = None
    ready: bool = False
    draining: bool = False
    in_flight: int = 0
    warmup_seconds: float = 0.0
    _api_key_digest: bytes | None = field(default=None, repr=False)

    def begin_drain(self) -> None:
        self.draining = True
        self.ready = False

    @property
    def alive(self) -> bool:
        return self.batcher is None or self.batcher.alive


def get_state(request: Request) -> ServingState:
    """The dependency every route uses to reach the bundle, engine and batcher."""
    state: ServingState = request.app.state.serving
    return state


def get_settings(request: Request) -> ServerSettings:
    """The app's settings (read once when the app was built)."""
    return get_state(request).settings


# -- errors -------------------------------------------------------------------------------------------------------
def _unavailable(state: ServingState, reason: str, message: str) -> ApiError:
    state.metrics.rejections.labels(reason=reason).inc()
    return ApiError(503, message, "overloaded_error", code=reason,
                    headers={"Retry-After": str(state.settings.retry_after_s)})


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": schemas.ErrorResponse, "description": "API key configured and missing or wrong."},
    413: {"model": schemas.ErrorResponse, "description": "Body larger than the server's limit."},
    422: {"model": schemas.ErrorResponse, "description": "A field violates its type or bound (named in the body)."},
    500: {"model": schemas.ErrorResponse, "description": "A bug; no internals in the body."},
    503: {"model": schemas.ErrorResponse, "description": "Queue full, draining or not ready; see Retry-After.",
          "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                      "schema": {"type": "integer"}}}},
    504: {"model": schemas.ErrorResponse, "description": "The request's deadline passed before it was served."},
}


# -- pure ASGI middlewares ----------------------------------------------------------------------------------------
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


# -- request handling ---------------------------------------------------------------------------------------------
class _ClientGone(Exception):
    pass


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel_on_disconnect(request: Request, work: Awaitable[schemas.RetrieveResponse]
                                ) -> schemas.RetrieveResponse:
    """Run ``work``; if the client disconnects first, cancel it (vLLM's ``with_cancellation`` idea)."""
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        listener.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise _ClientGone()
    return task.result()


def _build_response(state: ServingState, body: schemas.RetrieveRequest, prompt: EncodedPrompt,
                    result: RetrievalResult, queue_s: float, engine_s: float, t_arrival: float
                    ) -> schemas.RetrieveResponse:
    assert state.bundle is not None and state.engine is not None
    index = state.bundle.index
    sids: list[schemas.SidOut] = []
    invalid = 0
    for hit in result.sids:
        if hit.sid_row < 0:
            invalid += 1
            continue
        sids.append(schemas.SidOut(sid=index.sid_str(hit.sid_row), score=float(hit.score),
                                   item_ids=index.items_of_sid_row(hit.sid_row),
                                   token_ids=list(hit.token_ids) if body.debug else None))
    if invalid:
        state.metrics.invalid_sids.inc(invalid)
    items = [schemas.ItemOut(item_id=it.item_id, sid=index.sid_str(it.sid_row), score=float(it.score), rank=it.rank)
             for it in result.items[: body.top_k]]
    debug = (schemas.DebugInfo(prompt=prompt.build.text, prompt_token_ids=list(prompt.token_ids),
                               prompt_version=PROMPT_VERSION) if body.debug else None)
    return schemas.RetrieveResponse(
        items=items, sids=sids, model=state.bundle.name, engine=state.engine.name, user_id=body.user_id,
        used_history_item_ids=list(prompt.build.used_item_ids),
        unknown_history_item_ids=list(prompt.build.unknown_item_ids),
        timings=schemas.Timings(queue_seconds=max(0.0, queue_s), engine_seconds=max(0.0, engine_s),
                                total_seconds=max(0.0, time.monotonic() - t_arrival)),
        debug=debug)


async def _retrieve(state: ServingState, body: schemas.RetrieveRequest, t_arrival: float
                    ) -> schemas.RetrieveResponse:
    if state.draining:
        raise _unavailable(state, "draining", "the server is draining; retry on another replica")
    if not state.ready or state.batcher is None or state.bundle is None:
        raise _unavailable(state, "not_ready", "the server is not ready yet")
    bundle = state.bundle
    prompt = encode_request_prompt(bundle.tokenizer, body.query, body.profile, body.history, bundle.index,
                                   bundle.categorizer, bundle.prompt_config)
    request = RetrievalRequest(prompt.token_ids, beam_width=body.beam_width, top_k_items=body.top_k)
    try:
        job = state.batcher.admit(request, t_arrival + state.settings.request_timeout_s)
    except QueueFull as exc:
        raise _unavailable(state, exc.reason, str(exc)) from None
    except BatcherClosed:
        raise _unavailable(state, "draining", "the server is shutting down") from None
    state.in_flight += 1
    try:
        outcome = await state.batcher.wait(job)
    except DeadlineExceeded:
        raise ApiError(504, f"the request was not served within {state.settings.request_timeout_s} s",
                       "timeout_error", code="deadline_exceeded") from None
    except BatcherClosed:
        raise _unavailable(state, "draining", "the server is shutting down") from None
    finally:
        state.in_flight -= 1
    return _build_response(state, body, prompt, outcome.result, outcome.queue_seconds, outcome.engine_seconds,
                           t_arrival)


async def _warm_up(state: ServingState) -> None:
    assert state.bundle is not None and state.batcher is not None
    bundle = state.bundle
    prompt = encode_request_prompt(bundle.tokenizer, "", {}, [], bundle.index, bundle.categorizer,
                                   bundle.prompt_config)
    t0 = time.monotonic()
    await state.batcher.retrieve(RetrievalRequest(prompt.token_ids, beam_width=state.settings.warmup_beam_width,
                                                  top_k_items=10), t0 + WARMUP_TIMEOUT_S)
    state.warmup_seconds = time.monotonic() - t0


# -- the app ------------------------------------------------------------------------------------------------------
def _api_key_checker(state: ServingState) -> Callable[..., Awaitable[None]]:
    bearer = HTTPBearer(auto_error=False, description="Set RADGR_API_KEY on the server to require it.")

    async def require_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        expected = state._api_key_digest
        if expected is None:
            return
        given = hashlib.sha256((credentials.credentials if credentials else "").encode()).digest()
        if credentials is None or not secrets.compare_digest(given, expected):
            state.metrics.rejections.labels(reason="auth").inc()
            raise ApiError(401, "a valid bearer API key is required", "authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return require_api_key


def create_app(settings: ServerSettings | None = None, engine_factory: EngineFactory | None = None) -> FastAPI:
    """Build the app; nothing is loaded until its lifespan starts."""
    settings = settings if settings is not None else load_settings()
    metrics = ServerMetrics()
    state = ServingState(settings=settings, metrics=metrics)
    if settings.api_key is not None and settings.api_key.get_secret_value():
        state._api_key_digest = hashlib.sha256(settings.api_key.get_secret_value().encode()).digest()
    factory = engine_factory if engine_factory is not None else torch_engine_factory

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        t0 = time.monotonic()
        bundle = await asyncio.to_thread(load_bundle, settings.bundle)
        engine = await asyncio.to_thread(factory, bundle, settings)
        batcher = MicroBatcher(engine.retrieve_batch, BatcherConfig(
            max_wait_s=settings.max_wait_ms / 1000.0, max_batch_requests=settings.max_batch_requests,
            max_batch_rows=settings.max_batch_rows, max_queue_requests=settings.max_queue_requests,
            max_queue_rows=settings.max_queue_rows), metrics, engine.name)
        state.bundle, state.engine, state.batcher = bundle, engine, batcher
        metrics.set_build_info(version=VERSION, engine=engine.name, model=bundle.name,
                               prompt_version=PROMPT_VERSION, bundle_format=str(bundle.format_version))
        await batcher.start()
        try:
            await _warm_up(state)
            state.ready = True
            logger.info("ready: bundle %s, engine %s, start-up %.2f s (warm-up %.3f s)", settings.bundle,
                        engine.name, time.monotonic() - t0, state.warmup_seconds)
            yield
        finally:
            state.ready = False
            await batcher.stop()

    app = FastAPI(title="radgr", version=VERSION, lifespan=lifespan,
                  summary="Generative retrieval: a query in its user context → ranked Semantic IDs and items.")
    app.state.serving = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       on_reject=lambda: metrics.rejections.labels(reason="body_too_large").inc())
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    auth = [Depends(_api_key_checker(state))] if state._api_key_digest is not None else []

    @app.post("/retrieve", response_model=schemas.RetrieveResponse, responses=_ERROR_RESPONSES, dependencies=auth,
              summary="Ranked SIDs and items for a query, profile and history.")
    async def retrieve(body: schemas.RetrieveRequest, request: Request,
                       serving: ServingState = Depends(get_state)) -> schemas.RetrieveResponse:
        t_arrival = time.monotonic()
        try:
            return await _cancel_on_disconnect(request, _retrieve(serving, body, t_arrival))
        except _ClientGone:
            raise ApiError(CLIENT_CLOSED_STATUS, "the client went away", "invalid_request_error",
                           code="client_closed") from None

    @app.get("/live", response_model=schemas.HealthResponse,
             responses={503: {"model": schemas.ErrorResponse, "description": "The engine is dead."}},
             summary="200 unless the engine is dead.")
    async def live(serving: ServingState = Depends(get_state)) -> schemas.HealthResponse:
        if not serving.alive:
            raise ApiError(503, "the engine is dead", "server_error", code="engine_dead")
        return schemas.HealthResponse(status="ok")

    @app.get("/ready", response_model=schemas.HealthResponse,
             responses={503: _ERROR_RESPONSES[503]},
             summary="200 only when the bundle is loaded, warm-up done and not draining.")
    async def ready(serving: ServingState = Depends(get_state)) -> schemas.HealthResponse:
        retry = {"Retry-After": str(serving.settings.retry_after_s)}  # probes are not counted as rejections
        if serving.draining:
            raise ApiError(503, "the server is draining", "overloaded_error", code="draining", headers=retry)
        if not serving.ready or not serving.alive:
            raise ApiError(503, "the server is not ready", "overloaded_error", code="not_ready", headers=retry)
        return schemas.HealthResponse(status="ok")

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format).",
             responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                               "description": "Prometheus text format."}})
    async def metrics_endpoint(serving: ServingState = Depends(get_state)) -> Response:
        return Response(serving.metrics.render(), media_type=CONTENT_TYPE)

    return app


# -- the runner ---------------------------------------------------------------------------------------------------
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
                self.config.timeout_graceful_shutdown = max(0.5, self._drain_deadline - now)
                self.should_exit = True
        return await super().on_tick(counter)


def run_server(settings: ServerSettings, engine_factory: EngineFactory | None = None) -> int:
    """Serve until a signal; 0 after a clean drain, 1 if start-up failed."""
    app = create_app(settings, engine_factory)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, workers=1, lifespan="on",
                            log_level=settings.log_level, timeout_graceful_shutdown=max(1, int(settings.drain_grace_s)),
                            timeout_keep_alive=5)
    server = DrainingServer(config, app.state.serving, settings.drain_grace_s)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when the lifespan start-up failed
        return int(exc.code or 1)
    return 0 if server.started else 1
