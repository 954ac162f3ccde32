"""Metrics of method.md §4 with numbers derived by hand."""

from __future__ import annotations

import pytest

from training.metrics import hallucination_rate, mean_metrics, recall_at_k, reciprocal_rank, session_metrics


def test_recall_by_hand() -> None:
    """ranked = a b c d e, positives = {b, e, z}.

    top-1 {a}: 0/3; top-2 {a,b}: 1/3; top-5: b and e -> 2/3; z is never ranked so recall never reaches 1;
    k beyond the list length counts the whole list: 2/3.
    """
    ranked = ["a", "b", "c", "d", "e"]
    pos = ["b", "e", "z"]
    assert recall_at_k(ranked, pos, 1) == 0.0
    assert recall_at_k(ranked, pos, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, pos, 5) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, pos, 500) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, ["b", "b", "e"], 5) == 1.0  # positives de-duplicated: {b, e}


def test_mrr_by_hand() -> None:
    """First positive at rank 2 -> 1/2; at rank 1 -> 1; absent -> 0; only the first positive counts."""
    assert reciprocal_rank(["a", "b", "c"], {"b", "c"}) == 0.5
    assert reciprocal_rank(["c", "b"], {"b", "c"}) == 1.0
    assert reciprocal_rank(["a", "d"], {"b"}) == 0.0
    assert reciprocal_rank([], {"b"}) == 0.0
    assert reciprocal_rank([(0, 1, 2), (3, 4, 5)], {(3, 4, 5)}) == 0.5  # SIDs as code tuples


def test_session_and_mean_by_hand() -> None:
    """Session 1: ranked 1..4, positives {2}: r@1 0, r@3 1, mrr 1/2.
    Session 2: ranked 1..4, positives {4, 9}: r@1 0, r@3 0, mrr 1/4.
    Mean: r@1 0, r@3 0.5, mrr (1/2 + 1/4)/2 = 0.375.
    """
    s1 = session_metrics([1, 2, 3, 4], [2], ks=(1, 3))
    s2 = session_metrics([1, 2, 3, 4], [4, 9], ks=(1, 3))
    assert s1 == {"recall@1": 0.0, "recall@3": 1.0, "mrr": 0.5}
    assert s2 == {"recall@1": 0.0, "recall@3": 0.0, "mrr": 0.25}
    assert mean_metrics([s1, s2]) == {"recall@1": 0.0, "recall@3": 0.5, "mrr": 0.375}


def test_hallucination_pooled_by_hand() -> None:
    """Session 1: 4 SIDs, 1 invalid; session 2: 2 SIDs, 1 invalid -> 2 / 6 (pooled, not the mean of 1/4 and 1/2)."""
    assert hallucination_rate([[True, True, False, True], [False, True]]) == pytest.approx(2 / 6)
    assert hallucination_rate([[True]]) == 0.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(["a"], ["a"], 0)
    with pytest.raises(ValueError, match="positives must hold"):
        recall_at_k(["a"], [], 1)
    with pytest.raises(ValueError, match="positives must hold"):
        reciprocal_rank(["a"], [])
    with pytest.raises(ValueError, match="must not repeat"):
        recall_at_k(["a", "a"], ["a"], 2)
    with pytest.raises(ValueError, match="at least one session"):
        mean_metrics([])
    with pytest.raises(ValueError, match=r"rows\[1\] has keys"):
        mean_metrics([{"a": 1.0}, {"b": 1.0}])
    with pytest.raises(ValueError, match="at least one generated SID"):
        hallucination_rate([[], []])
