"""SFT's default schedule: validation split, the step rule, early stopping from the log, and (slow) default SFT
beating both popularity baselines of ``radgr eval`` on a small world made by the simulator."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import TrainerControl, TrainerState

from cli.main import main
from training.model import read_train_info
from training.sft_schedule import (
    BEST_WEIGHTS_FILE,
    SftSchedule,
    ValidationCallback,
    early_stop_status,
    load_best_weights,
    planned_steps,
    split_validation,
)


def test_planned_steps_rule() -> None:
    s = SftSchedule(min_steps=600, max_epochs=30)
    # 2,000 pairs, batch 64: 32 steps/epoch; one epoch is far too little, min_steps decides
    assert planned_steps(2000, 64, 1.0, s)["steps"] == 600
    # 100 pairs: 2 steps/epoch; 30 epochs (60 steps) cap min_steps
    p = planned_steps(100, 64, 1.0, s)
    assert p["steps"] == 60 and p["rule"].startswith("max_epochs")
    # 100,000 pairs: 1,563 steps/epoch > min_steps: the epochs decide
    assert planned_steps(100_000, 64, 1.0, s)["steps"] == 1563
    # more epochs asked than max_epochs allows: the asked epochs win
    assert planned_steps(100, 64, 40.0, s)["steps"] == 80
    with pytest.raises(ValueError, match="pairs"):
        planned_steps(0, 64, 1.0, s)


def test_schedule_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        SftSchedule(val_fraction=0.6)
    with pytest.raises(ValueError, match="patience"):
        SftSchedule(patience=-1)
    assert SftSchedule().eval_interval(600) == 30 and SftSchedule().eval_interval(50) == 10
    assert SftSchedule(eval_every=7).eval_interval(600) == 7


def test_split_validation_is_seeded_and_disjoint() -> None:
    rows = list(range(400))
    train, val = split_validation(rows, SftSchedule(), seed=0)
    assert len(val) == 20 and sorted(train + val) == rows and not set(train) & set(val)
    assert split_validation(rows, SftSchedule(), seed=0) == (train, val)
    assert split_validation(rows, SftSchedule(), seed=1)[1] != val
    assert split_validation(list(range(100)), SftSchedule(), seed=0)[1] == []  # 5 < val_min_sessions
    assert len(split_validation(list(range(100_000)), SftSchedule(), seed=0)[1]) == 500  # val_max_sessions


def test_grouped_split_never_trains_on_a_held_out_prompt(caplog: pytest.LogCaptureFixture) -> None:
    rows = [(f"prompt {i % 150}", i) for i in range(400)]  # 150 prompts, each 2 or 3 times
    train, val = split_validation(rows, SftSchedule(), seed=0, group=lambda r: r[0])
    assert 8 <= len(val) <= 20 and sorted(train + val) == sorted(rows)
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert split_validation(rows, SftSchedule(), seed=0, group=lambda r: r[0]) == (train, val)
    # ungrouped, the same rows put most held-out prompts in training as well
    train_rows, val_plain = split_validation(rows, SftSchedule(), seed=0)
    train_plain = {p for p, _ in train_rows}
    assert sum(p in train_plain for p, _ in val_plain) > len(val_plain) // 2
    # three prompts everywhere: whole prompts cannot be held out, so sessions are drawn one by one (warned)
    few = [("abc"[i % 3], i) for i in range(400)]
    with caplog.at_level("WARNING", logger="training.sft_schedule"):
        grouped = split_validation(few, SftSchedule(), seed=0, group=lambda r: r[0])
    assert grouped == split_validation(few, SftSchedule(), seed=0) and "one by one" in caplog.text


def test_early_stop_status_from_the_log() -> None:
    log: list[dict[str, Any]] = [{"step": 10, "loss": 3.0}, {"step": 10, "eval_loss": 2.0},
                                 {"step": 20, "eval_loss": 1.5}, {"step": 30, "eval_loss": 1.4995},
                                 {"step": 40, "eval_loss": 1.6}]
    st = early_stop_status(log, patience=2, min_delta=1e-3)
    assert st == {"best": 1.5, "best_step": 20, "since_best": 2, "stop": True}
    assert not early_stop_status(log, patience=3, min_delta=1e-3)["stop"]
    assert not early_stop_status(log, patience=0, min_delta=1e-3)["stop"]
    assert early_stop_status([], patience=2, min_delta=0.0)["best"] is None


class _Const(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def test_validation_callback_logs_and_stops(tmp_path: Path) -> None:
    """Validation losses 1.0, 0.8, 0.9, 0.95 (a fake loss per call): with patience 2 it stops after the 4th; the
    weights of each new best (steps 5 and 10) are kept on disk, and the best ones are what loads back."""
    values = iter([1.0, 0.8, 0.9, 0.95])
    batch = {"num_units": 2, "x": torch.zeros(2)}
    best = tmp_path / BEST_WEIGHTS_FILE
    cb = ValidationCallback([batch], lambda m, b: torch.tensor(2.0 * next(values), dtype=torch.float64), interval=5,
                            schedule=SftSchedule(patience=2), best_path=best)
    state, control = TrainerState(), TrainerControl()
    state.max_steps = 100
    args: Any = SimpleNamespace()
    model = _Const()
    for step in range(1, 21):
        state.global_step = step
        with torch.no_grad():
            model.w.fill_(float(step))  # the weights say which step they are from
        cb.on_step_end(args, state, control, model=model)
        if control.should_training_stop:
            break
    assert state.global_step == 20 and cb.stopped_early
    assert [(r["step"], r["eval_loss"]) for r in state.log_history] == [(5, 1.0), (10, 0.8), (15, 0.9), (20, 0.95)]
    assert float(model.w.detach()) == 20.0
    assert load_best_weights(model, best, best_step=15) is None and float(model.w.detach()) == 20.0  # not that step
    assert load_best_weights(model, best, best_step=10) == 10 and float(model.w.detach()) == 10.0
    assert load_best_weights(model, tmp_path / "missing.safetensors", best_step=10) is None


def _small_sim_world(root: Path) -> dict[str, Path]:
    """The simulator on a 300-item catalog (4 days, short histories so prompts stay short), SIDs from category
    one-hots plus noise (no encoder)."""
    from training.data.sim_config import SimConfig
    from training.data.simulator import simulate_to_dir

    data, index, samples = root / "data", root / "index", root / "samples"
    simulate_to_dir(SimConfig(items=300, users=80, sessions_per_day=120, days=4, initial_history=2, history_cap=5,
                              seed=1), data)
    cat = pq.read_table(data / "catalog.parquet").column("category").to_pylist()
    names = sorted(set(cat))
    rng = np.random.default_rng(0)
    emb = np.zeros((len(cat), len(names) + 8), dtype=np.float32)
    emb[np.arange(len(cat)), [names.index(c) for c in cat]] = 3.0
    emb[:, len(names):] = rng.normal(size=(len(cat), 8))
    np.save(root / "emb.npy", emb)
    assert main(["index", "build", "--catalog", str(data / "catalog.parquet"), "--out", str(index),
                 "--codebooks", "16,8,8", "--embeddings", str(root / "emb.npy")]) == 0
    assert main(["data", "samples", "--sessions", str(data / "sessions.parquet"), "--index", str(index),
                 "--catalog", str(data / "catalog.parquet"), "--out", str(samples)]) == 0
    return {"data": data, "index": index, "samples": samples}


@pytest.mark.slow
def test_default_sft_beats_both_popularity_baselines(tmp_path: Path) -> None:
    """``radgr train sft`` with every schedule default, then ``radgr eval --baseline popularity``: the model's item
    R@10 and MRR exceed both popularity rows (same beam budget; all items, no beam limit)."""
    w = _small_sim_world(tmp_path)
    run = tmp_path / "sft"
    assert main(["train", "sft", "--samples", str(w["samples"]), "--index", str(w["index"]), "--out", str(run),
                 "--catalog", str(w["data"] / "catalog.parquet"), "--tokenizer-vocab", "600"]) == 0
    info = read_train_info(run / "final")
    sched = info["schedule"]
    assert sched["planned_steps"] > sched["epoch_steps"]  # one epoch would have been the old default
    assert sched["val_sessions"] >= 8 and info["val_loss"] is not None
    assert (run / "schedule.png").is_file()
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(run / "final"), "--index", str(w["index"]), "--samples", str(w["samples"]),
                 "--baseline", "popularity", "--beam-width", "32", "--top-k", "100", "--no-hallucination",
                 "--engine", "torch", "--out", str(report)]) == 0
    doc = json.loads(report.read_text())
    sft, *pops = doc["results"]
    assert [p["name"] for p in pops] == ["popularity", "popularity (items, no beam limit)"]
    for pop in pops:
        for key in ("recall@10", "mrr"):
            assert sft["metrics"]["item"][key] > pop["metrics"]["item"][key], (key, pop["name"], sft, pop)
    assert "R@10" in sft["ci"] and "paired" in pops[0] and "run_info" in doc
