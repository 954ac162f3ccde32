"""Engine faults against the real app over HTTP on 127.0.0.1: an engine that raises, hangs, or answers the wrong
number (or kind) of results. The server answers 500/504 with the one error body, stays up, and ``/live`` goes 503
while the engine is dead and 200 again once it recovers, with or without traffic; a SIGTERM while the engine hangs
still ends the process promptly.

The engine is a fake at the ``engine_factory`` seam (hand-built results, no model call), so these tests are fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_bundle_fixtures import make_tiny_bundle
from test_server_fixtures import free_port, serve_in_thread

from decoding.bundle import Bundle
from decoding.engine import ItemHit, RetrievalEngine, RetrievalRequest, RetrievalResult, SidHit
from server.app import create_app
from server.settings import ServerSettings

SECRET = "/secret/path/engine.py: device-side assert"


class FakeEngine:
    """Answers every request with the bundle's first SID and item, or misbehaves as ``mode`` says:
    ``raise``, ``hang`` (until ``release()``, bounded), ``short`` (one result too few), ``extra`` (one too many),
    ``none`` (None instead of results), ``tuple`` (a tuple, not a list), ``odd_timings`` (non-numeric timings),
    ``bad_row`` (hits outside the index)."""

    name = "fake"

    def __init__(self, bundle: Bundle) -> None:
        index = bundle.index
        self._item = index.items_of_sid_row(0)[0]
        self._num_sids = index.num_sids
        self.mode = "ok"
        self.calls = 0
        self._gate = threading.Event()
        self._gate.set()
        self.entered = threading.Event()

    def hang(self) -> None:
        self.entered.clear()
        self._gate.clear()
        self.mode = "hang"

    def release(self) -> None:
        self.mode = "ok"
        self._gate.set()

    def _result(self, row: int = 0, timings: dict[str, Any] | None = None) -> RetrievalResult:
        return RetrievalResult(sids=[SidHit((0, 0, 0), (1, 2, 3), -1.5, row)],
                               items=[ItemHit(self._item, row, -1.5, 1)], timings=timings or {"prefill": 0.001})

    def retrieve_batch(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        self.calls += 1
        mode = self.mode
        if mode == "raise":
            raise RuntimeError(SECRET)
        if mode == "hang":
            self.entered.set()
            self._gate.wait(timeout=30.0)
        results = [self._result() for _ in requests]
        answers: dict[str, Any] = {
            "short": results[:-1], "extra": [*results, self._result()], "none": None, "tuple": tuple(results),
            "odd_timings": [self._result(timings={"prefill": "soon"}) for _ in requests],
            "bad_row": [self._result(row=self._num_sids + 7) for _ in requests],
        }
        out: list[RetrievalResult] = answers.get(mode, results)
        return out


def fake_factory(holder: list[FakeEngine]) -> Callable[[Bundle, ServerSettings], RetrievalEngine]:
    def factory(bundle: Bundle, settings: ServerSettings) -> RetrievalEngine:
        engine = FakeEngine(bundle)
        holder.append(engine)
        return engine

    return factory


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("faults"))


def _settings(bundle: Path, **overrides: Any) -> ServerSettings:
    # the torch engine's kind only decides that the bundle's (tiny) model is loaded; the fake never uses it
    base: dict[str, Any] = {"bundle": bundle, "engine": "torch", "max_wait_ms": 0, "warmup_beam_width": 4,
                            "engine_probe_interval_s": 0.1}
    return ServerSettings(**{**base, **overrides})


def _post(url: str, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(f"{url}/retrieve", json={"query": "cordless drill", "beam_width": 4}, timeout=timeout)


def _assert_error(r: httpx.Response, status: int, type_: str, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (type_, code)
    assert "secret" not in r.text and "Traceback" not in r.text and ".py" not in r.text
    assert r.headers["content-type"].startswith("application/json")


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _wait_for(check: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``check()`` held; fails after ``timeout_s``."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout_s, f"not within {timeout_s} s"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_raising_engine_answers_500_goes_dead_and_recovers_without_traffic(bundle: Path) -> None:
    engines: list[FakeEngine] = []
    app = create_app(_settings(bundle), engine_factory=fake_factory(engines))
    with serve_in_thread(app) as url:
        engine = engines[0]
        assert _post(url).status_code == 200
        engine.mode = "raise"
        for i in range(3):
            _assert_error(_post(url), 500, "server_error", "engine_error")
            if i < 2:  # fewer than three failures in a row is not a dead engine
                assert httpx.get(f"{url}/live").status_code == 200
        live = httpx.get(f"{url}/live")
        _assert_error(live, 503, "server_error", "engine_dead")
        assert "failed 3 batches in a row" in live.json()["error"]["message"]
        assert httpx.get(f"{url}/ready").status_code == 503
        assert _metric(url, "radgr_engine_failures_total") == 3
        # while dead and idle the warm-up request is retried (probes keep failing: still dead)
        calls = engine.calls
        _wait_for(lambda: engine.calls >= calls + 2, 5.0)
        assert httpx.get(f"{url}/live").status_code == 503
        # the engine comes back: /live recovers with no request sent
        engine.mode = "ok"
        _wait_for(lambda: httpx.get(f"{url}/live").status_code == 200, 5.0)
        assert httpx.get(f"{url}/ready").status_code == 200
        r = _post(url)
        assert r.status_code == 200 and r.json()["items"][0]["rank"] == 1


@pytest.mark.parametrize("mode", ["short", "extra", "none", "tuple", "odd_timings"])
def test_malformed_results_answer_500_and_the_server_stays_up(bundle: Path, mode: str) -> None:
    engines: list[FakeEngine] = []
    app = create_app(_settings(bundle), engine_factory=fake_factory(engines))
    with serve_in_thread(app) as url:
        engine = engines[0]
        engine.mode = mode
        _assert_error(_post(url), 500, "server_error", "engine_error")
        engine.mode = "ok"
        assert _post(url).status_code == 200
        assert httpx.get(f"{url}/live").status_code == 200


def test_hits_outside_the_index_are_dropped_and_counted(bundle: Path) -> None:
    engines: list[FakeEngine] = []
    app = create_app(_settings(bundle), engine_factory=fake_factory(engines))
    with serve_in_thread(app) as url:
        engines[0].mode = "bad_row"
        r = _post(url)
        assert r.status_code == 200 and r.json()["items"] == [] and r.json()["sids"] == []
        assert _metric(url, "radgr_invalid_sids_total") == 2


def test_hung_engine_answers_504_live_goes_dead_then_recovers(bundle: Path) -> None:
    engines: list[FakeEngine] = []
    app = create_app(_settings(bundle, request_timeout_s=0.5, engine_stall_s=0.3),
                     engine_factory=fake_factory(engines))
    with serve_in_thread(app) as url:
        engine = engines[0]
        engine.hang()
        try:
            t0 = time.monotonic()
            r = _post(url)
            waited = time.monotonic() - t0
            _assert_error(r, 504, "timeout_error", "deadline_exceeded")
            assert 0.4 < waited < 3.0
            assert engine.entered.is_set()
            # queued behind the hung batch: also a 504, and health stays answerable
            _assert_error(_post(url), 504, "timeout_error", "deadline_exceeded")
            live = httpx.get(f"{url}/live", timeout=2)
            _assert_error(live, 503, "server_error", "engine_dead")
            assert "running for" in live.json()["error"]["message"]
            assert httpx.get(f"{url}/metrics", timeout=2).status_code == 200
        finally:
            engine.release()
        _wait_for(lambda: httpx.get(f"{url}/live").status_code == 200, 5.0)
        t0 = time.monotonic()
        assert _post(url).status_code == 200
        assert time.monotonic() - t0 < 2.0



HUNG_SERVER = """
import sys, threading
from decoding.engine import ItemHit, RetrievalResult, SidHit
from server.runner import run_server
from server.settings import ServerSettings

class HangsAfterWarmUp:
    name = "fake"

    def __init__(self, bundle):
        self.item = bundle.index.items_of_sid_row(0)[0]
        self.calls = 0

    def retrieve_batch(self, requests):
        self.calls += 1
        if self.calls > 1:
            threading.Event().wait(120.0)  # hung
        return [RetrievalResult([SidHit((0, 0, 0), (1, 2, 3), -1.0, 0)], [ItemHit(self.item, 0, -1.0, 1)])
                for _ in requests]

settings = ServerSettings(bundle=sys.argv[1], port=int(sys.argv[2]), engine="torch", log_level="warning",
                          request_timeout_s=0.5, drain_grace_s=1.0, warmup_beam_width=4)
sys.exit(run_server(settings, engine_factory=lambda bundle, _: HangsAfterWarmUp(bundle)))
"""


@pytest.mark.slow
def test_sigterm_with_a_hung_engine_exits_without_waiting_for_it(bundle: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HUNG_SERVER, str(bundle), str(port)],
                            cwd=Path(__file__).resolve().parents[1], env=env)
    try:
        def ready() -> bool:
            assert proc.poll() is None, "the server exited"
            try:
                return httpx.get(f"{url}/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        _wait_for(ready, 60.0)
        _assert_error(_post(url), 504, "timeout_error", "deadline_exceeded")  # the engine now hangs
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
        assert time.monotonic() - t0 < 10.0
        assert rc == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
