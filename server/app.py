"""The FastAPI app around one engine: lifespan and routes.

Contract:
- ``create_app(settings=None, engine_factory=None)`` builds an app (settings from the environment when None) whose
  lifespan loads (and verifies) the bundle once, builds the engine with ``engine_factory(bundle, settings)``
  (:func:`server.engine_factory.default_engine_factory` by default: the engine ``settings.engine`` names),
  starts the micro-batcher, runs one warm-up
  retrieval, then reports ready. Routes reach all of it through the ``get_state`` and ``get_settings``
  dependencies of :mod:`server.state` (override them, or pass an ``engine_factory``, to put a fake at the seam).
- ``POST /retrieve`` (schemas in :mod:`server.schemas`), ``GET /live``, ``GET /ready``, ``GET /metrics``.
  Status codes and the one error body: docs/serving.md. Auth (:mod:`server.auth`, when ``RADGR_API_KEY`` is
  set) covers ``/retrieve``; the body limit and request metrics are the middlewares of :mod:`server.middleware`.
- ``/retrieve`` only parses, delegates and maps errors: the prompt comes from
  :func:`decoding.request_prompt.encode_request_prompt`, the batcher runs the engine, :mod:`server.responses`
  builds the body; a full queue, draining or not being ready answers 503 + ``Retry-After`` (counted as a
  rejection), a passed deadline 504, and a client that disconnects cancels its request
  (:mod:`server.disconnect`; dropped from the queue if not yet batched). An engine that raises or answers
  malformed results answers 500 (code ``engine_error``, no internals); the server stays up.
- ``/live`` answers 503 (code ``engine_dead``, the reason in the message) while the batcher says the engine is dead
  (failed batches in a row, or a batch hung past ``engine_stall_s``) and 200 again once it recovers; the warm-up
  request is the batcher's probe (:meth:`server.batcher.MicroBatcher.set_probe`).
- The uvicorn runner with the SIGTERM drain is :mod:`server.runner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from decoding.bundle import load_bundle
from decoding.engine import RetrievalRequest
from decoding.engine_process import ProcessEngine
from decoding.prompt import PROMPT_VERSION
from decoding.request_prompt import encode_request_prompt
from server import schemas
from server.auth import api_key_dependencies
from server.batch_jobs import BatcherClosed, BatcherConfig, DeadlineExceeded, QueueFull
from server.batcher import MicroBatcher
from server.disconnect import ClientGone, cancel_on_disconnect
from server.engine_factory import EngineFactory, default_engine_factory, server_needs_hf_model
from server.errors import CLIENT_CLOSED_STATUS, ERROR_RESPONSES, ApiError, install_error_handlers
from server.metrics import CONTENT_TYPE, ServerMetrics
from server.middleware import BodyLimitMiddleware, RequestMetricsMiddleware, ShedMiddleware
from server.responses import build_response_body
from server.settings import ServerSettings, load_settings
from server.state import ServingState, get_settings, get_state

logger = logging.getLogger(__name__)

WARMUP_TIMEOUT_S = 600.0
GC_THRESHOLDS = (50_000, 20, 100)  # young generation collected every 50k allocations, not 700: fewer pauses
VERSION = "0.1.0"


def _unavailable(state: ServingState, settings: ServerSettings, reason: str, message: str) -> ApiError:
    state.metrics.rejections.labels(reason=reason).inc()
    return ApiError(503, message, "overloaded_error", code=reason,
                    headers={"Retry-After": str(settings.retry_after_s)})


async def _retrieve(state: ServingState, settings: ServerSettings, body: schemas.RetrieveRequest,
                    t_arrival: float) -> Response:
    if state.draining:
        raise _unavailable(state, settings, "draining", "the server is draining; retry on another replica")
    if not state.ready or state.batcher is None or state.bundle is None:
        raise _unavailable(state, settings, "not_ready", "the server is not ready yet")
    bundle = state.bundle
    try:  # shed before building the prompt: under overload a refusal must cost the event loop next to nothing
        state.batcher.check_wait(body.beam_width, t_arrival + settings.request_timeout_s)
    except QueueFull as exc:
        raise _unavailable(state, settings, exc.reason, str(exc)) from None
    t_prompt = time.perf_counter()
    prompt = encode_request_prompt(bundle.tokenizer, body.query, body.profile, body.history, bundle.index,
                                   bundle.categorizer, bundle.prompt_config)
    state.metrics.host_time.labels(phase="prompt").observe(time.perf_counter() - t_prompt)
    request = RetrievalRequest(prompt.token_ids, beam_width=body.beam_width, top_k_items=body.top_k)
    try:
        job = state.batcher.admit(request, t_arrival + settings.request_timeout_s)
    except QueueFull as exc:
        raise _unavailable(state, settings, exc.reason, str(exc)) from None
    except BatcherClosed:
        raise _unavailable(state, settings, "draining", "the server is shutting down") from None
    state.in_flight += 1
    try:
        outcome = await state.batcher.wait(job)
    except DeadlineExceeded:
        raise ApiError(504, f"the request was not served within {settings.request_timeout_s} s",
                       "timeout_error", code="deadline_exceeded") from None
    except BatcherClosed:
        raise _unavailable(state, settings, "draining", "the server is shutting down") from None
    except Exception:  # the engine raised or answered malformed results; the batcher logged it with its traceback
        raise ApiError(500, "the engine failed to serve this request", "server_error", code="engine_error") from None
    finally:
        state.in_flight -= 1
    t_response = time.perf_counter()
    content = build_response_body(state, body, prompt, outcome, t_arrival)
    state.metrics.host_time.labels(phase="response").observe(time.perf_counter() - t_response)
    return Response(content, media_type="application/json")  # already JSON: FastAPI does not encode it again


async def _warm_up(state: ServingState, settings: ServerSettings) -> None:
    assert state.bundle is not None and state.batcher is not None
    bundle = state.bundle
    prompt = encode_request_prompt(bundle.tokenizer, "", {}, [], bundle.index, bundle.categorizer,
                                   bundle.prompt_config)
    t0 = time.monotonic()
    request = RetrievalRequest(prompt.token_ids, beam_width=settings.warmup_beam_width, top_k_items=10)
    await state.batcher.retrieve(request, t0 + WARMUP_TIMEOUT_S)
    state.warmup_seconds = time.monotonic() - t0
    state.batcher.set_probe(request)


def create_app(settings: ServerSettings | None = None, engine_factory: EngineFactory | None = None) -> FastAPI:
    """Build the app; nothing is loaded until its lifespan starts."""
    settings = settings if settings is not None else load_settings()
    metrics = ServerMetrics()
    state = ServingState(settings=settings, metrics=metrics)
    factory = engine_factory if engine_factory is not None else default_engine_factory

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        t0 = time.monotonic()
        bundle = await asyncio.to_thread(load_bundle, settings.bundle,
                                         with_model=server_needs_hf_model(settings))
        # the engine is built on the thread that will run every batch (vLLM binds its threads to its creator)
        engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="radgr-engine")
        try:
            engine = await asyncio.get_running_loop().run_in_executor(engine_thread, factory, bundle, settings)
        except BaseException:
            engine_thread.shutdown(wait=False)
            raise
        batcher = MicroBatcher(engine.retrieve_batch, BatcherConfig(
            max_wait_s=settings.max_wait_ms / 1000.0, max_batch_requests=settings.max_batch_requests,
            max_batch_rows=settings.max_batch_rows, max_queue_requests=settings.max_queue_requests,
            max_queue_rows=settings.max_queue_rows, max_queue_wait_s=settings.max_queue_wait_s,
            queue_wait_batches=settings.queue_wait_batches,
            stall_s=settings.engine_stall_s,
            probe_interval_s=settings.engine_probe_interval_s), metrics, engine.name, engine_thread=engine_thread)
        state.bundle, state.engine, state.batcher = bundle, engine, batcher
        metrics.set_build_info(version=VERSION, engine=engine.name, model=bundle.name,
                               prompt_version=PROMPT_VERSION, bundle_format=str(bundle.format_version))
        await batcher.start()
        try:
            await _warm_up(state, settings)
            # everything loaded so far lives as long as the server: move it out of the collector's generations,
            # so that a full collection under load does not walk the bundle's and the libraries' objects
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            state.ready = True
            logger.info("ready: bundle %s, engine %s, start-up %.2f s (warm-up %.3f s)", settings.bundle,
                        engine.name, time.monotonic() - t0, state.warmup_seconds)
            yield
        finally:
            state.ready = False
            await batcher.stop()
            if isinstance(engine, ProcessEngine) and not batcher.engine_busy:  # vLLM's ends with the process
                await asyncio.to_thread(engine.close)

    app = FastAPI(title="radgr", version=VERSION, lifespan=lifespan,
                  summary="Generative retrieval: a query in its user context → ranked Semantic IDs and items.")
    app.state.serving = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       on_reject=lambda: metrics.rejections.labels(reason="body_too_large").inc())
    app.add_middleware(ShedMiddleware, retry_after_s=settings.retry_after_s,
                       shed_reason=lambda: state.batcher.shed_reason() if state.batcher is not None else None,
                       on_reject=lambda: metrics.rejections.labels(reason="queue_wait").inc())
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)  # outermost: it also counts the shed 503s

    @app.post("/retrieve", response_model=schemas.RetrieveResponse, responses=ERROR_RESPONSES,
              dependencies=api_key_dependencies(settings, metrics),
              summary="Ranked SIDs and items for a query, profile and history.")
    async def retrieve(body: schemas.RetrieveRequest, request: Request,
                       serving: ServingState = Depends(get_state),
                       serving_settings: ServerSettings = Depends(get_settings)) -> Response:
        t_arrival = time.monotonic()
        try:
            return await cancel_on_disconnect(request, _retrieve(serving, serving_settings, body, t_arrival))
        except ClientGone:
            raise ApiError(CLIENT_CLOSED_STATUS, "the client went away", "invalid_request_error",
                           code="client_closed") from None

    @app.get("/live", response_model=schemas.HealthResponse,
             responses={503: {"model": schemas.ErrorResponse,
                              "description": "The engine is dead (failing or hung); 200 again once it recovers."}},
             summary="200 unless the engine is dead.")
    async def live(serving: ServingState = Depends(get_state)) -> schemas.HealthResponse:
        reason = serving.dead_reason
        if reason is not None:
            raise ApiError(503, f"the engine is dead: {reason}", "server_error", code="engine_dead")
        return schemas.HealthResponse(status="ok")

    @app.get("/ready", response_model=schemas.HealthResponse,
             responses={503: ERROR_RESPONSES[503]},
             summary="200 only when the bundle is loaded, warm-up done and not draining.")
    async def ready(serving: ServingState = Depends(get_state),
                    serving_settings: ServerSettings = Depends(get_settings)) -> schemas.HealthResponse:
        retry = {"Retry-After": str(serving_settings.retry_after_s)}  # probes are not counted as rejections
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
