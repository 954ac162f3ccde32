"""MiniOneRec's protocol (HR@K, NDCG@K with one target per example) on a hand-made ranking.

The ranking is a, b, ..., k (11 items). Five examples with targets a (rank 0), c (rank 2), f (rank 5), z (absent) and
k (rank 10), plus one session with two positives (skipped). By hand:
HR@3 = HR@5 = 2/5 = 0.4 (a, c); HR@10 = 3/5 = 0.6 (f at rank 5 counts, k at rank 10 does not);
NDCG@3 = NDCG@5 = (1/log2 2 + 1/log2 4) / 5 = 1.5 / 5 = 0.3; NDCG@10 = (1.5 + 1/log2 7) / 5 = 0.371241.
HR@10's interval: values 1, 1, 1, 0, 0 have sd = sqrt(0.3) = 0.547723, half-width 1.959964 × 0.547723 / √5 = 0.480091
→ [0.119909, 1.0] (the upper end clipped at 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from training.evaluate import Ranking, SessionTargets
from training.minionerec_eval import (
    MINIONEREC_BEAM_WIDTH,
    PUBLISHED_INDUSTRIAL,
    metrics_from_ranks,
    minionerec_markdown,
    minionerec_metrics,
    target_rank,
    write_minionerec_table,
)

ITEMS = tuple("abcdefghijk")


def _target(positives: set[str]) -> SessionTargets:
    return SessionTargets("s", "", frozenset(positives), frozenset(), frozenset(), frozenset())


def _example() -> tuple[list[Ranking], list[SessionTargets]]:
    targets = [_target({t}) for t in ("a", "c", "f", "z", "k")] + [_target({"a", "b"})]
    return [Ranking((), ITEMS)] * len(targets), targets


def test_hr_and_ndcg_on_a_hand_made_ranking() -> None:
    rankings, targets = _example()
    m = minionerec_metrics(rankings, targets)
    assert (m["examples"], m["skipped"]) == (5, 1)
    assert m["hr@3"] == pytest.approx(0.4) and m["hr@5"] == pytest.approx(0.4) and m["hr@10"] == pytest.approx(0.6)
    assert m["ndcg@3"] == pytest.approx(0.3) and m["ndcg@5"] == pytest.approx(0.3)
    assert m["ndcg@10"] == pytest.approx((1.5 + 1 / math.log2(7)) / 5) == pytest.approx(0.371241, abs=1e-6)
    assert m["ci95"]["hr@10"] == pytest.approx([0.119909, 1.0], abs=1e-6)
    assert target_rank(ITEMS, "k") == 10 and target_rank(ITEMS, "z") is None
    assert MINIONEREC_BEAM_WIDTH == 50


def test_edge_cases() -> None:
    assert metrics_from_ranks([]) == {"examples": 0, "ci95": {}}
    one = metrics_from_ranks([0])
    assert one["hr@3"] == 1.0 and one["ndcg@10"] == 1.0 and one["ci95"]["hr@3"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="K must be >= 1, given 0"):
        metrics_from_ranks([0], ks=(0,))
    with pytest.raises(ValueError, match="must pair up"):
        minionerec_metrics([], [_target({"a"})])


def test_the_protocol_table_is_written_beside_the_report(tmp_path: Path) -> None:
    rankings, targets = _example()
    entry = {"name": "sft", "metrics": {"sessions": 6, "item": {}, "sid": {}}, "hallucination_rate": None,
             "minionerec": minionerec_metrics(rankings, targets)}
    md = write_minionerec_table([entry], tmp_path / "eval.json").read_text()
    assert (tmp_path / "eval.minionerec.md").is_file()
    assert "| MiniOneRec protocol | HR@3 | NDCG@3 | HR@5 | NDCG@5 | HR@10 | NDCG@10 |" in md
    assert "| sft | 0.4000 ± " in md and "5 examples" in md
    table = minionerec_markdown([entry], PUBLISHED_INDUSTRIAL)
    assert "| MiniOneRec (published) | – | – | – | – | 0.1586 | 0.1167 |" in table
