"""Ranked SIDs → ranked items (vectorised CSR expansion).

Contract: given SID rows in score order (best first) and their scores, the items are the SIDs' item lists
concatenated in that order — within a SID, the index's order (popularity descending, from ``sid_item_indptr`` /
``sid_item_rows``) — truncated to ``top_k``. An item's score is its SID's score; ranks are 1-based and
consecutive. Rows ``< 0`` (invalid SIDs from unconstrained decoding) contribute no items.
:func:`expand_items_reference` is the slow, obviously-correct loop the fast path is tested against.
"""

from __future__ import annotations

import numpy as np


def expand_items(
    sid_rows: np.ndarray, scores: np.ndarray, indptr: np.ndarray, item_rows: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(item_row [n], sid_row [n], score [n])``, ``n <= top_k``, in rank order. ``sid_rows``/``scores`` ``[m]``."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, given {top_k}")
    sid_rows = np.asarray(sid_rows, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if sid_rows.shape != scores.shape or sid_rows.ndim != 1:
        raise ValueError(f"sid_rows and scores must be 1-D of equal length, given {sid_rows.shape}, {scores.shape}")
    keep = sid_rows >= 0
    sid_rows, scores = sid_rows[keep], scores[keep]
    start = indptr[sid_rows]
    counts = indptr[sid_rows + 1] - start
    # only as many SIDs as needed to fill top_k
    cum = np.cumsum(counts)
    n_sids = int(np.searchsorted(cum, top_k, side="left")) + 1
    sid_rows, scores, start, counts = sid_rows[:n_sids], scores[:n_sids], start[:n_sids], counts[:n_sids]
    owner = np.repeat(np.arange(sid_rows.shape[0]), counts)
    first = np.cumsum(counts) - counts
    pos = start[owner] + np.arange(owner.shape[0]) - first[owner]
    owner, pos = owner[:top_k], pos[:top_k]
    return item_rows[pos], sid_rows[owner], scores[owner]


def expand_items_reference(
    sid_rows: np.ndarray, scores: np.ndarray, indptr: np.ndarray, item_rows: np.ndarray, top_k: int
) -> list[tuple[int, int, float]]:
    """Slow reference of :func:`expand_items`: ``[(item_row, sid_row, score), ...]``."""
    out: list[tuple[int, int, float]] = []
    for row, score in zip(sid_rows, scores, strict=True):
        if row < 0:
            continue
        for k in range(int(indptr[row]), int(indptr[row + 1])):
            if len(out) == top_k:
                return out
            out.append((int(item_rows[k]), int(row), float(score)))
    return out
