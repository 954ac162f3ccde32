"""The paper's table: SFT, DPO, SimPO, ORPO, RAD-DPO and its three ablations from one SFT checkpoint, over seeds.

Command: ``radgr experiment paper-table --samples DIR --index DIR --sft RUN_DIR/final --out DIR [--seeds 3]
[--config default|tiny] [--methods sft,dpo,...] [--dataset-name simulated|amazon] [--tuned TUNE_DIR/tune.json]``

Contract
--------
- Every aligned variant starts from the same SFT checkpoint and trains with ``training.align.run_align`` under
  the chosen preset (:data:`PRESETS`), or with its method's hyper-parameters chosen on validation
  (``--tuned``, :func:`tuned_align_parts`, ``training.align_tune``), once per seed (seeds ``0 .. seeds-1`` set
  the initial data order and every random choice of the trainer). The SFT row is the checkpoint itself,
  evaluated once (n = 1, std 0).
- Every model is evaluated by ``training.evaluate.evaluate_engine`` (the ``TorchBeamEngine``: trie-constrained
  beam search, plus the unconstrained pass for the hallucination rate) with the same :class:`EvalConfig` on the
  same test sessions (the first ``eval_limit`` of ``test.parquet`` when the preset caps it).
- Results: ``OUT/paper_table.json`` (per run and aggregated: mean, sample std, n), ``OUT/paper_table.md`` (the
  paper's layout — hallucination rate, item R@10/100/500, MRR, SID R@8/64/128, MRR — as mean ± std, then the same
  against the simulator's true relevance when the data has it, the alignment diagnostics from the training logs,
  and the paper's qualitative claims checked one by one), ``OUT/paper_table.png`` (methods compared, error bars).
  Every file is written atomically (``training.experiment_report``).
- Runs go seed by seed (all variants of seed 0, then seed 1, ...) and the three files are rewritten after every
  run (marked partial until the last), so a cut-short experiment still reports whole seeds.
- Reuse: a run whose ``OUT/runs/<variant>-seed<k>/eval.json`` exists with the same settings is not redone (the SFT
  row's settings are the evaluation's only), so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sid_index.atomic_files import write_json_atomic
from training.align import AlignConfig, default_align_train_config, run_align
from training.evaluate import EvalConfig
from training.experiment_report import (
    aggregate,
    diagnostics_from_log,
    mean_diagnostics,
    shape_checks,
    variant_statistics,
    write_table_files,
)
from training.losses import RadDpoConfig
from training.rdrw import RdrwConfig
from training.train_config import TrainConfig

logger = logging.getLogger(__name__)

# variant name → (align method, RAD-DPO switches); "sft" is the checkpoint itself
VARIANTS: dict[str, tuple[str, RadDpoConfig] | None] = {
    "sft": None,
    "dpo": ("dpo", RadDpoConfig()),
    "simpo": ("simpo", RadDpoConfig()),
    "orpo": ("orpo", RadDpoConfig()),
    "rad-dpo": ("rad-dpo", RadDpoConfig()),
    "rad-dpo-no-tlgd": ("rad-dpo", RadDpoConfig(tlgd=False)),
    "rad-dpo-no-rdrw": ("rad-dpo", RadDpoConfig(rdrw=False)),
    "rad-dpo-no-ml-sft": ("rad-dpo", RadDpoConfig(ml_sft=False)),
}


@dataclass(frozen=True)
class ExperimentPreset:
    """How much training and evaluation one run of the table gets."""

    train: TrainConfig
    eval: EvalConfig
    rdrw_window: int
    train_limit: int | None  # first N training sessions (None: all)

    def __post_init__(self) -> None:
        if self.train_limit is not None and self.train_limit < 1:
            raise ValueError(f"train_limit must be >= 1, given {self.train_limit}")


PRESETS: dict[str, ExperimentPreset] = {
    # 3,500 test sessions: the paired standard error of an item R@10 difference is sd(d) / √n. The largest per-session
    # sd of a paired difference measured at this preset was 0.284 (DPO − SFT, simulated demo world, 1,000 sessions:
    # SE 0.009; Amazon: 0.173), so SE ≤ 0.005 needs n ≥ (0.284 / 0.005)² = 3,236; 3,500 leaves a little room. A
    # world needs that many test sessions (`radgr data simulate --sessions-per-day 5000`: about 3,850; the demo's
    # has 1,500 and the limit then takes them all). Every table reports the SE it reached (statistics.sizing).
    # 21 alignment runs of 200 steps × 8 sessions, 22 evaluations at beam 128 (times: docs/alignment.md).
    "default": ExperimentPreset(
        train=replace(default_align_train_config(), max_steps=200, batch_size=8, save_steps=250, logging_steps=10,
                      lr=3e-4),
        eval=EvalConfig(beam_width=128, top_k=500, batch_size=8, limit=3500),
        rdrw_window=512, train_limit=None,
    ),
    # CI: a few steps and a few test sessions, beam 16
    "tiny": ExperimentPreset(
        train=replace(default_align_train_config(), max_steps=3, batch_size=4, save_steps=100, logging_steps=1,
                      lr=1e-3),
        eval=EvalConfig(beam_width=16, top_k=50, batch_size=8, limit=6),
        rdrw_window=8, train_limit=24,
    ),
}


@dataclass(frozen=True)
class ExperimentConfig:
    samples_dir: Path
    index_dir: Path
    sft_dir: Path
    out_dir: Path
    seeds: int = 3
    preset: str = "default"
    variants: tuple[str, ...] = tuple(VARIANTS)
    dataset_name: str = "simulated"
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields replacing the preset's
    eval_limit: int | None = None  # replaces the preset's number of test sessions
    rdrw_window: int | None = None  # replaces the preset's RDRW window
    # method → hyper-parameters chosen on validation (``training.align_tune``: lr, max_steps, loss fields); the
    # RAD-DPO ablations take RAD-DPO's. They outrank the preset and ``overrides``.
    tuned: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, given {self.seeds}")
        if self.preset not in PRESETS:
            raise ValueError(f"config must be one of {', '.join(PRESETS)}, given {self.preset!r}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"methods must be a non-empty subset of {', '.join(VARIANTS)}, "
                             f"given {list(self.variants)}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"eval_limit must be >= 1, given {self.eval_limit}")
        bad = [k for k in self.overrides if k not in TrainConfig.__dataclass_fields__]
        if bad:
            raise ValueError(f"overrides name unknown TrainConfig fields {bad}")
        unknown_methods = [m for m in self.tuned if m not in ("dpo", "simpo", "orpo", "rad-dpo")]
        if unknown_methods:
            raise ValueError(f"tuned names unknown methods {unknown_methods}")

    def preset_obj(self) -> ExperimentPreset:
        p = PRESETS[self.preset]
        if self.overrides:
            p = replace(p, train=replace(p.train, **self.overrides))
        if self.eval_limit is not None:
            p = replace(p, eval=replace(p.eval, limit=self.eval_limit))
        if self.rdrw_window is not None:
            p = replace(p, rdrw_window=self.rdrw_window)
        return p


def tuned_align_parts(method: str, train: TrainConfig, rad: RadDpoConfig,
                      tuned: dict[str, dict[str, float]]) -> dict[str, Any]:
    """AlignConfig's ``train`` and loss configs for one method under its tuned hyper-parameters (none: as given)."""
    from training.losses import DpoConfig, OrpoConfig, SimpoConfig

    parts: dict[str, Any] = {"train": train, "dpo": DpoConfig(), "simpo": SimpoConfig(), "orpo": OrpoConfig(),
                             "rad": rad}
    chosen = dict(tuned.get(method, {}))
    if not chosen:
        return parts
    lr, steps = chosen.pop("lr", train.lr), chosen.pop("max_steps", train.max_steps)
    parts["train"] = replace(train, lr=float(lr), max_steps=int(steps))
    key = "rad" if method == "rad-dpo" else method
    parts[key] = replace(parts[key], **chosen)
    return parts


# ------------------------------------------------------------------------------------------------ the run
def _evaluate(model_dir: Path, index: Any, index_dir: Path, targets: Any, eval_cfg: EvalConfig) -> dict[str, Any]:
    from training.evaluate import evaluate_engine, load_engine

    # the paper table runs dozens of evaluations: the PyTorch engine batches whole requests and is the faster of the
    # two on CPU; both engines give the same SIDs (tests/test_vllm_engine.py)
    engine, tokenizer = load_engine(model_dir, index, index_dir, engine="torch")
    return evaluate_engine(engine, tokenizer, targets, eval_cfg)


def _write_outputs(cfg: ExperimentConfig, settings: dict[str, Any], eval_cfg: EvalConfig, n_targets: int,
                   runs: dict[str, list[dict[str, Any]]], diagnostics: dict[str, list[dict[str, float]]],
                   wall: float, done: int, total: int) -> dict[str, Path]:
    from training.eval_intervals import strip_sessions
    from training.run_info import run_info

    agg = aggregate(runs)
    stats = variant_statistics(runs)
    doc = {"dataset": cfg.dataset_name, "preset": cfg.preset, "seeds": cfg.seeds, "settings": settings,
           "eval": asdict(eval_cfg), "test_sessions": n_targets, "aggregate": agg,
           "aggregate_truth": aggregate(runs, truth=True), "statistics": stats,
           "diagnostics": mean_diagnostics(diagnostics), "checks": shape_checks(agg, stats["paired"]),
           "runs": {v: [strip_sessions(e) for e in es] for v, es in runs.items()},
           "run_info": {**run_info(None), "seed": f"one per aligned run: {', '.join(map(str, range(cfg.seeds)))}"},
           "wall_seconds": wall, "runs_done": done, "runs_total": total}
    return write_table_files(cfg.out_dir, doc, done, total)


def run_experiment(cfg: ExperimentConfig, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Train and evaluate every (variant, seed), seed by seed (so a cut-short run still has whole seeds), and
    rewrite the JSON/markdown/PNG after every run; returns their paths."""
    from sid_index.index import SidIndex
    from training.evaluate import load_test_targets

    preset = cfg.preset_obj()
    index = SidIndex.load(cfg.index_dir)
    targets = load_test_targets(cfg.samples_dir, index, preset.eval.limit)
    eval_cfg = replace(preset.eval, limit=None)
    eval_settings = {"eval": asdict(preset.eval), "sft": str(cfg.sft_dir), "samples": str(cfg.samples_dir)}
    settings = {**eval_settings, "preset": cfg.preset, "train": asdict(preset.train),
                "rdrw_window": preset.rdrw_window, "train_limit": preset.train_limit}
    if cfg.tuned:
        settings["tuned"] = cfg.tuned
    jobs = [(v, s) for s in range(cfg.seeds) for v in cfg.variants if VARIANTS[v] is not None or s == 0]
    runs: dict[str, list[dict[str, Any]]] = {}
    diagnostics: dict[str, list[dict[str, float]]] = {}
    t0 = time.time()
    paths: dict[str, Path] = {}
    for k, (variant, seed) in enumerate(jobs, 1):
        run_dir = cfg.out_dir / "runs" / f"{variant}-seed{seed}"
        eval_path = run_dir / "eval.json"
        if progress is not None:
            progress(f"[{k}/{len(jobs)}] {variant} seed {seed} ({time.time() - t0:.0f} s so far)")
        key = eval_settings if VARIANTS[variant] is None else settings  # the SFT row depends on evaluation only
        cached = json.loads(eval_path.read_text()) if eval_path.is_file() else None
        if cached is not None and cached.get("settings") == key:
            entry = cached["entry"]
        else:
            t_run = time.time()
            spec = VARIANTS[variant]
            if spec is None:
                model_dir = cfg.sft_dir
            else:
                method, rad = spec
                parts = tuned_align_parts(method, replace(preset.train, seed=seed), rad, cfg.tuned)
                align_cfg = AlignConfig(method=method, sft_dir=cfg.sft_dir, samples_dir=cfg.samples_dir,
                                        out_dir=run_dir, **parts, rdrw=RdrwConfig(window=preset.rdrw_window),
                                        limit=preset.train_limit)
                model_dir = run_align(align_cfg)
            t_eval = time.time()
            entry = _evaluate(model_dir, index, cfg.index_dir, targets, eval_cfg)
            entry.update({"variant": variant, "seed": seed, "model": str(model_dir),
                          "train_seconds": t_eval - t_run, "eval_seconds": time.time() - t_eval})
            write_json_atomic(eval_path, {"settings": key, "entry": entry}, indent=1, sort_keys=False)
        runs.setdefault(variant, []).append(entry)
        if VARIANTS[variant] is not None:
            diagnostics.setdefault(variant, []).append(diagnostics_from_log(run_dir))
        paths = _write_outputs(cfg, settings, eval_cfg, len(targets), runs, diagnostics, time.time() - t0, k,
                               len(jobs))
    return paths
