"""Label packing: one forward pass per session scores the prompt against every candidate.

Packing is the paper's ([P]); how the first SID token is read is our reconstruction ([R]); the tags are those of
docs/alignment.md, "What is the paper's, what is reconstructed".

Contract
--------
A *session* is a prompt (token ids) and ``C >= 1`` candidates; a candidate is ``CANDIDATE_LEN = 4`` token ids
(3 SID tokens then EOS, ``SidVocab.candidate_ids``). ``pack_sessions`` lays a batch of sessions out as

    row b:  left padding ‖ prompt_b (P_b tokens) ‖ cand_1[:3] ‖ … ‖ cand_C[:3] ‖ dummy blocks up to Cmax

so every row has the same columns: the last prompt token at ``Pmax - 1`` and candidate block ``j`` at
``Pmax + 3j .. Pmax + 3j + 2`` (``L = Pmax + 3·Cmax``). With it come
- a block-diagonal **additive float** mask ``[B, 1, L, L]`` (0 = attend, ``finfo(dtype).min`` = blocked): the
  prompt is causal; each candidate block sees the whole prompt and its own earlier tokens, never another block;
  padding positions and dummy blocks see only themselves (a row with no visible key makes sdpa return NaN);
- **aligned position ids**: the prompt counts from 0 and every block continues from the prompt's length
  (``P_b, P_b + 1, P_b + 2``), so no block can tell where it sits in the row;
- candidate token 0 is predicted from the last prompt position ([R]), token ``t >= 1`` from the block's token
  ``t - 1``; the EOS-emitting step (token 3) is the block's last SID token, whose final-layer hidden state (after
  the final norm: the LM head's input) is the candidate's representation ``h(y)`` for RDRW.

``packed_forward(model, batch)`` is one ordinary ``model(...)`` call (so DDP and autocast wrappers work) with
``logits_to_keep = 3·Cmax + 1`` (logits only for the columns that predict candidate tokens). It returns
:class:`CandidateScores`: per-token log-probs ``[B, Cmax, 4]`` (log-softmax over the full vocabulary), EOS hidden
states ``[B, Cmax, H]`` and the validity mask ``[B, Cmax]`` (False for dummy candidates; their values are 0).

``pack_rows`` (then ``packed_forward``) is the unpacked path of the pairwise baselines (each (prompt, candidate)
pair its own row, left-padded by ``training.batching.pad_left``, ordinary causal attention, ``logits_to_keep = 4``);
``sequence_forward`` is the two in one call, the unpacked reference the packed layout is tested against.
``reference_scores`` is the slow obviously-correct reference (one pair at a time, no padding, no custom mask);
``tests/test_packing.py`` checks all three agree to float tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sid_index.tokens import NUM_LEVELS
from training.batching import pad_left
from training.logprobs import at_least_fp32, target_log_probs

CANDIDATE_LEN = NUM_LEVELS + 1  # 3 SID tokens + EOS
BLOCK_LEN = CANDIDATE_LEN - 1  # tokens of a candidate that enter the sequence (EOS is only predicted)


@dataclass(frozen=True)
class PackedBatch:
    """Model inputs and gather indices of packed sessions (shapes in the module docstring)."""

    input_ids: torch.Tensor  # int64 [B, L]
    attention_mask: torch.Tensor  # float [B, 1, L, L], additive (pack_sessions) or int64 [B, L] (pack_rows)
    position_ids: torch.Tensor  # int64 [B, L]
    predict_pos: torch.Tensor  # int64 [B, Cmax, 4]: sequence position whose logits predict candidate token t
    target_ids: torch.Tensor  # int64 [B, Cmax, 4]: the candidate's token ids (pad candidates: 0)
    eos_pos: torch.Tensor  # int64 [B, Cmax]: position of the last SID token (the step that emits EOS)
    valid: torch.Tensor  # bool [B, Cmax]


@dataclass(frozen=True)
class CandidateScores:
    """Per-candidate outputs of a forward pass."""

    token_logps: torch.Tensor  # float [B, Cmax, 4]
    eos_hidden: torch.Tensor  # float [B, Cmax, H]
    valid: torch.Tensor  # bool [B, Cmax]


def _check_session(b: int, prompt: Sequence[int], cands: Sequence[Sequence[int]]) -> None:
    if len(prompt) == 0:
        raise ValueError(f"session {b}: prompt must hold at least 1 token, given 0")
    if len(cands) == 0:
        raise ValueError(f"session {b}: candidates must hold at least 1 candidate, given 0")
    for j, c in enumerate(cands):
        if len(c) != CANDIDATE_LEN:
            raise ValueError(f"session {b} candidate {j}: needs {CANDIDATE_LEN} token ids, given {len(c)}")


def pack_sessions(
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    dtype: torch.dtype = torch.float32,
) -> PackedBatch:
    """Lay out a batch of sessions as packed, left-padded rows (see the module docstring).

    Vectorised: the token ids go through one ``torch.tensor`` call and the mask and positions are built from
    broadcast comparisons of column indices, no per-candidate Python loop (``tests/test_packing_layout.py`` checks
    it against a straightforward loop that fills the mask block by block).
    """
    if len(prompts) != len(candidates):
        raise ValueError(f"prompts and candidates must have the same length, given {len(prompts)}, {len(candidates)}")
    if len(prompts) == 0:
        raise ValueError("need at least 1 session, given 0")
    for b, (p, cs) in enumerate(zip(prompts, candidates, strict=True)):
        _check_session(b, p, cs)
    plens = [len(p) for p in prompts]
    ncands = [len(cs) for cs in candidates]
    pmax, cmax = max(plens), max(ncands)
    seq_len = pmax + BLOCK_LEN * cmax

    rows, targets = [], []
    for prompt, cands, plen, n in zip(prompts, candidates, plens, ncands, strict=True):
        sids = [int(t) for c in cands for t in c[:BLOCK_LEN]]
        rows.append([pad_id] * (pmax - plen) + [int(t) for t in prompt] + sids + [pad_id] * (BLOCK_LEN * (cmax - n)))
        targets.append([[int(t) for t in c] for c in cands] + [[0] * CANDIDATE_LEN] * (cmax - n))
    input_ids = torch.tensor(rows, dtype=torch.long)
    target_ids = torch.tensor(targets, dtype=torch.long)
    plen_t = torch.tensor(plens, dtype=torch.long)[:, None]  # [B, 1]
    ncand_t = torch.tensor(ncands, dtype=torch.long)[:, None]
    valid = torch.arange(cmax)[None, :] < ncand_t  # [B, Cmax]

    col = torch.arange(seq_len)
    in_cand = col >= pmax
    block = torch.where(in_cand, (col - pmax) // BLOCK_LEN, -1)  # [L]: candidate block of a column, -1 = prompt part
    offset = torch.where(in_cand, (col - pmax) % BLOCK_LEN, 0)
    is_prompt = (~in_cand)[None, :] & (col[None, :] >= pmax - plen_t)  # [B, L]: real prompt tokens
    is_cand = in_cand[None, :] & (block[None, :] < ncand_t)  # [B, L]: tokens of real candidates
    # prompt counts from 0, every block continues from the prompt's length; padding and dummy blocks stay 0
    position_ids = torch.where(is_prompt, col[None, :] - (pmax - plen_t), 0)
    position_ids = torch.where(is_cand, plen_t + offset[None, :], position_ids)

    # a real query (prompt or candidate token) sees the real prompt tokens at or before it (for a candidate: all
    # of them) and, if a candidate, its own block's tokens at or before it; padding and dummy blocks see themselves
    causal = col[None, :] <= col[:, None]  # [L(q), L(k)]
    own_block = (block[:, None] == block[None, :]) & in_cand[:, None] & causal  # [L, L]
    allowed = ((is_prompt | is_cand)[:, :, None] & is_prompt[:, None, :] & causal) \
        | (is_cand[:, :, None] & own_block) | torch.eye(seq_len, dtype=torch.bool)

    # the same columns in every row: the last prompt column, then each block's 3 columns
    starts = pmax + BLOCK_LEN * torch.arange(cmax)[:, None]
    predict = torch.cat([torch.full((cmax, 1), pmax - 1), starts + torch.arange(BLOCK_LEN)], dim=1)
    predict_pos = predict[None].expand(len(prompts), cmax, CANDIDATE_LEN).clone()
    eos_pos = (starts[:, 0] + BLOCK_LEN - 1)[None].expand(len(prompts), cmax).clone()
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    mask = torch.where(allowed[:, None], torch.zeros((), dtype=dtype), blocked)
    return PackedBatch(input_ids, mask, position_ids, predict_pos, target_ids, eos_pos, valid)


def packed_forward(model: Any, batch: PackedBatch, hidden_layer: int = -1) -> CandidateScores:
    """One forward pass over packed sessions (or ``pack_rows`` rows); gradients flow unless disabled.

    ``eos_hidden`` is ``hidden_states[hidden_layer]`` at each candidate's last SID token (HF's tuple: 0 =
    embeddings, i = after decoder layer i, −1 = the last layer after the final norm).
    """
    keep = BLOCK_LEN * batch.valid.shape[1] + 1
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                output_hidden_states=True, logits_to_keep=keep, use_cache=False)
    first_kept = batch.input_ids.shape[1] - keep
    rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
    logits = out.logits[rows[:, None, None], batch.predict_pos - first_kept]  # [B, C, 4, V]
    logps = target_log_probs(logits, batch.target_ids)  # [B, C, 4]; float32 for half-precision models
    hidden = out.hidden_states[hidden_layer][rows[:, None], batch.eos_pos]  # [B, C, H]
    valid = batch.valid
    return CandidateScores(logps * valid[..., None], hidden * valid[..., None].to(hidden.dtype), valid)


def pack_rows(prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]], pad_id: int) -> PackedBatch:
    """Unpacked layout: row i is ``prompts[i] ‖ candidates[i][:3]``, left-padded, with a 2D padding mask (ordinary
    causal attention) and ``Cmax = 1``; ``packed_forward`` scores it. This is how the pairwise baselines encode
    every (prompt, candidate) of a pair on its own."""
    if len(prompts) != len(candidates):
        raise ValueError(f"prompts and candidates must have the same length, given {len(prompts)}, {len(candidates)}")
    if len(prompts) == 0:
        raise ValueError("need at least 1 row, given 0")
    for i, (p, c) in enumerate(zip(prompts, candidates, strict=True)):
        _check_session(i, p, [c])
    rows = len(prompts)
    padded = pad_left([[*p, *c[:BLOCK_LEN]] for p, c in zip(prompts, candidates, strict=True)], pad_id)
    width = padded["input_ids"].shape[1]
    target_ids = torch.as_tensor([list(c) for c in candidates], dtype=torch.long)[:, None, :]
    predict_pos = torch.arange(width - CANDIDATE_LEN, width)[None, None].expand(rows, 1, CANDIDATE_LEN).clone()
    eos_pos = torch.full((rows, 1), width - 1)
    valid = torch.ones((rows, 1), dtype=torch.bool)
    return PackedBatch(padded["input_ids"], padded["attention_mask"], padded["position_ids"], predict_pos, target_ids,
                       eos_pos, valid)


def sequence_forward(
    model: Any, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]], pad_id: int,
) -> CandidateScores:
    """Score each (prompt, candidate) row on its own (``pack_rows`` then ``packed_forward``): ``[R, 1, 4]``.

    The unpacked reference of ``tests/test_packing.py`` (packed vs unpacked log-probs and gradients); not used in
    production, where the pair collator calls ``pack_rows`` and the trainer ``packed_forward``.
    """
    return packed_forward(model, pack_rows(prompts, candidates, pad_id))


@torch.no_grad()
def reference_scores(
    model: Any, prompt: Sequence[int], candidates: Sequence[Sequence[int]], hidden_layer: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow reference: each (prompt, candidate) alone, full model forward, no mask, no padding.

    Returns ``(token_logps [C, 4], eos_hidden [C, H])``; ``eos_hidden`` from the decoder's ``last_hidden_state``
    (``hidden_layer`` −1) or its ``hidden_states[hidden_layer]``.
    """
    _check_session(0, prompt, candidates)
    logps, hiddens = [], []
    for cand in candidates:
        ids = torch.as_tensor([[*prompt, *cand[:BLOCK_LEN]]], dtype=torch.long)
        out = model(input_ids=ids, output_hidden_states=False, use_cache=False)
        dec = model.get_decoder()(input_ids=ids, use_cache=False, output_hidden_states=hidden_layer != -1)
        body = dec.last_hidden_state if hidden_layer == -1 else dec.hidden_states[hidden_layer]
        logp_all = torch.log_softmax(at_least_fp32(out.logits[0]), dim=-1)  # [P + 3, V]
        plen = len(prompt)
        steps = [logp_all[plen - 1 + t, int(cand[t])] for t in range(CANDIDATE_LEN)]
        logps.append(torch.stack(steps))
        hiddens.append(body[0, plen + BLOCK_LEN - 1])
    return torch.stack(logps), torch.stack(hiddens)
