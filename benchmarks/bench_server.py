"""Server latency on the tiny test bundle, over real HTTP on 127.0.0.1 (one uvicorn worker in a thread).

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_server.py [--requests 60] [--concurrency 1,4,16]``

Prints, per beam width and client concurrency: median / p90 end-to-end latency, the server's own total and
engine seconds, the mean batch size, and achieved requests/s; writes ``runs/bench_server.json``. The model is
the random tiny Qwen3 of the tests, so the numbers measure the serving path (HTTP, batching, prompt building,
the PyTorch engine's beam search on a tiny model), not a real model's compute.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    import httpx
    from test_bundle_fixtures import make_tiny_bundle
    from test_server_fixtures import serve_in_thread

    from server.app import create_app
    from server.settings import ServerSettings

    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--beams", default="8,128")
    args = ap.parse_args()
    bundle = make_tiny_bundle(Path(tempfile.mkdtemp()))
    app = create_app(ServerSettings(bundle=bundle, max_wait_ms=2, max_batch_requests=16))
    rows = []
    with serve_in_thread(app) as url, httpx.Client(timeout=60) as client:
        for beam in [int(b) for b in args.beams.split(",")]:
            for conc in [int(c) for c in args.concurrency.split(",")]:
                payload: dict[str, Any] = {"query": "cordless drill", "history": ["item002", "item004"],
                                           "beam_width": beam}

                def one(i: int, payload: dict[str, Any] = payload) -> tuple[float, dict[str, Any]]:
                    t0 = time.perf_counter()
                    body = client.post(f"{url}/retrieve", json={**payload, "query": f"drill {i % 7}"}).json()
                    return time.perf_counter() - t0, body

                for i in range(5):
                    one(i)  # warm
                t0 = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(conc) as pool:
                    out = list(pool.map(one, range(args.requests)))
                wall = time.perf_counter() - t0
                lat = sorted(x[0] for x in out)
                rows.append({"beam": beam, "concurrency": conc, "p50_ms": 1000 * statistics.median(lat),
                             "p90_ms": 1000 * lat[int(0.9 * (len(lat) - 1))],
                             "server_total_ms": 1000 * statistics.median(b["timings"]["total_seconds"] for _, b in out),
                             "engine_ms": 1000 * statistics.median(b["timings"]["engine_seconds"] for _, b in out),
                             "rps": args.requests / wall})
        metrics = client.get(f"{url}/metrics").text
    batches = [line for line in metrics.splitlines() if line.startswith("radgr_batch_requests_")]
    count = float(next(x for x in batches if x.startswith("radgr_batch_requests_count")).split()[-1])
    total = float(next(x for x in batches if x.startswith("radgr_batch_requests_sum")).split()[-1])
    print(f"{'beam':>5} {'conc':>5} {'p50 ms':>8} {'p90 ms':>8} {'srv ms':>8} {'engine ms':>10} {'req/s':>7}")
    for r in rows:
        print(f"{r['beam']:>5} {r['concurrency']:>5} {r['p50_ms']:>8.1f} {r['p90_ms']:>8.1f} "
              f"{r['server_total_ms']:>8.1f} {r['engine_ms']:>10.1f} {r['rps']:>7.1f}")
    print(f"mean batch size over the run: {total / count:.2f} requests")
    out_path = REPO / "runs" / "bench_server.json"
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps({"rows": rows, "mean_batch_requests": total / count}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
