"""Graceful overload, really loaded: capacity measured, then ~3× that offered for 30 s by Locust in its own process
(``benchmarks/bench_overload.py``), on both engines.

What holds on a 2-core machine shared by the server, its engine thread and the Locust client (and is asserted): no
failure but 503 with ``Retry-After`` (no 5xx, no 504, no invalid body), goodput at 3× at least half the capacity
(before wait-bounded admission it fell to 0.46×), accepted p99 at most the longest wait bound
(``max_queue_wait_s``; the batches' bound is shorter on a fast machine) plus 3× the p99 at capacity (before
wait-bounded admission: 2.05 s), RSS flat, and normal service right after. The
stricter targets (goodput ≥ 0.8×, accepted p99 ≤ 2×, rejections within 50 ms) are checked and reported by the
benchmark; docs/serving.md has the measured figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_vllm

from server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[1]
MAX_QUEUE_WAIT_MS = 1000.0 * ServerSettings().max_queue_wait_s  # the default the benchmark's server runs with


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "vllm"])
def test_three_times_capacity_sheds_with_503_and_keeps_serving(tmp_path: Path, engine: str) -> None:
    if engine == "vllm":
        require_vllm()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/bench_overload.py", "--engine", engine, "--capacity-s", "10",
                           "--overload-s", "30", "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "out" / "overload.json").read_text())
    assert r["shed"] > 0, "3x capacity was offered but nothing was shed"
    assert r["errors"] == 0 and r["invalid"] == 0 and r["timed_out"] == 0, r
    assert r["goodput_per_s"] >= 0.5 * r["capacity_per_s"], r
    # admission bounds an accepted request's wait by max_queue_wait_s (0.5 s by default) ahead of its own service;
    # on the tiny model the capacity p99 (~110 ms) is far below that bound, so the bound is the wait plus 3x it
    assert r["accepted_p99_ms"] <= MAX_QUEUE_WAIT_MS + 3.0 * r["capacity_p99_ms"], r
    assert r["checks"]["RSS flat"] and r["checks"]["normal service right after"], r
