"""Prometheus metrics of one server process, in their own ``CollectorRegistry`` (no global state).

Names (one prefix ``radgr_``, base units):
- ``radgr_requests_total{status}`` — finished ``/retrieve`` requests by HTTP status;
- ``radgr_request_duration_seconds{outcome}`` — arrival to response (outcome ok / rejected / timeout / error /
  cancelled / invalid);
- ``radgr_queue_wait_seconds`` — admission to batch start;
- ``radgr_engine_seconds{phase, engine}`` — engine time per batch and phase (prefill / decode / finalize / total);
- ``radgr_host_seconds{phase}`` — the server's own work per request around the engine (prompt: building and
  tokenizing the prompt; response: building the response model from the engine's result);
- ``radgr_batch_requests`` / ``radgr_batch_beam_rows`` — batch size in requests and in beam rows;
- ``radgr_queue_requests`` / ``radgr_queue_beam_rows`` / ``radgr_inflight_beam_rows`` — gauges;
- ``radgr_rejections_total{reason}`` (queue_full / queue_rows_full / queue_wait / draining / not_ready / auth /
  body_too_large);
- ``radgr_cancellations_total{reason}`` (client_disconnect / deadline);
- ``radgr_engine_failures_total`` — engine batches that raised or answered malformed results;
- ``radgr_invalid_sids_total`` — SIDs the engine returned that are not in the index (must stay 0 under the trie);
- ``radgr_build_info{version, engine, model, prompt_version, bundle_format}`` — constant 1.
Latency histograms have dense buckets from 5 ms to 1 s (:data:`LATENCY_BUCKETS_S`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25,
    0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 2.0, 5.0, 10.0,
)
HOST_BUCKETS_S: tuple[float, ...] = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
BATCH_REQUEST_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
BATCH_ROW_BUCKETS: tuple[float, ...] = (1, 8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 8192)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """All metrics of one app instance; ``render()`` gives the exposition text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("radgr_requests", "Finished /retrieve requests by HTTP status.", ["status"],
                                registry=r)
        self.request_duration = Histogram("radgr_request_duration_seconds", "Arrival to response of /retrieve.",
                                          ["outcome"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_wait = Histogram("radgr_queue_wait_seconds", "Admission to batch start.",
                                    buckets=LATENCY_BUCKETS_S, registry=r)
        self.engine_time = Histogram("radgr_engine_seconds", "Engine time per batch and phase.", ["phase", "engine"],
                                     buckets=LATENCY_BUCKETS_S, registry=r)
        self.host_time = Histogram("radgr_host_seconds", "Server work per request around the engine, by phase.",
                                   ["phase"], buckets=HOST_BUCKETS_S, registry=r)
        self.batch_requests = Histogram("radgr_batch_requests", "Requests per engine batch.",
                                        buckets=BATCH_REQUEST_BUCKETS, registry=r)
        self.batch_rows = Histogram("radgr_batch_beam_rows", "Beam rows (sum of beam widths) per engine batch.",
                                    buckets=BATCH_ROW_BUCKETS, registry=r)
        self.queue_requests = Gauge("radgr_queue_requests", "Requests waiting for a batch.", registry=r)
        self.queue_rows = Gauge("radgr_queue_beam_rows", "Beam rows waiting for a batch.", registry=r)
        self.inflight_rows = Gauge("radgr_inflight_beam_rows", "Beam rows in the running engine batch.", registry=r)
        self.rejections = Counter("radgr_rejections", "Requests refused before the engine, by reason.", ["reason"],
                                  registry=r)
        self.cancellations = Counter("radgr_cancellations", "Admitted requests dropped, by reason.", ["reason"],
                                     registry=r)
        self.engine_failures = Counter("radgr_engine_failures", "Engine batches that raised or answered malformed "
                                       "results.", registry=r)
        self.invalid_sids = Counter("radgr_invalid_sids", "Returned SIDs that are not in the index (must stay 0).",
                                    registry=r)
        self.build_info = Gauge("radgr_build_info", "Build and bundle information (constant 1).",
                                ["version", "engine", "model", "prompt_version", "bundle_format"], registry=r)
        for reason in ("queue_full", "queue_rows_full", "queue_wait", "draining", "not_ready", "auth",
                       "body_too_large"):
            self.rejections.labels(reason=reason)
        for reason in ("client_disconnect", "deadline"):
            self.cancellations.labels(reason=reason)
        for phase in ("prompt", "response"):
            self.host_time.labels(phase=phase)

    def set_build_info(self, *, version: str, engine: str, model: str, prompt_version: str,
                       bundle_format: str) -> None:
        self.build_info.labels(version=version, engine=engine, model=model, prompt_version=prompt_version,
                               bundle_format=bundle_format).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
