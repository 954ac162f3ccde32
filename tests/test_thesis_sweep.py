"""The thesis sweep: worlds per knob level, the paper table on each, paired gains with intervals, a plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from cli.sweep_cmd import SWEEP_PRESETS, sweep_points
from training.thesis_sweep import COMPARISONS, sweep_markdown


def test_points_are_the_base_then_each_knob_low_and_high() -> None:
    points = sweep_points(SWEEP_PRESETS["default"], ("position_bias", "codebooks"))
    assert [p.name for p in points] == ["base", "position_bias=0", "position_bias=3", "codebooks=128,8,8",
                                        "codebooks=8,32,16"]
    base, pb0, _, cb, _ = points
    assert base.sim_options == ("--position-bias", "1", "--relevant-breadth", "6") and base.codebooks == "32,16,16"
    assert pb0.sim_options == ("--position-bias", "0", "--relevant-breadth", "6") and pb0.codebooks == "32,16,16"
    assert cb.sim_options == base.sim_options and cb.codebooks == "128,8,8"


def _row(name: str, knob: str, rate: float, diff: float) -> dict[str, object]:
    d = {"diff": diff, "lo": diff - 0.01, "hi": diff + 0.01, "p": 0.001 if abs(diff) > 0.01 else 0.5}
    return {"name": name, "knob": knob, "value": name.split("=")[-1],
            "rates": {"pseudo_negative_rate": rate, "positives_per_sample": 1.5, "share_first_token": 0.4,
                      "share_first_two_tokens": 0.1},
            "comparisons": {label: {"truth": {"R@10": d}} for label, _, _ in COMPARISONS}}


def test_markdown_orders_a_knob_by_its_measured_rate_and_marks_significance() -> None:
    report = {"points": [_row("position_bias=3", "position_bias", 0.45, 0.05), _row("base", "base", 0.40, 0.0),
                         _row("position_bias=0", "position_bias", 0.30, -0.002)]}
    md = sweep_markdown(report, "truth").splitlines()
    rows = [line for line in md if line.startswith("| ") and not line.startswith("| value")]
    assert [r.split(" | ")[0] for r in rows] == ["| 0", "| base", "| 3"]
    assert "+0.0500 [+0.0400, +0.0600]**" in rows[2] and "**" not in rows[0]


@pytest.mark.slow
def test_tiny_sweep_runs_every_point_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "sweep"
    argv = ["experiment", "thesis-sweep", "--out", str(out), "--config", "tiny", "--seeds", "1", "--knobs",
            "position_bias"]
    assert main(argv) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in report["points"]] == ["base", "position_bias=0", "position_bias=3"]
    for p in report["points"]:
        assert p["complete"] and p["seeds"] == 1
        assert 0.0 <= p["rates"]["pseudo_negative_rate"] <= 1.0 and p["rates"]["positives_per_sample"] >= 1.0
        assert set(p["comparisons"]) == {label for label, _, _ in COMPARISONS}
        for cmp in p["comparisons"].values():
            d = cmp["truth"]["R@10"]
            assert d["lo"] <= d["diff"] <= d["hi"] and d["sessions"] >= 1
    # the worlds differ: position bias changes the simulated clicks
    sessions = [(out / "points" / n / "data" / "sessions.parquet").read_bytes() for n in ("base", "position_bias=0")]
    assert sessions[0] != sessions[1]
    assert (out / "sweep.png").stat().st_size > 10_000 and "### position_bias" in (out / "sweep.md").read_text()
    stamp = (out / "points" / "base" / "table" / "paper_table.json").stat().st_mtime_ns
    assert main([*argv, "--seeds", "1"]) == 0  # every step reused: nothing retrained or rewritten
    assert (out / "points" / "base" / "table" / "paper_table.json").stat().st_mtime_ns == stamp


def test_bad_options_exit_2_naming_the_option(tmp_path: Path) -> None:
    assert main(["experiment", "thesis-sweep", "--out", str(tmp_path), "--config", "huge"]) == 2
    assert main(["experiment", "thesis-sweep", "--out", str(tmp_path), "--knobs", "colour"]) == 2
    assert main(["experiment", "thesis-sweep", "--out", str(tmp_path), "--seeds", "0"]) == 2
