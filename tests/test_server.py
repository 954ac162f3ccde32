"""The real app on the tiny bundle: every status code of the contract, the one error shape, health, metrics,
batching equivalence and identical results under concurrency."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import require_vllm
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_bundle_fixtures import make_tiny_bundle
from test_server_fixtures import GatedEngine, gated_factory, serve_in_thread

from server import schemas
from server.app import create_app
from server.schemas import MAX_BEAM_WIDTH, MAX_HISTORY_ITEMS, MAX_QUERY_CHARS, MAX_TOP_K
from server.settings import ServerSettings


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("srv"), hidden=128)  # head_dim 32: vLLM's CPU attention


@pytest.fixture(scope="module", params=["torch", "vllm"])
def engine_kind(request: pytest.FixtureRequest) -> str:
    """The engine contract tests run on both engines (vLLM: skipped where not installed, except in CI)."""
    if request.param == "vllm":
        require_vllm()
    return str(request.param)


@pytest.fixture(scope="module")
def client(bundle: Path, engine_kind: str) -> Iterator[TestClient]:
    with TestClient(create_app(ServerSettings(bundle=bundle, max_body_bytes=4096, engine=engine_kind))) as c:
        yield c


def _assert_error_shape(body: dict[str, Any], status_type: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == status_type
    text = json.dumps(body)
    assert "Traceback" not in text and ".py" not in text and "/" not in body["error"]["message"]


def _metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total


def test_schema_bound_matches_engine() -> None:
    from decoding.engine import MAX_BEAM_WIDTH as ENGINE_MAX

    assert MAX_BEAM_WIDTH == ENGINE_MAX


def test_200_ranked_items_sids_history_and_debug(client: TestClient) -> None:
    r = client.post("/retrieve", json={"query": "cordless drill", "user_id": "u1", "profile": {"segment": "pro"},
                                       "history": ["item002", "nope", "item004", "item001"], "top_k": 5,
                                       "beam_width": 8, "debug": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(client.app, FastAPI)
    assert body["engine"] == client.app.state.serving.engine.name and body["model"] == "tiny-test"
    assert body["user_id"] == "u1"
    assert body["unknown_history_item_ids"] == ["nope"]
    # hard search keeps the query's category ("drill": even item numbers), most recent first
    assert body["used_history_item_ids"] == ["item004", "item002"]
    sids, items = body["sids"], body["items"]
    assert 1 <= len(sids) <= 8 and 1 <= len(items) <= 5
    scores = [s["score"] for s in sids]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    assert [it["rank"] for it in items] == list(range(1, len(items) + 1))
    assert items[0]["item_id"] in sids[0]["item_ids"] and items[0]["score"] == sids[0]["score"]
    assert all(len(s["token_ids"]) == 3 for s in sids)
    assert body["debug"]["prompt"].startswith("query: cordless drill")
    assert "<s0_" in body["debug"]["prompt"] and len(body["debug"]["prompt_token_ids"]) > 4
    t = body["timings"]
    assert 0 <= t["queue_seconds"] <= t["total_seconds"] and 0 < t["engine_seconds"] <= t["total_seconds"]
    # the hand-built JSON is exactly what the documented model holds (no field missing, none extra)
    model = schemas.RetrieveResponse.model_validate_json(r.content)
    assert model.model_dump(mode="json") == body and r.headers["content-type"] == "application/json"


def test_history_keeps_the_most_recent_up_to_the_cap(client: TestClient) -> None:
    history = [f"item{i % 24:03d}" for i in range(80)]  # most recent last
    body = client.post("/retrieve", json={"query": "", "history": history, "beam_width": 2}).json()
    assert len(body["used_history_item_ids"]) == 50
    assert body["used_history_item_ids"] == history[::-1][:50]
    assert body["debug"] is None and body["sids"][0]["token_ids"] is None
    assert schemas.RetrieveResponse.model_validate(body).model_dump(mode="json") == body


@pytest.mark.parametrize(("payload", "param", "bound"), [
    ({"beam_width": 129}, "beam_width", f"≤ {MAX_BEAM_WIDTH}, given 129"),
    ({"beam_width": 0}, "beam_width", "≥ 1, given 0"),
    ({"top_k": MAX_TOP_K + 1}, "top_k", f"≤ {MAX_TOP_K}"),
    ({"query": "a" * (MAX_QUERY_CHARS + 1)}, "query", f"at most {MAX_QUERY_CHARS} characters, given"),
    ({"history": ["x"] * (MAX_HISTORY_ITEMS + 1)}, "history", f"at most {MAX_HISTORY_ITEMS} entries"),
    ({"history": [""]}, "history.0", "at least 1 characters"),
    ({"profile": {"k": "v" * 300}}, "profile.k", "at most 256 characters"),
    ({"beam_width": "many"}, "beam_width", "must be an integer"),
    ({"debug": "maybe"}, "debug", "must be a boolean"),
    ({"surprise": 1}, "surprise", "not a known field"),
])
def test_422_names_field_and_bound(bundle: Path, payload: dict[str, Any], param: str, bound: str) -> None:
    with TestClient(create_app(ServerSettings(bundle=bundle))) as c:  # large body limit for the long history
        r = c.post("/retrieve", json={"query": "q", **payload})
    assert r.status_code == 422, r.text
    body = r.json()
    _assert_error_shape(body, "invalid_request_error")
    assert body["error"]["param"] == param
    assert f"`{param}`" in body["error"]["message"] and bound in body["error"]["message"]


def test_422_invalid_json_does_not_echo_internals(client: TestClient) -> None:
    r = client.post("/retrieve", content=b'{"query": ', headers={"content-type": "application/json"})
    assert r.status_code == 422
    _assert_error_shape(r.json(), "invalid_request_error")
    assert r.json()["error"]["param"] is None and r.json()["error"]["code"] == "json_invalid"


def test_413_declared_and_streamed_bodies(client: TestClient) -> None:
    big = json.dumps({"query": "a", "history": ["item001"] * 600}).encode()
    assert len(big) > 4096
    r = client.post("/retrieve", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    _assert_error_shape(r.json(), "invalid_request_error")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must count streamed bytes
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    r = client.post("/retrieve", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_401_without_or_with_a_wrong_key(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADGR_API_KEY", "s3cret")
    with TestClient(create_app(ServerSettings(bundle=bundle))) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = c.post("/retrieve", json={"query": "q", "beam_width": 2}, headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
            _assert_error_shape(r.json(), "authentication_error")
        ok = c.post("/retrieve", json={"query": "q", "beam_width": 2}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/live").status_code == 200  # health stays open
        assert "bearer" in json.dumps(c.get("/openapi.json").json()["components"]["securitySchemes"]).lower()


def test_404_and_500_use_the_one_error_shape(bundle: Path) -> None:
    engines: list[GatedEngine] = []
    app = create_app(ServerSettings(bundle=bundle), engine_factory=gated_factory(engines))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/nope")
        assert r.status_code == 404
        _assert_error_shape(r.json(), "not_found_error")
        engines[0].fail()
        r = c.post("/retrieve", json={"query": "q", "beam_width": 2})
        assert r.status_code == 500
        _assert_error_shape(r.json(), "server_error")
        assert "secret" not in r.text and "exploded" not in r.text
        assert c.get("/live").status_code == 200  # one failure is not a dead engine


def test_live_ready_and_openapi_bounds(client: TestClient) -> None:
    assert client.get("/live").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    req = spec["components"]["schemas"]["RetrieveRequest"]["properties"]
    assert req["beam_width"]["maximum"] == 128 and req["beam_width"]["minimum"] == 1
    assert req["top_k"]["maximum"] == MAX_TOP_K and req["query"]["maxLength"] == MAX_QUERY_CHARS
    assert req["history"]["maxItems"] == MAX_HISTORY_ITEMS
    for schema in spec["components"]["schemas"].values():
        for name, prop in schema.get("properties", {}).items():
            if schema.get("title") not in {"ValidationError", "HTTPValidationError"} and "$ref" not in prop:
                assert prop.get("description"), f"{schema.get('title')}.{name} has no description"
    responses = spec["paths"]["/retrieve"]["post"]["responses"]
    assert {"200", "413", "422", "500", "503", "504"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]


def test_503_with_retry_after_when_the_queue_is_full(bundle: Path) -> None:
    engines: list[GatedEngine] = []
    app = create_app(ServerSettings(bundle=bundle, max_queue_requests=2, max_wait_ms=0, retry_after_s=3),
                     engine_factory=gated_factory(engines))
    with serve_in_thread(app) as url, concurrent.futures.ThreadPoolExecutor(4) as pool:
        gate = engines[0]
        gate.hold()
        payload = {"query": "q", "beam_width": 4}
        first = pool.submit(httpx.post, f"{url}/retrieve", json=payload, timeout=30)
        assert gate.entered.wait(10)  # the engine is busy with the first request
        queued = [pool.submit(httpx.post, f"{url}/retrieve", json=payload, timeout=30) for _ in range(2)]
        deadline = time.monotonic() + 10
        while app.state.serving.batcher.queued_requests < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = httpx.post(f"{url}/retrieve", json=payload, timeout=30)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "3"
        _assert_error_shape(r.json(), "overloaded_error")
        assert r.json()["error"]["code"] == "queue_full"
        gate.release()
        assert first.result().status_code == 200 and all(f.result().status_code == 200 for f in queued)
        text = httpx.get(f"{url}/metrics").text
        assert _metric(text, "radgr_rejections_total", {"reason": "queue_full"}) == 1
        assert _metric(text, "radgr_requests_total", {"status": "503"}) == 1


def test_503_when_queued_beam_rows_exceed_the_budget(bundle: Path) -> None:
    engines: list[GatedEngine] = []
    app = create_app(ServerSettings(bundle=bundle, max_queue_rows=200, max_wait_ms=0),
                     engine_factory=gated_factory(engines))
    with serve_in_thread(app) as url, concurrent.futures.ThreadPoolExecutor(3) as pool:
        engines[0].hold()
        first = pool.submit(httpx.post, f"{url}/retrieve", json={"query": "q", "beam_width": 8}, timeout=30)
        assert engines[0].entered.wait(10)
        queued = pool.submit(httpx.post, f"{url}/retrieve", json={"query": "q", "beam_width": 128}, timeout=30)
        deadline = time.monotonic() + 10
        while app.state.serving.batcher.queued_rows < 128 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = httpx.post(f"{url}/retrieve", json={"query": "q", "beam_width": 100}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_rows_full"
        ok = pool.submit(httpx.post, f"{url}/retrieve", json={"query": "q", "beam_width": 50}, timeout=30)
        while app.state.serving.batcher.queued_rows < 178 and time.monotonic() < deadline:  # 128 + 50 fit
            time.sleep(0.01)
        engines[0].release()
        assert first.result().status_code == 200 and queued.result().status_code == 200
        assert ok.result().status_code == 200


def test_504_past_the_deadline_even_while_the_batch_runs(bundle: Path, engine_kind: str) -> None:
    engines: list[GatedEngine] = []
    app = create_app(ServerSettings(bundle=bundle, request_timeout_s=0.3, max_wait_ms=0, engine=engine_kind),
                     engine_factory=gated_factory(engines))
    with serve_in_thread(app) as url:
        engines[0].hold()
        t0 = time.monotonic()
        r = httpx.post(f"{url}/retrieve", json={"query": "q", "beam_width": 4}, timeout=30)
        elapsed = time.monotonic() - t0
        engines[0].release()
        assert r.status_code == 504
        _assert_error_shape(r.json(), "timeout_error")
        assert elapsed < 5
        # a request queued behind a held batch expires in the queue and never reaches the model
        engines[0].hold()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            a = pool.submit(httpx.post, f"{url}/retrieve", json={"query": "a", "beam_width": 4}, timeout=30)
            assert engines[0].entered.wait(10)
            seen = engines[0].requests_seen
            b = httpx.post(f"{url}/retrieve", json={"query": "b", "beam_width": 4}, timeout=30)
            assert b.status_code == 504
            engines[0].release()
            assert a.result().status_code == 504
        time.sleep(0.2)
        assert engines[0].requests_seen == seen
        ok = httpx.post(f"{url}/retrieve", json={"query": "c", "beam_width": 4}, timeout=30)
        assert ok.status_code == 200


def test_identical_concurrent_requests_and_batched_equals_alone(bundle: Path, engine_kind: str) -> None:
    engines: list[GatedEngine] = []
    app = create_app(ServerSettings(bundle=bundle, max_wait_ms=200, max_batch_requests=8, engine=engine_kind),
                     engine_factory=gated_factory(engines))
    target = {"query": "cordless drill", "history": ["item002", "item004"], "beam_width": 16, "top_k": 20}
    others = [{"query": q, "history": h, "beam_width": w} for q, h, w in
              [("tape", ["item001"], 8), ("glue roll", [], 32), ("saw", ["item003", "item005"], 4)]]
    with serve_in_thread(app) as url:
        alone = httpx.post(f"{url}/retrieve", json=target, timeout=30).json()
        assert engines[0].batch_sizes[-1] == 1
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(httpx.post, f"{url}/retrieve", json=p, timeout=30)
                       for p in [target, *others, target, target]]
            results = [f.result().json() for f in futures]
        assert max(engines[0].batch_sizes) > 1, "the concurrent requests were never batched together"
    same = [results[0], results[4], results[5]]
    for res in same:
        assert [s["sid"] for s in res["sids"]] == [s["sid"] for s in alone["sids"]]
        assert [i["item_id"] for i in res["items"]] == [i["item_id"] for i in alone["items"]]
        for got, want in zip(res["sids"], alone["sids"], strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    # identical requests agree with each other and with the lone request to 1e-5 (checked above) whichever batches
    # they landed in; bitwise equality holds only inside one batch shape (padding changes float rounding)


def test_metrics_parse_and_move(client: TestClient, engine_kind: str) -> None:
    before = client.get("/metrics")
    assert before.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(before.text)}
    for name in ("radgr_requests", "radgr_request_duration_seconds", "radgr_queue_wait_seconds",
                 "radgr_engine_seconds", "radgr_batch_requests", "radgr_batch_beam_rows", "radgr_queue_requests",
                 "radgr_queue_beam_rows", "radgr_inflight_beam_rows", "radgr_rejections", "radgr_cancellations",
                 "radgr_invalid_sids", "radgr_build_info", "radgr_host_seconds"):
        assert name in families, name
    assert all(name.startswith("radgr_") for name in families)
    buckets = sorted({float(s.labels["le"]) for s in families["radgr_queue_wait_seconds"].samples
                      if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"})
    assert buckets[0] == 0.005 and 1.0 in buckets and sum(b <= 1.0 for b in buckets) >= 15
    ok_before = _metric(before.text, "radgr_requests_total", {"status": "200"})
    engine_before = _metric(before.text, "radgr_engine_seconds_count", {"phase": "prefill", "engine": engine_kind})
    host_before = [_metric(before.text, "radgr_host_seconds_count", {"phase": p}) for p in ("prompt", "response")]
    assert client.post("/retrieve", json={"query": "q", "beam_width": 4}).status_code == 200
    assert client.post("/retrieve", json={"query": "q", "beam_width": 999}).status_code == 422
    after = client.get("/metrics").text
    assert _metric(after, "radgr_requests_total", {"status": "200"}) == ok_before + 1
    assert _metric(after, "radgr_requests_total", {"status": "422"}) >= 1
    assert _metric(after, "radgr_engine_seconds_count", {"phase": "prefill", "engine": engine_kind}) > engine_before
    assert _metric(after, "radgr_invalid_sids_total") == 0
    assert [_metric(after, "radgr_host_seconds_count", {"phase": p}) for p in ("prompt", "response")] == [
        n + 1 for n in host_before]  # the 422 never built a prompt
    assert _metric(after, "radgr_build_info", {"engine": engine_kind, "model": "tiny-test"}) == 1


def test_client_disconnects_are_dropped_before_the_model(bundle: Path, engine_kind: str) -> None:
    """Many clients give up while their requests wait; they never reach the model, and a normal request after
    them is served in time."""
    engines: list[GatedEngine] = []
    app = create_app(ServerSettings(bundle=bundle, max_wait_ms=0, max_queue_requests=64, engine=engine_kind),
                     engine_factory=gated_factory(engines))
    with serve_in_thread(app) as url:
        gate = engines[0]
        gate.hold()
        holder = threading.Thread(target=lambda: httpx.post(f"{url}/retrieve", json={"query": "x"}, timeout=30))
        holder.start()
        assert gate.entered.wait(10)
        seen = gate.requests_seen

        def impatient(i: int) -> str:
            try:
                # 1 s: long enough to be admitted (then cancelled) even on a loaded machine
                httpx.post(f"{url}/retrieve", json={"query": f"q{i}", "beam_width": 64}, timeout=1.0)
            except httpx.TimeoutException:
                return "gave up"
            return "answered"

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(impatient, range(32)))
        assert outcomes.count("gave up") == 32
        deadline = time.monotonic() + 5
        while app.state.serving.batcher.queued_requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app.state.serving.batcher.queued_requests == 0  # all cancelled while queued
        gate.release()
        holder.join(30)
        t0 = time.monotonic()
        r = httpx.post(f"{url}/retrieve", json={"query": "cordless drill", "beam_width": 128}, timeout=10)
        assert r.status_code == 200 and time.monotonic() - t0 < 5
        assert gate.requests_seen == seen + 1  # only the normal request reached the model after the holder
        text = httpx.get(f"{url}/metrics").text
        assert _metric(text, "radgr_cancellations_total", {"reason": "client_disconnect"}) == 32


def test_settings_name_field_and_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_batch_rows must be >= 128"):
        ServerSettings(max_batch_rows=64)
    monkeypatch.setenv("RADGR_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        ServerSettings()
    monkeypatch.setenv("RADGR_PORT", "8123")
    assert ServerSettings().port == 8123 and ServerSettings().host == "127.0.0.1"


def test_serve_command_refuses_bad_options_and_missing_bundle(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    assert main(["serve", "--bundle", str(tmp_path), "--max-batch-rows", "64"]) == 2
    assert "max_batch_rows must be >= 128" in capsys.readouterr().err
    assert main(["serve", "--bundle", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
