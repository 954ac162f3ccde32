"""The paper-table experiment: aggregation and claim checks by hand; the tiny config end to end from the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_world

from training.experiment import VARIANTS
from training.experiment_report import PAPER_NAMES, aggregate, mean_std, shape_checks


def _entry(r10: float, mrr: float, halluc: float = 0.1) -> dict[str, Any]:
    return {"hallucination_rate": halluc, "metrics": {"item": {"recall@10": r10, "mrr": mrr},
                                                      "sid": {"recall@8": r10, "mrr": mrr}}}


def test_mean_std_by_hand() -> None:
    """(0.2, 0.4): mean 0.3, sample std sqrt(((−0.1)² + 0.1²)/1) = 0.141421; one value: std 0."""
    m, s, n = mean_std([0.2, 0.4])
    assert m == pytest.approx(0.3) and n == 2 and s == pytest.approx(0.141421, abs=1e-6)
    assert mean_std([0.5]) == (0.5, 0.0, 1)


def test_aggregate_and_claims_by_hand() -> None:
    """SFT R@10 0.30; DPO 0.20/0.22 (mean 0.21 < SFT: the claim holds); SimPO 0.28 (below SFT: fails);
    RAD-DPO 0.35 above all; the no-TLGD ablation 0.36 above RAD-DPO (the claim fails)."""
    runs = {"sft": [_entry(0.30, 0.2)], "dpo": [_entry(0.20, 0.1), _entry(0.22, 0.1)], "simpo": [_entry(0.28, 0.19)],
            "rad-dpo": [_entry(0.35, 0.3)], "rad-dpo-no-tlgd": [_entry(0.36, 0.31)]}
    agg = aggregate(runs)
    assert agg["dpo"]["R@10"][0] == pytest.approx(0.21) and agg["dpo"]["R@10"][2] == 2
    assert agg["sft"]["halluc."] == [pytest.approx(0.1), 0.0, 1]
    checks = {c["claim"]: c for c in shape_checks(agg)}
    assert checks["DPO below SFT"]["holds_on"] == 4
    assert checks["SimPO above SFT"]["holds_on"] == 0
    assert checks["RAD-DPO above SFT"]["holds_on"] == 4
    assert checks["w/o TLGD below RAD-DPO"]["holds_on"] == 0
    assert "ORPO above SFT" not in checks  # ORPO not run: no claim


def test_cli_default_rows_and_report_names_match_variants() -> None:
    from cli.align_cmd import ALL_ROWS

    assert ALL_ROWS.split(",") == list(VARIANTS)
    assert list(PAPER_NAMES) == list(VARIANTS)  # the report's row order is the experiment's


@pytest.fixture
def tiny_world(tmp_path: Path, tiny_lm_factory: Any) -> tuple[Path, Path, Path]:
    """A 40-item index over codebooks (4, 4, 4), 24 train and 6 test samples whose codes are valid SIDs, and an
    'SFT' checkpoint (a random tiny model)."""
    return make_tiny_world(tmp_path, tiny_lm_factory, n_train=24, n_test=6)


@pytest.mark.slow
def test_paper_table_tiny_end_to_end(tiny_world: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """`radgr experiment paper-table --config tiny --seeds 2`: every row, mean ± std, claims, PNG; rerunning reuses
    the finished runs (no retraining: same numbers, far faster)."""
    from cli.main import main

    samples, index, sft = tiny_world
    out = tmp_path / "table"
    argv = ["experiment", "paper-table", "--samples", str(samples), "--index", str(index), "--sft", str(sft),
            "--out", str(out), "--seeds", "2", "--config", "tiny"]
    assert main(argv) == 0
    doc = json.loads((out / "paper_table.json").read_text())
    assert list(doc["aggregate"]) == list(VARIANTS)
    assert doc["aggregate"]["sft"]["R@10"][2] == 1 and doc["aggregate"]["rad-dpo"]["R@10"][2] == 2
    assert doc["test_sessions"] == 6
    assert {c["claim"] for c in doc["checks"]} >= {"DPO below SFT", "w/o RDRW below RAD-DPO"}
    assert "rdrw/weight_pseudo_neg" in doc["diagnostics"]["rad-dpo"]
    assert "rdrw/weight_pseudo_neg" not in doc["diagnostics"]["rad-dpo-no-rdrw"]
    assert 0.0 <= doc["diagnostics"]["rad-dpo"]["rdrw/auc"] <= 1.0  # RDRW as a detector, after warm-up
    assert "rdrw/auc" not in doc["diagnostics"]["rad-dpo-no-rdrw"]
    md = (out / "paper_table.md").read_text()
    assert "| RAD-DPO |" in md and "true relevance" in md
    # intervals and paired tests (training.stats): every variant against SFT and RAD-DPO, p in (0, 1]
    assert "Paired differences" in md and "bootstrap interval" in md and "Run: seed" in md
    vs = doc["statistics"]["paired"]["dpo"]
    assert set(vs) == {"vs_sft", "vs_rad-dpo"} and 0.0 < vs["vs_sft"]["R@10"]["p"] <= 1.0
    ci = doc["statistics"]["intervals"]["rad-dpo"]["R@10"]
    assert ci["lo"] <= doc["aggregate"]["rad-dpo"]["R@10"][0] <= ci["hi"]
    assert "per_session" not in doc["runs"]["dpo"][0]["metrics"] and doc["run_info"]["threads"]["torch"] >= 1
    assert doc["run_info"]["seed"] == "one per aligned run: 0, 1"
    assert (out / "paper_table.png").stat().st_size > 1000
    seeds = {e["seed"] for e in doc["runs"]["dpo"]}
    assert seeds == {0, 1}
    # the two seeds differ in their data order, so their models differ
    a, b = (out / "runs" / f"dpo-seed{s}" / "final" / "model.safetensors" for s in (0, 1))
    assert a.read_bytes() != b.read_bytes()
    mtime = (out / "runs" / "dpo-seed0" / "eval.json").stat().st_mtime
    assert main(argv) == 0
    assert (out / "runs" / "dpo-seed0" / "eval.json").stat().st_mtime == mtime
    assert json.loads((out / "paper_table.json").read_text())["aggregate"] == doc["aggregate"]


def test_paper_table_bad_config_names_field(tiny_world: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from cli.main import main

    samples, index, sft = tiny_world
    base = ["experiment", "paper-table", "--samples", str(samples), "--index", str(index), "--sft", str(sft),
            "--out", str(tmp_path / "x")]
    assert main([*base, "--config", "huge"]) == 2
    assert main([*base, "--methods", "sft,ppo"]) == 2
