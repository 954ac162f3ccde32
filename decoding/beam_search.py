"""Batched 3-level SID beam search with one shared prompt KV cache per request (pure; no index, no items).

Contract — :func:`beam_search` decodes ``R`` prompts at once, request ``r`` at beam width ``B_r`` (1..128):

1. **Prefill**: the ``R`` prompts, left-padded to ``P`` tokens, run once (batch ``R``); the cache stays at batch ``R``.
   Nothing is copied per beam. The logits at each prompt's last token give level 0.
2. **Two tree-attention steps**: all beam tokens of one level are fed as *one row of* ``Bmax`` new tokens per
   request, with a 4D additive float mask over ``cache + new`` keys: each beam token sees its prompt (not the
   padding), its own ancestors and itself, never another beam; every token of a level shares one position id
   (``len(prompt) + level``). The cache grows by ``Bmax`` keys per step (``P + 2·Bmax`` at the end) and is dropped.
   Step 1 feeds the level-0 tokens (logits → level 1), step 2 the level-1 tokens (logits → level 2).
3. **Selection** at each level (pure tensor ops, no Python per beam or per token):
   - *constrained*: a beam carries its trie node; its children come from :class:`PrefixTables` by a CSR
     expansion (``repeat_interleave`` over child counts, then gathers); candidate score = beam score + the child's
     token log-prob, log-softmax over the **full** vocabulary, other tokens masked, never renormalised;
     per request the best ``B_r`` candidates survive (segmented top-k). The last level's node is the SID row.
   - *unconstrained* (hallucination measurement): the same beam search with no trie — every token of the full
     vocabulary is a candidate at every level. A SID is valid iff token ``l`` is a level-``l`` SID token for every
     ``l`` **and** those codes are in the trie; any other token (EOS, a word, a wrong-level SID token) makes the
     SID invalid (``sid_row = -1``; its code at that level is reported as ``-1`` when the token is not a level-``l``
     SID token at all).
4. Output per request: up to ``B_r`` SIDs (fewer only when fewer valid paths exist), scores descending.

A SID's score is therefore exactly its teacher-forced log-probability ``Σ_l log p(t_l | prompt, t_<l)``;
:func:`teacher_forced_sid_scores` is the slow, obviously-correct reference (one full forward per SID).
Results for one request do not depend on its batch mates (up to float rounding from padding shapes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from decoding.engine import MAX_BEAM_WIDTH
from decoding.sid_vocab import SidVocab
from sid_index.prefix_tables import PrefixTables
from sid_index.tokens import NUM_LEVELS

NEG_INF = float("-inf")


@dataclass(frozen=True)
class TrieTensors:
    """:class:`PrefixTables` as torch tensors, one (indptr, codes) pair per level, plus a vectorised SID lookup.

    ``indptr[0]`` is ``[0, n0]`` (the root is node 0 at depth 0), ``indptr[1] = l1_indptr``,
    ``indptr[2] = l2_indptr``; ``codes[l]`` are the level-``l`` codes of the depth-``l+1`` nodes.
    ``sid_keys`` ``[S]`` is ``(c0·M1 + c1)·M2 + c2`` of every SID in row order (sorted, so ``searchsorted`` finds rows).
    """

    indptr: tuple[torch.Tensor, ...]
    codes: tuple[torch.Tensor, ...]
    sid_keys: torch.Tensor
    key_radix: tuple[int, int]

    @property
    def num_sids(self) -> int:
        return int(self.codes[-1].shape[0])

    @staticmethod
    def from_tables(tables: PrefixTables, device: torch.device | str = "cpu") -> TrieTensors:
        n0 = int(tables.level0.shape[0])
        indptr = (np.asarray([0, n0], dtype=np.int64), tables.l1_indptr, tables.l2_indptr)
        codes = (tables.level0, tables.l1_codes, tables.l2_codes)
        # every SID's codes in row order, rebuilt from the CSR arrays (vectorised)
        node2_of_sid = np.repeat(np.arange(tables.l1_codes.shape[0]), np.diff(tables.l2_indptr))
        node1_of_node2 = np.repeat(np.arange(n0), np.diff(tables.l1_indptr))
        m1 = int(tables.l1_codes.max()) + 1
        m2 = int(tables.l2_codes.max()) + 1
        keys = (tables.level0[node1_of_node2[node2_of_sid]] * m1 + tables.l1_codes[node2_of_sid]) * m2 + tables.l2_codes
        return TrieTensors(
            indptr=tuple(torch.as_tensor(a, dtype=torch.long, device=device) for a in indptr),
            codes=tuple(torch.as_tensor(a, dtype=torch.long, device=device) for a in codes),
            sid_keys=torch.as_tensor(keys, dtype=torch.long, device=device),
            key_radix=(m1, m2),
        )

    def sid_rows(self, codes: torch.Tensor) -> torch.Tensor:
        """Rows of SIDs given as codes ``[..., 3]`` (``-1`` = not a SID token); ``-1`` where not a valid SID."""
        m1, m2 = self.key_radix
        in_range = (codes >= 0).all(-1) & (codes[..., 1] < m1) & (codes[..., 2] < m2)
        keys = (codes[..., 0] * m1 + codes[..., 1]) * m2 + codes[..., 2]
        pos = torch.searchsorted(self.sid_keys, keys.clamp_min(0)).clamp_max(self.sid_keys.shape[0] - 1)
        found = in_range & (self.sid_keys[pos] == keys)
        return torch.where(found, pos, torch.full_like(pos, -1))


@dataclass(frozen=True)
class BeamOutput:
    """Final beams, padded to ``Bmax`` slots per request; slots ``>= counts[r]`` are empty (score ``-inf``).

    ``token_ids`` ``[R, Bmax, 3]``, ``codes`` ``[R, Bmax, 3]`` (``-1`` where a token is not a SID token of its level),
    ``scores`` ``[R, Bmax]`` float32 descending per row, ``sid_rows`` ``[R, Bmax]`` (``-1`` = invalid or empty),
    ``counts`` ``[R]``. ``timings``: seconds for ``prefill`` (prompt forward), ``decode`` (the two beam forwards
    and the full-vocabulary log-softmax normalisers), ``masking`` (trie expansion, top-k selection and
    attention-mask building, all levels).
    """

    token_ids: torch.Tensor
    codes: torch.Tensor
    scores: torch.Tensor
    sid_rows: torch.Tensor
    counts: torch.Tensor
    timings: dict[str, float]


# ----------------------------------------------------------------------------------------------- pure pieces


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
    k_max = int(widths.max())
    width = max(int(sizes.max()), 1)
    starts = torch.cumsum(sizes, 0) - sizes
    # scatter into a dense [R, width] block (-inf padding), then one top-k per row
    shift = torch.arange(n_seg, device=scores.device) * width - starts
    flat = torch.arange(scores.shape[0], device=scores.device) + torch.repeat_interleave(shift, sizes)
    dense = torch.full((n_seg * width,), NEG_INF, dtype=scores.dtype, device=scores.device)
    dense = dense.scatter_(0, flat, scores).view(n_seg, width)
    k = min(k_max, width)
    vals, idx = torch.topk(dense, k, dim=1, sorted=True)
    if k < k_max:  # fewer candidates than slots: pad
        vals = torch.cat([vals, vals.new_full((n_seg, k_max - k), NEG_INF)], 1)
        idx = torch.cat([idx, idx.new_zeros((n_seg, k_max - k))], 1)
    slot = torch.arange(k_max, device=scores.device)
    keep = (slot[None, :] < widths[:, None]) & torch.isfinite(vals)
    vals = torch.where(keep, vals, torch.full_like(vals, NEG_INF))
    index = torch.where(keep, starts[:, None] + idx, torch.zeros_like(idx))
    return vals, index


def prefill_mask(pad: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive causal mask ``[R, 1, P, P]`` for left-padded prompts (``pad[r]`` leading pad tokens).

    Real queries see real keys at or before them; pad queries see only themselves (so no row is all-blocked).
    """
    i = torch.arange(length, device=pad.device)
    causal = i[None, :] <= i[:, None]
    real_key = i[None, :] >= pad[:, None]  # [R, P]
    allowed = causal[None] & real_key[:, None, :]
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=pad.device)[None]
    return _additive(allowed[:, None], dtype)


def tree_step_mask(pad: torch.Tensor, prompt_len: int, ancestors: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask ``[R, 1, Bmax, P + (d+1)·Bmax]`` for the level-``d`` beam tokens fed as one row per request.

    ``ancestors`` ``[R, Bmax, d]``: slot of each beam's ancestor at levels ``0..d-1`` (key column
    ``P + l·Bmax + slot``). A beam token sees the real prompt keys, its ancestors and itself.
    """
    r, bmax, depth = ancestors.shape
    total = prompt_len + (depth + 1) * bmax
    allowed = torch.zeros((r, bmax, total), dtype=torch.bool, device=pad.device)
    cols = torch.arange(prompt_len, device=pad.device)
    allowed[:, :, :prompt_len] = (cols[None, :] >= pad[:, None])[:, None, :]
    rows_r = torch.arange(r, device=pad.device)[:, None].expand(r, bmax)
    rows_b = torch.arange(bmax, device=pad.device)[None, :].expand(r, bmax)
    for level in range(depth):  # at most 2 levels: a loop over SID levels, not over beams
        allowed[rows_r, rows_b, prompt_len + level * bmax + ancestors[:, :, level]] = True
    allowed[rows_r, rows_b, prompt_len + depth * bmax + rows_b] = True
    return _additive(allowed[:, None], dtype)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, blocked)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor
]:
    """``(input_ids [R, P], pad [R], lengths [R])`` with prompts right-aligned (left padding)."""
    lengths = [len(p) for p in prompts]
    if min(lengths) < 1:
        raise ValueError("every prompt must hold at least one token, given an empty prompt")
    width = max(lengths)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for r, p in enumerate(prompts):  # one copy per request, not per beam
        ids[r, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
    lens = torch.as_tensor(lengths, dtype=torch.long)
    return ids.to(device), (width - lens).to(device), lens.to(device)


# ----------------------------------------------------------------------------------------------- the search


@torch.inference_mode()
def beam_search(
    model: Any,
    prompts: Sequence[Sequence[int]],
    beam_widths: Sequence[int],
    vocab: SidVocab,
    trie: TrieTensors,
    *,
    constrained: bool = True,
) -> BeamOutput:
    """Decode 3-token SIDs for ``R`` prompts at once (see the module docstring for the algorithm and scores)."""
    if len(prompts) == 0:
        raise ValueError("prompts must hold at least one prompt, given 0")
    if len(beam_widths) != len(prompts):
        raise ValueError(f"beam_widths must have one entry per prompt ({len(prompts)}), given {len(beam_widths)}")
    for w in beam_widths:
        if not 1 <= int(w) <= MAX_BEAM_WIDTH:
            raise ValueError(f"beam_width must be in [1, {MAX_BEAM_WIDTH}], given {w}")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n_req = len(prompts)
    widths = torch.as_tensor([int(w) for w in beam_widths], dtype=torch.long, device=device)
    bmax = int(widths.max())
    offsets = torch.as_tensor(vocab.offsets, dtype=torch.long, device=device)
    sizes = torch.as_tensor(vocab.sizes, dtype=torch.long, device=device)
    t_mask = 0.0

    # ---- prefill: each prompt once, cache at batch R
    t0 = time.perf_counter()
    ids, pad, lengths = left_pad(prompts, vocab.eos_id, device)
    plen = ids.shape[1]
    mask = prefill_mask(pad, plen, dtype)
    positions = (torch.arange(plen, device=device)[None, :] - pad[:, None]).clamp_min(0)
    tp = time.perf_counter()
    t_mask += tp - t0
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    logits = out.logits[:, -1:, :]  # [R, 1, V]: one root beam per request
    t_prefill = time.perf_counter() - tp

    # beam state, [R, Bcur]; at level 0 every request has one root beam (node 0)
    scores = torch.zeros((n_req, 1), dtype=torch.float32, device=device)
    nodes = torch.zeros((n_req, 1), dtype=torch.long, device=device)
    tokens = torch.zeros((n_req, 1, 0), dtype=torch.long, device=device)
    ancestors = torch.zeros((n_req, 1, 0), dtype=torch.long, device=device)
    t_decode = 0.0
    for level in range(NUM_LEVELS):
        tl = time.perf_counter()  # the log-softmax normaliser is scoring (counted with decode), not masking
        logits = logits.float()
        lse = torch.logsumexp(logits, dim=-1)  # [R, Bcur]: full-vocabulary normaliser
        ts = time.perf_counter()
        t_decode += ts - tl
        if constrained:
            new_scores, parent, new_nodes, new_tok = _constrained_select(
                logits, lse, scores, nodes, trie.indptr[level], trie.codes[level], offsets[level], widths
            )
        else:
            new_scores, parent, new_tok = _unconstrained_select(logits, lse, scores, widths)
            new_nodes = torch.zeros_like(new_tok)
        gather = parent.unsqueeze(-1)
        tokens = torch.cat([torch.gather(tokens, 1, gather.expand(-1, -1, level)), new_tok.unsqueeze(-1)], -1)
        ancestors = torch.gather(ancestors, 1, gather.expand(-1, -1, ancestors.shape[-1]))
        scores, nodes = new_scores, new_nodes
        if level == NUM_LEVELS - 1:
            t_mask += time.perf_counter() - ts
            break
        # feed this level's tokens as one row of Bmax tokens per request
        step_mask = tree_step_mask(pad, plen, ancestors, dtype)
        step_pos = (lengths + level)[:, None].expand(n_req, bmax)
        feed = torch.where(torch.isfinite(scores), new_tok, torch.full_like(new_tok, vocab.eos_id))
        t_mask += time.perf_counter() - ts
        tf = time.perf_counter()
        out = model(input_ids=feed, attention_mask=step_mask, position_ids=step_pos, past_key_values=cache,
                    use_cache=True)
        cache = out.past_key_values
        logits = out.logits
        t_decode += time.perf_counter() - tf
        slots = torch.arange(bmax, device=device)[None, :, None].expand(n_req, bmax, 1)
        ancestors = torch.cat([ancestors, slots], -1)
    del cache

    ts = time.perf_counter()
    live = torch.isfinite(scores)
    in_level = (tokens >= offsets) & (tokens < offsets + sizes)
    codes = torch.where(in_level, tokens - offsets, torch.full_like(tokens, -1))
    if constrained:
        sid_rows = torch.where(live, nodes, torch.full_like(nodes, -1))
    else:
        sid_rows = torch.where(live, trie.sid_rows(codes), torch.full_like(nodes, -1))
    counts = live.sum(1)
    t_mask += time.perf_counter() - ts
    return BeamOutput(tokens, codes, scores, sid_rows, counts,
                      {"prefill": t_prefill, "decode": t_decode, "masking": t_mask})


def _constrained_select(
    logits: torch.Tensor, lse: torch.Tensor, scores: torch.Tensor, nodes: torch.Tensor,
    indptr: torch.Tensor, codes: torch.Tensor, offset: torch.Tensor, widths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One trie-constrained level. Returns ``(scores, parent slot, child node, token)``, each ``[R, Bmax]``."""
    n_req, bcur, vsize = logits.shape
    beam, child, counts = csr_expand(indptr, nodes.reshape(-1), torch.isfinite(scores).reshape(-1))
    tok = offset + codes.index_select(0, child)
    base = (scores - lse).reshape(-1)  # beam score minus the full-vocabulary normaliser
    cand = base.index_select(0, beam) + logits.reshape(-1).take(beam * vsize + tok)
    vals, idx = segmented_topk(cand, counts.view(n_req, bcur).sum(1), widths)
    live = torch.isfinite(vals)
    pick_beam = beam[idx] if beam.numel() else torch.zeros_like(idx)
    parent = torch.where(live, pick_beam % bcur, torch.zeros_like(idx))
    new_nodes = torch.where(live, child[idx], torch.zeros_like(idx))
    new_tok = torch.where(live, tok[idx], torch.zeros_like(idx))
    return vals, parent, new_nodes, new_tok


def _unconstrained_select(
    logits: torch.Tensor, lse: torch.Tensor, scores: torch.Tensor, widths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level over the full vocabulary. Two-stage top-k (per beam, then per request) equals the flat top-k."""
    n_req, bcur, vsize = logits.shape
    k_max = int(widths.max())
    k1 = min(k_max, vsize)
    per_beam, tok = torch.topk(logits - lse.unsqueeze(-1), k1, dim=-1)  # [R, Bcur, k1]
    cand = (scores.unsqueeze(-1) + per_beam).reshape(n_req, bcur * k1)  # dead beams stay -inf
    k = min(k_max, bcur * k1)
    vals, idx = torch.topk(cand, k, dim=1, sorted=True)
    if k < k_max:
        vals = torch.cat([vals, vals.new_full((n_req, k_max - k), NEG_INF)], 1)
        idx = torch.cat([idx, idx.new_zeros((n_req, k_max - k))], 1)
    keep = (torch.arange(k_max, device=logits.device)[None, :] < widths[:, None]) & torch.isfinite(vals)
    vals = torch.where(keep, vals, torch.full_like(vals, NEG_INF))
    idx = torch.where(keep, idx, torch.zeros_like(idx))
    new_tok = torch.gather(tok.reshape(n_req, bcur * k1), 1, idx)
    return vals, idx // k1, new_tok


# ----------------------------------------------------------------------------------------------- slow reference


@torch.inference_mode()
def teacher_forced_sid_scores(model: Any, prompt: Sequence[int], sid_token_ids: np.ndarray) -> np.ndarray:
    """Slow reference: for every SID ``[S, 3]`` token ids, one full forward of ``prompt + SID`` (no cache, no mask
    tricks) and the sum of the 3 tokens' log-softmax over the full vocabulary. Returns float64 ``[S]``."""
    device = next(model.parameters()).device
    p = len(prompt)
    out = np.empty(len(sid_token_ids), dtype=np.float64)
    for s, sid in enumerate(np.asarray(sid_token_ids, dtype=np.int64)):
        ids = torch.as_tensor([*prompt, *sid.tolist()], dtype=torch.long, device=device)[None]
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        out[s] = float(sum(logp[p - 1 + t, int(sid[t])] for t in range(NUM_LEVELS)))
    return out
