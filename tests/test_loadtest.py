"""Load tests (``loadtest/``, ``radgr loadtest``): gates, response checks, the mix, the sweep's plan on hand-made
numbers; then the real thing (slow): the ``cpu-smoke`` profile against a real ``radgr serve`` of the tiny bundle
passes and writes its files, an impossible target fails naming the gate, and a two-step sweep writes its report.
Locust itself only ever runs in subprocesses (importing it would patch this process with gevent)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.gates import check_gates, verdict
from loadtest.mix import (
    HISTORY_LENGTHS,
    MIX_FORMAT,
    MixRequest,
    RequestMix,
    requests_from_sessions,
    synthetic_queries,
    synthetic_requests,
)
from loadtest.outcomes import REQUEST_NAMES, Achieved, Outcome, OutcomeLog, classify, percentile
from loadtest.profiles import PROFILES, Gates, LoadProfile, SweepConfig, profile_named, with_overrides
from loadtest.sweep import StepResult, capacity_step, judge_step, next_offered_qps, sweep_summary
from loadtest.validate import response_problem

REPO = Path(__file__).resolve().parents[1]


def _body(scores: tuple[float, ...] = (-0.5, -1.0, -2.0)) -> dict[str, Any]:
    """A valid /retrieve body: one item per SID, ranked by score."""
    sids = [{"sid": f"<s0_{i}><s1_1><s2_2>", "score": s, "item_ids": [f"item{i}a", f"item{i}b"]}
            for i, s in enumerate(scores)]
    items = [{"item_id": f"item{i}a", "sid": sids[i]["sid"], "score": s, "rank": i + 1} for i, s in enumerate(scores)]
    return {"items": items, "sids": sids, "engine": "torch"}


def _achieved(ok: int = 97, shed: int = 2, timed_out: int = 1, duration_s: float = 10.0,
              p50_ms: float | None = 40.0, p99_ms: float | None = 120.0) -> Achieved:
    return Achieved(duration_s=duration_s, requests=ok + shed + timed_out, ok=ok, invalid=0, shed=shed,
                    timed_out=timed_out, errors=0, p50_ms=p50_ms, p99_ms=p99_ms)


# ---------------------------------------------------------------- gates and outcomes


def test_gates_pass_and_fail_on_hand_made_numbers() -> None:
    """100 requests in 10 s: 97 ok, 2 shed, 1 timed out → failure ratio 3/100 = 0.03, goodput 97/10 = 9.7/s."""
    a = _achieved()
    assert a.failure_ratio == pytest.approx(0.03) and a.qps == pytest.approx(9.7) and a.answered_qps == 10.0
    ok = check_gates(a, Gates(p50_ms=50, p99_ms=150, max_failure_ratio=0.05, min_qps=9))
    assert [r.name for r in ok] == ["p50", "p99", "failure_ratio", "qps"] and all(r.passed for r in ok)
    assert verdict(ok) == "all gates passed"
    bad = check_gates(a, Gates(p50_ms=0.001, p99_ms=150, max_failure_ratio=0.02, min_qps=9.8))
    assert [r.passed for r in bad] == [False, True, False, False]
    text = verdict(bad)
    assert text.startswith("missed gate(s): ") and "p50 40 ms > 0.001 ms" in text
    assert "failure_ratio 0.03 > 0.02" in text and "qps 9.7 < 9.8" in text and "p99" not in text


def test_gates_fail_without_successes_or_requests() -> None:
    none_ok = check_gates(_achieved(ok=0, p50_ms=None, p99_ms=None), Gates(1e9, 1e9, 1.0, 0.0))
    assert [r.passed for r in none_ok] == [False, False, True, True]
    assert "no successful response" in none_ok[0].message
    empty = check_gates(_achieved(ok=0, shed=0, timed_out=0, p50_ms=None, p99_ms=None), Gates(1e9, 1e9, 1.0, 0.0))
    assert not empty[2].passed and "no request completed" in empty[2].message


def test_percentile_is_nearest_rank() -> None:
    """Nearest rank: the ceil(q·n)-th smallest. 1..100 → p50 = 50, p99 = 99; [10, 20, 30, 40] → p50 = 20."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99 and percentile(values, 1.0) == 100
    assert percentile([10.0, 20.0, 30.0, 40.0], 0.5) == 20 and percentile([10.0, 20.0, 30.0, 40.0], 0.99) == 40
    assert percentile([7.0], 0.01) == 7
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_outcome_log_counts_failures_and_times_only_successes() -> None:
    log = OutcomeLog(start=100.0)
    for ms in (30.0, 10.0, 20.0):
        log.record(Outcome.OK, ms)
    log.record(Outcome.SHED, 1.0)
    log.record(Outcome.TIMED_OUT, 5000.0)
    a = log.achieved(now=102.0)
    assert (a.requests, a.ok, a.shed, a.timed_out, a.failures) == (5, 3, 1, 1, 2)
    assert (a.p50_ms, a.p99_ms, a.duration_s, a.qps) == (20.0, 30.0, 2.0, 1.5)
    log.reset(start=200.0)
    assert log.achieved(now=201.0).requests == 0


def test_classify_names_shed_and_timed_out_apart_from_successes() -> None:
    assert classify(200, _body(), 128, 10) == (Outcome.OK, None)
    assert classify(503, {"error": {}}, 128, 10)[0] is Outcome.SHED
    assert classify(503, {"error": {}}, 128, 10, retry_after=False) == (Outcome.ERROR, "503 without Retry-After")
    assert classify(504, None, 128, 10)[0] is Outcome.TIMED_OUT
    assert classify(500, None, 128, 10) == (Outcome.ERROR, "HTTP 500")
    assert classify(0, None, 128, 10)[0] is Outcome.ERROR
    outcome, message = classify(200, _body((-1.0, -0.5)), 128, 10)
    assert outcome is Outcome.INVALID and message == "invalid response: sid scores not sorted descending"
    assert REQUEST_NAMES[Outcome.SHED] != REQUEST_NAMES[Outcome.OK] != REQUEST_NAMES[Outcome.TIMED_OUT]


def test_response_problem_names_each_broken_check() -> None:
    assert response_problem(_body(), beam_width=3, top_k=3) is None

    def broken(change: Any) -> str | None:
        body = _body()
        change(body)
        return response_problem(body, beam_width=128, top_k=10)

    assert response_problem(_body(), beam_width=2, top_k=10) == "more sids than beam_width"
    assert response_problem(_body(), beam_width=128, top_k=2) == "more items than top_k"
    assert broken(lambda b: b.update(items=[])) == "no items"
    assert broken(lambda b: b.pop("sids")) == "items or sids missing"
    assert broken(lambda b: b["sids"][1].update(sid="<s0_1><s1_x><s2_2>")) == "malformed sid"
    assert broken(lambda b: b["sids"][1].update(sid=b["sids"][0]["sid"])) == "duplicate sid"
    assert broken(lambda b: b["sids"][0].update(score=0.5)) == "sid score not a finite log-prob"
    assert broken(lambda b: b["items"][1].update(rank=3)) == "item ranks not 1..n"
    assert broken(lambda b: b["items"][0].update(sid="<s0_9><s1_9><s2_9>")) == "item sid not among sids"
    assert broken(lambda b: b["items"][0].update(item_id="other")) == "item not among its sid's item_ids"
    assert broken(lambda b: b["items"][0].update(score=-0.7)) == "item score differs from its sid's"
    assert response_problem([], 128, 10) == "body is not a JSON object"


# ---------------------------------------------------------------- profiles and mix


def test_profiles_validate_and_override() -> None:
    gpu = profile_named("gpu-4090")
    assert (gpu.qps, gpu.beam_widths, gpu.gates.p50_ms, gpu.gates.p99_ms) == (15.0, (128,), 300.0, 1000.0)
    assert gpu.user_qps == pytest.approx(0.5) and set(PROFILES) == {"cpu-smoke", "gpu-4090"}
    with pytest.raises(ValueError, match="unknown profile 'x'; known: cpu-smoke, gpu-4090"):
        profile_named("x")
    custom = with_overrides(PROFILES["cpu-smoke"], users=2, p50_ms=0.001, beam_widths=(8,))
    assert (custom.users, custom.gates.p50_ms, custom.beam_widths) == (2, 0.001, (8,))
    assert custom.gates.p99_ms == PROFILES["cpu-smoke"].gates.p99_ms
    with pytest.raises(ValueError, match=r"Gates.p50_ms must be > 0, given 0"):
        Gates(p50_ms=0, p99_ms=1, max_failure_ratio=0, min_qps=0)
    with pytest.raises(ValueError, match=r"Gates.max_failure_ratio must be in \[0, 1\], given 2"):
        Gates(p50_ms=1, p99_ms=1, max_failure_ratio=2, min_qps=0)
    with pytest.raises(ValueError, match=r"LoadProfile.beam_widths values must be in 1..128, given 129"):
        with_overrides(gpu, beam_widths=(129,))
    with pytest.raises(ValueError, match=r"LoadProfile.users must be ≥ 1, given 0"):
        LoadProfile(name="x", users=0, spawn_rate=1, run_time_s=1, qps=None, gates=gpu.gates)
    with pytest.raises(ValueError, match=r"SweepConfig.factor must be > 1, given 1"):
        SweepConfig(factor=1.0)


def test_bounds_match_the_server_schemas() -> None:
    from loadtest import mix, profiles
    from server import schemas

    assert (profiles.MAX_BEAM_WIDTH, profiles.MAX_TOP_K) == (schemas.MAX_BEAM_WIDTH, schemas.MAX_TOP_K)
    assert (mix.MAX_QUERY_CHARS, mix.MAX_HISTORY_ITEMS) == (schemas.MAX_QUERY_CHARS, schemas.MAX_HISTORY_ITEMS)


def test_mix_builders_on_hand_made_data(tmp_path: Path) -> None:
    words = {"drill": {"cordless": 3, "drill": 5}, "tape": {"tape": 2, "roll": 1}, "empty": {}}
    queries = synthetic_queries(words, 50, random.Random(0))
    assert queries == synthetic_queries(words, 50, random.Random(0))  # seeded
    vocab = {"cordless", "drill", "tape", "roll"}
    assert all(1 <= len(q.split()) <= 4 and set(q.split()) <= vocab for q in queries)
    items = [f"i{k}" for k in range(30)]
    reqs = synthetic_requests(queries, items, 400, random.Random(1), unknown_history_share=0.1)
    lengths = {len(r.history) for r in reqs}
    assert lengths <= set(HISTORY_LENGTHS) and len(lengths) >= 6  # varied lengths
    ids = [h for r in reqs for h in r.history]
    unknown = sum(h.startswith("unknown-") for h in ids) / len(ids)
    assert 0.05 < unknown < 0.15 and set(ids) - {h for h in ids if h.startswith("unknown-")} <= set(items)
    assert 0.03 < sum(r.query == "" for r in reqs) / len(reqs) < 0.2
    sessions = [{"query": f"q{k}", "history": ["a", "b"], "profile": [("tier", "pro")]} for k in range(10)]
    from_logs = requests_from_sessions(sessions, 4, random.Random(2))
    assert len(from_logs) == 4 and from_logs[0].history == ("a", "b") and from_logs[0].profile == (("tier", "pro"),)

    mix = RequestMix(requests=tuple(reqs), beam_widths=(32, 128), top_ks=(10,), source="test")
    path = mix.save(tmp_path / "mix.json")
    assert json.loads(path.read_text())["format"] == MIX_FORMAT
    assert RequestMix.load(path) == mix
    rng = random.Random(3)
    bodies = [mix.body(rng) for _ in range(50)]
    assert {b["beam_width"] for b in bodies} == {32, 128} and {b["top_k"] for b in bodies} == {10}
    assert set(bodies[0]) == {"query", "history", "profile", "beam_width", "top_k"}


def test_mix_refuses_bad_files_and_bounds(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format must be 'radgr-loadtest-mix-v1', given 'other'"):
        RequestMix.load(tmp_path / "bad.json")
    (tmp_path / "long.json").write_text(json.dumps({"format": MIX_FORMAT, "beam_widths": [8], "top_ks": [10],
                                                    "requests": [{"query": "ok"}, {"query": "x" * 513}]}))
    with pytest.raises(ValueError, match=r"request 1: MixRequest.query must be ≤ 512 characters, given 513"):
        RequestMix.load(tmp_path / "long.json")
    with pytest.raises(ValueError, match=r"RequestMix.top_ks values must be in 1..1000, given 0"):
        RequestMix(requests=(MixRequest("q"),), top_ks=(0,))
    with pytest.raises(ValueError, match="at least one request"):
        RequestMix(requests=())


# ---------------------------------------------------------------- the sweep's plan


def _step(index: int, offered: float, qps: float, p99: float, cfg: SweepConfig, shed: int = 0) -> StepResult:
    a = _achieved(ok=int(qps * 10), shed=shed, timed_out=0, duration_s=10.0, p50_ms=p99 / 2, p99_ms=p99)
    return judge_step(index, offered, cfg.users_for(offered), a, cfg)


def test_sweep_steps_up_until_a_break_then_to_three_times_capacity() -> None:
    """start 2, ×2: 2, 4, 8 pass (goodput 2, 4, 7.9), 16 breaks (p99 1500 > 1000) → capacity 7.9 (offered 8).
    The overload limit is 3 × 7.9 = 23.7; 16 × 2 = 32 is beyond it, so the next step offers 23.7 and the sweep
    stops after it."""
    cfg = SweepConfig(start_qps=2, factor=2, p99_ms=1000, max_failure_ratio=0.01, user_qps=1.0)
    steps: list[StepResult] = []
    assert next_offered_qps(steps, cfg) == 2
    for offered, qps, p99 in ((2, 2, 50), (4, 4, 60), (8, 7.9, 400)):
        steps.append(_step(len(steps), offered, qps, p99, cfg))
        assert steps[-1].passed and steps[-1].reason == "met the targets"
    assert next_offered_qps(steps, cfg) == 16
    steps.append(_step(3, 16, 9, 1500, cfg))
    assert not steps[-1].passed and steps[-1].reason == "p99 1500 ms > 1000 ms"
    cap = capacity_step(steps)
    assert cap is not None and cap.offered_qps == 8 and cap.achieved.qps == pytest.approx(7.9)
    assert next_offered_qps(steps, cfg) == pytest.approx(23.7)
    steps.append(_step(4, 23.7, 9, 3000, cfg, shed=50))
    assert "failure ratio" in steps[-1].reason
    assert next_offered_qps(steps, cfg) is None
    summary = sweep_summary(steps, cfg)
    assert summary["capacity_qps"] == pytest.approx(7.9) and summary["capacity_offered_qps"] == 8
    assert summary["broke_at_offered_qps"] == 16 and summary["max_offered_qps"] == pytest.approx(23.7)
    assert [s["users"] for s in summary["steps"]] == [2, 4, 8, 16, 24]


def test_sweep_capacity_is_the_best_passing_step_even_after_a_noisy_break() -> None:
    """4 passes, 6 breaks (a hiccup: p99 1600 ms), 9 passes with goodput 8.9 → capacity 8.9, the limit 3 × 8.9 =
    26.7: the sweep goes on 13.5, 20.25, then 26.7 (clipped) and stops."""
    cfg = SweepConfig(start_qps=4, factor=1.5)
    steps = [_step(0, 4, 4, 300, cfg), _step(1, 6, 6, 1600, cfg), _step(2, 9, 8.9, 900, cfg)]
    cap = capacity_step(steps)
    assert cap is not None and cap.index == 2
    for offered in (13.5, 20.25):
        assert next_offered_qps(steps, cfg) == pytest.approx(offered)
        steps.append(_step(len(steps), offered, 9, 3000, cfg))
    assert next_offered_qps(steps, cfg) == pytest.approx(26.7)
    steps.append(_step(len(steps), 26.7, 9, 3000, cfg))
    assert next_offered_qps(steps, cfg) is None
    assert sweep_summary(steps, cfg)["broke_at_offered_qps"] == 6


def test_sweep_without_capacity_and_step_limit() -> None:
    cfg = SweepConfig(start_qps=4, factor=2, max_steps=3, overload_multiple=3)
    steps = [_step(0, 4, 1, 5000, cfg)]  # the first step already breaks: no capacity, limit 3 × 4 offered
    assert capacity_step(steps) is None and next_offered_qps(steps, cfg) == 8
    steps.append(_step(1, 8, 1, 5000, cfg))
    assert next_offered_qps(steps, cfg) == 12
    assert sweep_summary(steps, cfg)["capacity_qps"] == 0.0
    passing = [_step(i, 4 * 2**i, 4 * 2**i, 10, cfg) for i in range(3)]
    assert next_offered_qps(passing, cfg) is None  # max_steps reached


# ---------------------------------------------------------------- runner and report pieces


def test_runner_pieces_without_locust(tmp_path: Path) -> None:
    from loadtest.measure import CpuSampler, server_metrics_delta
    from loadtest.runner import LoadTestRun, ServerLaunch, locust_command, parse_cpus

    assert parse_cpus("0,2-3") == (0, 2, 3) and parse_cpus("") is None
    mix = RequestMix(requests=(MixRequest("q"),)).save(tmp_path / "mix.json")
    run = LoadTestRun(out_dir=tmp_path, mix_file=mix, host="http://127.0.0.1:1", profile=PROFILES["cpu-smoke"])
    cmd = locust_command(run, "http://127.0.0.1:1")
    for flag in ("--headless", "-u", "-r", "-t", "--reset-stats", "--csv", "--html", "--gate-p50-ms", "--mix-file"):
        assert flag in cmd
    assert cmd[cmd.index("-t") + 1] == "16s"  # 1 s of ramp (4 users at 4/s) + 15 measured seconds
    sweep_cmd = locust_command(LoadTestRun(out_dir=tmp_path, mix_file=mix, host="h", sweep=SweepConfig()), "h")
    assert "sweep_locustfile.py" in sweep_cmd[sweep_cmd.index("-f") + 1] and "-u" not in sweep_cmd
    with pytest.raises(ValueError, match="exactly one of host"):
        LoadTestRun(out_dir=tmp_path, mix_file=mix, profile=PROFILES["cpu-smoke"])
    with pytest.raises(ValueError, match=r"ServerLaunch.cpus must be CPUs of this machine"):
        ServerLaunch(bundle=tmp_path, cpus=(4096,))
    before = {"radgr_batch_requests_sum": 10.0, "radgr_batch_requests_count": 5.0}
    after = {"radgr_batch_requests_sum": 40.0, "radgr_batch_requests_count": 15.0,
             'radgr_rejections_total{reason="queue_full"}': 3.0}
    assert server_metrics_delta(before, after) == {"batches": 10.0, "mean_batch_requests": 3.0,
                                                   "rejections": {"queue_full": 3.0}}
    sampler = CpuSampler({"me": os.getpid()})
    sampler.samples["me"] = [(100.0, 1.0), (102.0, 2.0), (104.0, 4.0)]
    assert sampler.cpu_at("me", 101.0) == 1.5 and sampler.cpu_at("me", 99.0) == 1.0
    assert sampler.usage("me", 101.0, 103.0) == {"cpu_seconds": 1.5, "cpu_percent": 75.0}


def test_report_reads_locust_history_and_plots(tmp_path: Path) -> None:
    from loadtest.report import plot_run, plot_sweep, read_history

    header = "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,95%,99%,Total Request Count\n"
    (tmp_path / "h.csv").write_text(header + "1000,0,,Aggregated,0.0,0.0,N/A,N/A,N/A,0\n"
                                    "1001,4,POST,/retrieve,5.0,0.0,30,40,50,5\n"
                                    "1001,4,,Aggregated,5.5,0.5,31,41,52,6\n")
    rows = read_history(tmp_path / "h.csv")
    assert [(r.t_s, r.users, r.rps, r.p50_ms, r.p99_ms) for r in rows] == [(0, 0, 0, None, None), (1, 4, 5.5, 31, 52)]
    assert plot_run(rows, tmp_path / "run.png", "t", PROFILES["cpu-smoke"].gates).stat().st_size > 1000
    cfg = SweepConfig(start_qps=2, factor=2)
    steps = [_step(0, 2, 2, 50, cfg), _step(1, 4, 3, 2000, cfg)]
    assert plot_sweep(sweep_summary(steps, cfg), tmp_path / "s.png", "t").stat().st_size > 1000


def test_loadtest_modules_outside_the_locustfiles_never_import_locust() -> None:
    code = ("import sys, loadtest.runner, loadtest.report, loadtest.mix, loadtest.gates, loadtest.sweep, "
            "cli.loadtest_cmd; bad = [m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


# ---------------------------------------------------------------- the real thing (slow)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_bundle_fixtures import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("loadtest"), hidden=128)


@pytest.fixture(scope="module")
def running_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """One ``radgr serve`` (PyTorch engine) for the tests that target ``--host``."""
    from loadtest.runner import ServerLaunch, free_port, start_server, stop_server, wait_ready

    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    proc = start_server(ServerLaunch(bundle=tiny_bundle, serve_options=("--engine", "torch")), port, log)
    try:
        problem = wait_ready(f"http://127.0.0.1:{port}", proc, timeout_s=120)
        assert problem is None, f"{problem}: {log.read_text()[-2000:]}"
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        assert stop_server(proc) == 0


@pytest.mark.slow
def test_cpu_smoke_passes_against_the_real_server(tiny_bundle: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    out = tmp_path / "smoke"
    code = main(["loadtest", "--bundle", str(tiny_bundle), "--profile", "cpu-smoke", "--out", str(out),
                 "--engine", "torch"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    for name in ("summary.json", "summary.png", "report.html", "locust_stats.csv", "locust_stats_history.csv",
                 "locust_failures.csv", "mix.json", "result.json", "locust.log", "server.log"):
        assert (out / name).stat().st_size > 0, name
    s = json.loads((out / "summary.json").read_text())
    assert s["passed"] and s["started_server"] and s["server"]["exit_code"] == 0 and s["engines"].keys() == {"torch"}
    assert s["achieved"]["ok"] > 20 and s["achieved"]["invalid"] == 0 and s["achieved"]["errors"] == 0
    assert [g["name"] for g in s["gates"]] == ["p50", "p99", "failure_ratio", "qps"]
    assert s["cpu"]["client"]["cpu_seconds"] > 0 and s["cpu"]["server"]["cpu_seconds"] > 0
    assert s["server"]["metrics"]["batches"] > 0
    assert "all gates passed" in printed.out


@pytest.mark.slow
def test_an_impossible_target_fails_naming_the_gate(running_server: tuple[str, int], tiny_bundle: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    url, pid = running_server
    code = main(["loadtest", "--host", url, "--bundle", str(tiny_bundle), "--p50-ms", "0.001", "--run-time", "2",
                 "--server-pid", str(pid), "--out", str(tmp_path / "fail")])
    printed = capsys.readouterr()
    assert code == 1, printed.out + printed.err
    assert "missed gate(s): p50" in printed.err and "> 0.001 ms" in printed.err
    s = json.loads((tmp_path / "fail" / "summary.json").read_text())
    assert not s["passed"] and [g["name"] for g in s["gates"] if not g["passed"]] == ["p50"]
    assert not s["started_server"] and s["cpu"]["server"]["cpu_seconds"] is not None


@pytest.mark.slow
def test_a_two_step_sweep_writes_its_report(running_server: tuple[str, int], tiny_bundle: Path,
                                            tmp_path: Path) -> None:
    from cli.main import main

    url, _ = running_server
    out = tmp_path / "sweep"
    code = main(["loadtest", "--host", url, "--bundle", str(tiny_bundle), "--sweep", "--sweep-start-qps", "4",
                 "--sweep-step-s", "3", "--sweep-settle-s", "1", "--sweep-max-steps", "2", "--p99-ms", "5000",
                 "--out", str(out)])
    assert code == 0
    s = json.loads((out / "sweep.json").read_text())
    assert [st["offered_qps"] for st in s["steps"]] == [4, 6]
    assert s["capacity_step"] == 1 and s["capacity_qps"] > 0 and (out / "sweep.png").stat().st_size > 0
