"""Decoding prefix tables: the SID trie as flat CSR arrays, so a decoder expands beams with gathers.

Contract (``S`` valid SIDs, sorted lexicographically by their codes; row ``r`` of ``codes`` is SID ``r``):

- ``level0``: sorted unique level-0 codes, shape ``[n0]``. Trie node ids at depth 1 are positions in it.
- ``l1_indptr`` ``[n0 + 1]`` / ``l1_codes`` ``[n1]``: children (level-1 codes, sorted) of depth-1 node ``i`` are
  ``l1_codes[l1_indptr[i]:l1_indptr[i+1]]``; depth-2 node ids are positions in ``l1_codes``.
- ``l2_indptr`` ``[n1 + 1]`` / ``l2_codes`` ``[S]``: children (level-2 codes) of depth-2 node ``j`` are
  ``l2_codes[l2_indptr[j]:l2_indptr[j+1]]``; the position of a leaf in ``l2_codes`` **is** its SID row.

So a beam carries one integer (its node id); choosing the ``k``-th child of node ``n`` at depth ``d`` gives
node ``indptr_d[n] + k`` at depth ``d + 1``, and at the last level that number is the SID row. All arrays
are int64 numpy arrays. :meth:`PrefixTables.paths` enumerates every path and is the slow reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sid_index.tokens import NUM_LEVELS


@dataclass(frozen=True)
class PrefixTables:
    level0: np.ndarray
    l1_indptr: np.ndarray
    l1_codes: np.ndarray
    l2_indptr: np.ndarray
    l2_codes: np.ndarray

    @property
    def num_sids(self) -> int:
        return int(self.l2_codes.shape[0])

    @staticmethod
    def from_sorted_codes(codes: np.ndarray) -> PrefixTables:
        """Build from unique SID codes ``[S, 3]`` sorted lexicographically (as ``SidIndex.sid_codes`` is)."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != NUM_LEVELS:
            raise ValueError(f"codes must have shape [S, {NUM_LEVELS}], given {codes.shape}")
        if codes.shape[0] == 0:
            raise ValueError("codes must hold at least one SID, given 0")
        order = np.lexsort(codes.T[::-1])
        if not np.array_equal(order, np.arange(codes.shape[0])):
            raise ValueError("codes must be sorted lexicographically")
        if np.any(np.all(codes[1:] == codes[:-1], axis=1)):
            raise ValueError("codes must be unique SIDs")
        new0 = np.r_[True, codes[1:, 0] != codes[:-1, 0]]
        new01 = new0 | np.r_[True, codes[1:, 1] != codes[:-1, 1]]
        level0 = codes[new0, 0]
        l1_codes = codes[new01, 1]
        # depth-1 node of each depth-2 node, then CSR pointers by counting
        node1_of_pair = np.cumsum(new0)[new01] - 1
        l1_indptr = np.zeros(level0.shape[0] + 1, dtype=np.int64)
        np.add.at(l1_indptr, node1_of_pair + 1, 1)
        l1_indptr = np.cumsum(l1_indptr)
        node2_of_sid = np.cumsum(new01) - 1
        l2_indptr = np.zeros(l1_codes.shape[0] + 1, dtype=np.int64)
        np.add.at(l2_indptr, node2_of_sid + 1, 1)
        l2_indptr = np.cumsum(l2_indptr)
        return PrefixTables(level0, l1_indptr, l1_codes, l2_indptr, codes[:, 2].copy())

    def paths(self) -> np.ndarray:
        """Every root-to-leaf path as codes ``[S, 3]``, in SID-row order (slow, obviously correct)."""
        out = []
        for i, c0 in enumerate(self.level0):
            for j in range(self.l1_indptr[i], self.l1_indptr[i + 1]):
                for k in range(self.l2_indptr[j], self.l2_indptr[j + 1]):
                    out.append((int(c0), int(self.l1_codes[j]), int(self.l2_codes[k])))
        return np.asarray(out, dtype=np.int64).reshape(-1, NUM_LEVELS)
