"""Bootstrap intervals and paired tests on hand-made inputs: a known difference is significant, an A/A is not,
seeds pair up, ratio metrics pool, and evaluation entries stack into samples."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from training.eval_intervals import add_eval_statistics, compare, intervals, metric_sample, strip_sessions
from training.stats import (
    MetricSample,
    bootstrap_ci,
    paired_difference,
    paired_se,
    sessions_needed,
    significance_mark,
)


def test_a_known_difference_is_significant() -> None:
    """Session i: a hits with p = .6, b with p = .4 (independent): diff ≈ .2, se ≈ sqrt(.48/400) ≈ .035."""
    rng = np.random.default_rng(1)
    a = (rng.random(400) < 0.6).astype(float)
    b = (rng.random(400) < 0.4).astype(float)
    r = paired_difference(MetricSample.of([a]), MetricSample.of([b]), resamples=1000)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())
    assert r["lo"] > 0 and r["p"] < 0.01
    assert r["se"] == pytest.approx(r["paired_se"], rel=0.15)
    assert significance_mark(r["p"]) == "**"


def test_identical_methods_are_not_different() -> None:
    a = np.random.default_rng(0).random((1, 50))
    r = paired_difference(MetricSample.of(a), MetricSample.of(a.copy()), resamples=200)
    assert r["diff"] == 0.0 and r["lo"] == 0.0 and r["hi"] == 0.0 and r["p"] == 1.0
    assert significance_mark(r["p"]) == ""


def test_a_over_a_rejects_about_five_percent() -> None:
    """200 A/A experiments (both arms from the same distribution): the 5 % test rejects ~5 % of them."""
    rng = np.random.default_rng(7)
    rejected = 0
    for k in range(200):
        a, b = rng.random((1, 120)), rng.random((1, 120))
        rejected += paired_difference(MetricSample.of(a), MetricSample.of(b), resamples=300, seed=k)["p"] < 0.05
    assert 2 <= rejected <= 22, rejected


def test_seeds_are_paired() -> None:
    """a = b + 0.1 on every (seed, session), b varying by seed: paired by seed the difference never moves."""
    rng = np.random.default_rng(3)
    b = rng.random((3, 30)) + np.array([[0.0], [0.5], [1.0]])
    r = paired_difference(MetricSample.of(b + 0.1), MetricSample.of(b), resamples=300)
    assert r["lo"] == pytest.approx(0.1) and r["hi"] == pytest.approx(0.1)
    # against one seed of b (a single checkpoint, like SFT), a's seed spread enters the interval
    r1 = paired_difference(MetricSample.of(b + 0.1), MetricSample.of(b[:1]), resamples=300)
    assert r1["hi"] - r1["lo"] > 0.3


def test_bootstrap_interval_matches_the_normal_one() -> None:
    x = np.random.default_rng(5).random(1000)
    ci = bootstrap_ci(MetricSample.of([x]), resamples=2000)
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert ci["estimate"] == pytest.approx(x.mean())
    assert ci["lo"] == pytest.approx(x.mean() - 1.96 * se, abs=0.2 * se)
    assert ci["hi"] == pytest.approx(x.mean() + 1.96 * se, abs=0.2 * se)


def test_ratio_metric_is_pooled() -> None:
    s = MetricSample.of([[1, 0, 3]], den=[[4, 4, 4]])
    assert s.estimate() == pytest.approx(4 / 12)
    assert s.per_session().tolist() == pytest.approx([0.25, 0.0, 0.75])
    ci = bootstrap_ci(s, resamples=500)
    assert 0.0 <= ci["lo"] <= 4 / 12 <= ci["hi"] <= 0.75


def test_sizing_arithmetic() -> None:
    assert paired_se(np.array([1.0, -1.0, 1.0, -1.0])) == pytest.approx(np.std([1, -1, 1, -1], ddof=1) / 2)
    assert sessions_needed(0.2, 0.005) == 1600
    with pytest.raises(ValueError, match="target_se"):
        sessions_needed(0.2, 0.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci(MetricSample.of([[1.0]]), resamples=10)


def _entry(name: str, r10: list[float], ids: list[str], invalid: list[int] | None = None) -> dict[str, Any]:
    per = {"session_ids": ids, "item": {"recall@10": r10}, "sid": {}}
    e: dict[str, Any] = {"name": name, "metrics": {"sessions": len(ids), "item": {"recall@10": float(np.mean(r10))},
                                                   "sid": {}, "per_session": per}}
    if invalid is not None:
        e["hallucination_rate"] = sum(invalid) / (4 * len(ids))
        e["hallucination_per_session"] = {"invalid": invalid, "total": [4] * len(ids)}
    return e


def test_entries_stack_and_compare() -> None:
    ids = [f"s{i}" for i in range(40)]
    good = _entry("model", [1.0] * 30 + [0.0] * 10, ids, invalid=[1] * 40)
    bad = _entry("popularity", [1.0] * 5 + [0.0] * 35, ids)
    assert metric_sample([good, good], "item", "recall@10").num.shape == (2, 40)  # type: ignore[union-attr]
    assert metric_sample([good], None, None).estimate() == pytest.approx(0.25)  # type: ignore[union-attr]
    ci = intervals([good])
    assert set(ci) == {"halluc.", "R@10"} and ci["R@10"]["lo"] < 0.75 < ci["R@10"]["hi"]
    diff = compare([bad], [good])["R@10"]
    assert diff["diff"] == pytest.approx(-0.625) and diff["p"] < 0.01
    entries = [good, bad]
    add_eval_statistics(entries)
    assert entries[1]["paired"]["against"] == "model" and "R@10" in entries[1]["paired"]["metrics"]
    lean = strip_sessions(entries[0])
    assert "per_session" not in lean["metrics"] and "hallucination_per_session" not in lean
    assert "per_session" in entries[0]["metrics"]
    other = _entry("x", [0.0] * 40, [f"t{i}" for i in range(40)])
    with pytest.raises(ValueError, match="same test sessions"):
        compare([other], [good])


def test_variant_statistics_pairs_every_method_with_sft_and_rad_dpo() -> None:
    from training.experiment_report import shape_checks, variant_statistics

    ids = [f"s{i}" for i in range(60)]
    rng = np.random.default_rng(0)
    sft = [_entry("sft", list((rng.random(60) < 0.3).astype(float)), ids)]
    rad = [_entry("rad-dpo", list((rng.random(60) < 0.9).astype(float)), ids) for _ in range(2)]
    dpo = [_entry("dpo", list((rng.random(60) < 0.3).astype(float)), ids) for _ in range(2)]
    stats = variant_statistics({"sft": sft, "rad-dpo": rad, "dpo": dpo})
    assert set(stats["paired"]["dpo"]) == {"vs_sft", "vs_rad-dpo"} and set(stats["paired"]["sft"]) == {"vs_rad-dpo"}
    assert stats["paired"]["dpo"]["vs_rad-dpo"]["R@10"]["p"] < 0.01
    agg = {v: {"R@10": [float(np.mean([e["metrics"]["item"]["recall@10"] for e in es])), 0.0, len(es)]}
           for v, es in (("sft", sft), ("rad-dpo", rad), ("dpo", dpo))}
    checks = {c["claim"]: c for c in shape_checks(agg, stats["paired"])}
    r = checks["RAD-DPO above DPO"]["metrics"]["item recall@10"]
    assert r["holds"] and r["significant"] and r["p"] < 0.01
    siz = stats["sizing"]["dpo vs_sft"]
    d = metric_sample(dpo, "item", "recall@10").per_session() - metric_sample(sft, "item", "recall@10").per_session()  # type: ignore[union-attr]
    assert siz["per_session_sd"] == pytest.approx(d.std(ddof=1))
    assert siz["sessions_for_target"] == int(np.ceil((d.std(ddof=1) / 0.005) ** 2))
