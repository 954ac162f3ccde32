"""The paper's table: SFT, DPO, SimPO, ORPO, RAD-DPO and its three ablations from one SFT checkpoint, over seeds.

Command: ``radgr experiment paper-table --samples DIR --index DIR --sft RUN_DIR/final --out DIR [--seeds 3]
[--config default|tiny] [--methods sft,dpo,...] [--dataset-name simulated|amazon]``

Contract
--------
- Every aligned variant starts from the same SFT checkpoint and trains with ``training.align.run_align`` under
  the chosen preset (:data:`PRESETS`), once per seed (seeds ``0 .. seeds-1`` set the initial data order and every
  random choice of the trainer). The SFT row is the checkpoint itself, evaluated once (n = 1, std 0).
- Every model is evaluated by ``training.evaluate.evaluate_engine`` (the ``TorchBeamEngine``: trie-constrained
  beam search, plus the unconstrained pass for the hallucination rate) with the same :class:`EvalConfig` on the
  same test sessions (the first ``eval_limit`` of ``test.parquet`` when the preset caps it).
- Results: ``OUT/paper_table.json`` (per run and aggregated: mean, sample std, n), ``OUT/paper_table.md`` (the
  paper's layout — hallucination rate, item R@10/100/500, MRR, SID R@8/64/128, MRR — as mean ± std, then the same
  against the simulator's true relevance when the data has it, the alignment diagnostics from the training logs,
  and the paper's qualitative claims checked one by one), ``OUT/paper_table.png`` (methods compared, error bars).
  Every file is written atomically.
- Runs go seed by seed (all variants of seed 0, then seed 1, ...) and the three files are rewritten after every
  run (marked partial until the last), so a cut-short experiment still reports whole seeds.
- Reuse: a run whose ``OUT/runs/<variant>-seed<k>/eval.json`` exists with the same settings is not redone (the SFT
  row's settings are the evaluation's only), so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sid_index.atomic_files import save_figure_atomic, write_json_atomic, write_text_atomic
from training.align import AlignConfig, default_align_train_config, run_align
from training.evaluate import TABLE_COLUMNS, EvalConfig
from training.losses import RadDpoConfig
from training.rdrw import RdrwConfig
from training.train_config import TrainConfig
from training.trainer import TRAIN_LOG_FILE

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
PAPER_NAMES = {"sft": "SFT", "dpo": "DPO", "simpo": "SimPO", "orpo": "ORPO", "rad-dpo": "RAD-DPO",
               "rad-dpo-no-tlgd": "w/o TLGD", "rad-dpo-no-rdrw": "w/o RDRW", "rad-dpo-no-ml-sft": "w/o ML-SFT"}
# the metrics the qualitative checks compare (the paper's headline columns)
CHECK_METRICS = (("item", "recall@10"), ("item", "mrr"), ("sid", "recall@8"), ("sid", "mrr"))


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
    # sized for ≈ 60 min on 2 CPU cores with the tiny model preset and the simulator's default data:
    # 21 alignment runs of 200 steps × 8 sessions, 22 evaluations of 300 test sessions at beam 128 (an estimate
    # from per-step times measured on the shared machine, not a measured end-to-end run)
    "default": ExperimentPreset(
        train=replace(default_align_train_config(), max_steps=200, batch_size=8, save_steps=250, logging_steps=10,
                      lr=3e-4),
        eval=EvalConfig(beam_width=128, top_k=500, batch_size=8, limit=300),
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

    def preset_obj(self) -> ExperimentPreset:
        p = PRESETS[self.preset]
        if self.overrides:
            p = replace(p, train=replace(p.train, **self.overrides))
        if self.eval_limit is not None:
            p = replace(p, eval=replace(p.eval, limit=self.eval_limit))
        if self.rdrw_window is not None:
            p = replace(p, rdrw_window=self.rdrw_window)
        return p


# ------------------------------------------------------------------------------------------------ aggregation
def metric_of(entry: dict[str, Any], block: str | None, key: str | None, truth: bool = False) -> float | None:
    """One number of an evaluation entry (``evaluate_engine``'s report); block None = hallucination rate."""
    if block is None:
        v = entry.get("hallucination_rate")
        return None if v is None or truth else float(v)
    source = entry.get("truth" if truth else "metrics", {})
    v = source.get(block, {}).get(key)  # type: ignore[arg-type]
    return None if v is None else float(v)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof 1; 0 for one value), n)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size)


def aggregate(runs: dict[str, list[dict[str, Any]]], truth: bool = False) -> dict[str, dict[str, list[float]]]:
    """variant → column header → [mean, std, n] over that variant's runs (missing metrics skipped)."""
    out: dict[str, dict[str, list[float]]] = {}
    for variant, entries in runs.items():
        row: dict[str, list[float]] = {}
        for header, block, key in TABLE_COLUMNS:
            vals = [v for e in entries if (v := metric_of(e, block, key, truth)) is not None]
            if vals:
                m, s, n = mean_std(vals)
                row[header] = [m, s, n]
        out[variant] = row
    return out


def _header_of(block: str, key: str) -> str:
    return next(h for h, b, k in TABLE_COLUMNS if b == block and k == key)


def shape_checks(agg: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """The paper's qualitative ordering (method.md §5), each claim checked on our means for the headline metrics.

    Claims: DPO < SFT; SimPO > SFT; ORPO > SFT; RAD-DPO ≥ every other method; each ablation < RAD-DPO.
    A claim "holds" on a metric when the means are ordered as claimed; ``within_noise`` marks differences smaller
    than the larger of the two standard deviations.
    """
    claims: list[tuple[str, str, str, str]] = [("DPO below SFT", "dpo", "<", "sft"),
                                               ("SimPO above SFT", "simpo", ">", "sft"),
                                               ("ORPO above SFT", "orpo", ">", "sft")]
    for other in ("sft", "dpo", "simpo", "orpo"):
        claims.append((f"RAD-DPO above {PAPER_NAMES[other]}", "rad-dpo", ">", other))
    for abl in ("rad-dpo-no-tlgd", "rad-dpo-no-rdrw", "rad-dpo-no-ml-sft"):
        claims.append((f"{PAPER_NAMES[abl]} below RAD-DPO", abl, "<", "rad-dpo"))
    out = []
    for text, a, op, b in claims:
        if a not in agg or b not in agg:
            continue
        per_metric = {}
        for block, key in CHECK_METRICS:
            h = _header_of(block, key)
            if h not in agg[a] or h not in agg[b]:
                continue
            (ma, sa, _), (mb, sb, _) = agg[a][h][:3], agg[b][h][:3]
            holds = ma < mb if op == "<" else ma > mb
            per_metric[f"{block} {key}"] = {"holds": bool(holds), "diff": ma - mb,
                                            "within_noise": bool(abs(ma - mb) <= max(sa, sb))}
        if per_metric:
            n_hold = sum(v["holds"] for v in per_metric.values())
            out.append({"claim": text, "metrics": per_metric, "holds_on": n_hold, "of": len(per_metric)})
    return out


def diagnostics_from_log(run_dir: Path) -> dict[str, float]:
    """Means over the logged steps of a training run: RDRW weights of pseudo-/irrelevant negatives (after warm-up),
    their similarities, shared-prefix shares, final loss and reward margin."""
    path = run_dir / TRAIN_LOG_FILE
    if not path.is_file():
        return {}
    log = [r for r in json.loads(path.read_text()) if "loss" in r]
    if not log:
        return {}
    out: dict[str, float] = {}
    warm = [r for r in log if r.get("rdrw/warm") == 1.0]
    for key in ("rdrw/weight_pseudo_neg", "rdrw/weight_irrelevant_neg", "rdrw/mean_weight"):
        vals = [r[key] for r in warm if key in r]
        if vals:
            out[key] = float(np.mean(vals))
    for key in ("rdrw/similarity_pseudo_neg", "rdrw/similarity_irrelevant_neg", "pairs/shared_first",
                "pairs/shared_two", "rewards/margin", "rewards/accuracy"):
        vals = [r[key] for r in log if key in r]
        if vals:
            out[key] = float(np.mean(vals))
    out["final_loss"] = float(log[-1]["loss"])
    return out


# ------------------------------------------------------------------------------------------------ report
def _fmt(cell: list[float] | None) -> str:
    if cell is None:
        return "–"
    m, s, n = cell
    return f"{m:.4f}" if n <= 1 else f"{m:.4f} ± {s:.4f}"


def markdown_report(doc: dict[str, Any]) -> str:
    """The whole markdown page: table(s), diagnostics, claims."""
    variants = [v for v in VARIANTS if v in doc["aggregate"]]
    head = "| method | " + " | ".join(h for h, _, _ in TABLE_COLUMNS) + " |"
    sep = "|" + "---|" * (len(TABLE_COLUMNS) + 1)
    lines = [f"## Paper table — {doc['dataset']} data ({doc['preset']} config, {doc['seeds']} seed(s))", "",
             head, sep]
    for v in variants:
        cells = [_fmt(doc["aggregate"][v].get(h)) for h, _, _ in TABLE_COLUMNS]
        lines.append("| " + " | ".join([PAPER_NAMES[v], *cells]) + " |")
    lines += ["", f"mean ± sample std over seeds; SFT is one checkpoint (n = 1). {doc['test_sessions']} test sessions, "
              f"beam {doc['eval']['beam_width']}, top-{doc['eval']['top_k']} items."]
    truth = doc.get("aggregate_truth", {})
    if any(truth.get(v) for v in variants):
        lines += ["", "### Against the simulator's true relevance", "", head, sep]
        for v in variants:
            cells = [_fmt(truth[v].get(h)) if h in truth.get(v, {}) else "–" for h, _, _ in TABLE_COLUMNS]
            lines.append("| " + " | ".join([PAPER_NAMES[v], *cells]) + " |")
    diag = doc.get("diagnostics", {})
    if diag:
        keys = [("rdrw/mean_weight", "mean w"),
                ("rdrw/weight_pseudo_neg", "w pseudo-neg"), ("rdrw/weight_irrelevant_neg", "w irrelevant neg"),
                ("rdrw/similarity_pseudo_neg", "cos pseudo-neg"), ("rdrw/similarity_irrelevant_neg", "cos irrel."),
                ("pairs/shared_first", "share 1st tok"), ("pairs/shared_two", "share 2 tok"),
                ("rewards/margin", "reward margin"), ("rewards/accuracy", "margin > 0"), ("final_loss", "final loss")]
        lines += ["", "### Alignment diagnostics (means over logged steps and seeds; RDRW weights after warm-up)", "",
                  "| method | " + " | ".join(n for _, n in keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for v in variants:
            if v in diag:
                lines.append("| " + " | ".join([PAPER_NAMES[v], *(f"{diag[v][k]:.4f}" if k in diag[v] else "–"
                                                                   for k, _ in keys)]) + " |")
    checks = doc.get("checks", [])
    if checks:
        lines += ["", "### The paper's ordering, checked (item R@10, item MRR, SID R@8, SID MRR)", "",
                  "| claim | holds on | details |", "|---|---|---|"]
        for c in checks:
            det = "; ".join(f"{m}: {'✓' if r['holds'] else '✗'} {r['diff']:+.4f}"
                            f"{' (within noise)' if r['within_noise'] else ''}" for m, r in c["metrics"].items())
            lines.append(f"| {c['claim']} | {c['holds_on']}/{c['of']} | {det} |")
    return "\n".join(lines) + "\n"


def write_chart(doc: dict[str, Any], path: Path) -> None:
    """Grouped bars with std error bars: the headline metrics per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in VARIANTS if v in doc["aggregate"]]
    heads = [_header_of(b, k) for b, k in CHECK_METRICS]
    fig, axes = plt.subplots(1, len(heads), figsize=(4 * len(heads), 4), dpi=100)
    colors = plt.get_cmap("tab10")(np.arange(len(variants)))
    for ax, h in zip(np.atleast_1d(axes), heads, strict=True):
        cells = [doc["aggregate"][v].get(h) for v in variants]
        means = [c[0] if c else 0.0 for c in cells]
        stds = [c[1] if c else 0.0 for c in cells]
        ax.bar(range(len(variants)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(variants)), [PAPER_NAMES[v] for v in variants], rotation=45, ha="right")
        lo = min(means) if means else 0.0
        hi = max(m + s for m, s in zip(means, stds, strict=True)) if means else 1.0
        ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1e-9) - 0.01), hi + 0.05 * (hi - lo + 1e-9) + 1e-4)
        ax.set_title("item " + h if h in ("R@10", "MRR") else h)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{doc['dataset']} data: mean ± std over {doc['seeds']} seed(s)")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ the run
def _evaluate(model_dir: Path, index: Any, targets: Any, eval_cfg: EvalConfig) -> dict[str, Any]:
    from training.evaluate import evaluate_engine, load_engine

    engine, tokenizer = load_engine(model_dir, index)
    return evaluate_engine(engine, tokenizer, targets, eval_cfg)


def _write_outputs(cfg: ExperimentConfig, settings: dict[str, Any], eval_cfg: EvalConfig, n_targets: int,
                   runs: dict[str, list[dict[str, Any]]], diagnostics: dict[str, list[dict[str, float]]],
                   wall: float, done: int, total: int) -> dict[str, Path]:
    agg = aggregate(runs)
    diag = {v: {key: float(np.mean([d[key] for d in ds if key in d])) for key in {k for d in ds for k in d}}
            for v, ds in diagnostics.items()}
    doc = {"dataset": cfg.dataset_name, "preset": cfg.preset, "seeds": cfg.seeds, "settings": settings,
           "eval": asdict(eval_cfg), "test_sessions": n_targets, "aggregate": agg,
           "aggregate_truth": aggregate(runs, truth=True), "diagnostics": diag, "checks": shape_checks(agg),
           "runs": runs, "wall_seconds": wall, "runs_done": done, "runs_total": total}
    out = cfg.out_dir
    paths = {"json": out / "paper_table.json", "markdown": out / "paper_table.md", "png": out / "paper_table.png"}
    write_json_atomic(paths["json"], doc, indent=1, sort_keys=False)
    md = markdown_report(doc)
    if done < total:
        md = f"**Partial: {done} of {total} runs finished.**\n\n" + md
    write_text_atomic(paths["markdown"], md)
    write_chart(doc, paths["png"])
    return paths


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
                align_cfg = AlignConfig(method=method, sft_dir=cfg.sft_dir, samples_dir=cfg.samples_dir,
                                        out_dir=run_dir, train=replace(preset.train, seed=seed), rad=rad,
                                        rdrw=RdrwConfig(window=preset.rdrw_window), limit=preset.train_limit)
                model_dir = run_align(align_cfg)
            t_eval = time.time()
            entry = _evaluate(model_dir, index, targets, eval_cfg)
            entry.update({"variant": variant, "seed": seed, "model": str(model_dir),
                          "train_seconds": t_eval - t_run, "eval_seconds": time.time() - t_eval})
            write_json_atomic(eval_path, {"settings": key, "entry": entry}, indent=1, sort_keys=False)
        runs.setdefault(variant, []).append(entry)
        if VARIANTS[variant] is not None:
            diagnostics.setdefault(variant, []).append(diagnostics_from_log(run_dir))
        paths = _write_outputs(cfg, settings, eval_cfg, len(targets), runs, diagnostics, time.time() - t0, k,
                               len(jobs))
    return paths
