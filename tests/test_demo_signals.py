"""``radgr demo`` stopped as a supervisor, ``timeout`` or an operator would stop it: its child processes stop with
it. SIGTERM and SIGINT while its server is serving (the server is gone and the port free within seconds, exit 0),
SIGKILL (the server still goes: Linux parent-death signal), and SIGTERM in the middle of a step (the step's process
is gone, exit 143).

The demo runs as a real process on a workdir laid out so that every step is marked finished (a tiny bundle, a
one-row samples file), so it goes straight to ``radgr serve``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_bundle_fixtures import make_tiny_bundle
from test_server_fixtures import free_port

from cli.demo_cmd import demo_steps

REPO = Path(__file__).resolve().parents[1]
GONE_WITHIN_S = 15.0  # the server drains (nothing in flight) and exits well within this


def _finished_workdir(root: Path, skip: tuple[str, ...] = ()) -> Path:
    """A workdir whose steps are all marked done (but ``skip``), with the outputs the markers require."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    workdir = root / "demo"
    make_tiny_bundle(workdir)  # → workdir/bundle
    (workdir / "samples").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": ["query: cordless drill\nhistory:"]}), workdir / "samples" / "test.parquet")
    steps_dir = workdir / ".steps"
    steps_dir.mkdir()
    for step in demo_steps(workdir):
        if step.name in skip:
            continue
        for out in step.outputs:
            if out.suffix == ".json":
                out.write_text("{}")
            else:
                out.mkdir(parents=True, exist_ok=True)
        (steps_dir / f"{step.name}.done").write_text(step.line)
    return workdir


def _start_demo(workdir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RADGR_ENGINE": "torch", "RADGR_LOG_LEVEL": "warning"}
    env.pop("RADGR_PORT", None)
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "cli.main", "demo", "--workdir", str(workdir),
                                 "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _served_requests(url: str) -> float:
    try:
        text = httpx.get(f"{url}/metrics", timeout=1).text
    except httpx.TransportError:
        return 0.0
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "radgr_requests_total" and s.labels.get("status") == "200")


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: only a listener blocks it
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return False
    return True


def _wait(check_s: float, what: str, cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + check_s
    while not cond():
        assert time.monotonic() < deadline, f"{what} not within {check_s} s"
        time.sleep(0.05)


def _kill_leftovers(procs: list[psutil.Process]) -> None:
    for p in procs:
        if not _gone(p):
            p.kill()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_demo_server_stops_with_the_demo(tmp_path: Path, sig: signal.Signals) -> None:
    workdir = _finished_workdir(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    demo = _start_demo(workdir, port, log)
    servers: list[psutil.Process] = []
    try:
        _wait(90.0, "the demo's request", lambda: demo.poll() is not None or _served_requests(url) >= 1)
        assert demo.poll() is None, log.read_text()[-3000:]
        servers = [p for p in psutil.Process(demo.pid).children(recursive=True)
                   if "serve" in p.cmdline()]
        assert len(servers) == 1, [p.cmdline() for p in psutil.Process(demo.pid).children(recursive=True)]
        t0 = time.monotonic()
        demo.send_signal(sig)
        _wait(GONE_WITHIN_S, "the server's exit", lambda: _gone(servers[0]))
        _wait(5.0, "a free port", lambda: _port_free(port))
        seconds = time.monotonic() - t0
        rc = demo.wait(timeout=10)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        _kill_leftovers(servers)
    assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 0), log.read_text()[-3000:]
    print(f"{sig.name}: server gone and port free {seconds:.2f} s after the signal")


@pytest.mark.slow
def test_sigterm_mid_step_stops_the_step(tmp_path: Path) -> None:
    workdir = _finished_workdir(tmp_path, skip=("simulate",))  # the first step really runs
    log = tmp_path / "demo.log"
    demo = _start_demo(workdir, free_port(), log)
    steps: list[psutil.Process] = []
    try:
        def step_running() -> bool:
            if demo.poll() is not None:
                return True
            steps[:] = [p for p in psutil.Process(demo.pid).children() if "simulate" in p.cmdline()]
            return bool(steps)

        _wait(30.0, "the simulate step", step_running)
        assert demo.poll() is None and steps, log.read_text()[-3000:]
        demo.send_signal(signal.SIGTERM)
        rc = demo.wait(timeout=GONE_WITHIN_S)
        assert all(_gone(p) for p in steps)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        _kill_leftovers(steps)
    assert rc == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert not (workdir / ".steps" / "simulate.done").exists()
