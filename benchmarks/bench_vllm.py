"""The vLLM engine vs the PyTorch engine on one bundle and the same requests: in-process and over HTTP.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_vllm.py --bundle runs/demo/bundle [--requests 24]

Parts (each prints a table; everything goes to ``runs/bench_vllm.json`` and ``runs/bench_vllm.png``):

1. **In-process engines** at beam 16 and 128: median latency of one request, and requests/s for a batch of 8,
   for the PyTorch engine and the vLLM engine with both scorings (trie logits processor, ``logprob_token_ids``).
2. **Where a vLLM retrieval's time goes** (cProfile of single beam-128 retrievals, per scoring): vLLM's request
   intake (``process_inputs`` / ``add_request``), scheduling, the model forward, the sampler, output processing,
   radgr's trie mask (the logits processor), radgr's own Python between steps; host microseconds per one-token
   request and per retrieval (everything but the model forward), against the GPU budget of ~85 µs per request.
3. **Through the HTTP server** (``radgr serve --engine torch|vllm`` in a subprocess on 127.0.0.1): median latency
   and requests/s at 1, 4 and 16 concurrent clients, beam 16 and 128.

Requests: the bundle's own tokenizer renders prompts from random catalog histories (0–20 items) and short queries,
so prompt lengths look like serving traffic. CPU numbers say how the two engines compare here, not GPU serving.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["cordless drill", "tape", "glue", "saw blade", "safety gloves", "led light", "screws", "battery"]


def _requests(bundle: Any, n: int, beam: int, seed: int) -> list[Any]:
    from decoding.engine import RetrievalRequest
    from decoding.request_prompt import encode_request_prompt

    rng = np.random.default_rng(seed)
    ids = bundle.index.item_ids
    out = []
    for i in range(n):
        hist = [ids[int(j)] for j in rng.integers(0, len(ids), size=int(rng.integers(0, 21)))]
        enc = encode_request_prompt(bundle.tokenizer, QUERIES[i % len(QUERIES)], {}, hist, bundle.index,
                                    bundle.categorizer, bundle.prompt_config)
        out.append(RetrievalRequest(enc.token_ids, beam_width=beam, top_k_items=100))
    return out


# profile buckets: (label, substrings of "file:function")
BUCKETS = [
    ("vllm intake", ("llm.py:_validate_and_add_requests", "core_client.py:add_request")),
    ("vllm schedule", ("scheduler.py:schedule",)),
    ("model forward", ("model_runner.py:_model_forward", "qwen3.py:forward")),
    ("sampler", ("sampler.py:forward",)),
    ("radgr mask", ("sid_trie.py:masked_log_softmax",)),
    ("vllm output", ("output_processor.py:process_outputs", "scheduler.py:update_from_output")),
]


def _profile(engine: Any, reqs: Sequence[Any]) -> dict[str, Any]:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    res = [engine.retrieve_batch([r]) for r in reqs]
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]  # typeshed omits Stats.stats
    share: dict[str, float] = {}
    for label, keys in BUCKETS:
        best = 0.0
        for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.items():
            name = f"{os.path.basename(file)}:{func}"
            if any(k in name for k in keys):
                best = max(best, ct)  # the outermost matching frame's cumulative time
        share[label] = best
    n_req = sum(r[0].timings["requests"] for r in res)
    radgr_host = sum(r[0].timings["host"] + r[0].timings["finalize"] for r in res)
    host = wall - share["model forward"]
    return {"wall_s": wall, "retrievals": len(reqs), "engine_requests": n_req,
            "share": {k: v / wall for k, v in share.items()}, "radgr_python_share": radgr_host / wall,
            "host_us_per_request": 1e6 * host / n_req, "host_ms_per_retrieval": 1e3 * host / len(reqs),
            "profiled": True}


def _engines_part(bundle_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from decoding.bundle import INDEX_DIR, load_bundle
    from decoding.torch_engine import TorchBeamEngine
    from decoding.vllm_config import Driver, Scoring, VllmEngineConfig
    from decoding.vllm_engine import VllmBeamEngine

    bundle = load_bundle(bundle_dir)
    rows: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    def vllm(scoring: Scoring, driver: Driver) -> Callable[[], Any]:
        cfg = VllmEngineConfig(scoring=scoring, driver=driver)
        return lambda: VllmBeamEngine(bundle.model_dir, bundle.vocab, bundle.index, bundle_dir / INDEX_DIR, cfg)

    drivers: tuple[Driver, ...] = ("llm", "core")
    scorings: tuple[Scoring, ...] = ("processor", "token_ids")
    engines: list[tuple[str, Callable[[], Any]]] = [
        ("torch", lambda: TorchBeamEngine(bundle.model, bundle.vocab, bundle.index)),
        *((f"vllm/{scoring}/{driver}", vllm(scoring, driver))
          for driver in drivers for scoring in scorings),
    ]
    for name, make in engines:
        t0 = time.perf_counter()
        engine = make()
        start_s = time.perf_counter() - t0
        for beam in (16, 128):
            reqs = _requests(bundle, args.requests, beam, seed=beam)
            engine.retrieve_batch(reqs)  # warm: every request once (first-touch of the KV cache, caches)
            single = []
            for r in reqs:
                t0 = time.perf_counter()
                engine.retrieve_batch([r])
                single.append(time.perf_counter() - t0)
            batch8 = []
            for _ in range(3):
                t0 = time.perf_counter()
                engine.retrieve_batch(reqs[:8])
                batch8.append(time.perf_counter() - t0)
            timings = engine.retrieve_batch([reqs[0]])[0].timings
            rows.append({"engine": name, "beam": beam, "start_s": start_s,
                         "p50_ms": 1e3 * statistics.median(single), "batch8_rps": 8 / statistics.median(batch8),
                         "timings": timings})
            print(f"{name:16s} beam {beam:3d}: p50 {rows[-1]['p50_ms']:8.1f} ms   batch of 8: "
                  f"{rows[-1]['batch8_rps']:6.2f} req/s   (start {start_s:.1f} s)", flush=True)
        if name.startswith("vllm"):
            profiles[name] = _profile(engine, _requests(bundle, 6, 128, seed=7))
            p = profiles[name]
            shares = "  ".join(f"{k} {100 * v:4.1f}%" for k, v in p["share"].items())
            print(f"  profile beam 128: {shares}  radgr python {100 * p['radgr_python_share']:4.1f}%", flush=True)
            print(f"  host {p['host_us_per_request']:.0f} µs per one-token request, "
                  f"{p['host_ms_per_retrieval']:.1f} ms per retrieval ({p['engine_requests'] / p['retrievals']:.0f} "
                  "requests per retrieval); GPU budget at 45 retrievals/s: ~85 µs per request", flush=True)
            engine.close()
    return {"engines": rows, "profiles": profiles}


def _http_part(bundle_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    import httpx

    from decoding.bundle import load_bundle

    ids = load_bundle(bundle_dir, with_model=False).index.item_ids
    rng = np.random.default_rng(0)
    payloads = [{"query": QUERIES[i % len(QUERIES)], "top_k": 20,
                 "history": [ids[int(j)] for j in rng.integers(0, len(ids), size=int(rng.integers(0, 21)))]}
                for i in range(args.requests)]
    rows = []
    for engine in ("torch", "vllm"):
        port = 8700 + (engine == "vllm")
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "RADGR_ENGINE": engine}
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--bundle", str(bundle_dir), "--port",
                                 str(port), "--log-level", "warning", "--engine", engine, "--max-batch-requests",
                                 "16", "--max-wait-ms", "2"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            with httpx.Client(timeout=120) as client:
                for beam in (16, 128):
                    for conc in (1, 4, 16):
                        def one(p: dict[str, Any], beam: int = beam, url: str = url) -> float:
                            t0 = time.perf_counter()
                            r = client.post(f"{url}/retrieve", json={**p, "beam_width": beam})
                            r.raise_for_status()
                            return time.perf_counter() - t0

                        one(payloads[0])
                        t0 = time.perf_counter()
                        with concurrent.futures.ThreadPoolExecutor(conc) as pool:
                            lat = list(pool.map(one, payloads))
                        wall = time.perf_counter() - t0
                        rows.append({"engine": engine, "beam": beam, "concurrency": conc,
                                     "p50_ms": 1e3 * statistics.median(lat), "rps": len(lat) / wall})
                        print(f"HTTP {engine:5s} beam {beam:3d} × {conc:2d} clients: p50 {rows[-1]['p50_ms']:8.1f} ms"
                              f"   {rows[-1]['rps']:6.2f} req/s", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return rows


def _plot(http: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sid_index.atomic_files import save_figure_atomic

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for engine in ("torch", "vllm"):
        for beam, style in ((16, "--"), (128, "-")):
            pts = [r for r in http if r["engine"] == engine and r["beam"] == beam]
            conc = [r["concurrency"] for r in pts]
            axes[0].plot(conc, [r["p50_ms"] for r in pts], style, marker="o", label=f"{engine} beam {beam}")
            axes[1].plot(conc, [r["rps"] for r in pts], style, marker="o", label=f"{engine} beam {beam}")
    axes[0].set(xlabel="concurrent clients", ylabel="median latency (ms)", xscale="log", yscale="log")
    axes[1].set(xlabel="concurrent clients", ylabel="requests/s", xscale="log")
    axes[0].legend()
    fig.suptitle("radgr serve on 2 CPU cores: PyTorch vs vLLM engine (same bundle, same requests)")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--bundle", type=Path, default=REPO / "runs/demo/bundle")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "runs/bench_vllm.json")
    args = ap.parse_args()
    from sid_index.atomic_files import write_json_atomic

    result: dict[str, Any] = {"bundle": str(args.bundle), "requests": args.requests}
    result.update(_engines_part(args.bundle, args))
    if not args.skip_http:
        result["http"] = _http_part(args.bundle, args)
        _plot(result["http"], args.out.with_suffix(".png"))
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
