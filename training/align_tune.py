"""Alignment hyper-parameters chosen on a validation split, never on test: a small grid per method.

Command: ``radgr experiment tune --samples DIR --index DIR --sft RUN_DIR/final --out DIR [--methods ...]
[--lrs 1e-4,3e-4] [--steps 100,200]``; the paper table then takes ``--tuned OUT/tune.json``.

Contract
--------
- The validation sessions are the ones SFT holds out by default (``training.sft_schedule.split_validation`` with
  the default :class:`SftSchedule`, seed 0 and prompts grouped, over ``train.parquet``), so neither SFT nor the
  tuned alignment ever trained on them (nor on their prompts) and ``test.parquet`` is never read.
  :func:`validation_samples` writes ``OUT/val_samples/``: ``train.parquet`` (the other training sessions) and
  ``test.parquet`` (the validation sessions), atomically.
- The grid (:func:`trials`): for each method, every learning rate × steps × loss setting of :data:`LOSS_GRID`
  (DPO's β, SimPO's and RAD-DPO's γ at β = 2, ORPO's λ), each trained from the SFT checkpoint under the paper
  table's default preset otherwise (batch 8, seed 0) and evaluated on the validation sessions (beam 128).
- A trial whose ``OUT/trials/<name>/result.json`` exists with the same settings is not rerun (resumable).
- The choice per method (:func:`choose`): highest validation item R@10, ties broken by item MRR. ``OUT/tune.json``
  holds every trial and ``chosen`` (method → ``{"lr", "max_steps", <loss field>: value}``); ``OUT/tune.md`` the
  table; ``OUT/tune.png`` validation R@10 per trial. The RAD-DPO ablations take RAD-DPO's choice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sid_index.atomic_files import save_figure_atomic, write_json_atomic, write_text_atomic
from training.evaluate import EvalConfig

# method → the loss settings tried (fields of DpoConfig / SimpoConfig / OrpoConfig / RadDpoConfig)
LOSS_GRID: dict[str, tuple[dict[str, float], ...]] = {
    "dpo": ({"beta": 0.1}, {"beta": 0.5}),
    "simpo": ({"beta": 2.0, "gamma": 1.0}, {"beta": 2.0, "gamma": 0.3}),
    "orpo": ({"lam": 0.1}, {"lam": 0.5}),
    "rad-dpo": ({"beta": 2.0, "gamma": 1.0}, {"beta": 2.0, "gamma": 0.3}),
}


@dataclass(frozen=True)
class TuneConfig:
    samples_dir: Path
    index_dir: Path
    sft_dir: Path
    out_dir: Path
    methods: tuple[str, ...] = tuple(LOSS_GRID)
    lrs: tuple[float, ...] = (1e-4, 3e-4)
    steps: tuple[int, ...] = (100, 200)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(beam_width=128, top_k=100, batch_size=8))
    train_limit: int | None = None  # first N training sessions (CI)

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in LOSS_GRID]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {', '.join(LOSS_GRID)}, "
                             f"given {list(self.methods)}")
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"lrs must be positive, given {list(self.lrs)}")
        if not self.steps or any(s < 1 for s in self.steps):
            raise ValueError(f"steps must be >= 1, given {list(self.steps)}")


@dataclass(frozen=True)
class Trial:
    method: str
    lr: float
    steps: int
    loss: dict[str, float]

    @property
    def name(self) -> str:
        loss = "-".join(f"{k}{v:g}" for k, v in self.loss.items())
        return f"{self.method}-lr{self.lr:g}-steps{self.steps}-{loss}"

    def overrides(self) -> dict[str, float]:
        """What the paper table's ``--tuned`` applies: TrainConfig's lr and max_steps, the loss fields."""
        return {"lr": self.lr, "max_steps": float(self.steps), **self.loss}


def trials(cfg: TuneConfig) -> list[Trial]:
    return [Trial(m, lr, s, dict(loss)) for m in cfg.methods for lr in cfg.lrs for s in cfg.steps
            for loss in LOSS_GRID[m]]


def validation_samples(samples_dir: Path, out_dir: Path) -> Path:
    """``out_dir/val_samples/{train,test}.parquet``: the training sessions SFT uses and the ones it holds out."""
    from training.data.sample_format import SampleWriter, read_samples
    from training.sft_schedule import SftSchedule, split_validation

    target = out_dir / "val_samples"
    train, val = split_validation(read_samples(samples_dir / "train.parquet"), SftSchedule(), 0,
                                  group=lambda s: s.prompt)
    if not val:
        raise ValueError(f"{samples_dir / 'train.parquet'} is too small to hold out validation sessions")
    target.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.parquet", train), ("test.parquet", val)):
        writer = SampleWriter(target / name)
        for s in rows:
            writer.add(s, flush_at=4096)
        writer.close()
    return target


def _align_config(cfg: TuneConfig, trial: Trial, samples: Path, run_dir: Path) -> Any:
    from training.align import AlignConfig
    from training.experiment import PRESETS
    from training.losses import loss_configs
    from training.rdrw import RdrwConfig

    preset = PRESETS["default"]
    train = replace(preset.train, lr=trial.lr, max_steps=trial.steps, seed=0, save_steps=max(trial.steps, 1))
    losses = loss_configs(trial.method, beta=trial.loss.get("beta"), gamma=trial.loss.get("gamma"),
                          orpo_lambda=trial.loss.get("lam"))
    return AlignConfig(method=trial.method, sft_dir=cfg.sft_dir, samples_dir=samples, out_dir=run_dir, train=train,
                       dpo=losses["dpo"], simpo=losses["simpo"], orpo=losses["orpo"], rad=losses["rad"],
                       rdrw=RdrwConfig(window=preset.rdrw_window), limit=cfg.train_limit)


def choose(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """method → the best trial's overrides and validation metrics (R@10, then MRR)."""
    best: dict[str, dict[str, Any]] = {}
    for r in results:
        m = r["method"]
        if m not in best or (r["val"]["R@10"], r["val"]["MRR"]) > (best[m]["val"]["R@10"], best[m]["val"]["MRR"]):
            best[m] = r
    return {m: {"overrides": r["overrides"], "trial": r["name"], "val": r["val"]} for m, r in best.items()}


def _markdown(doc: dict[str, Any]) -> str:
    lines = [f"Validation: {doc['val_sessions']} sessions held out of train.parquet (the SFT validation split); "
             f"beam {doc['eval']['beam_width']}. Best per method in bold.", "",
             "| method | lr | steps | loss | val item R@10 | val item MRR | train s |", "|---|---|---|---|---|---|---|"]
    chosen = {c["trial"] for c in doc["chosen"].values()}
    for r in doc["trials"]:
        b = "**" if r["name"] in chosen else ""
        loss = ", ".join(f"{k} {v:g}" for k, v in r["loss"].items())
        lines.append(f"| {b}{r['method']}{b} | {r['lr']:g} | {r['steps']} | {loss} | {b}{r['val']['R@10']:.4f}{b} | "
                     f"{r['val']['MRR']:.4f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = doc["trials"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rs)), 4.2))
    colors = {m: f"C{k}" for k, m in enumerate(LOSS_GRID)}
    ax.bar(range(len(rs)), [r["val"]["R@10"] for r in rs], color=[colors[r["method"]] for r in rs])
    ax.axhline(doc["sft_val"]["R@10"], color="black", linestyle="--", linewidth=1, label="SFT")
    ax.set_xticks(range(len(rs)))
    ax.set_xticklabels([r["name"] for r in rs], rotation=75, fontsize=6)
    ax.set_ylabel("validation item R@10")
    ax.set_title("alignment grid on the validation split")
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def _val_metrics(entry: dict[str, Any]) -> dict[str, float]:
    row = {h: entry["metrics"][b][k] for h, b, k in (("R@10", "item", "recall@10"), ("MRR", "item", "mrr"))}
    return {h: float(v) for h, v in row.items()}


def run_tune(cfg: TuneConfig, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Run (or reuse) every trial, choose per method, write ``tune.{json,md,png}``; returns their paths."""
    from sid_index.index import SidIndex
    from training.align import run_align
    from training.evaluate import evaluate_engine, load_engine, load_test_targets

    samples = validation_samples(cfg.samples_dir, cfg.out_dir)
    index = SidIndex.load(cfg.index_dir)
    targets = load_test_targets(samples, index, None)
    results: list[dict[str, Any]] = []
    t0 = time.time()

    def evaluate(model_dir: Path) -> dict[str, float]:
        engine, tokenizer = load_engine(model_dir, index, cfg.index_dir, engine="torch")
        return _val_metrics(evaluate_engine(engine, tokenizer, targets, replace(cfg.eval, hallucination=False)))

    sft_path = cfg.out_dir / "sft_val.json"
    sft_key = {"sft": str(cfg.sft_dir), "eval": asdict(cfg.eval)}
    cached = json.loads(sft_path.read_text()) if sft_path.is_file() else None
    if cached is None or cached.get("settings") != sft_key:
        cached = {"settings": sft_key, "val": evaluate(cfg.sft_dir)}
        write_json_atomic(sft_path, cached)
    sft_val = cached["val"]
    all_trials = trials(cfg)
    for k, trial in enumerate(all_trials, 1):
        run_dir = cfg.out_dir / "trials" / trial.name
        path = run_dir / "result.json"
        settings = {"trial": trial.name, "sft": str(cfg.sft_dir), "samples": str(cfg.samples_dir),
                    "eval": asdict(cfg.eval), "train_limit": cfg.train_limit}
        if progress is not None:
            progress(f"[{k}/{len(all_trials)}] {trial.name} ({time.time() - t0:.0f} s so far)")
        old = json.loads(path.read_text()) if path.is_file() else None
        if old is not None and old.get("settings") == settings:
            results.append(old["result"])
            continue
        t_run = time.time()
        model_dir = run_align(_align_config(cfg, trial, samples, run_dir))
        t_eval = time.time()
        result = {"name": trial.name, "method": trial.method, "lr": trial.lr, "steps": trial.steps,
                  "loss": trial.loss, "overrides": trial.overrides(), "val": evaluate(model_dir),
                  "train_seconds": t_eval - t_run, "eval_seconds": time.time() - t_eval}
        write_json_atomic(path, {"settings": settings, "result": result})
        results.append(result)
    doc = {"samples": str(cfg.samples_dir), "sft": str(cfg.sft_dir), "val_sessions": len(targets),
           "eval": asdict(cfg.eval), "sft_val": sft_val, "trials": results, "chosen": choose(results),
           "wall_seconds": time.time() - t0}
    paths = {"json": cfg.out_dir / "tune.json", "markdown": cfg.out_dir / "tune.md", "png": cfg.out_dir / "tune.png"}
    write_json_atomic(paths["json"], doc, indent=1, sort_keys=False)
    write_text_atomic(paths["markdown"], _markdown(doc))
    _plot(doc, paths["png"])
    return paths

