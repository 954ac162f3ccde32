"""Collision-free SIDs: items that share all 3 codes are moved, deterministically, to the nearest free codes.

Contract (``x`` the embeddings ``[n, d]``, ``codes`` the residual k-means codes ``[n, 3]`` of ``x`` under
``codebooks``; the score of code ``j`` for a residual ``r`` at a level is the assignment's own
``||r - c_j||² + b_j``, see :mod:`sid_index.rqkmeans`):

- SIDs stay 3 tokens, so nothing downstream changes (prefix tables, prompts, both engines, bundle, server).
- Every group of items with identical codes keeps one item on its codes: the one whose last-level residual is
  nearest its code (ties: lowest row). Items that never collided keep their codes.
- The other items ("movers") are placed one at a time, nearest-first (by their score at their own last-level code,
  ties by row): each takes the best-scoring last-level code that is still free under its own first two codes
  (same prefix). When that prefix is full it tries its other level-1 codes under the same level-0 code in score
  order (then the best free last-level code there), and when the whole level-0 code is full, the other level-0
  codes likewise. A code once taken stays taken.
- :func:`resolve_collisions` returns the new codes (unique rows) and a :class:`CollisionReport`; the input is not
  modified. The result is a pure function of the inputs (no randomness). ``ValueError`` when the catalog has more
  items than the codebooks have SIDs (``k0 × k1 × k2``), naming both numbers.
- Cost: one ``[k]``-score row per level tried per mover; no work for items that did not collide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sid_index.rqkmeans import Codebooks
from sid_index.tokens import NUM_LEVELS


@dataclass(frozen=True)
class CollisionReport:
    """What :func:`resolve_collisions` did: how many items moved and how far up the tree each had to go."""

    items: int
    colliding_items: int  # items whose codes were shared by another item
    moved: int  # items given new codes (colliding_items minus one keeper per group)
    same_prefix: int  # moved but kept their first two codes
    new_level1: int  # kept their level-0 code only
    new_level0: int  # nothing kept

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scores(r: np.ndarray, c: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 ``[k]``: ``||r - c_j||² + b_j`` for one residual ``r [d]``."""
    diff = c.astype(np.float64) - r[None, :]
    out: np.ndarray = (diff * diff).sum(axis=1) + b.astype(np.float64)
    return out


class _Occupancy:
    """Taken SIDs as mixed-radix keys, with used counts per level-0 code and per (level-0, level-1) prefix."""

    def __init__(self, sizes: tuple[int, int, int], codes: np.ndarray) -> None:
        self.k0, self.k1, self.k2 = sizes
        self.taken: set[int] = set()
        self.per_prefix: dict[tuple[int, int], int] = {}
        self.per_top: dict[int, int] = {}
        for a, b, c in codes.tolist():
            self.take(a, b, c)

    def key(self, a: int, b: int, c: int) -> int:
        return (a * self.k1 + b) * self.k2 + c

    def take(self, a: int, b: int, c: int) -> None:
        k = self.key(a, b, c)
        if k in self.taken:
            return
        self.taken.add(k)
        self.per_prefix[(a, b)] = self.per_prefix.get((a, b), 0) + 1
        self.per_top[a] = self.per_top.get(a, 0) + 1

    def prefix_full(self, a: int, b: int) -> bool:
        return self.per_prefix.get((a, b), 0) >= self.k2

    def top_full(self, a: int) -> bool:
        return self.per_top.get(a, 0) >= self.k1 * self.k2


def _best_free_last(occ: _Occupancy, a: int, b: int, r2: np.ndarray, cb: Codebooks) -> int:
    """The best-scoring free level-2 code under prefix (a, b); the prefix must not be full."""
    order = np.argsort(_scores(r2, cb.centroids[2], cb.biases[2]), kind="stable")
    for c in order.tolist():
        if occ.key(a, b, c) not in occ.taken:
            return int(c)
    raise AssertionError("prefix_full said a free code exists")  # unreachable


def _place_under(occ: _Occupancy, a: int, r1: np.ndarray, cb: Codebooks, skip: int | None) -> tuple[int, int] | None:
    """Best (level-1, level-2) free codes under level-0 code ``a`` for level-1 residual ``r1`` (level-1 codes in
    score order, ``skip`` excluded); None when ``a`` is full."""
    if occ.top_full(a):
        return None
    order = np.argsort(_scores(r1, cb.centroids[1], cb.biases[1]), kind="stable")
    for b in order.tolist():
        if b == skip or occ.prefix_full(a, b):
            continue
        return int(b), _best_free_last(occ, a, b, r1 - cb.centroids[1][b].astype(np.float64), cb)
    return None  # unreachable when top_full is false


def resolve_collisions(x: np.ndarray, codes: np.ndarray, codebooks: Codebooks) -> tuple[np.ndarray, CollisionReport]:
    """Unique codes for every item (module docstring); returns (int64 ``[n, 3]``, report)."""
    codes = np.asarray(codes, dtype=np.int64)
    n = codes.shape[0]
    if codes.shape != (n, NUM_LEVELS) or x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"codes must be [n, {NUM_LEVELS}] and x [n, d] with the same n, given "
                         f"{list(codes.shape)} and {list(x.shape)}")
    sizes = tuple(int(c.shape[0]) for c in codebooks.centroids)
    k0, k1, k2 = sizes
    if n > k0 * k1 * k2:
        raise ValueError(f"{n} items cannot all have unique SIDs: the codebooks {list(sizes)} hold only "
                         f"{k0 * k1 * k2} SIDs")
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    colliding = np.flatnonzero(counts[inverse] > 1)
    out = codes.copy()
    if colliding.size == 0:
        return out, CollisionReport(n, 0, 0, 0, 0, 0)

    def residuals(row: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(codes[row, 0]), int(codes[row, 1])
        r1 = np.asarray(x[row], dtype=np.float64) - codebooks.centroids[0][a]
        return r1, r1 - codebooks.centroids[1][b]

    own = np.array([_scores(residuals(int(r))[1], codebooks.centroids[2], codebooks.biases[2])[codes[r, 2]]
                    for r in colliding.tolist()])
    order = np.lexsort((colliding, own, inverse[colliding]))  # by group, then nearest, then row
    ranked = colliding[order]
    first = np.r_[True, inverse[ranked][1:] != inverse[ranked][:-1]]
    movers = ranked[~first]
    mover_score = own[order][~first]
    movers = movers[np.lexsort((movers, mover_score))]  # nearest first, ties by row
    keep = np.ones(n, dtype=bool)
    keep[movers] = False
    occ = _Occupancy((k0, k1, k2), codes[keep])
    same_prefix = new_l1 = new_l0 = 0
    for row in movers.tolist():
        a, b = int(codes[row, 0]), int(codes[row, 1])
        r1, r2 = residuals(row)
        if not occ.prefix_full(a, b):
            new = (a, b, _best_free_last(occ, a, b, r2, codebooks))
            same_prefix += 1
        elif (placed := _place_under(occ, a, r1, codebooks, skip=b)) is not None:
            new = (a, *placed)
            new_l1 += 1
        else:
            xr = np.asarray(x[row], dtype=np.float64)
            for a2 in np.argsort(_scores(xr, codebooks.centroids[0], codebooks.biases[0]), kind="stable").tolist():
                if a2 != a and (placed := _place_under(occ, a2, xr - codebooks.centroids[0][a2], codebooks,
                                                       skip=None)) is not None:
                    new = (int(a2), *placed)
                    break
            else:  # pragma: no cover - the capacity check above guarantees a free SID
                raise AssertionError("no free SID left")
            new_l0 += 1
        occ.take(*new)
        out[row] = new
    return out, CollisionReport(n, int(colliding.size), int(movers.size), same_prefix, new_l1, new_l0)
