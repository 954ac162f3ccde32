"""One level of SID beam search: the trie as tensors and the selection of each request's best beams (pure).

Contract:

- :class:`TrieTensors` holds :class:`PrefixTables` on a device twice: as CSR ``(indptr, codes)`` per level (the
  slow reference's form) and as **dense per-node lookups** — ``allowed[l]`` ``[nodes at depth l, W_l]`` bool (is
  code ``c`` a child of the node) and, for levels 0 and 1, ``child[l]`` ``[nodes at depth l, W_l]`` (the child's
  node id, ``-1`` where none). ``W_l`` is the level's codebook width (``vocab.sizes[l]`` when given). Dense
  lookups have static shapes and need no host synchronisation; at 1M SIDs over 256³ codes they take about 17 MB
  (the level-2 ``allowed`` table, one byte per ``(depth-2 node, code)``).
- :func:`select_constrained` keeps, per request, the best ``widths[r]`` of ``beam score + token log-prob`` over
  the live beams' valid children: one gather of allowed rows, one ``masked_fill`` and one ``topk`` over the
  flattened ``[R, Bcur·W]`` candidates, equal scores in candidate order (parent slot, then code: the vLLM
  engine's tie rule). The candidate values are computed exactly as the CSR reference
  :func:`select_constrained_csr` computes them (``(score − lse) + logit``), so both return the same beams.
- :func:`select_unconstrained` does the same over the full vocabulary (two-stage top-k: per beam, then per request,
  which equals the flat top-k).
- Every select returns ``(scores, parent slot, child node, token)`` ``[R, Bmax]``; dead slots (fewer valid paths
  than ``widths[r]``, or slot ``>= widths[r]``) have score ``-inf``, parent 0, node 0, token 0.
- Nothing here calls ``.item()``/``.tolist()`` or makes a shape depend on tensor values, except the CSR reference
  (:func:`csr_expand`, :func:`segmented_topk`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sid_index.prefix_tables import PrefixTables

NEG_INF = float("-inf")


@dataclass(frozen=True)
class TrieTensors:
    """:class:`PrefixTables` as torch tensors (see the module docstring), plus a vectorised SID lookup.

    ``indptr[0]`` is ``[0, n0]`` (the root is node 0 at depth 0), ``indptr[1] = l1_indptr``,
    ``indptr[2] = l2_indptr``; ``codes[l]`` are the level-``l`` codes of the depth-``l+1`` nodes.
    ``sid_keys`` ``[S]`` is ``(c0·M1 + c1)·M2 + c2`` of every SID in row order (sorted, so ``searchsorted`` finds rows).
    """

    indptr: tuple[torch.Tensor, ...]
    codes: tuple[torch.Tensor, ...]
    sid_keys: torch.Tensor
    key_radix: tuple[int, int]
    allowed: tuple[torch.Tensor, ...]
    child: tuple[torch.Tensor, ...]

    @property
    def num_sids(self) -> int:
        return int(self.codes[-1].shape[0])

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(a.shape[1]) for a in self.allowed)

    @staticmethod
    def from_tables(tables: PrefixTables, device: torch.device | str = "cpu",
                    sizes: Sequence[int] | None = None) -> TrieTensors:
        n0 = int(tables.level0.shape[0])
        indptr = (np.asarray([0, n0], dtype=np.int64), tables.l1_indptr, tables.l2_indptr)
        codes = (tables.level0, tables.l1_codes, tables.l2_codes)
        widths = [int(c.max()) + 1 for c in codes] if sizes is None else [int(s) for s in sizes]
        for level, (c, w) in enumerate(zip(codes, widths, strict=True)):
            if int(c.max()) >= w:
                raise ValueError(f"sizes[{level}] must be > every level-{level} code ({int(c.max())}), given {w}")
        # every SID's codes in row order, rebuilt from the CSR arrays (vectorised)
        node2_of_sid = np.repeat(np.arange(tables.l1_codes.shape[0]), np.diff(tables.l2_indptr))
        node1_of_node2 = np.repeat(np.arange(n0), np.diff(tables.l1_indptr))
        m1 = int(tables.l1_codes.max()) + 1
        m2 = int(tables.l2_codes.max()) + 1
        keys = (tables.level0[node1_of_node2[node2_of_sid]] * m1 + tables.l1_codes[node2_of_sid]) * m2 + tables.l2_codes
        # dense lookups: the parent node of every depth-(l+1) node, then (parent, code) -> allowed / child id
        allowed, child = [], []
        for level, parent in enumerate((np.zeros(n0, dtype=np.int64), node1_of_node2, node2_of_sid)):
            n_parents = int(indptr[level].shape[0]) - 1
            ok = np.zeros((n_parents, widths[level]), dtype=bool)
            ok[parent, codes[level]] = True
            allowed.append(torch.as_tensor(ok, device=device))
            if level < 2:
                ids = np.full((n_parents, widths[level]), -1, dtype=np.int64)
                ids[parent, codes[level]] = np.arange(parent.shape[0])
                child.append(torch.as_tensor(ids, device=device))
        return TrieTensors(
            indptr=tuple(torch.as_tensor(a, dtype=torch.long, device=device) for a in indptr),
            codes=tuple(torch.as_tensor(a, dtype=torch.long, device=device) for a in codes),
            sid_keys=torch.as_tensor(keys, dtype=torch.long, device=device),
            key_radix=(m1, m2), allowed=tuple(allowed), child=tuple(child),
        )

    def sid_rows(self, codes: torch.Tensor) -> torch.Tensor:
        """Rows of SIDs given as codes ``[..., 3]`` (``-1`` = not a SID token); ``-1`` where not a valid SID."""
        m1, m2 = self.key_radix
        in_range = (codes >= 0).all(-1) & (codes[..., 1] < m1) & (codes[..., 2] < m2)
        keys = (codes[..., 0] * m1 + codes[..., 1]) * m2 + codes[..., 2]
        pos = torch.searchsorted(self.sid_keys, keys.clamp_min(0)).clamp_max(self.sid_keys.shape[0] - 1)
        found = in_range & (self.sid_keys[pos] == keys)
        return torch.where(found, pos, torch.full_like(pos, -1))


def _best(cand: torch.Tensor, widths: torch.Tensor, bmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``cand`` ``[R, N]``: the best ``bmax`` values (descending; equal values in column order, the
    lower column first — the vLLM engine's (parent beam, token) tie rule) and their columns, padded with ``-inf``/0
    past ``N``; slots ``>= widths[r]`` and non-finite values are dead (``-inf``, column 0). Static shapes."""
    n_req, n = cand.shape
    k = min(bmax, n)
    kth = torch.topk(cand, k, dim=1, sorted=True).values[:, k - 1:k]  # the k-th best value per row
    greater, tied = cand > kth, cand == kth
    need = k - greater.sum(1, keepdim=True)  # how many of the values equal to the k-th one get in: the first ones
    take = greater | (tied & (torch.cumsum(tied, 1) <= need))  # exactly k per row
    cols = torch.arange(n, device=cand.device).expand(n_req, n)
    slot = torch.where(take, torch.cumsum(take, 1) - 1, torch.full_like(cols, k))  # the rest go to a spare slot k
    idx = torch.zeros((n_req, k + 1), dtype=torch.long, device=cand.device).scatter_(1, slot, cols)[:, :k]
    vals = torch.gather(cand, 1, idx)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)  # columns ascending among equal values
    idx = torch.gather(idx, 1, order)
    if k < bmax:  # fewer candidates than slots (static: depends on shapes only)
        vals = torch.cat([vals, vals.new_full((n_req, bmax - k), NEG_INF)], 1)
        idx = torch.cat([idx, idx.new_zeros((n_req, bmax - k))], 1)
    keep = (torch.arange(bmax, device=cand.device)[None, :] < widths[:, None]) & torch.isfinite(vals)
    return vals.masked_fill(~keep, NEG_INF), idx.masked_fill(~keep, 0)


def candidate_scores(logits: torch.Tensor, lse: torch.Tensor, scores: torch.Tensor, width: int, offset: int
                     ) -> torch.Tensor:
    """``[R, Bcur, W]`` scores ``(score − lse) + logit`` of every level code for every beam (dead beams: ``-inf``).
    ``logits`` ``[R, Bcur, V]`` float32, ``lse``/``scores`` ``[R, Bcur]``; the level's codes are ``offset + 0..W-1``."""
    base = scores - lse  # beam score minus the full-vocabulary normaliser
    return base.unsqueeze(-1) + logits[:, :, offset:offset + width]


def apply_trie_mask(cand: torch.Tensor, nodes: torch.Tensor, trie: TrieTensors, level: int) -> torch.Tensor:
    """The trie mask: ``cand`` ``[R, Bcur, W]`` with ``-inf`` where the code is not a child of the beam's node
    (``nodes`` ``[R, Bcur]``): one gather of the nodes' rows of ``allowed[level]`` and one masked fill."""
    return cand.masked_fill(~trie.allowed[level][nodes], NEG_INF)


def pick_constrained(
    cand: torch.Tensor, nodes: torch.Tensor, trie: TrieTensors, level: int, offset: int, widths: torch.Tensor,
    bmax: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k over the flattened masked candidates (:func:`apply_trie_mask`): ``(scores, parent slot, child node,
    token)`` ``[R, bmax]`` (child node 0 at level 2, where the SID row is looked up from the codes instead)."""
    n_req, bcur, width = cand.shape
    vals, idx = _best(cand.view(n_req, bcur * width), widths, bmax)
    dead = ~torch.isfinite(vals)
    parent, code = idx // width, idx % width
    if level < len(trie.child):
        new_nodes = trie.child[level][torch.gather(nodes, 1, parent), code].masked_fill(dead, 0)
    else:
        new_nodes = torch.zeros_like(idx)
    return vals, parent, new_nodes, (code + offset).masked_fill(dead, 0)


def select_constrained(
    logits: torch.Tensor, lse: torch.Tensor, scores: torch.Tensor, nodes: torch.Tensor, trie: TrieTensors,
    level: int, offset: int, widths: torch.Tensor, bmax: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One trie-constrained level over dense lookups (:func:`candidate_scores`, :func:`apply_trie_mask`, then
    :func:`pick_constrained`). Returns ``(scores, parent slot, child node, token)`` ``[R, bmax]``."""
    cand = apply_trie_mask(candidate_scores(logits, lse, scores, trie.widths[level], offset), nodes, trie, level)
    return pick_constrained(cand, nodes, trie, level, offset, widths, bmax)


def select_unconstrained(
    logits: torch.Tensor, lse: torch.Tensor, scores: torch.Tensor, widths: torch.Tensor, bmax: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level over the full vocabulary (two-stage top-k: per beam, then per request; equals the flat top-k)."""
    n_req, bcur, vsize = logits.shape
    k1 = min(bmax, vsize)
    per_beam, tok = torch.topk(logits - lse.unsqueeze(-1), k1, dim=-1)  # [R, Bcur, k1]
    cand = (scores.unsqueeze(-1) + per_beam).reshape(n_req, bcur * k1)  # dead beams stay -inf
    vals, idx = _best(cand, widths, bmax)
    new_tok = torch.gather(tok.reshape(n_req, bcur * k1), 1, idx)
    return vals, idx // k1, torch.zeros_like(idx), new_tok


# ----------------------------------------------------------------------------------------------- CSR reference


def csr_expand(
    indptr: torch.Tensor, nodes: torch.Tensor, live: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Children of every live beam, beams in order. ``nodes``/``live`` ``[N]`` → ``(beam [T], child [T], counts [N])``.

    ``child`` indexes the next level's node arrays; ``beam`` is the position in ``nodes`` it came from;
    ``counts[i]`` is how many children beam ``i`` contributed (0 when not live).
    """
    safe = torch.where(live, nodes, torch.zeros_like(nodes))
    start = indptr.index_select(0, safe)
    counts = torch.where(live, indptr.index_select(0, safe + 1) - start, torch.zeros_like(start))
    beam = torch.repeat_interleave(counts)  # beam i repeated counts[i] times
    first = torch.cumsum(counts, 0) - counts  # first candidate index of each beam
    child = torch.arange(beam.shape[0], device=nodes.device) + (start - first).index_select(0, beam)
    return beam, child, counts


def segmented_topk(
    scores: torch.Tensor, sizes: torch.Tensor, widths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``widths[r]`` entries of each segment; ``scores`` ``[T]`` holds segment 0, then 1, … (``sizes`` ``[R]``).

    Returns ``(values [R, k], index [R, k])``, ``k = max(widths)``, descending per row; ``index`` is into ``scores``,
    ``values`` is ``-inf`` (and ``index`` 0) in slots past the segment's size or past ``widths[r]``.
    """
    n_seg = sizes.shape[0]
    width = max(int(sizes.max()), 1)
    starts = torch.cumsum(sizes, 0) - sizes
    # scatter into a dense [R, width] block (-inf padding), then one top-k per row
    shift = torch.arange(n_seg, device=scores.device) * width - starts
    flat = torch.arange(scores.shape[0], device=scores.device) + torch.repeat_interleave(shift, sizes)
    dense = torch.full((n_seg * width,), NEG_INF, dtype=scores.dtype, device=scores.device)
    dense = dense.scatter_(0, flat, scores).view(n_seg, width)
    vals, idx = _best(dense, widths, int(widths.max()))
    index = torch.where(torch.isfinite(vals), starts[:, None] + idx, torch.zeros_like(idx))
    return vals, index


def select_constrained_csr(
    logits: torch.Tensor, lse: torch.Tensor, scores: torch.Tensor, nodes: torch.Tensor, trie: TrieTensors,
    level: int, offset: int, widths: torch.Tensor, bmax: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference for :func:`select_constrained`: candidates by CSR expansion of the live beams (data-dependent
    shapes, host synchronisation), then a segmented top-k. Same arguments and results."""
    n_req, bcur, vsize = logits.shape
    beam, child, counts = csr_expand(trie.indptr[level], nodes.reshape(-1), torch.isfinite(scores).reshape(-1))
    tok = offset + trie.codes[level].index_select(0, child)
    base = (scores - lse).reshape(-1)
    cand = base.index_select(0, beam) + logits.reshape(-1).take(beam * vsize + tok)
    vals, idx = segmented_topk(cand, counts.view(n_req, bcur).sum(1), widths)
    live = torch.isfinite(vals)
    if beam.numel() == 0:  # no live beam has a child: every slot is dead
        beam, child, tok = (torch.zeros(1, dtype=torch.long, device=idx.device),) * 3
    parent = torch.where(live, beam[idx] % bcur, torch.zeros_like(idx))
    # CSR child index -> node id: at levels 0 and 1 the child index is the next depth's node id
    new_nodes = torch.where(live & (level < 2), child[idx], torch.zeros_like(idx))
    new_tok = torch.where(live, tok[idx], torch.zeros_like(idx))
    return vals, parent, new_nodes, new_tok
