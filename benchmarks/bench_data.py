"""Data pipeline throughput: simulated sessions per second and samples built per second, with peak memory.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py --sessions 1000000 [--out runs/bench_data]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py --sweep 0,0.5,1,2,3 [--out runs/bench_data]

Each phase runs in its own process so its peak RSS (``ru_maxrss``) is its own:
1. ``simulate``: the default simulator world (2,400 items), ``sessions / 8`` sessions per day × 8 days, written to
   ``sessions.parquet`` (streamed in chunks);
2. ``samples``: ``build_samples`` (split by day, hard search on, N = 3, batch 8192) on those sessions with a SID
   index made by ``SidIndex.from_codes`` (level 0 = category, levels 1-2 seeded random; no embedding model, so the
   number measures the sample builder, not the encoder).
Writes ``bench_data.json`` and ``bench_data.png`` into ``--out`` and prints a table.

``--sweep`` instead simulates the default config (12,000 sessions) at each position-bias value and writes
``position_bias.json`` / ``position_bias.png``: pseudo-negative rate and clicks per session against the knob.

``--partitioned 200000,1000000,10000000`` measures the sample builder on partitioned datasets larger than memory
would allow if it were not streamed: a base of ``--base`` simulated sessions (default 40,000) is tiled into
``day=DD/part-CCCCC.parquet`` files with fresh session ids (``<id>~<copy>``: new random negatives per copy) up to
each size; then one process (``build_samples`` over the directory, the same code a shard job runs) builds the
samples. Per size: seconds, sessions/s and peak RSS (its own process); a flat peak RSS across sizes is the claim
that memory is bounded by the batch, not the dataset. Writes ``partitioned.json`` and ``partitioned.png``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py --partitioned 200000,1000000 --out runs/bench_shards
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path
from typing import Any


def _simulate(out: str, sessions: int, q: Any) -> None:
    from training.data.sim_config import SimConfig
    from training.data.simulator import simulate_to_dir

    per_day = max(1, sessions // 8)
    cfg = SimConfig(sessions_per_day=per_day, days=8)
    t0 = time.perf_counter()
    stats = simulate_to_dir(cfg, out)
    wall = time.perf_counter() - t0
    q.put({"phase": "simulate", "rows": stats.sessions, "seconds": wall, "per_second": stats.sessions / wall,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "pseudo_negative_rate": stats.pseudo_negative_rate})


def _category_index(catalog: Path) -> Any:
    """Level 0 = the item's category, levels 1-2 seeded random (no embedding model: measures the builder only)."""
    import numpy as np

    from sid_index.catalog import read_catalog
    from sid_index.index import SidIndex

    cat = read_catalog(catalog)
    names = sorted(set(cat.categories))
    rng = np.random.default_rng(0)
    codes = np.stack([np.array([names.index(c) for c in cat.categories]), rng.integers(0, 32, cat.num_items),
                      rng.integers(0, 32, cat.num_items)], axis=1)
    return SidIndex.from_codes(cat.item_ids, codes, cat.popularity, cat.categories, (32, 32, 32))


def _samples(out: str, batch_size: int, q: Any) -> None:
    from training.data.samples import SampleConfig, build_samples

    d = Path(out)
    index = _category_index(d / "catalog.parquet")
    t0 = time.perf_counter()
    stats = build_samples(d / "sessions.parquet", index, d / "samples", SampleConfig(batch_size=batch_size))
    wall = time.perf_counter() - t0
    q.put({"phase": "samples", "rows": stats["sessions"], "seconds": wall, "per_second": stats["sessions"] / wall,
           "samples_written": stats["all"]["samples"],
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _tile(base: Path, dest: Path, sessions: int) -> int:
    """Write ``sessions`` rows as ``dest/day=DD/part-CCCCC.parquet``: copies of the base sessions, fresh ids."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(base / "sessions.parquet")
    days = sorted(set(table.column("day").to_pylist()))
    by_day = {d: table.filter(pc.equal(table.column("day"), d)) for d in days}
    written = 0
    copy = 0
    while written < sessions:
        for d in days:
            rows = by_day[d].slice(0, max(0, min(by_day[d].num_rows, (sessions - written))))
            if rows.num_rows == 0:
                break
            ids = pc.binary_join_element_wise(rows.column("session_id"), pa.scalar(f"{copy}"), "~")
            rows = rows.set_column(rows.schema.get_field_index("session_id"), "session_id", ids)
            (dest / f"day={d:02d}").mkdir(parents=True, exist_ok=True)
            pq.write_table(rows, dest / f"day={d:02d}" / f"part-{copy:05d}.parquet")
            written += rows.num_rows
        copy += 1
    return written


def _partitioned_samples(dataset: str, catalog: str, out: str, batch_size: int, q: Any) -> None:
    from training.data.samples import SampleConfig, build_samples

    index = _category_index(Path(catalog))
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    stats = build_samples(dataset, index, out, SampleConfig(batch_size=batch_size))
    wall = time.perf_counter() - t0
    q.put({"sessions": stats["sessions"], "samples_written": stats["all"]["samples"], "seconds": wall,
           "per_second": stats["sessions"] / wall, "rss_after_index_mib": start_rss,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def partitioned(sizes: list[int], base_sessions: int, batch_size: int, out: Path) -> None:
    """The sample builder on partitioned datasets of each size, one process each (module docstring)."""
    import shutil

    base = out / "base"
    if not (base / "sessions.parquet").is_file():
        _run(_simulate, str(base), base_sessions)
    rows = []
    for n in sizes:
        ds = out / f"sessions-{n}"
        shutil.rmtree(ds, ignore_errors=True)
        t0 = time.perf_counter()
        _tile(base, ds, n)
        tile_s = time.perf_counter() - t0
        dataset_mib = sum(f.stat().st_size for f in ds.rglob("*.parquet")) / 2**20
        r = _run(_partitioned_samples, str(ds), str(base / "catalog.parquet"), str(out / f"samples-{n}"),
                 batch_size)
        rows.append({"size": n, "dataset_mib": dataset_mib, "tile_seconds": tile_s, **r})
        print(f"{n:>11,} sessions ({dataset_mib:,.0f} MiB Parquet): {r['seconds']:,.0f} s, "
              f"{r['per_second']:,.0f} sessions/s, peak RSS {r['peak_rss_mib']:,.0f} MiB "
              f"(after the index {r['rss_after_index_mib']:,.0f} MiB)", flush=True)
        shutil.rmtree(ds)
        shutil.rmtree(out / f"samples-{n}")
        result = {"base_sessions": base_sessions, "batch_size": batch_size, "cpu_threads": 1,
                  "machine": platform.processor() or platform.machine(), "runs": rows}
        (out / "partitioned.json").write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    xs = [r["size"] for r in rows]
    axes[0].plot(xs, [r["per_second"] for r in rows], "o-")
    axes[0].set_xscale("log")
    axes[0].set_title("samples: sessions/s (one process)")
    axes[1].plot(xs, [r["peak_rss_mib"] for r in rows], "o-")
    axes[1].set_xscale("log")
    axes[1].set_title("peak RSS (MiB)")
    fig.tight_layout()
    fig.savefig(out / "partitioned.png", dpi=120)


def _run(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    result: dict[str, Any] = q.get()
    p.join()
    return result


def sweep(values: list[float], out: Path) -> None:
    """Pseudo-negative rate and clicks per session against the position-bias knob (default config otherwise)."""
    from training.data.sim_config import SimConfig
    from training.data.simulator import iter_simulated_sessions
    from training.data.world import generate_world

    world = generate_world(SimConfig())
    rows = []
    for v in values:
        stats: list[Any] = []
        for _ in iter_simulated_sessions(world, SimConfig(position_bias=v), stats_out=stats):
            pass
        rows.append({"position_bias": v, **stats[0].to_dict()})
        print(f"position_bias {v:4.1f}: pseudo-negative rate {stats[0].pseudo_negative_rate:.4f}, "
              f"clicks/session {stats[0].clicks_per_session:.3f}, orders/session {stats[0].orders_per_session:.3f}")
    (out / "position_bias.json").write_text(json.dumps(rows, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(values, [r["pseudo_negative_rate"] for r in rows], "o-", label="pseudo-negative rate")
    ax.plot(values, [r["clicks_per_session"] / 10 for r in rows], "s--", label="clicks per session / 10")
    ax.set_xlabel("position_bias (examination = (k+1)^-bias)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "position_bias.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_data"))
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--sweep", type=str, default="", help="Comma-separated position-bias values to sweep instead.")
    ap.add_argument("--partitioned", type=str, default="",
                    help="Comma-separated dataset sizes: the sample builder on partitioned datasets instead.")
    ap.add_argument("--base", type=int, default=40_000, help="Simulated sessions tiled into --partitioned datasets.")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.partitioned:
        partitioned([int(v) for v in args.partitioned.split(",")], args.base, args.batch_size, args.out)
        return
    if args.sweep:
        sweep([float(v) for v in args.sweep.split(",")], args.out)
        return
    rows = [_run(_simulate, str(args.out), args.sessions), _run(_samples, str(args.out), args.batch_size)]
    sessions_mib = (args.out / "sessions.parquet").stat().st_size / 2**20
    result = {"sessions": args.sessions, "sessions_parquet_mib": sessions_mib, "machine": platform.processor() or
              platform.machine(), "cpu_threads": 1, "phases": rows}
    (args.out / "bench_data.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'phase':<10} {'rows':>10} {'seconds':>9} {'rows/s':>10} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['phase']:<10} {r['rows']:>10,} {r['seconds']:>9.1f} {r['per_second']:>10,.0f} "
              f"{r['peak_rss_mib']:>13,.0f}")
    print(f"sessions.parquet: {sessions_mib:.1f} MiB; results in {args.out / 'bench_data.json'}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    names = [r["phase"] for r in rows]
    axes[0].bar(names, [r["per_second"] for r in rows], color=["tab:blue", "tab:orange"])
    axes[0].set_title(f"sessions/s ({args.sessions:,} sessions)")
    axes[1].bar(names, [r["peak_rss_mib"] for r in rows], color=["tab:blue", "tab:orange"])
    axes[1].set_title("peak RSS (MiB)")
    fig.tight_layout()
    fig.savefig(args.out / "bench_data.png", dpi=120)


if __name__ == "__main__":
    main()
