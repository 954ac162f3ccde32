"""Runs a load test: optionally the real server in its own process, Locust headless in another, CPU of both
measured with psutil, then the summary JSON and PNG. Talks to the server over HTTP only; imports no Locust.

Contract of :func:`run_load_test(run, progress=None)` with a :class:`LoadTestRun`:
1. Server: with ``run.server`` (:class:`ServerLaunch`), starts ``python -m cli.main serve --bundle B --host
   127.0.0.1 --port P --log-level warning [serve options]`` (``radgr serve``) on a free port, pinned to
   ``cpus`` when given, its output in ``OUT/server.log``, and waits for ``GET /ready`` = 200 (exit code 2 and the
   log's tail when it dies or times out); with ``run.host`` it targets that server instead.
2. Locust: ``python -m locust -f loadtest/locustfile.py --headless -u N -r R -t T --reset-stats --csv
   OUT/locust --csv-full-history --html OUT/report.html --only-summary`` plus the mix, pacing and gate options
   (``T`` = the ramp + ``run_time_s``, so the measured window after ``--reset-stats`` lasts ``run_time_s``), or
   ``loadtest/sweep_locustfile.py`` with the ``--sweep-*`` options; in its own process (cwd ``OUT``), pinned to
   ``run.client_cpus`` when given, output in ``OUT/locust.log``. ``progress(elapsed_s, expected_s)`` is called
   about 4 times a second (``expected_s`` is ``None`` for a sweep).
3. CPU: psutil samples the Locust process and the server's process tree (when it started it, or
   ``run.server_pid`` is given) every 0.25 s; CPU seconds over the measured window are interpolated from the
   samples, and ``cpu_percent`` is 100 × CPU seconds / window seconds (100 = one core busy); the machine's CPU
   count and 1-minute load average (other work on a shared machine shows there) are recorded beside them.
4. The server's ``/metrics`` are read before and after: mean batch size in requests, rejections by reason.
   A server the runner started is stopped with SIGTERM (drain) and its exit code recorded.
5. Files in ``OUT``: ``mix.json`` (given), ``locust_stats.csv``, ``locust_stats_history.csv``,
   ``locust_failures.csv``, ``locust_exceptions.csv``, ``report.html``, ``result.json`` (the locustfile's),
   ``locust.log``, ``server.log``; a constant run adds ``summary.json`` + ``summary.png`` (latency percentiles
   and QPS over time), a sweep ``sweep.json`` + ``sweep.png`` (latency and goodput against offered load) +
   ``timeline.png``.
:func:`start_server`, :func:`wait_ready` and :func:`stop_server` are step 1's parts (tests share one server with
them). Exit code of the :class:`RunOutcome`: 0 every gate passed (sweep: some step met the targets), 1 a gate was missed
(sweep: no step met them), 2 the run itself failed (server, Locust); ``message`` says which.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.measure import CpuSampler, cpu_json, http_get, scrape_metrics, server_metrics_delta
from loadtest.mix import RequestMix
from loadtest.profiles import LoadProfile, SweepConfig
from loadtest.report import plot_run, plot_sweep, read_history, write_json

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SWEEP_LOCUSTFILE = Path(__file__).with_name("sweep_locustfile.py")
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_SAMPLE_S = 0.25
_LOCUST_START_S = 5.0  # Locust's own start-up, for the progress estimate and the time limit

Progress = Callable[[float, float | None], None]


def _check_cpus(owner: str, cpus: tuple[int, ...] | None) -> None:
    if cpus is None:
        return
    available = sorted(os.sched_getaffinity(0))
    if not cpus or any(c not in available for c in cpus):
        raise ValueError(f"{owner} must be CPUs of this machine ({available}), given {list(cpus)}")


@dataclass(frozen=True)
class ServerLaunch:
    """``radgr serve`` started by the runner (see the module docstring)."""

    bundle: Path
    serve_options: tuple[str, ...] = ()
    cpus: tuple[int, ...] | None = None
    ready_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        _check_cpus("ServerLaunch.cpus", self.cpus)
        if not self.ready_timeout_s > 0:
            raise ValueError(f"ServerLaunch.ready_timeout_s must be > 0, given {self.ready_timeout_s}")


@dataclass(frozen=True)
class LoadTestRun:
    """One load test: where the server is, what load, where the files go (see the module docstring)."""

    out_dir: Path
    mix_file: Path
    host: str | None = None
    server: ServerLaunch | None = None
    profile: LoadProfile | None = None
    sweep: SweepConfig | None = None
    client_cpus: tuple[int, ...] | None = None
    server_pid: int | None = None
    seed: int = 0
    request_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if (self.host is None) == (self.server is None):
            raise ValueError("LoadTestRun needs exactly one of host (a running server) and server (start one)")
        if (self.profile is None) == (self.sweep is None):
            raise ValueError("LoadTestRun needs exactly one of profile (constant load) and sweep")
        _check_cpus("LoadTestRun.client_cpus", self.client_cpus)
        if not self.request_timeout_s > 0:
            raise ValueError(f"LoadTestRun.request_timeout_s must be > 0, given {self.request_timeout_s}")


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    message: str
    summary: dict[str, Any] = field(default_factory=dict)
    summary_path: Path | None = None
    png_path: Path | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _affinity(pid: int, cpus: tuple[int, ...] | None) -> list[int] | None:
    """Pins ``pid`` to ``cpus`` (when given) and returns its CPU set as the OS reports it."""
    try:
        if cpus is not None:
            os.sched_setaffinity(pid, set(cpus))
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None


def start_server(launch: ServerLaunch, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """``radgr serve`` in its own process on 127.0.0.1:``port`` (step 1 of the module docstring)."""
    cmd = [sys.executable, "-m", "cli.main", "serve", "--bundle", str(launch.bundle), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", *launch.serve_options]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=_PACKAGE_ROOT)
    _affinity(proc.pid, launch.cpus)
    return proc


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    """``None`` once ``/ready`` answers 200, else why not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"radgr serve exited with status {proc.returncode} before it was ready"
        if http_get(f"{url}/ready", timeout_s=2.0)[0] == 200:
            return None
        time.sleep(0.25)
    return f"radgr serve was not ready within {timeout_s:g} s"


def stop_server(proc: subprocess.Popen[bytes], grace_s: float = 40.0) -> int:
    """SIGTERM (the server drains), a kill after ``grace_s``; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


def locust_command(run: LoadTestRun, url: str) -> list[str]:
    """The Locust command line of ``run`` against ``url`` (see the module docstring)."""
    out = run.out_dir.resolve()
    common = ["--headless", "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "report.html"),
              "--only-summary", "--host", url, "--mix-file", str(run.mix_file.resolve()), "--mix-seed", str(run.seed),
              "--request-timeout-s", f"{run.request_timeout_s:g}", "--result-file", str(out / "result.json")]
    if run.profile is not None:
        p = run.profile
        duration = math.ceil(p.ramp_s) + p.run_time_s
        return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *common, "-u", str(p.users),
                "-r", f"{p.spawn_rate:g}", "-t", f"{duration}s", "--reset-stats", "--user-qps", f"{p.user_qps or 0:g}",
                "--gate-p50-ms", f"{p.gates.p50_ms:g}", "--gate-p99-ms", f"{p.gates.p99_ms:g}",
                "--gate-max-failure-ratio", f"{p.gates.max_failure_ratio:g}", "--gate-min-qps", f"{p.gates.min_qps:g}"]
    s = run.sweep
    assert s is not None
    return [sys.executable, "-m", "locust", "-f", str(SWEEP_LOCUSTFILE), *common,
            "--sweep-p99-ms", f"{s.p99_ms:g}", "--sweep-max-failure-ratio", f"{s.max_failure_ratio:g}",
            "--sweep-start-qps", f"{s.start_qps:g}", "--sweep-factor", f"{s.factor:g}", "--sweep-step-s",
            f"{s.step_s:g}", "--sweep-settle-s", f"{s.settle_s:g}", "--sweep-user-qps", f"{s.user_qps:g}",
            "--sweep-overload-multiple", f"{s.overload_multiple:g}", "--sweep-max-steps", str(s.max_steps),
            "--sweep-spawn-rate", f"{s.spawn_rate:g}"]


def expected_seconds(run: LoadTestRun) -> float | None:
    """How long Locust should run (``None`` for a sweep, whose length depends on the capacity)."""
    if run.profile is None:
        return None
    return _LOCUST_START_S + math.ceil(run.profile.ramp_s) + run.profile.run_time_s


def _time_limit(run: LoadTestRun) -> float:
    expected = expected_seconds(run)
    if expected is not None:
        return expected + 120.0
    assert run.sweep is not None
    return _LOCUST_START_S + run.sweep.max_steps * (run.sweep.step_s + 2.0) + 120.0


def _run_locust(run: LoadTestRun, url: str, sampler_pids: dict[str, int], progress: Progress | None
                ) -> tuple[int, CpuSampler, dict[str, Any]]:
    log_path = run.out_dir / "locust.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(locust_command(run, url), stdout=log, stderr=subprocess.STDOUT, cwd=run.out_dir,
                                env=env)
    cpus = _affinity(proc.pid, run.client_cpus)
    sampler = CpuSampler({**sampler_pids, "client": proc.pid})
    t0, limit, expected = time.monotonic(), _time_limit(run), expected_seconds(run)
    while True:
        sampler.sample()  # before poll(): an exited, unreaped process still reports its final CPU times
        if proc.poll() is not None:
            break
        elapsed = time.monotonic() - t0
        if elapsed > limit:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            break
        if progress is not None:
            progress(elapsed, expected)
        time.sleep(_SAMPLE_S)
    return int(proc.returncode), sampler, {"pid": proc.pid, "cpus": cpus}


def run_load_test(run: LoadTestRun, progress: Progress | None = None) -> RunOutcome:
    """Run ``run`` and write its report (see the module docstring)."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "summary.json", "sweep.json"):
        (run.out_dir / stale).unlink(missing_ok=True)
    mix = RequestMix.load(run.mix_file)
    server_proc: subprocess.Popen[bytes] | None = None
    server_info: dict[str, Any] | None = None
    try:
        if run.server is not None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server_proc = start_server(run.server, port, run.out_dir / "server.log")
            problem = wait_ready(url, server_proc, run.server.ready_timeout_s)
            if problem is not None:
                return RunOutcome(2, f"{problem}; server.log:\n{_tail(run.out_dir / 'server.log')}")
            server_info = {"pid": server_proc.pid, "cpus": _affinity(server_proc.pid, None),
                           "bundle": str(run.server.bundle), "serve_options": list(run.server.serve_options)}
        else:
            assert run.host is not None
            url = run.host.rstrip("/")
            if run.server_pid is not None:
                server_info = {"pid": run.server_pid, "cpus": _affinity(run.server_pid, None)}
        pids = {"server": server_info["pid"]} if server_info is not None else {}
        metrics_before = scrape_metrics(url)
        rc, sampler, client_info = _run_locust(run, url, pids, progress)
        metrics_after = scrape_metrics(url)
    finally:
        server_rc = stop_server(server_proc) if server_proc is not None else None
    result_path = run.out_dir / "result.json"
    if not result_path.exists():
        return RunOutcome(2, f"Locust exited with status {rc} without a result; locust.log:\n"
                             f"{_tail(run.out_dir / 'locust.log')}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    if server_info is not None:
        server_info["exit_code"] = server_rc
        server_info["metrics"] = server_metrics_delta(metrics_before, metrics_after)
    head = {"mode": result["mode"], "host": url, "started_server": server_proc is not None,
            "mix": {"file": str(run.mix_file), "source": mix.source, "requests": len(mix.requests),
                    "beam_widths": list(mix.beam_widths), "top_ks": list(mix.top_ks)},
            "exit_code": result["exit_code"] if rc == result["exit_code"] else 2, "locust_exit_code": rc,
            "verdict": result["verdict"], "engines": result["engines"], "locust": result["locust"],
            "server": server_info}
    if run.profile is not None:
        return _constant_report(run, run.profile, head, result, sampler, client_info)
    return _sweep_report(run, head, result, sampler, client_info)


def _files(run: LoadTestRun, *extra: str) -> dict[str, str]:
    names = ("report.html", "locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "locust.log",
             "result.json", *extra)
    return {name: str(run.out_dir / name) for name in names}


def _constant_report(run: LoadTestRun, profile: LoadProfile, head: dict[str, Any], result: dict[str, Any],
                     sampler: CpuSampler, client_info: dict[str, Any]) -> RunOutcome:
    window = result["window"]
    summary = {**head, "targets": profile.targets(), "description": profile.description,
               "achieved": result["achieved"], "gates": result["gates"], "passed": result["exit_code"] == 0,
               "cpu": cpu_json(sampler, window["start_unix"], window["end_unix"], client_info, head["server"]),
               "files": _files(run, "summary.json", "summary.png")}
    png = plot_run(read_history(run.out_dir / "locust_stats_history.csv"), run.out_dir / "summary.png",
                   f"radgr loadtest --profile {profile.name}: {result['verdict']}", profile.gates)
    path = write_json(run.out_dir / "summary.json", summary)
    return RunOutcome(summary["exit_code"], result["verdict"], summary, path, png)


def _sweep_report(run: LoadTestRun, head: dict[str, Any], result: dict[str, Any], sampler: CpuSampler,
                  client_info: dict[str, Any]) -> RunOutcome:
    for step in result["steps"]:  # CPU of client and server within each step's measured window
        w = step.get("window")
        if w:
            step["client_cpu_percent"] = sampler.usage("client", w["start_unix"], w["end_unix"])["cpu_percent"]
            if head["server"] is not None:
                step["server_cpu_percent"] = sampler.usage("server", w["start_unix"], w["end_unix"])["cpu_percent"]
    times = [t for t, _ in sampler.samples["client"]] or [time.time()]
    summary = {**head, **{k: v for k, v in result.items() if k not in head},
               "cpu": cpu_json(sampler, times[0], times[-1], client_info, head["server"]),
               "files": _files(run, "sweep.json", "sweep.png", "timeline.png")}
    plot_run(read_history(run.out_dir / "locust_stats_history.csv"), run.out_dir / "timeline.png",
             f"radgr loadtest --sweep: {result['verdict']}", None)
    png = plot_sweep(summary, run.out_dir / "sweep.png", f"radgr loadtest --sweep: {result['verdict']}")
    path = write_json(run.out_dir / "sweep.json", summary)
    return RunOutcome(summary["exit_code"], result["verdict"], summary, path, png)


def parse_cpus(text: str | None) -> tuple[int, ...] | None:
    """``"0,2-3"`` → ``(0, 2, 3)``; ``None`` or empty → ``None``."""
    if not text:
        return None
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(set(cpus)))

