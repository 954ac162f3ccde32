"""Training efficiency: packed, reference-free RAD-DPO vs pairwise DPO with its reference model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_align.py [--sft RUN_DIR/final --samples DIR]
        [--steps 20 --batch-size 8 --repeats 3 --prompt-tokens 200 --out runs/bench_align]
        [--quick] [--json PATH|-] [--profile] [--profile-batches 6]

Both methods run through the same training engine (``training.align.run_align``: HF Trainer, AdamW, the same
model, the same sessions, the same batch size in sessions), each run in a fresh subprocess so its peak memory
(``ru_maxrss``) is its own. Two throughputs per run:
- ``sessions_per_s`` (the headline): steady-state training, ``batch_size`` / the median wall time between
  consecutive optimizer steps from step 3 on (a step: fetch and collate the batch, forward, loss, backward, clip,
  AdamW, logging). It leaves out what a run pays once: the first steps' warm-up and the checkpoint, loss plot and
  ``gc.collect`` Trainer does at the end of training. Runs shorter than 4 steps fall back to the end-to-end figure
  (``throughput_basis`` in the JSON says which).
- ``sessions_per_s_end_to_end``: sessions trained / Trainer's ``train_runtime`` (one-off costs included; with few
  steps they dominate the packed run, which is why the earlier figures in docs/alignment.md were lower).
Memory: peak RSS of the process and the part above the RSS measured just before training starts, after torch,
transformers' Trainer, matplotlib and radgr's training modules are imported (so the common import footprint is in
neither method's "above start"; models loaded by the run count, as the reference model is part of DPO's cost).
Median over ``--repeats``, methods interleaved; prints a table (with the figures recorded before this version for
comparison) and the ratios, writes ``OUT/bench_align.json`` and ``OUT/bench_align.png``; ``--json PATH`` writes the
same document to PATH as well (``-``: to stdout as its last line).

``--profile`` adds where the time of one step goes, per method, on ``--profile-batches`` batches (after one warm-up
batch) with each method's own trainer, collator, loss and AdamW: collation (layout + mask), the policy model's
forward, the reference model's forward, log-prob gather + loss + metrics, backward, and the optimizer step (clip +
AdamW). Both trainers live in one process and take turns batch by batch, so the ratio of their median step times
(``ratios.throughput_in_process``) holds up on a machine whose load drifts, unlike separate runs.
``--quick`` = 6 steps, batch 4, 1 repeat, profile on 3 batches (a smoke run).

Without ``--sft/--samples`` it builds a synthetic world: the ``tiny`` model preset, 2 positives and 3 negatives
per session, prompts of about ``--prompt-tokens`` tokens (history SIDs), as in docs/alignment.md's benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = ("rad-dpo", "dpo")
NAMES = {"rad-dpo": "RAD-DPO (packed, no reference)", "dpo": "DPO (pairwise + reference)"}
PHASES = ("collate", "policy_forward", "reference_forward", "logps_loss_metrics", "backward", "optimizer")
STEADY_FROM = 3  # intervals between optimizer steps counted from this step on (earlier ones warm up)
# the figures docs/alignment.md recorded before this version (train_runtime basis, a heavily loaded machine)
RECORDED_KEYS = ("world", "rad_dpo_sessions_per_s", "dpo_sessions_per_s", "throughput_ratio", "peak_rss_ratio",
                 "peak_above_start_ratio")
RECORDED_BEFORE = (
    ("simulated, ~33-token prompts (recorded, loaded machine)", 6.99, 1.63, 4.29, 0.55, 0.30),
    ("synthetic, ~200-token prompts (recorded, loaded machine)", 2.18, 0.30, 7.17, 0.28, 0.14),
)


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


def _preimport() -> None:
    """Import what every run imports anyway, so the RSS measured before training holds it for both methods."""
    import matplotlib

    matplotlib.use("Agg")  # the loss plot imports pyplot at the end of training
    for name in ("matplotlib.pyplot", "transformers", "training.align", "training.data.sample_format",
                 "training.model"):
        importlib.import_module(name)


def _align_config(method: str, sft: Path, samples: Path, out: Path, steps: int, batch_size: int) -> Any:
    from training.align import AlignConfig
    from training.train_config import TrainConfig

    return AlignConfig(method=method, sft_dir=sft, samples_dir=samples, out_dir=out,
                       train=TrainConfig(max_steps=steps, batch_size=batch_size, lr=1e-4, save_steps=10 ** 6,
                                         logging_steps=10 ** 6, warmup_ratio=0.0, group_by_length=False))


def worker(method: str, sft: Path, samples: Path, steps: int, batch_size: int) -> dict[str, float]:
    """One training run in this process; returns its throughputs and memory."""
    import torch
    from transformers import TrainerCallback

    from training.align import run_align
    from training.trainer import TRAIN_LOG_FILE

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _preimport()
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            step_ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        base = _rss_mb()
        t0 = time.perf_counter()
        run_align(_align_config(method, sft, samples, Path(tmp) / "run", steps, batch_size), callbacks=[StepClock()])
        wall = time.perf_counter() - t0
        log = json.loads((Path(tmp) / "run" / TRAIN_LOG_FILE).read_text())
    runtime = next(r["train_runtime"] for r in log if "train_runtime" in r)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    intervals = [b - a for a, b in itertools.pairwise(step_ends)][STEADY_FROM - 2:]
    end_to_end = steps * batch_size / runtime
    steady = batch_size / statistics.median(intervals) if intervals else end_to_end
    return {"sessions_per_s": steady, "sessions_per_s_end_to_end": end_to_end,
            "steady_step_s": statistics.median(intervals) if intervals else float("nan"),
            "steady_steps": float(len(intervals)), "train_runtime_s": runtime, "wall_s": wall,
            "peak_rss_mb": peak, "peak_above_start_mb": peak - base}


class _PhaseClock:
    """Times one trainer's steps phase by phase; model forwards are timed by forward hooks."""

    def __init__(self, run: Any) -> None:
        import torch

        self.run = run
        self.model = run.trainer.model
        self.optimizer = run.trainer.create_optimizer()
        self.forward = {"policy_forward": 0.0, "reference_forward": 0.0}
        self._started: dict[str, float] = {}
        self._hook(self.model, "policy_forward")
        if run.trainer.ref_model is not None:
            self._hook(run.trainer.ref_model, "reference_forward")
        self.rows: list[dict[str, float]] = []
        self._torch = torch

    def _hook(self, module: Any, key: str) -> None:
        module.register_forward_pre_hook(lambda *_: self._started.__setitem__(key, time.perf_counter()))
        module.register_forward_hook(
            lambda *_: self.forward.__setitem__(key, self.forward[key] + time.perf_counter() - self._started[key]))

    def step(self, feats: list[dict[str, Any]], keep: bool) -> None:
        trainer, torch = self.run.trainer, self._torch
        self.forward.update(policy_forward=0.0, reference_forward=0.0)
        t0 = time.perf_counter()
        batch = trainer.data_collator(feats)
        t1 = time.perf_counter()
        loss = trainer.compute_loss(self.model, batch)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if keep:
            fwd = self.forward["policy_forward"] + self.forward["reference_forward"]
            self.rows.append({"collate": t1 - t0, **self.forward, "logps_loss_metrics": (t2 - t1) - fwd,
                              "backward": t3 - t2, "optimizer": t4 - t3, "step": t4 - t0})


def profile_worker(sft: Path, samples: Path, batches: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Median milliseconds per phase of one training step of each method (see the module docstring).

    Both methods' trainers live in this one process and take turns batch by batch, so a machine whose load drifts
    slows both alike: the ratio of their step times is the load-robust throughput ratio.
    """
    import torch

    from training.align import prepare_align

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        clocks = {m: _PhaseClock(prepare_align(_align_config(m, sft, samples, Path(tmp) / m, 10, batch_size)))
                  for m in METHODS}
        for i in range(batches + 1):  # batch 0 warms up
            for clock in clocks.values():
                examples = clock.run.examples
                clock.step([examples[(i * batch_size + k) % len(examples)] for k in range(batch_size)], keep=i > 0)
    return {m: {k: 1000 * statistics.median(r[k] for r in c.rows) for k in c.rows[0]} for m, c in clocks.items()}


def _subprocess_json(args: list[str]) -> Any:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_tables(doc: dict[str, Any]) -> None:
    med, ratios = doc["median"], doc["ratios"]
    print(f"\nworld: {doc['world']}; {doc['steps']} steps × {doc['batch_size']} sessions, median of "
          f"{doc['repeats']}, OMP_NUM_THREADS={doc['omp_num_threads']}")
    print("| method | sessions/s (steady) | sessions/s (end to end) | peak RSS (MB) | peak above start (MB) |")
    print("|---|---|---|---|---|")
    for m in METHODS:
        print(f"| {NAMES[m]} | {med[m]['sessions_per_s']:.2f} | {med[m]['sessions_per_s_end_to_end']:.2f} | "
              f"{med[m]['peak_rss_mb']:.0f} | {med[m]['peak_above_start_mb']:.0f} |")
    print(f"| ratio RAD-DPO / DPO (this run) | **{ratios['throughput']:.2f}×** | "
          f"{ratios['throughput_end_to_end']:.2f}× | {ratios['peak_rss']:.2f}× | "
          f"**{ratios['peak_above_start']:.2f}×** |")
    print("\nbefore (recorded figures, not re-run) vs after (this run), ratio RAD-DPO / DPO:")
    print("| world | RAD-DPO sessions/s | DPO sessions/s | throughput | peak RSS | peak above start |")
    print("|---|---|---|---|---|---|")
    for world, rad, dpo, speed, rss, above in RECORDED_BEFORE:
        print(f"| before: {world} | {rad:.2f} | {dpo:.2f} | {speed:.2f}× | {rss:.2f}× | {above:.2f}× |")
    print(f"| after: {doc['world']} ({doc['throughput_basis']}) | {med['rad-dpo']['sessions_per_s']:.2f} | "
          f"{med['dpo']['sessions_per_s']:.2f} | {ratios['throughput']:.2f}× | {ratios['peak_rss']:.2f}× | "
          f"{ratios['peak_above_start']:.2f}× |")
    prof = doc.get("profile")
    if prof:
        print(f"\nwhere one step's time goes (ms, median of {doc['profile_batches']} batches of "
              f"{doc['batch_size']} sessions, in-process):")
        print("| phase | " + " | ".join(NAMES[m] for m in METHODS) + " |")
        print("|---|" + "---|" * len(METHODS))
        for phase in (*PHASES, "step"):
            cells = [f"{prof[m][phase]:.1f} ({100 * prof[m][phase] / prof[m]['step']:.0f}%)" for m in METHODS]
            print(f"| {phase} | " + " | ".join(cells) + " |")
        print(f"in-process step-time ratio DPO / RAD-DPO (same sessions per step): "
              f"{doc['ratios']['throughput_in_process']:.2f}×")


def write_png(doc: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med, ratios = doc["median"], doc["ratios"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    labels = ["RAD-DPO\npacked", "DPO\npairwise+ref"]
    axes[0].bar(labels, [med[m]["sessions_per_s"] for m in METHODS], color=["tab:green", "tab:gray"])
    axes[0].set_title(f"steady sessions/s, ×{ratios['throughput']:.1f}")
    axes[1].bar(labels, [med[m]["peak_above_start_mb"] for m in METHODS], color=["tab:green", "tab:gray"])
    axes[1].set_title(f"peak memory above start (MB), ×{ratios['peak_above_start']:.2f}")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "bench_align.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", type=Path)
    ap.add_argument("--samples", type=Path)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_align")
    ap.add_argument("--quick", action="store_true", help="6 steps, batch 4, 1 repeat, 3 profile batches (smoke run)")
    ap.add_argument("--json", help="also write the JSON document to this path ('-': stdout, last line)")
    ap.add_argument("--profile", action="store_true", help="add the per-phase time of one step, per method")
    ap.add_argument("--profile-batches", type=int, default=6)
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--profile-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.repeats, args.profile_batches = 6, 4, 1, 3
    if args.steps < 1 or args.batch_size < 1 or args.repeats < 1 or args.profile_batches < 1:
        ap.error("--steps, --batch-size, --repeats and --profile-batches must be >= 1")

    if args.worker:
        print(json.dumps(worker(args.worker, args.sft, args.samples, args.steps, args.batch_size)))
        return
    if args.profile_worker:
        print(json.dumps(profile_worker(args.sft, args.samples, args.profile_batches, args.batch_size)))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    profile: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.sft is None or args.samples is None:
            sessions = max(args.steps, args.profile_batches + 1) * args.batch_size
            sft, samples = build_synthetic_world(Path(tmp), sessions=sessions, prompt_tokens=args.prompt_tokens)
            world = f"synthetic: tiny preset, 2 positives + 3 negatives, ~{args.prompt_tokens}-token prompts"
        else:
            sft, samples, world = args.sft, args.samples, f"{args.sft} on {args.samples}"
        common = ["--sft", str(sft), "--samples", str(samples), "--batch-size", str(args.batch_size)]
        results: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
        for rep in range(args.repeats):
            for method in METHODS:  # interleaved, so drifting machine load hits both alike
                res = _subprocess_json(["--worker", method, "--steps", str(args.steps), *common])
                results[method].append(res)
                print(f"repeat {rep + 1}/{args.repeats} {method}: {res['sessions_per_s']:.2f} sessions/s steady, "
                      f"{res['sessions_per_s_end_to_end']:.2f} end to end, peak {res['peak_rss_mb']:.0f} MB",
                      flush=True)
        if args.profile:
            profile = _subprocess_json(["--profile-worker", "--profile-batches", str(args.profile_batches), *common])

    med = {m: {k: statistics.median(r[k] for r in results[m]) for k in results[m][0]} for m in METHODS}
    rad, dpo = med["rad-dpo"], med["dpo"]
    ratios = {"throughput": rad["sessions_per_s"] / dpo["sessions_per_s"],
              "throughput_end_to_end": rad["sessions_per_s_end_to_end"] / dpo["sessions_per_s_end_to_end"],
              "peak_rss": rad["peak_rss_mb"] / dpo["peak_rss_mb"],
              "peak_above_start": rad["peak_above_start_mb"] / dpo["peak_above_start_mb"]}
    if profile:  # both methods in one process, batch about batch: the load-robust figure
        ratios["throughput_in_process"] = profile["dpo"]["step"] / profile["rad-dpo"]["step"]
    basis = "steady state" if args.steps >= STEADY_FROM + 1 else "end to end (fewer than 4 steps)"
    doc: dict[str, Any] = {
        "world": world, "steps": args.steps, "batch_size": args.batch_size, "repeats": args.repeats,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "throughput_basis": basis, "runs": results,
        "median": med, "ratios": ratios,
        "recorded_before": [dict(zip(RECORDED_KEYS, r, strict=True)) for r in RECORDED_BEFORE],
        "profile": profile or None, "profile_batches": args.profile_batches if profile else None,
    }
    print_tables(doc)
    text = json.dumps(doc, indent=1)
    (args.out / "bench_align.json").write_text(text + "\n")
    write_png(doc, args.out)
    print(f"wrote {args.out / 'bench_align.json'} and {args.out / 'bench_align.png'}")
    if args.json == "-":
        print(json.dumps(doc))
    elif args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
