"""OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_sid_index.py [--sizes 100000,1000000] [--codebooks 256,256,256]
[--build memory|streamed] [--storage float32|float16] [--out runs/bench_sid_index] [--json PATH] [--embed-titles N]

Builds SID indexes for synthetic 384-d embeddings and prints, per catalog size: build time (k-means training,
assignment, grouping + item trie; wall and CPU seconds, with the load average, since a loaded machine stretches wall
time), peak memory of a fresh process doing only that build (max RSS, which counts the
memory-mapped embeddings' pages, and peak anonymous memory, which does not), index size on disk per SID (and per
file), load time, and lookup throughput: prefix-table gathers (children of random depth-1 / depth-2 prefixes turned
into boolean masks, vectorised, no per-prefix Python), codes → SID row checks and SID-string → items lookups.
``--build memory`` (default) memory-maps the embeddings and calls ``build_index``; ``--build streamed`` calls
``build_index_streamed`` (the larger-than-memory path: positioned reads in chunks, nothing memory-mapped).
Writes ``results.json`` and ``results.png`` under ``--out`` (and the same rows to ``--json PATH``).
``--embed-titles N`` instead times MiniLM on N synthetic product titles in fp32 and bf16 and how many SIDs agree.

Embeddings (see :func:`make_embeddings`) are a clustered Gaussian mixture of low effective rank, like text
embeddings, written once per size to a ``.npy`` file by a separate process and memory-mapped by the build. Each
size is built in its own subprocess, so peak memory is per build.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DIM = 384


def make_embeddings(path: Path, n: int, seed: int = 0, chunk: int = 100_000, latent: int = 48,
                    storage: str = "float32") -> None:
    """Unit-norm 384-d points like text embeddings (low effective rank, clustered): a Zipf-weighted mixture of
    2,048 Gaussians in a 48-d latent space, mapped to 384-d by a fixed random matrix, plus small isotropic noise.
    Written to ``path`` in chunks, as ``storage`` (float32, or float16: half the bytes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2048, latent)).astype(np.float32)
    spread = rng.uniform(0.3, 0.7, size=(2048, 1)).astype(np.float32)
    proj = (rng.normal(size=(latent, DIM)) / np.sqrt(latent)).astype(np.float32)
    p = 1.0 / np.arange(1, 2049) ** 0.7
    p /= p.sum()
    code = "<f2" if storage == "float16" else "<f4"
    header = np.lib.format.open_memmap(path, mode="w+", dtype=code, shape=(n, DIM))  # header (sparse file)
    offset = int(header.offset)
    del header
    with open(path, "r+b") as f:  # plain writes: dirty pages of a memory map would count in this process' RSS
        f.seek(offset)
        for lo in range(0, n, chunk):
            m = min(chunk, n - lo)
            c = rng.choice(2048, size=m, p=p)
            z = centres[c] + spread[c] * rng.normal(size=(m, latent)).astype(np.float32)
            x = z @ proj + 0.05 * rng.normal(size=(m, DIM)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            f.write(np.ascontiguousarray(x, dtype=code).tobytes())


class AnonPeak:
    """Samples this process' anonymous resident memory (``RssAnon``: heap, not the memory-mapped embeddings file)
    every 20 ms in a thread; :meth:`stop` returns the peak in MiB."""

    def __init__(self) -> None:
        import threading

        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _anon_mib() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._anon_mib())
            self._stop.wait(0.02)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._anon_mib())


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def child_gathers(indptr: np.ndarray, codes: np.ndarray, nodes: np.ndarray, width: int) -> np.ndarray:
    """Boolean mask ``[len(nodes), width]`` of the children of trie nodes ``nodes`` (CSR gather, vectorised)."""
    lo, hi = indptr[nodes], indptr[nodes + 1]
    counts = hi - lo
    rows = np.repeat(np.arange(nodes.shape[0]), counts)
    offs = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    mask = np.zeros((nodes.shape[0], width), dtype=bool)
    mask[rows, codes[np.repeat(lo, counts) + offs]] = True
    return mask


def child_gathers_reference(indptr: np.ndarray, codes: np.ndarray, nodes: np.ndarray, width: int) -> np.ndarray:
    mask = np.zeros((nodes.shape[0], width), dtype=bool)
    for r, node in enumerate(nodes.tolist()):
        mask[r, codes[indptr[node] : indptr[node + 1]]] = True
    return mask


def emb_file(out: Path, n: int, storage: str) -> Path:
    return out / (f"emb_{n}.npy" if storage == "float32" else f"emb_{n}_{storage}.npy")


def run_one(n: int, codebooks: tuple[int, int, int], out: Path, build: str = "memory",
            storage: str = "float32") -> dict[str, Any]:
    """Build one index (in this process) and measure it; returns the result row."""
    from sid_index.build import IndexConfig, build_index, index_stats
    from sid_index.catalog import Catalog
    from sid_index.embeddings import read_embeddings
    from sid_index.index import SidIndex
    from sid_index.rqkmeans import RQKMeansConfig
    from sid_index.stream_build import build_index_streamed

    emb_path = emb_file(out, n, storage)  # made by the parent in another process: its memory is not counted here
    sampler = AnonPeak()
    sampler.start()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ids = [f"item{i}" for i in range(n)]
    pop = np.random.default_rng(1).pareto(1.5, size=n)
    cfg = IndexConfig(RQKMeansConfig(codebook_sizes=codebooks, seed=0))
    t0, c0 = time.perf_counter(), time.process_time()
    if build == "streamed":
        index = build_index_streamed(emb_path, ids, pop, None, cfg, None, show_progress=False)
    else:
        cat = Catalog(item_ids=ids, titles=ids, brands=[""] * n, categories=[""] * n, popularity=pop)
        t0, c0 = time.perf_counter(), time.process_time()
        index = build_index(cat, read_embeddings(emb_path, ids, mmap=True), cfg)
    t_build, cpu_build = time.perf_counter() - t0, time.process_time() - c0
    idx_dir = out / f"index_{n}"
    t0 = time.perf_counter()
    index.save(idx_dir)
    t_save = time.perf_counter() - t0
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_anon_mib = sampler.stop()
    t0 = time.perf_counter()
    loaded = SidIndex.load(idx_dir)
    t_load = time.perf_counter() - t0
    stats = index_stats(loaded)
    disk = _dir_bytes(idx_dir)
    by_file = {p.name: p.stat().st_size for p in sorted(idx_dir.iterdir()) if p.is_file()}

    # prefix-table gathers: children of random depth-1 nodes and random depth-2 nodes, 4096 prefixes per call
    t = loaded.tables
    rng = np.random.default_rng(2)
    batch, reps = 4096, 50
    res_lookup = {}
    for name, indptr, codes, width in (("depth1", t.l1_indptr, t.l1_codes, codebooks[1]),
                                       ("depth2", t.l2_indptr, t.l2_codes, codebooks[2])):
        nodes = rng.integers(0, indptr.shape[0] - 1, size=(reps, batch))
        assert np.array_equal(child_gathers(indptr, codes, nodes[0], width),
                              child_gathers_reference(indptr, codes, nodes[0], width))
        t0 = time.perf_counter()
        for r in range(reps):
            child_gathers(indptr, codes, nodes[r], width)
        res_lookup[f"prefix_{name}_per_s"] = batch * reps / (time.perf_counter() - t0)
        res_lookup[f"prefix_{name}_mean_children"] = float(np.diff(indptr).mean())
    # vectorised SID validity check (codes -> SID row) and marisa SID string -> items
    probe = loaded.sid_codes[rng.integers(0, loaded.num_sids, size=100_000)]
    t0 = time.perf_counter()
    loaded.sid_rows_of_codes(probe)
    res_lookup["codes_to_sid_row_per_s"] = probe.shape[0] / (time.perf_counter() - t0)
    strings = [loaded.sid_str(int(r)) for r in rng.integers(0, loaded.num_sids, size=20_000)]
    t0 = time.perf_counter()
    for s in strings:
        loaded.items_of_sid(s)
    res_lookup["sid_string_to_items_per_s"] = len(strings) / (time.perf_counter() - t0)
    return {
        "items": n, "codebook_sizes": list(codebooks), "unique_sids": stats["unique_sids"],
        "collision_rate": stats["collision_rate"], "largest_group": stats["largest_group"],
        "utilization": [lv["utilization"] for lv in stats["levels"]],
        "build": build, "storage": storage, "build_s": t_build, "build_cpu_s": cpu_build, "save_s": t_save,
        "load_s": t_load,
        "loadavg_1min_at_end": os.getloadavg()[0],
        "peak_rss_mib": peak_rss_mib, "peak_anon_mib": peak_anon_mib, "rss_before_build_mib": rss_before,
        "embeddings_file_mib": emb_path.stat().st_size / 2**20,
        "disk_bytes": disk, "disk_bytes_per_sid": disk / stats["unique_sids"],
        "disk_bytes_per_sid_by_file": {k: v / stats["unique_sids"] for k, v in by_file.items()},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), **res_lookup,
    }


def embed_speed(n: int, codebooks: tuple[int, int, int]) -> dict[str, Any]:
    """MiniLM on ``n`` synthetic product titles in fp32 and bf16 (seconds per 1,000 titles, after a warm-up batch),
    the cosine between the two, the share of items whose SID is the same under codebooks trained on the fp32
    vectors, and the unique SIDs of an index built from each (codebooks capped at n / 8 per level)."""
    from sid_index.build import IndexConfig, build_index
    from sid_index.catalog import Catalog
    from sid_index.embeddings import bf16_supported, encode_texts
    from sid_index.rqkmeans import RQKMeansConfig, assign_codes, train_codebooks

    rng = np.random.default_rng(3)
    words = ["cordless", "drill", "steel", "hammer", "blue", "pack", "inch", "set", "LED", "lamp", "cable", "USB",
             "glove", "nitrile", "large", "filament", "PLA", "black", "kit", "tool", "saw", "blade", "brass", "hose"]
    titles = [" ".join(rng.choice(words, size=int(rng.integers(4, 12)))) + f" {i % 97}" for i in range(n)]
    res: dict[str, Any] = {"titles": n, "bf16_supported": bf16_supported()}
    embs = {}
    for dtype in ("float32", "bfloat16"):
        encode_texts(titles[:64], dtype=dtype, show_progress=False)  # load + warm-up
        t0 = time.perf_counter()
        embs[dtype] = encode_texts(titles, dtype=dtype, show_progress=False)
        res[f"{dtype}_s_per_1000"] = (time.perf_counter() - t0) / n * 1000
    res["speedup_bf16"] = res["float32_s_per_1000"] / res["bfloat16_s_per_1000"]
    res["cosine_min"] = float((embs["float32"] * embs["bfloat16"]).sum(1).min())
    cb = tuple(min(k, max(2, n // 8)) for k in codebooks)
    rq = RQKMeansConfig(codebook_sizes=(cb[0], cb[1], cb[2]), seed=0)
    res["codebooks"] = list(cb)
    # SID agreement under the same (fp32-trained) codebooks: what bf16's rounding alone moves
    books = train_codebooks(embs["float32"], rq)
    same = np.all(assign_codes(embs["float32"], books) == assign_codes(embs["bfloat16"], books), axis=1)
    res["same_sid_share_fp32_codebooks"] = float(same.mean())
    # and each precision indexed on its own: k-means labels differ, so compare the index quality, not the labels
    ids = [str(i) for i in range(n)]
    cat = Catalog(ids, titles, [""] * n, [""] * n, np.ones(n))
    for d in ("float32", "bfloat16"):
        res[f"unique_sids_{d}"] = build_index(cat, embs[d], IndexConfig(rq)).num_sids
    res["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    return res


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    labels = [f"{r['items'] // 1000}k" for r in rows]
    w = 0.4
    xs = np.arange(len(rows))
    axes[0].bar(xs, [r["build_s"] for r in rows])
    axes[0].set_xticks(xs, labels)
    axes[0].set_title("build time (s)")
    axes[1].bar(xs - w / 2, [r["peak_rss_mib"] for r in rows], w, label="RSS incl. mapped embeddings")
    axes[1].bar(xs + w / 2, [r["peak_anon_mib"] for r in rows], w, label="anonymous (heap)")
    axes[1].set_xticks(xs, labels)
    axes[1].set_title("peak memory (MiB)")
    axes[1].legend(fontsize=8)
    axes[2].bar(xs - w / 2, [r["prefix_depth1_per_s"] / 1e6 for r in rows], w, label="depth-1 prefixes")
    axes[2].bar(xs + w / 2, [r["prefix_depth2_per_s"] / 1e6 for r in rows], w, label="depth-2 prefixes")
    axes[2].set_xticks(xs, labels)
    axes[2].set_title("child-mask gathers (M prefixes/s)")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"SID index, codebooks {rows[0]['codebook_sizes']}, OMP_NUM_THREADS={rows[0]['omp_num_threads']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--codebooks", default="256,256,256")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_sid_index")
    ap.add_argument("--build", choices=("memory", "streamed"), default="memory",
                    help="memory: memory-mapped embeddings, build_index; streamed: build_index_streamed")
    ap.add_argument("--storage", choices=("float32", "float16"), default="float32",
                    help="dtype of the embeddings file (float16: half the bytes to read)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result rows to this JSON file")
    ap.add_argument("--embed-titles", type=int, default=None,
                    help="time MiniLM fp32 vs bf16 on this many synthetic titles instead of building indexes")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gen", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.gen is not None:
        make_embeddings(args.out, args.gen, storage=args.storage)
        return
    from sid_index.index_files import check_codebook_sizes

    cb = check_codebook_sizes([int(x) for x in args.codebooks.split(",")])
    if args.gen is None:
        args.out.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        print(json.dumps(run_one(args.one, cb, args.out, args.build, args.storage)))
        return
    if args.embed_titles is not None:
        result = embed_speed(args.embed_titles, cb)
        (args.out / "embed.json").write_text(json.dumps(result, indent=2))
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        emb_path = emb_file(args.out, n, args.storage)
        if not emb_path.exists():
            tmp = args.out / f".emb_{n}.tmp.npy"
            subprocess.run([sys.executable, __file__, "--gen", str(n), "--out", str(tmp), "--storage", args.storage],
                           check=True)
            tmp.replace(emb_path)
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--codebooks", args.codebooks,
                               "--out", str(args.out), "--build", args.build, "--storage", args.storage], check=True,
                              capture_output=True, text=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['items']:>9,} items  {r['unique_sids']:>9,} SIDs  {r['build']} build {r['build_s']:7.1f} s "
              f"(CPU {r['build_cpu_s']:6.1f} s)  "
              f"peak RSS {r['peak_rss_mib']:6.0f} MiB (anon {r['peak_anon_mib']:5.0f})  "
              f"disk {r['disk_bytes_per_sid']:5.0f} B/SID  "
              f"load {r['load_s']:5.2f} s  depth-1 {r['prefix_depth1_per_s'] / 1e6:5.2f} M/s  "
              f"depth-2 {r['prefix_depth2_per_s'] / 1e6:5.2f} M/s  SID→items {r['sid_string_to_items_per_s']:,.0f}/s",
              flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "results.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
