"""SIGTERM during load against a real ``radgr serve`` process on 127.0.0.1: in-flight requests are answered,
``/ready`` and new requests answer 503, and the process exits (status 0) within the grace period."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import require_vllm
from prometheus_client.parser import text_string_to_metric_families
from test_bundle_fixtures import make_tiny_bundle
from test_server_fixtures import free_port

REPO = Path(__file__).resolve().parents[1]
GRACE_S = 8.0
TEARDOWN_MARGIN_S = 4.0


def _start(bundle: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RADGR_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--bundle", str(bundle), "--port", str(port),
         "--log-level", "warning", "--drain-grace-s", str(GRACE_S), *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"radgr serve exited with {proc.returncode}: {out[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"radgr serve was not ready within {timeout_s} s")


def _queued(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "radgr_queue_requests")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "vllm"])
def test_sigterm_drains_in_flight_refuses_new_and_exits(tmp_path: Path, engine: str) -> None:
    if engine == "vllm":
        require_vllm()
    bundle = make_tiny_bundle(tmp_path, hidden=128)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # a long batching wait keeps requests in flight (queued) while the signal arrives
    proc = _start(bundle, port, "--max-wait-ms", "2500", "--max-batch-requests", "64", "--engine", engine)
    try:
        _wait_ready(url, proc)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            in_flight = [pool.submit(httpx.post, f"{url}/retrieve", json={"query": f"q{i}", "beam_width": 16},
                                     timeout=30) for i in range(6)]
            deadline = time.monotonic() + 20
            while _queued(url) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _queued(url) == 6
            t_signal = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.15)
            ready = httpx.get(f"{url}/ready", timeout=5)
            new = httpx.post(f"{url}/retrieve", json={"query": "late", "beam_width": 4}, timeout=5)
            answers = [f.result() for f in in_flight]
            t_answered = time.monotonic()
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
        assert new.status_code == 503 and "retry-after" in new.headers
        assert [a.status_code for a in answers] == [200] * 6
        assert t_answered - t_signal < GRACE_S  # in-flight work finished inside the grace period
        rc = proc.wait(timeout=GRACE_S + 10)
        # the server stops at the end of the drain; interpreter teardown (torch) gets a margin on a loaded box
        assert time.monotonic() - t_signal < GRACE_S + TEARDOWN_MARGIN_S
        assert rc == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.slow
def test_serve_refuses_a_tampered_bundle(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path)
    (bundle / "query_categorizer.json").write_text("{}")
    proc = _start(bundle, free_port())
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1
    assert "query_categorizer.json" in out.decode() and "sha256" in out.decode()
