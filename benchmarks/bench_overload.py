"""Overload: measure a server's capacity, then offer ~3× that for 30 s and check it degrades gracefully.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_overload.py --bundle runs/demo/bundle --engine torch \
        [--factor 3 --capacity-s 15 --overload-s 30 --out runs/overload-torch]

Steps (the server and Locust each in their own process, through ``radgr loadtest``; nothing imported from Locust):

1. ``radgr serve --bundle B --engine E`` on 127.0.0.1 (``loadtest.runner.start_server``).
2. **Capacity**: a closed loop of ``--capacity-users`` users at beam 128 for ``--capacity-s`` seconds; capacity =
   its goodput (successful responses/s), with the p50/p99 of its successful responses; then the server's RSS
   (process tree; "before": caches and KV pages in use at full load, vLLM's grow by ~0.6 GiB on first use).
3. **Overload**: ``--factor`` × capacity offered (constant throughput) for ``--overload-s`` seconds.
4. The server's RSS again, and one normal request right after (its status and latency).

Prints a table and writes ``OUT/overload.json``. The checks (``--check``, used by ``tests/test_overload.py``):
goodput at overload ≥ 0.8 × capacity; accepted p99 ≤ 2 × the p99 at capacity; every rejection a 503 with
``Retry-After`` (no other failures) answered within 50 ms at p99 (Locust's row ``/retrieve [503 shed]``);
RSS after ≤ 1.2 × before (+ 64 MiB); the request after the overload answered 200 within 1 s.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mib(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return float(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])) / 2**20


def _loadtest(url: str, bundle: Path, out: Path, extra: list[str], server_pid: int) -> dict[str, Any]:
    """``radgr loadtest --host URL`` with gates that always pass (the checks here are ours); its summary."""
    cmd = [sys.executable, "-m", "cli.main", "loadtest", "--host", url, "--bundle", str(bundle), "--out", str(out),
           "--beam-widths", "128", "--p50-ms", "1e9", "--p99-ms", "1e9", "--max-failure-ratio", "1",
           "--min-qps", "0", "--server-pid", str(server_pid), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"radgr loadtest failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def _shed_row(out: Path) -> dict[str, float] | None:
    """Locust's stats row of the shed requests: count, p50, p99 and max (ms)."""
    with open(out / "locust_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "/retrieve [503 shed]":
                return {"count": float(row["Request Count"]), "p50_ms": float(row["50%"]),
                        "p99_ms": float(row["99%"]), "max_ms": float(row["Max Response Time"])}
    return None


def _one_request(url: str) -> tuple[int, float]:
    body = json.dumps({"query": "cordless drill", "beam_width": 128, "top_k": 10}).encode()
    req = urllib.request.Request(f"{url}/retrieve", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.perf_counter() - t0


def run(bundle: Path, engine: str, out: Path, factor: float, capacity_s: int, overload_s: int,
        capacity_users: int, serve_options: list[str]) -> dict[str, Any]:
    from loadtest.runner import ServerLaunch, free_port, start_server, stop_server, wait_ready

    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(ServerLaunch(bundle, serve_options=("--engine", engine, *serve_options)), port,
                        out / "server.log")
    try:
        problem = wait_ready(url, proc, 600.0)
        if problem is not None:
            raise RuntimeError(problem)
        rss_start = _rss_mib(proc.pid)
        # closed loop at saturation: each user asks again as soon as it is answered (pacing far above the rate)
        cap = _loadtest(url, bundle, out / "capacity", ["--users", str(capacity_users), "--spawn-rate",
                                                       str(capacity_users), "--run-time", str(capacity_s),
                                                       "--qps", str(1000.0 * capacity_users)], proc.pid)
        capacity = float(cap["achieved"]["qps"])
        rss_before = _rss_mib(proc.pid)  # after the capacity run: caches and KV pages in use at full load
        offered = factor * capacity
        users = max(4, math.ceil(offered / 2.0))  # at most 2 requests/s per user: the offered rate, not the users
        over = _loadtest(url, bundle, out / "overload", ["--qps", f"{offered:.3f}", "--users", str(users),
                                                        "--spawn-rate", str(users), "--run-time", str(overload_s)],
                         proc.pid)
        rss_after = _rss_mib(proc.pid)
        status_after, latency_after = _one_request(url)
        shed = _shed_row(out / "overload")
    finally:
        exit_code = stop_server(proc)
    a = over["achieved"]
    return {
        "engine": engine, "bundle": str(bundle), "factor": factor,
        "capacity_per_s": capacity, "capacity_p50_ms": cap["achieved"]["p50_ms"],
        "capacity_p99_ms": cap["achieved"]["p99_ms"],
        "offered_per_s": offered, "users": users, "overload_s": overload_s,
        "goodput_per_s": a["qps"], "accepted_p50_ms": a["p50_ms"], "accepted_p99_ms": a["p99_ms"],
        "requests": a["requests"], "ok": a["ok"], "shed": a["shed"], "timed_out": a["timed_out"],
        "errors": a["errors"], "invalid": a["invalid"], "shed_latency": shed,
        "rss_start_mib": rss_start, "rss_before_mib": rss_before, "rss_after_mib": rss_after,
        "after_status": status_after, "after_latency_s": latency_after, "server_exit_code": exit_code,
        "client_cpu_percent": over.get("cpu", {}).get("client", {}).get("cpu_percent"),
        "server_cpu_percent": (over.get("cpu", {}).get("server") or {}).get("cpu_percent"),
    }


def checks(r: dict[str, Any]) -> dict[str, bool]:
    """The graceful-overload criteria (see the module docstring)."""
    shed = r["shed_latency"]
    return {
        "goodput >= 0.8 x capacity": r["goodput_per_s"] >= 0.8 * r["capacity_per_s"],
        "accepted p99 <= 2 x p99 at capacity": (r["accepted_p99_ms"] or 0.0) <= 2.0 * r["capacity_p99_ms"],
        "only 503s (with Retry-After) failed": r["errors"] == 0 and r["invalid"] == 0 and r["timed_out"] == 0,
        "rejections answered within 50 ms (p99)": shed is None or shed["p99_ms"] <= 50.0,
        "RSS flat": r["rss_after_mib"] <= 1.2 * r["rss_before_mib"] + 64.0,
        "normal service right after": r["after_status"] == 200 and r["after_latency_s"] <= 1.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="Capacity, then ~3x capacity: does the server degrade gracefully?")
    ap.add_argument("--bundle", type=Path, default=None, help="Bundle (default: a tiny test bundle built here).")
    ap.add_argument("--engine", default="torch", choices=["torch", "vllm"])
    ap.add_argument("--factor", type=float, default=3.0)
    ap.add_argument("--capacity-s", type=int, default=15)
    ap.add_argument("--overload-s", type=int, default=30)
    ap.add_argument("--capacity-users", type=int, default=16)
    ap.add_argument("--serve-options", default="", help="More `radgr serve` options, e.g. '--max-queue-wait-s 0.5'.")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--check", action="store_true", help="Exit 1 when a criterion is missed.")
    args = ap.parse_args()
    bundle = args.bundle
    if bundle is None:
        sys.path.insert(0, str(REPO / "tests"))
        from test_bundle_fixtures import make_tiny_bundle

        bundle = make_tiny_bundle(Path(tempfile.mkdtemp()), hidden=128, n_items=400, codebook_sizes=(8, 8, 8))
    out = args.out or REPO / "runs" / f"overload-{args.engine}"
    r = run(bundle, args.engine, out, args.factor, args.capacity_s, args.overload_s, args.capacity_users,
            args.serve_options.split())
    r["checks"] = checks(r)
    from sid_index.atomic_files import write_json_atomic

    write_json_atomic(out / "overload.json", r)
    shed = r["shed_latency"] or {}
    print(f"engine {r['engine']}: capacity {r['capacity_per_s']:.1f} req/s (p50 {r['capacity_p50_ms']:.0f} ms, "
          f"p99 {r['capacity_p99_ms']:.0f} ms); offered {r['offered_per_s']:.1f} req/s for {r['overload_s']} s")
    print(f"  goodput {r['goodput_per_s']:.1f} req/s = {r['goodput_per_s'] / r['capacity_per_s']:.2f}x capacity; "
          f"accepted p50 {r['accepted_p50_ms']:.0f} ms, p99 {r['accepted_p99_ms']:.0f} ms; "
          f"shed {r['shed']} (p50 {shed.get('p50_ms', float('nan')):.0f} ms, p99 {shed.get('p99_ms', float('nan')):.0f}"
          f" ms, max {shed.get('max_ms', float('nan')):.0f} ms); timed out {r['timed_out']}, errors {r['errors']}")
    print(f"  RSS {r['rss_before_mib']:.0f} → {r['rss_after_mib']:.0f} MiB; after: {r['after_status']} in "
          f"{1e3 * r['after_latency_s']:.0f} ms; client CPU {r['client_cpu_percent']}%, server CPU "
          f"{r['server_cpu_percent']}%")
    for name, ok in r["checks"].items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    print(f"wrote {out / 'overload.json'}")
    return 0 if (all(r["checks"].values()) or not args.check) else 1


if __name__ == "__main__":
    raise SystemExit(main())
