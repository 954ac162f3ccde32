"""The SID trie as per-depth arrays, and the masked log-softmax of the vLLM engine's logits processor (pure).

Contract:
- :class:`TrieLevels` views :class:`sid_index.prefix_tables.PrefixTables` per depth: node ``n`` at depth ``d``
  has children ``indptr[d][n]:indptr[d][n+1]`` (codes ``codes[d][...]``, ascending), and a child's position is
  its node id at depth ``d+1`` (at depth 3: the SID row). ``children`` expands nodes, ``find_child`` maps
  (node, code) back to the child (``-1`` when not a child), both vectorised with numpy.
- :func:`masked_log_softmax` is the processor's arithmetic: the full-vocabulary log-softmax of the rows it owns,
  ``-inf`` outside each constrained row's valid children (EOS only at depth 3), never renormalised; other rows
  untouched. Array gathers per depth present, no Python per row or token.
No vLLM here: ``decoding.vllm_engine`` wraps these in vLLM's ``LogitsProcessor`` interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sid_index.prefix_tables import PrefixTables
from sid_index.tokens import NUM_LEVELS


@dataclass(frozen=True)
class TrieLevels:
    """The prefix tables per depth: node ``n`` at depth ``d`` has children ``indptr[d][n]:indptr[d][n+1]`` with
    level-``d`` codes ``codes[d][...]``; a child's index is its node id at depth ``d+1`` (depth 3 = SID row).
    ``child_keys[d]`` (``parent · M + code``, sorted) maps (node, code) back to the child."""

    indptr: tuple[np.ndarray, ...]
    codes: tuple[np.ndarray, ...]
    child_keys: tuple[np.ndarray, ...]
    radix: tuple[int, ...]

    @staticmethod
    def from_tables(tables: PrefixTables) -> TrieLevels:
        n0 = int(tables.level0.shape[0])
        indptr = (np.asarray([0, n0], dtype=np.int64), np.asarray(tables.l1_indptr, dtype=np.int64),
                  np.asarray(tables.l2_indptr, dtype=np.int64))
        codes = tuple(np.asarray(c, dtype=np.int64) for c in (tables.level0, tables.l1_codes, tables.l2_codes))
        keys, radix = [], []
        for ptr, cod in zip(indptr, codes, strict=True):
            m = int(cod.max()) + 1 if cod.size else 1
            parent = np.repeat(np.arange(ptr.shape[0] - 1, dtype=np.int64), np.diff(ptr))
            key = parent * m + cod
            if key.size > 1 and not bool(np.all(key[1:] > key[:-1])):
                raise ValueError("prefix tables must list each node's children in ascending code order")
            keys.append(key)
            radix.append(m)
        return TrieLevels(indptr, codes, tuple(keys), tuple(radix))

    def child_count(self, depth: int, nodes: np.ndarray) -> np.ndarray:
        ptr = self.indptr[depth]
        counts: np.ndarray = ptr[nodes + 1] - ptr[nodes]
        return counts

    def children(self, depth: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(owner [T], child [T])``: every child of ``nodes`` (in order), owner = position in ``nodes``."""
        ptr = self.indptr[depth]
        start = ptr[nodes]
        counts = ptr[nodes + 1] - start
        owner = np.repeat(np.arange(nodes.shape[0]), counts)
        first = np.cumsum(counts) - counts
        child = np.arange(owner.shape[0]) + (start - first)[owner]
        return owner, child

    def find_child(self, depth: int, nodes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Child node of ``(nodes, codes)`` at ``depth``, ``-1`` where that code is not a child."""
        keys = self.child_keys[depth]
        m = self.radix[depth]
        ok = (codes >= 0) & (codes < m)
        want = nodes * m + np.where(ok, codes, 0)
        pos = np.searchsorted(keys, want).clip(max=max(keys.shape[0] - 1, 0))
        found = ok & (keys.shape[0] > 0) & (keys[pos] == want)
        return np.where(found, pos, -1)


# ---------------------------------------------------------------------------------------------- logits processor

    def sid_rows(self, codes: np.ndarray) -> np.ndarray:
        """Rows of SIDs given as codes ``[n, 3]`` (``-1`` = not a SID token); ``-1`` where not a path of the trie."""
        node = np.zeros(codes.shape[0], dtype=np.int64)
        alive = np.ones(codes.shape[0], dtype=bool)
        for d in range(NUM_LEVELS):
            nxt = self.find_child(d, node, np.where(alive, codes[:, d], -1))
            alive &= nxt >= 0
            node = np.where(alive, nxt, 0)
        return np.where(alive, node, -1)

def trie_of_index(index_dir: str) -> TrieLevels:
    """The trie of a saved SID index (checksums not re-read: whoever started the engine loaded the index verified)."""
    from sid_index.index import SidIndex

    return TrieLevels.from_tables(SidIndex.load(index_dir, verify_checksums=False).tables)


def masked_log_softmax(logits: torch.Tensor, rows: torch.Tensor, depth: torch.Tensor, node: torch.Tensor,
                       constrained: torch.Tensor, trie: TrieLevels, offsets: Sequence[int], eos_id: int
                       ) -> torch.Tensor:
    """Pure core of the processor: ``logits [N, V]`` → same shape, rows ``rows [K]`` replaced by their log-softmax
    over the full vocabulary, ``-inf`` outside the valid children of (``depth``, ``node``) where ``constrained``
    (depth 3 allows only EOS). Other rows are returned unchanged."""
    if rows.numel() == 0:
        return logits
    sub = torch.log_softmax(logits.index_select(0, rows).float(), dim=-1)
    allowed = torch.zeros_like(sub, dtype=torch.bool)
    dep = depth.cpu().numpy()
    nod = node.cpu().numpy()
    con = constrained.cpu().numpy()
    for d in range(NUM_LEVELS + 1):  # a loop over depths, not over rows or tokens
        sel = np.nonzero(con & (dep == d))[0]
        if sel.size == 0:
            continue
        if d == NUM_LEVELS:
            allowed[torch.as_tensor(sel), eos_id] = True
            continue
        owner, child = trie.children(d, nod[sel])
        tok = offsets[d] + trie.codes[d][child]
        allowed[torch.as_tensor(sel[owner]), torch.as_tensor(tok)] = True
    free = torch.as_tensor(~con)
    allowed |= free[:, None]
    sub = torch.where(allowed, sub, torch.full_like(sub, float("-inf")))
    out = logits.clone() if logits.dtype != sub.dtype else logits
    out = out.float() if out.dtype != torch.float32 else out
    out[rows] = sub
    return out
