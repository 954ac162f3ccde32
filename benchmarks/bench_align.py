"""Training efficiency: packed, reference-free RAD-DPO vs pairwise DPO with its reference model.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_align.py [--sft RUN_DIR/final --samples DIR]
        [--steps 20 --batch-size 8 --repeats 3 --prompt-tokens 200 --out runs/bench_align]

Both methods run through the same training engine (``training.align.run_align``: HF Trainer, AdamW, the same
model, the same sessions, the same batch size in sessions), each run in a fresh subprocess so its peak memory
(``ru_maxrss``) is its own. Throughput = sessions trained / Trainer's ``train_runtime``; memory = peak RSS of the
process and the part above the RSS measured just before training starts (models loaded by the run count, as the
reference model is part of DPO's cost). Median over ``--repeats``; prints a table and the ratios, writes
``OUT/bench_align.json`` and ``OUT/bench_align.png``.

Without ``--sft/--samples`` it builds a synthetic world: the ``tiny`` model preset, 2 positives and 3 negatives
per session, prompts of about ``--prompt-tokens`` tokens (history SIDs), as in docs/alignment.md's benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = ("rad-dpo", "dpo")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_synthetic_world(root: Path, sessions: int, prompt_tokens: int, seed: int = 0) -> tuple[Path, Path]:
    """A tiny-preset 'SFT' checkpoint and ``samples/train.parquet`` with long prompts (history of SIDs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from decoding.prompt import PROMPT_VERSION, render_prompt
    from sid_index.tokens import sid_string
    from training.data.sample_format import Sample, samples_to_batch
    from training.model import build_model, save_model_dir
    from training.tokenizer import build_tokenizer

    sizes = (32, 16, 16)
    rng = random.Random(seed)
    words = ["drill", "tape", "glove", "cable", "lamp", "valve", "pipe", "screw", "blue", "steel", "large", "pro"]

    def codes() -> tuple[int, int, int]:
        return (rng.randrange(sizes[0]), rng.randrange(sizes[1]), rng.randrange(sizes[2]))

    texts = [" ".join(rng.choice(words) for _ in range(4)) for _ in range(500)]
    tok = build_tokenizer(texts, sizes, vocab_size=600)
    model = build_model("tiny", len(tok), seed=seed, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    sft = save_model_dir(model, tok, root / "sft" / "final", {"method": "sft", "codebook_sizes": list(sizes),
                                                              "model": {"preset": "tiny"}})
    history_len = max(0, (prompt_tokens - 20) // 3)
    samples = []
    for i in range(sessions):
        prompt = render_prompt(" ".join(rng.choice(words) for _ in range(3)), {"member": "basic"},
                               [sid_string(codes()) for _ in range(history_len)])
        pos = (codes(), codes())
        samples.append(Sample(session_id=f"s{i}", day=1, split="train", prompt=prompt, prompt_version=PROMPT_VERSION,
                              positive_items=("a", "b"), positive_codes=pos, top_index=0,
                              negative_items=("c", "d", "e"), negative_codes=(codes(), codes(), codes()),
                              negative_relevant=(False, False, False), relevant_items=(), relevant_grades=()))
    samples_dir = root / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_batches([samples_to_batch(samples)]), samples_dir / "train.parquet")
    return sft, samples_dir


def worker(method: str, sft: Path, samples: Path, steps: int, batch_size: int) -> dict[str, float]:
    """One training run in this process; returns its throughput and memory."""
    import torch

    from training.align import AlignConfig, run_align
    from training.train_config import TrainConfig
    from training.trainer import TRAIN_LOG_FILE

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        base = _rss_mb()
        cfg = AlignConfig(method=method, sft_dir=sft, samples_dir=samples, out_dir=Path(tmp) / "run",
                          train=TrainConfig(max_steps=steps, batch_size=batch_size, lr=1e-4, save_steps=10 ** 6,
                                            logging_steps=10 ** 6, warmup_ratio=0.0, group_by_length=False))
        t0 = time.perf_counter()
        run_align(cfg)
        wall = time.perf_counter() - t0
        log = json.loads((Path(tmp) / "run" / TRAIN_LOG_FILE).read_text())
    runtime = next(r["train_runtime"] for r in log if "train_runtime" in r)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"sessions_per_s": steps * batch_size / runtime, "train_runtime_s": runtime, "wall_s": wall,
            "peak_rss_mb": peak, "peak_above_start_mb": peak - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", type=Path)
    ap.add_argument("--samples", type=Path)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_align")
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.sft, args.samples, args.steps, args.batch_size)))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.sft is None or args.samples is None:
            sft, samples = build_synthetic_world(Path(tmp), sessions=args.steps * args.batch_size,
                                                 prompt_tokens=args.prompt_tokens)
            world = f"synthetic: tiny preset, 2 positives + 3 negatives, ~{args.prompt_tokens}-token prompts"
        else:
            sft, samples, world = args.sft, args.samples, f"{args.sft} on {args.samples}"
        results: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
        for rep in range(args.repeats):
            for method in METHODS:  # interleaved, so drifting machine load hits both alike
                cmd = [sys.executable, __file__, "--worker", method, "--sft", str(sft), "--samples", str(samples),
                       "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results[method].append(res)
                print(f"repeat {rep + 1}/{args.repeats} {method}: {res['sessions_per_s']:.2f} sessions/s, "
                      f"peak {res['peak_rss_mb']:.0f} MB", flush=True)

    med = {m: {k: statistics.median(r[k] for r in results[m]) for k in results[m][0]} for m in METHODS}
    ratios = {"throughput": med["rad-dpo"]["sessions_per_s"] / med["dpo"]["sessions_per_s"],
              "peak_rss": med["rad-dpo"]["peak_rss_mb"] / med["dpo"]["peak_rss_mb"],
              "peak_above_start": med["rad-dpo"]["peak_above_start_mb"] / med["dpo"]["peak_above_start_mb"]}
    print(f"\nworld: {world}; {args.steps} steps × {args.batch_size} sessions, median of {args.repeats}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("| method | sessions/s | peak RSS (MB) | peak above start (MB) |")
    print("|---|---|---|---|")
    names = {"rad-dpo": "RAD-DPO (packed, no reference)", "dpo": "DPO (pairwise + reference)"}
    for m in METHODS:
        print(f"| {names[m]} | {med[m]['sessions_per_s']:.2f} | {med[m]['peak_rss_mb']:.0f} | "
              f"{med[m]['peak_above_start_mb']:.0f} |")
    print(f"| ratio RAD-DPO / DPO | {ratios['throughput']:.2f}× | {ratios['peak_rss']:.2f}× | "
          f"{ratios['peak_above_start']:.2f}× |")
    doc = {"world": world, "steps": args.steps, "batch_size": args.batch_size, "repeats": args.repeats,
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "runs": results, "median": med, "ratios": ratios}
    (args.out / "bench_align.json").write_text(json.dumps(doc, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    labels = ["RAD-DPO\npacked", "DPO\npairwise+ref"]
    axes[0].bar(labels, [med[m]["sessions_per_s"] for m in METHODS], color=["tab:green", "tab:gray"])
    axes[0].set_title(f"throughput (sessions/s), ×{ratios['throughput']:.1f}")
    axes[1].bar(labels, [med[m]["peak_above_start_mb"] for m in METHODS], color=["tab:green", "tab:gray"])
    axes[1].set_title(f"peak memory above start (MB), ×{ratios['peak_above_start']:.2f}")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "bench_align.png")
    print(f"wrote {args.out / 'bench_align.json'} and {args.out / 'bench_align.png'}")


if __name__ == "__main__":
    main()
