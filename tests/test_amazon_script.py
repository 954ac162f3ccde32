"""``scripts/amazon_minionerec.sh`` end to end on a slice of the shipped Amazon data (the README's run, shrunk):
every step runs, the tune's choice reaches ``radgr train align``, both evaluations carry MiniOneRec's protocol for
RAD-DPO and SFT, and a rerun skips every finished step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "amazon18-industrial"


def _slice(dst: Path, rows: int) -> Path:
    """items.json as shipped, the first ``rows`` rows of valid.csv and test.csv."""
    dst.mkdir(parents=True)
    shutil.copy(DATASET / "items.json", dst / "items.json")
    for name in ("valid.csv", "test.csv"):
        lines = (DATASET / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (dst / name).write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return dst


@pytest.mark.slow
def test_the_amazon_script_runs_every_step_and_resumes(tmp_path: Path) -> None:
    if not DATASET.is_dir():
        pytest.fail(f"{DATASET} is missing (../shared is part of the repository's environment)")
    out = tmp_path / "run"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "DATASET": str(_slice(tmp_path / "amazon", 300)), "PRESET": "tiny", "SFT_MAX_STEPS": "6",
           "SFT_EVAL_EVERY": "3", "TUNE_LRS": "1e-4", "TUNE_STEPS": "2", "TUNE_LIMIT": "32", "EVAL_LIMIT": "12",
           "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(ROOT / "scripts" / "amazon_minionerec.sh"), str(out)]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    steps = [line.split("\t")[0] for line in (out / "times.tsv").read_text().splitlines()]
    assert steps == ["import", "index", "samples", "sft", "tune", "rad-dpo", "eval-b50", "eval-b128"]
    chosen = json.loads((out / "tune" / "tune.json").read_text())["chosen"]["rad-dpo"]["overrides"]
    info = json.loads((out / "rad" / "final" / "radgr_train.json").read_text())
    assert info["steps"] == int(chosen["max_steps"]) == 2
    assert info["loss_config"]["gamma"] == chosen["gamma"] and info["config"]["lr"] == chosen["lr"]
    for b in (50, 128):
        report = json.loads((out / "eval" / f"rad_vs_sft_b{b}.json").read_text())
        assert report["config"]["beam_width"] == b
        by_name = {e["name"]: e for e in report["results"]}
        assert {"sft", "rad-dpo", "popularity"} <= set(by_name)
        for name in ("sft", "rad-dpo", "popularity"):
            mr = by_name[name]["minionerec"]
            assert mr["examples"] + mr["skipped"] == 12 and 0.0 <= mr["hr@10"] <= 1.0
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count(": done (") == 8
    assert len((out / "times.tsv").read_text().splitlines()) == 8
