"""Where a served request's time goes: the engine's share of it, and what the HTTP layer, JSON, prompt building
and response building cost around it, per engine, at beam 128.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_server_share.py --bundle runs/demo3/bundle \
        [--engines torch,vllm --requests 100 --beam 128 --top-k 100 --out runs/server-share]

For each engine: ``radgr serve --bundle B --engine E --max-wait-ms 0`` in its own process (no batching wait: one
client, one request at a time), warm-up, then ``--requests`` sequential ``POST /retrieve`` at ``--beam`` from a
request mix built from the bundle (queries from its categorizer, histories of varied length, as ``radgr
loadtest`` builds them). Per request, from the client's clock and the server's ``/metrics`` (sums before and after):

- ``client``: the client's round trip on one kept-alive connection (send → last byte of the body read; the
  client's own JSON parsing comes after the clock stops);
- ``engine``: ``radgr_engine_seconds{phase="total"}`` (the engine's batch, which holds this one request);
- ``queue``: ``radgr_queue_wait_seconds`` (admission → batch start: the dispatcher's hand-over);
- ``prompt`` / ``response``: ``radgr_host_seconds{phase}`` (prompt building + tokenizing; response model);
- ``server other``: ``radgr_request_duration_seconds{outcome="ok"}`` minus the above (routing, body parsing and
  validation, JSON serialisation, middleware);
- ``transport``: ``client`` minus the server's duration (HTTP on 127.0.0.1: uvicorn's parsing and writing, the
  socket, the client's ``http.client``).

Prints a table per engine and the non-engine share (1 − engine / client), writes ``OUT/server_share.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SUMS = {  # part → (metric sample name, labels)
    "engine": ("radgr_engine_seconds_sum", {"phase": "total"}),
    "queue": ("radgr_queue_wait_seconds_sum", {}),
    "prompt": ("radgr_host_seconds_sum", {"phase": "prompt"}),
    "response": ("radgr_host_seconds_sum", {"phase": "response"}),
    "server": ("radgr_request_duration_seconds_sum", {"outcome": "ok"}),
    "count": ("radgr_request_duration_seconds_count", {"outcome": "ok"}),
}


def _sums(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out = dict.fromkeys(SUMS, 0.0)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            for part, (name, labels) in SUMS.items():
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    out[part] += float(s.value)
    return out


def _post(conn: http.client.HTTPConnection, body: dict[str, Any]) -> float:
    """One request on a kept-alive connection (as Locust and production clients send them); the clock stops when
    the body's last byte is read, before the client parses it (the client's parsing is not the server's cost)."""
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    conn.request("POST", "/retrieve", body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    elapsed = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status} for {body}: {raw[:300]!r}")
    if not json.loads(raw).get("sids"):
        raise RuntimeError(f"no SIDs in the answer to {body}")
    return elapsed


def _bodies(bundle: Path, n: int, beam: int, top_k: int, seed: int) -> list[dict[str, Any]]:
    from decoding.hard_search import QueryCategorizer
    from loadtest.mix import synthetic_queries, synthetic_requests
    from sid_index.index import SidIndex

    rng = random.Random(seed)
    categorizer = QueryCategorizer.load(bundle / "query_categorizer.json")
    item_ids = SidIndex.load(bundle / "index", verify_checksums=False).item_ids
    requests = synthetic_requests(synthetic_queries(categorizer.word_counts, n, rng), item_ids, n, rng)
    return [{"query": r.query, "history": list(r.history), "profile": dict(r.profile), "beam_width": beam,
             "top_k": top_k} for r in requests]


def measure(bundle: Path, engine: str, bodies: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """One engine: serve, warm up, send ``bodies`` one at a time; the mean time per part (see the module doc)."""
    from loadtest.runner import ServerLaunch, free_port, start_server, stop_server, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(ServerLaunch(bundle, serve_options=("--engine", engine, "--max-wait-ms", "0")), port,
                        out / f"server-{engine}.log")
    try:
        problem = wait_ready(url, proc, 600.0)
        if problem is not None:
            raise RuntimeError(problem)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for body in bodies[:5]:
            _post(conn, body)
        before = _sums(url)
        client = [_post(conn, body) for body in bodies]
        after = _sums(url)
        conn.close()
    finally:
        stop_server(proc)
    n = after["count"] - before["count"]
    if n != len(bodies):
        raise RuntimeError(f"the server counted {n} ok requests, {len(bodies)} were sent")
    mean = {part: (after[part] - before[part]) / n for part in SUMS if part != "count"}
    parts = {
        "client_ms": 1e3 * sum(client) / n,
        "engine_ms": 1e3 * mean["engine"],
        "queue_ms": 1e3 * mean["queue"],
        "prompt_ms": 1e3 * mean["prompt"],
        "response_ms": 1e3 * mean["response"],
        "server_other_ms": 1e3 * (mean["server"] - mean["engine"] - mean["queue"] - mean["prompt"]
                                  - mean["response"]),
        "transport_ms": 1e3 * (sum(client) / n - mean["server"]),
    }
    parts["non_engine_share"] = 1.0 - parts["engine_ms"] / parts["client_ms"]
    return {"engine": engine, "requests": n, **parts}


def main() -> int:
    ap = argparse.ArgumentParser(description="The engine's share of a served request's time, per engine.")
    ap.add_argument("--bundle", type=Path, default=None, help="Bundle (default: a tiny test bundle built here).")
    ap.add_argument("--engines", default="torch,vllm", help="Comma-separated engines (vllm skipped where absent).")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--beam", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "server-share")
    args = ap.parse_args()
    if args.requests < 1:
        ap.error(f"--requests must be >= 1, given {args.requests}")
    from decoding.engine_factory import vllm_installed
    from sid_index.atomic_files import write_json_atomic

    bundle = args.bundle
    if bundle is None:
        sys.path.insert(0, str(REPO / "tests"))
        from test_bundle_fixtures import make_tiny_bundle

        bundle = make_tiny_bundle(Path(tempfile.mkdtemp()), hidden=128, n_items=400, codebook_sizes=(8, 8, 8))
    args.out.mkdir(parents=True, exist_ok=True)
    bodies = _bodies(bundle, args.requests, args.beam, args.top_k, args.seed)
    rows = []
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if engine == "vllm" and not vllm_installed():
            print("vllm: not installed, skipped")
            continue
        rows.append(measure(bundle, engine, bodies, args.out))
    result = {"bundle": str(bundle), "beam": args.beam, "top_k": args.top_k, "engines": rows}
    write_json_atomic(args.out / "server_share.json", result)
    cols = ["client_ms", "engine_ms", "queue_ms", "prompt_ms", "response_ms", "server_other_ms", "transport_ms"]
    print(f"beam {args.beam}, top_k {args.top_k}, {args.requests} sequential requests, bundle {bundle}")
    print(f"{'engine':8s}" + "".join(f"{c[:-3]:>14s}" for c in cols) + f"{'non-engine':>12s}")
    for r in rows:
        print(f"{r['engine']:8s}" + "".join(f"{r[c]:>11.2f} ms" for c in cols) + f"{r['non_engine_share']:>11.1%}")
    print(f"wrote {args.out / 'server_share.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
