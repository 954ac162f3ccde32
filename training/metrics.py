"""The paper's retrieval metrics (docs/training.md, "Evaluation"), as small pure functions over one session's ranking.

Contract:
- ``recall_at_k(ranked, positives, k)`` = |positives ∩ ranked[:k]| / |positives| (positives de-duplicated).
- ``reciprocal_rank(ranked, positives)`` = 1 / (1-based rank of the first positive in ``ranked``), 0 if none.
- ``session_metrics(ranked, positives, ks)`` -> ``{"recall@k": ..., "mrr": ...}``.
- ``mean_metrics(rows)`` averages per-session dicts (the paper averages over test sessions); sessions without
  positives are left out by the caller (``session_metrics`` raises on an empty positive set).
- ``hallucination_rate(valid_flags)`` = invalid generated SIDs / all generated SIDs, pooled over sessions.
A ranked list must not repeat an element (ValueError): repeated entries would double-count recall.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence


def _check_ranked(ranked: Sequence[Hashable]) -> None:
    if len(set(ranked)) != len(ranked):
        raise ValueError("ranked must not repeat an element")


def recall_at_k(ranked: Sequence[Hashable], positives: Iterable[Hashable], k: int) -> float:
    """Share of the (distinct) positives found in the top ``k`` of ``ranked``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, given {k}")
    pos = set(positives)
    if not pos:
        raise ValueError("positives must hold at least one element, given 0")
    _check_ranked(ranked)
    return sum(1 for x in ranked[:k] if x in pos) / len(pos)


def reciprocal_rank(ranked: Sequence[Hashable], positives: Iterable[Hashable]) -> float:
    """1 / rank of the first positive in ``ranked`` (ranks start at 1); 0.0 if no positive is ranked."""
    pos = set(positives)
    if not pos:
        raise ValueError("positives must hold at least one element, given 0")
    _check_ranked(ranked)
    for rank, x in enumerate(ranked, start=1):
        if x in pos:
            return 1.0 / rank
    return 0.0


def session_metrics(ranked: Sequence[Hashable], positives: Iterable[Hashable], ks: Sequence[int]) -> dict[str, float]:
    """``recall@k`` for every ``k`` in ``ks`` and ``mrr`` for one session."""
    pos = set(positives)
    out = {f"recall@{k}": recall_at_k(ranked, pos, k) for k in ks}
    out["mrr"] = reciprocal_rank(ranked, pos)
    return out


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-key mean over sessions (every row must have the same keys)."""
    if not rows:
        raise ValueError("rows must hold at least one session, given 0")
    keys = list(rows[0])
    for i, r in enumerate(rows):
        if list(r) != keys:
            raise ValueError(f"rows[{i}] has keys {list(r)}, expected {keys}")
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in keys}


def hallucination_rate(valid_flags: Iterable[Sequence[bool]]) -> float:
    """Invalid SIDs / generated SIDs over all sessions (each session gives the validity of its generated SIDs)."""
    total = 0
    invalid = 0
    for flags in valid_flags:
        total += len(flags)
        invalid += sum(1 for f in flags if not f)
    if total == 0:
        raise ValueError("valid_flags must hold at least one generated SID, given 0")
    return invalid / total
