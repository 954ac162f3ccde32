"""Alignment hyper-parameters chosen on validation: the split never touches test, the choice, --tuned applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_world

from cli.main import main
from training.align_tune import choose
from training.experiment import tuned_align_parts
from training.losses import RadDpoConfig
from training.train_config import TrainConfig


def _result(name: str, method: str, r10: float, mrr: float) -> dict[str, Any]:
    return {"name": name, "method": method, "overrides": {"lr": 1e-4, "max_steps": 100.0}, "val": {"R@10": r10,
                                                                                                   "MRR": mrr}}


def test_choose_takes_the_best_recall_then_mrr_per_method() -> None:
    chosen = choose([_result("a", "dpo", 0.2, 0.1), _result("b", "dpo", 0.3, 0.05), _result("c", "dpo", 0.3, 0.07),
                     _result("d", "simpo", 0.1, 0.1)])
    assert chosen["dpo"]["trial"] == "c" and chosen["simpo"]["trial"] == "d"


def test_tuned_parts_set_lr_steps_and_the_methods_loss_only() -> None:
    train = TrainConfig(lr=3e-4, max_steps=200)
    tuned = {"rad-dpo": {"lr": 1e-4, "max_steps": 100.0, "gamma": 0.3}, "dpo": {"lr": 1e-4, "beta": 0.5}}
    parts = tuned_align_parts("rad-dpo", train, RadDpoConfig(tlgd=False), tuned)
    assert parts["train"].lr == 1e-4 and parts["train"].max_steps == 100
    assert parts["rad"].gamma == 0.3 and parts["rad"].tlgd is False  # the ablation's switch is kept
    assert parts["dpo"].beta == 0.1  # another method's choice does not leak
    dpo = tuned_align_parts("dpo", train, RadDpoConfig(), tuned)
    assert dpo["dpo"].beta == 0.5 and dpo["train"].max_steps == 200
    assert tuned_align_parts("simpo", train, RadDpoConfig(), tuned)["train"] == train  # not tuned: as given


@pytest.mark.slow
def test_tune_on_validation_then_paper_table_with_tuned(tmp_path: Path, tiny_lm_factory: Any) -> None:
    samples, index, sft = make_tiny_world(tmp_path, tiny_lm_factory, n_train=200, n_test=6)
    (samples / "test.parquet").write_bytes(b"not parquet: tuning must never read the test split")
    out = tmp_path / "tune"
    argv = ["experiment", "tune", "--samples", str(samples), "--index", str(index), "--sft", str(sft), "--out",
            str(out), "--methods", "dpo,rad-dpo", "--lrs", "1e-4,1e-3", "--steps", "2", "--limit", "16"]
    assert main(argv) == 0
    doc = json.loads((out / "tune.json").read_text())
    assert doc["val_sessions"] == 10  # 5 % of 200 train sessions, the SFT validation split
    assert len(doc["trials"]) == 2 * 2 * 2 and set(doc["chosen"]) == {"dpo", "rad-dpo"}
    for m, c in doc["chosen"].items():
        best = max((r for r in doc["trials"] if r["method"] == m), key=lambda r: (r["val"]["R@10"], r["val"]["MRR"]))
        assert c["val"] == best["val"] and c["overrides"]["max_steps"] == 2.0
    assert (out / "tune.md").is_file() and (out / "tune.png").stat().st_size > 1000
    stamps = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/result.json")}
    assert len(stamps) == 8
    assert main(argv) == 0  # every trial reused
    assert json.loads((out / "tune.json").read_text())["trials"] == doc["trials"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    (tmp_path / "w2").mkdir()
    samples2, index2, sft2 = make_tiny_world(tmp_path / "w2", tiny_lm_factory, n_train=24, n_test=6)
    table = tmp_path / "table"
    assert main(["experiment", "paper-table", "--samples", str(samples2), "--index", str(index2), "--sft", str(sft2),
                 "--out", str(table), "--config", "tiny", "--seeds", "1", "--methods", "sft,dpo,rad-dpo",
                 "--tuned", str(out / "tune.json")]) == 0
    settings = json.loads((table / "paper_table.json").read_text())["settings"]
    assert settings["tuned"]["rad-dpo"] == doc["chosen"]["rad-dpo"]["overrides"]
    info = json.loads((table / "runs" / "dpo-seed0" / "final" / "radgr_train.json").read_text())
    assert info["steps"] == 2 and info["config"]["lr"] == doc["chosen"]["dpo"]["overrides"]["lr"]
    assert info["loss_config"]["beta"] == doc["chosen"]["dpo"]["overrides"]["beta"]


def test_bad_tune_options_exit_2(tmp_path: Path) -> None:
    base = ["experiment", "tune", "--samples", str(tmp_path), "--index", str(tmp_path), "--sft", str(tmp_path),
            "--out", str(tmp_path / "o")]
    assert main([*base, "--methods", "ppo"]) == 2
    assert main([*base, "--lrs", "fast"]) == 2
    assert main([*base, "--steps", "0"]) == 2
