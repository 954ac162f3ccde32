"""Batched 3-level SID beam search with one shared prompt KV cache per request (pure; no index, no items).

Contract — :func:`beam_search` decodes ``R`` prompts at once, request ``r`` at beam width ``B_r`` (1..128):

1. **Prefill**: the ``R`` prompts, left-padded to ``P`` tokens, run once (batch ``R``); the cache stays at batch ``R``.
   Nothing is copied per beam. The logits at each prompt's last token give level 0.
2. **Two tree-attention steps**: all beam tokens of one level are fed as *one row of* ``Bmax`` new tokens per
   request, with a 4D additive float mask over ``cache + new`` keys: each beam token sees its prompt (not the
   padding), its own ancestors and itself, never another beam; every token of a level shares one position id
   (``len(prompt) + level``). The cache grows by ``Bmax`` keys per step (``P + 2·Bmax`` at the end) and is dropped.
   Step 1 feeds the level-0 tokens (logits → level 1), step 2 the level-1 tokens (logits → level 2).
3. **Selection** at each level (:mod:`decoding.beam_select`; pure tensor ops, no Python per beam or per token,
   static shapes, no host synchronisation):
   - *constrained*: a beam carries its trie node; one gather of the nodes' rows of a dense ``allowed`` table masks
     the level's codes (the trie mask), candidate score = beam score + the child's token log-prob, log-softmax
     over the **full** vocabulary, other tokens masked, never renormalised; per request one top-k over the
     flattened ``[Bcur · W]`` candidates keeps the best ``B_r``. A dense ``child`` table gives the next node.
   - *unconstrained* (hallucination measurement): the same beam search with no trie — every token of the full
     vocabulary is a candidate at every level. A SID is valid iff token ``l`` is a level-``l`` SID token for every
     ``l`` **and** those codes are in the trie; any other token (EOS, a word, a wrong-level SID token) makes the
     SID invalid (``sid_row = -1``; its code at that level is reported as ``-1`` when the token is not a level-``l``
     SID token at all).
4. Output per request: up to ``B_r`` SIDs (fewer only when fewer valid paths exist), scores descending.

A SID's score is therefore exactly its teacher-forced log-probability ``Σ_l log p(t_l | prompt, t_<l)``;
:func:`teacher_forced_sid_scores` is the slow, obviously-correct reference (one full forward per SID), and
:func:`decoding.beam_select.select_constrained_csr` the reference of one constrained level.
Results for one request do not depend on its batch mates (up to float rounding from padding shapes).

Host synchronisation: the prefill and the loop (:func:`decode_levels`) never read a tensor value on the host
(no ``.item()``/``.tolist()``, no value-dependent shape), so on CUDA the whole search is queued without waiting
and the two decode steps can be captured as a CUDA graph (:mod:`decoding.cuda_graphs`). ``BeamOutput.timings`` are
host wall-clock laps (:class:`PhaseClock`): on CUDA they measure queueing unless ``sync_timings=True``, which
synchronises at each lap (for profiling only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from decoding.beam_select import (
    NEG_INF,
    TrieTensors,
    apply_trie_mask,
    candidate_scores,
    csr_expand,
    pick_constrained,
    segmented_topk,
    select_unconstrained,
)
from decoding.engine import MAX_BEAM_WIDTH
from decoding.sid_vocab import SidVocab
from sid_index.tokens import NUM_LEVELS

# re-exported: the pure pieces' historical home
__all__ = ["NEG_INF", "BeamOutput", "PhaseClock", "StepRunner", "TrieTensors", "beam_search", "csr_expand",
           "decode_levels", "left_pad", "prefill_mask", "segmented_topk", "teacher_forced_sid_scores", "tree_step_mask"]

# decode steps after the prefill: (cache, logits, pad, lengths, widths, bmax, constrained) -> (tokens, scores)
StepRunner = Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, bool],
                      tuple[torch.Tensor, torch.Tensor]]

# phases of BeamOutput.timings; "decode" and "masking" are the historical totals (sums of the fine phases)
DECODE_PHASES = ("scoring", "step1", "step2")
MASKING_PHASES = ("prefill_inputs", "trie_mask", "topk", "attn_mask", "final")


@dataclass(frozen=True)
class BeamOutput:
    """Final beams, padded to ``Bmax`` slots per request; slots ``>= counts[r]`` are empty (score ``-inf``).

    ``token_ids`` ``[R, Bmax, 3]``, ``codes`` ``[R, Bmax, 3]`` (``-1`` where a token is not a SID token of its level),
    ``scores`` ``[R, Bmax]`` float32 descending per row, ``sid_rows`` ``[R, Bmax]`` (``-1`` = invalid or empty),
    ``counts`` ``[R]``. ``timings`` (seconds): ``prefill_inputs`` (padding, prefill mask, positions), ``prefill``
    (prompt forward), ``scoring`` (full-vocabulary log-softmax normalisers and the candidates'
    ``score − lse + logit``, all levels), ``trie_mask`` (gather of allowed rows + masked fill, all levels), ``topk``
    (per-request top-k and beam bookkeeping), ``attn_mask`` (tree masks, fed tokens, positions), ``step1``/``step2``
    (the two beam forwards), ``final`` (codes, SID rows, counts); and the historical totals ``decode`` = scoring +
    step1 + step2, ``masking`` = the rest outside the forwards; each fine phase again as ``cpu_<phase>`` in this
    thread's CPU seconds (see :class:`PhaseClock`).
    """

    token_ids: torch.Tensor
    codes: torch.Tensor
    scores: torch.Tensor
    sid_rows: torch.Tensor
    counts: torch.Tensor
    timings: dict[str, float]


@dataclass
class PhaseClock:
    """Wall-clock laps by phase name (and this thread's CPU time per phase in ``cpu_laps``, which preemption by
    other processes does not inflate); ``sync`` (a CUDA device) synchronises before each lap (profiling only)."""

    sync: torch.device | None = None
    laps: dict[str, float] = field(default_factory=dict)
    cpu_laps: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)
    _last_cpu: float = field(default_factory=time.thread_time)

    def lap(self, name: str) -> None:
        if self.sync is not None:
            torch.cuda.synchronize(self.sync)
        now, cpu = time.perf_counter(), time.thread_time()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self.cpu_laps[name] = self.cpu_laps.get(name, 0.0) + cpu - self._last_cpu
        self._last, self._last_cpu = now, cpu

    def timings(self) -> dict[str, float]:
        out = {k: self.laps.get(k, 0.0) for k in ("prefill", *DECODE_PHASES, *MASKING_PHASES)}
        out["decode"] = sum(out[k] for k in DECODE_PHASES)
        out["masking"] = sum(out[k] for k in MASKING_PHASES)
        out.update({f"cpu_{k}": v for k, v in self.cpu_laps.items()})
        return out


# ----------------------------------------------------------------------------------------------- pure pieces


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
    slots = torch.arange(bmax, device=pad.device)
    prompt_ok = (torch.arange(prompt_len, device=pad.device)[None, :] >= pad[:, None])[:, None, :]
    parts = [prompt_ok.expand(r, bmax, prompt_len)]
    parts += [ancestors[:, :, level, None] == slots for level in range(depth)]  # one-hot ancestor per level
    parts.append((slots[:, None] == slots[None, :]).expand(r, bmax, bmax))  # itself
    return _additive(torch.cat(parts, -1)[:, None], dtype)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, blocked)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu", multiple: int = 1
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids [R, P], pad [R], lengths [R])`` with prompts right-aligned (left padding); ``P`` is the longest
    prompt rounded up to a multiple of ``multiple``."""
    lengths = [len(p) for p in prompts]
    if min(lengths) < 1:
        raise ValueError("every prompt must hold at least one token, given an empty prompt")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, given {multiple}")
    width = -(-max(lengths) // multiple) * multiple
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for r, p in enumerate(prompts):  # one copy per request, not per beam
        ids[r, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
    lens = torch.as_tensor(lengths, dtype=torch.long)
    return ids.to(device, non_blocking=True), (width - lens).to(device, non_blocking=True), lens.to(device)


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
    sync_timings: bool = False,
    steps: StepRunner | None = None,
    prompt_multiple: int = 1,
) -> BeamOutput:
    """Decode 3-token SIDs for ``R`` prompts at once (see the module docstring for the algorithm and scores).

    ``steps`` replaces :func:`decode_levels` after the prefill (e.g. :class:`decoding.cuda_graphs.GraphedDecode`,
    called as ``steps(cache, logits, pad, lengths, widths, bmax, constrained)``); ``prompt_multiple`` rounds the
    padded prompt length up to a multiple (fewer distinct shapes; padding is masked).
    """
    if len(prompts) == 0:
        raise ValueError("prompts must hold at least one prompt, given 0")
    if len(beam_widths) != len(prompts):
        raise ValueError(f"beam_widths must have one entry per prompt ({len(prompts)}), given {len(beam_widths)}")
    for w in beam_widths:
        if not 1 <= int(w) <= MAX_BEAM_WIDTH:
            raise ValueError(f"beam_width must be in [1, {MAX_BEAM_WIDTH}], given {w}")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    clock = PhaseClock(device if sync_timings and device.type == "cuda" else None)
    widths = torch.as_tensor([int(w) for w in beam_widths], dtype=torch.long).to(device, non_blocking=True)
    bmax = max(int(w) for w in beam_widths)  # from the host list: no synchronisation

    # ---- prefill: each prompt once, cache at batch R
    ids, pad, lengths = left_pad(prompts, vocab.eos_id, device, prompt_multiple)
    plen = ids.shape[1]
    mask = prefill_mask(pad, plen, dtype)
    positions = (torch.arange(plen, device=device)[None, :] - pad[:, None]).clamp_min(0)
    clock.lap("prefill_inputs")
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    clock.lap("prefill")
    if steps is None:
        tokens, scores = decode_levels(model, out.past_key_values, out.logits[:, -1:, :], pad, lengths, widths, bmax,
                                       vocab, trie, constrained, clock)
    else:
        tokens, scores = steps(out.past_key_values, out.logits[:, -1:, :], pad, lengths, widths, bmax, constrained)
        clock.lap("step1")  # the steps run as one unit: their time (and the selections') is reported as step1
    codes, sid_rows, counts = final_beams(tokens, scores, vocab, trie)
    clock.lap("final")
    return BeamOutput(tokens, codes, scores, sid_rows, counts, clock.timings())


def decode_levels(
    model: Any, cache: Any, logits: torch.Tensor, pad: torch.Tensor, lengths: torch.Tensor, widths: torch.Tensor,
    bmax: int, vocab: SidVocab, trie: TrieTensors, constrained: bool, clock: PhaseClock | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3 selections and the 2 tree-attention steps after the prefill: ``(tokens [R, bmax, 3], scores [R, bmax])``.

    ``cache`` is the prompts' KV cache (batch ``R``, ``P`` keys; it grows by ``bmax`` keys per step), ``logits``
    ``[R, 1, V]`` the prefill's last-position logits. Static shapes given ``(R, P, bmax)``, no host reads.
    """
    n_req = logits.shape[0]
    device = logits.device
    dtype = next(model.parameters()).dtype
    plen = int(cache.get_seq_length())  # the prompt keys: a shape, not a tensor value
    lap = clock.lap if clock is not None else (lambda name: None)
    # beam state, [R, Bcur]; at level 0 every request has one root beam (node 0)
    scores = torch.zeros((n_req, 1), dtype=torch.float32, device=device)
    nodes = torch.zeros((n_req, 1), dtype=torch.long, device=device)
    tokens = torch.zeros((n_req, 1, 0), dtype=torch.long, device=device)
    ancestors = torch.zeros((n_req, 1, 0), dtype=torch.long, device=device)
    slots = torch.arange(bmax, device=device)[None, :, None].expand(n_req, bmax, 1)
    for level in range(NUM_LEVELS):
        logits = logits.float()
        lse = torch.logsumexp(logits, dim=-1)  # [R, Bcur]: full-vocabulary normaliser
        if constrained:
            cand = candidate_scores(logits, lse, scores, trie.widths[level], vocab.offsets[level])
            lap("scoring")
            cand = apply_trie_mask(cand, nodes, trie, level)
            lap("trie_mask")
            scores, parent, nodes, new_tok = pick_constrained(cand, nodes, trie, level, vocab.offsets[level], widths,
                                                              bmax)
        else:
            lap("scoring")
            scores, parent, nodes, new_tok = select_unconstrained(logits, lse, scores, widths, bmax)
        gather = parent.unsqueeze(-1)
        tokens = torch.cat([torch.gather(tokens, 1, gather.expand(-1, -1, level)), new_tok.unsqueeze(-1)], -1)
        ancestors = torch.gather(ancestors, 1, gather.expand(-1, -1, ancestors.shape[-1]))
        lap("topk")
        if level == NUM_LEVELS - 1:
            break
        # feed this level's tokens as one row of bmax tokens per request
        step_mask = tree_step_mask(pad, plen, ancestors, dtype)
        step_pos = (lengths + level)[:, None].expand(n_req, bmax)
        feed = torch.where(torch.isfinite(scores), new_tok, torch.full_like(new_tok, vocab.eos_id))
        lap("attn_mask")
        out = model(input_ids=feed, attention_mask=step_mask, position_ids=step_pos, past_key_values=cache,
                    use_cache=True)
        cache = out.past_key_values
        logits = out.logits
        lap(f"step{level + 1}")
        ancestors = torch.cat([ancestors, slots], -1)
    return tokens, scores


def final_beams(tokens: torch.Tensor, scores: torch.Tensor, vocab: SidVocab, trie: TrieTensors
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes [R, B, 3], sid_rows [R, B], counts [R])`` of the final beams (see :class:`BeamOutput`)."""
    offsets = torch.as_tensor(vocab.offsets, dtype=torch.long).to(tokens.device, non_blocking=True)
    sizes = torch.as_tensor(vocab.sizes, dtype=torch.long).to(tokens.device, non_blocking=True)
    live = torch.isfinite(scores)
    in_level = (tokens >= offsets) & (tokens < offsets + sizes)
    codes = torch.where(in_level, tokens - offsets, torch.full_like(tokens, -1))
    sid_rows = torch.where(live, trie.sid_rows(codes), torch.full_like(scores, -1, dtype=torch.long))
    return codes, sid_rows, live.sum(1)


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
