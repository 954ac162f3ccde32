"""``RADGR_*`` environment variables reach the commands that document them: an option not given on the command line
leaves the variable (then the default) in charge, an option given outranks it.

``radgr serve``: every setting of ``server.settings.ServerSettings`` (checked in-process at the runner's seam, and
once end to end: a ``radgr serve`` process given only ``--bundle`` binds ``RADGR_PORT`` and sheds the 4th queued
request under ``RADGR_MAX_QUEUE_REQUESTS=3``). ``radgr eval``: ``RADGR_ENGINE``.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_bundle_fixtures import make_tiny_bundle
from test_server_fixtures import free_port

from cli import serve_cmd
from cli.main import main
from server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("env"))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[ServerSettings]:
    """``radgr serve`` runs up to the runner, which records its settings instead of serving."""
    import server.runner

    seen: list[ServerSettings] = []

    def fake_run_server(settings: ServerSettings, engine_factory: Any = None) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(server.runner, "run_server", fake_run_server)
    for name in list(os.environ):
        if name.startswith("RADGR_"):
            monkeypatch.delenv(name)
    return seen


def test_help_shows_the_settings_defaults() -> None:
    for name, shown in serve_cmd._DEFAULTS.items():
        assert str(ServerSettings.model_fields[name].default) == shown, name


def test_serve_options_not_given_leave_the_environment_in_charge(bundle: Path, captured: list[ServerSettings],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["serve", "--bundle", str(bundle)]) == 0
    defaults = captured[-1]
    assert (defaults.max_wait_ms, defaults.port, defaults.engine) == (5.0, 8000, "auto")
    env = {"RADGR_MAX_WAIT_MS": "7.5", "RADGR_MAX_QUEUE_REQUESTS": "3", "RADGR_PORT": "8123",
           "RADGR_ENGINE": "torch", "RADGR_VLLM_SCORING": "token_ids", "RADGR_DEVICE": "cpu",
           "RADGR_REQUEST_READ_TIMEOUT_S": "2.5", "RADGR_ENGINE_STALL_S": "30", "RADGR_LOG_LEVEL": "warning"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--bundle", str(bundle)]) == 0
    got = captured[-1]
    assert (got.max_wait_ms, got.max_queue_requests, got.port, got.engine, got.vllm_scoring, got.device,
            got.request_read_timeout_s, got.engine_stall_s, got.log_level) == (
        7.5, 3, 8123, "torch", "token_ids", "cpu", 2.5, 30.0, "warning")
    # what is given outranks the variable; the rest still comes from the environment
    assert main(["serve", "--bundle", str(bundle), "--max-wait-ms", "2", "--port", "9000", "--engine", "auto"]) == 0
    got = captured[-1]
    assert (got.max_wait_ms, got.port, got.engine, got.max_queue_requests) == (2.0, 9000, "auto", 3)
    # the bundle too may come from the environment
    monkeypatch.setenv("RADGR_BUNDLE", str(bundle))
    assert main(["serve"]) == 0
    assert captured[-1].bundle == bundle


def test_a_bad_variable_exits_2_naming_it(bundle: Path, captured: list[ServerSettings],
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RADGR_MAX_QUEUE_REQUESTS", "0")
    assert main(["serve", "--bundle", str(bundle)]) == 2
    assert "max_queue_requests" in capsys.readouterr().err and not captured
    monkeypatch.delenv("RADGR_MAX_QUEUE_REQUESTS")
    assert main(["serve", "--bundle", str(bundle), "--max-batch-rows", "64"]) == 2
    assert "max_batch_rows must be >= 128" in capsys.readouterr().err and not captured


def test_eval_reads_radgr_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.evaluate

    engines: list[str] = []

    def fake_run_eval(run: training.evaluate.EvalRun, **_: Any) -> Any:
        engines.append(run.engine)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(training.evaluate, "run_eval", fake_run_eval)
    args = ["eval", "--index", str(tmp_path), "--samples", str(tmp_path), "--model", str(tmp_path)]
    monkeypatch.delenv("RADGR_ENGINE", raising=False)
    assert main(args) == 2
    monkeypatch.setenv("RADGR_ENGINE", "torch")
    assert main(args) == 2
    assert main([*args, "--engine", "vllm"]) == 2
    assert engines == ["auto", "torch", "vllm"]


def _metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()))


@pytest.mark.slow
def test_radgr_serve_process_takes_its_settings_from_the_environment(bundle: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADGR_")}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "RADGR_ENGINE": "torch", "RADGR_PORT": str(port), "RADGR_MAX_QUEUE_REQUESTS": "3",
                "RADGR_MAX_WAIT_MS": "2000", "RADGR_MAX_BATCH_REQUESTS": "64", "RADGR_WARMUP_BEAM_WIDTH": "4",
                "RADGR_LOG_LEVEL": "warning", "RADGR_DRAIN_GRACE_S": "5"})
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--bundle", str(bundle)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:  # bound to RADGR_PORT, not the default 8000
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()[-2000:]
            assert time.monotonic() < deadline, "radgr serve did not become ready"
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        body = {"query": "drill", "beam_width": 4}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            queued = [pool.submit(httpx.post, f"{url}/retrieve", json=body, timeout=30) for _ in range(3)]
            while _metric(url, "radgr_queue_requests") < 3:  # RADGR_MAX_WAIT_MS holds them in the queue
                assert time.monotonic() < deadline + 30
                time.sleep(0.02)
            fourth = httpx.post(f"{url}/retrieve", json=body, timeout=10)
            assert fourth.status_code == 503 and fourth.headers["Retry-After"] == "1"
            assert fourth.json()["error"]["code"] == "queue_full"
            assert [f.result().status_code for f in queued] == [200, 200, 200]
        assert _metric(url, "radgr_rejections_total", {"reason": "queue_full"}) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
