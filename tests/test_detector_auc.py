"""ROC AUC (training/detector_auc.py): against the double loop over every (positive, negative) pair, hand cases,
and the bounded streaming accumulator (exact below its cap, a systematic sample above it, state round-trip)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.detector_auc import AucAccumulator, roc_auc


def _slow_auc(scores: list[float], labels: list[bool]) -> float:
    """The definition: over every (positive, negative) pair, 1 if the positive scores higher, ½ on a tie."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    won = 0.0
    for p in pos:
        for n in neg:
            won += 1.0 if p > n else 0.5 if p == n else 0.0
    return won / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(30))
def test_matches_double_loop_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    # few distinct values, so ties are frequent, inside and across classes
    scores = rng.integers(0, int(rng.integers(1, 8)), size=n).astype(float) / 4.0
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    expected = _slow_auc(scores.tolist(), labels.tolist())
    got = roc_auc(scores, labels)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_hand_cases() -> None:
    # perfect: every positive above every negative
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    # reversed
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    # all tied: every pair is a tie
    assert roc_auc([0.3] * 5, [True, False, True, False, False]) == 0.5
    # 2 positives {0.5, 0.9}, 2 negatives {0.5, 0.1}: pairs (0.5,0.5)=½, (0.5,0.1)=1, (0.9,·)=1+1 → 3.5/4
    assert roc_auc([0.5, 0.9, 0.5, 0.1], [True, True, False, False]) == 0.875
    assert math.isnan(roc_auc([0.1, 0.2], [True, True]))
    assert math.isnan(roc_auc([0.1, 0.2], [False, False]))
    assert math.isnan(roc_auc([], []))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        roc_auc([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0.1, float("nan")], [True, False])


def test_accumulator_is_exact_below_cap_and_counts_every_pair() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(500).round(2)
    labels = rng.random(500) < 0.3
    acc = AucAccumulator(cap=500)
    for lo in range(0, 500, 37):  # uneven batches, as tensors and arrays
        acc.add(torch.from_numpy(scores[lo:lo + 37]), labels[lo:lo + 37])
    assert acc.pairs == 500 and acc.kept == 500 and acc.stride == 1
    assert acc.auc() == pytest.approx(roc_auc(scores, labels), abs=1e-12)
    summary = acc.summary()
    assert summary["positives"] == int(labels.sum()) and summary["negatives"] == int((~labels).sum())
    assert summary["mean_score_positive"] == pytest.approx(scores[labels].mean())
    assert summary["mean_score_negative"] == pytest.approx(scores[~labels].mean())


def test_accumulator_above_cap_keeps_a_systematic_sample() -> None:
    """cap 64, 1,000 pairs: stride doubles to 16 (1,000 / 16 → 63 kept), the kept pairs are indices 0, 16, 32, ..."""
    rng = np.random.default_rng(1)
    scores = rng.random(1000)
    labels = rng.random(1000) < 0.5
    acc = AucAccumulator(cap=64)
    for lo in range(0, 1000, 7):
        acc.add(scores[lo:lo + 7], labels[lo:lo + 7])
    assert acc.stride == 16 and acc.kept == 63 and acc.pairs == 1000
    assert acc.auc() == pytest.approx(roc_auc(scores[::16], labels[::16]), abs=1e-12)
    assert acc.positives == int(labels.sum())  # counts cover every pair, not only the kept ones


def test_accumulator_state_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random(300)
    labels = rng.random(300) < 0.4
    straight = AucAccumulator(cap=50)  # the same batches, so even the float sums agree bit for bit
    straight.add(scores[:130], labels[:130])
    straight.add(scores[130:], labels[130:])
    first = AucAccumulator(cap=50)
    first.add(scores[:130], labels[:130])
    resumed = AucAccumulator.from_state_dict(first.state_dict())
    resumed.add(scores[130:], labels[130:])
    assert resumed.summary() == straight.summary()
    with pytest.raises(ValueError, match="missing"):
        AucAccumulator.from_state_dict({"cap": 4})


def test_empty_accumulator() -> None:
    acc = AucAccumulator()
    acc.add([], [])
    summary = acc.summary()
    assert summary["auc"] is None and summary["pairs"] == 0 and summary["mean_score_positive"] is None
