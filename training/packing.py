"""Label packing: one forward pass per session scores the prompt against every candidate (method.md §3 [P]).

Contract
--------
A *session* is a prompt (token ids) and ``C >= 1`` candidates; a candidate is ``CANDIDATE_LEN = 4`` token ids
(3 SID tokens then EOS, ``SidVocab.candidate_ids``). ``pack_sessions`` lays a batch of sessions out as

    row b:  prompt_b (P_b tokens) ‖ cand_1[:3] ‖ cand_2[:3] ‖ … ‖ cand_C[:3] ‖ padding

with
- a block-diagonal **additive float** mask ``[B, 1, L, L]`` (0 = attend, ``finfo(dtype).min`` = blocked): the
  prompt is causal; each candidate block sees the whole prompt and its own earlier tokens, never another block;
  a padding position sees only itself (a row with no visible key makes sdpa return NaN);
- **aligned position ids**: every block continues from the prompt's length (``P_b, P_b + 1, P_b + 2``), so no
  block can tell where it sits in the row;
- the gather positions: candidate token 0 is predicted from the last prompt position ([R]), token ``t >= 1`` from
  the block's token ``t - 1``; the EOS-emitting step (token 3) is the block's last SID token, whose final-layer
  hidden state is the candidate's representation ``h(y)`` for RDRW.

``packed_forward(model, batch)`` runs one forward pass and returns :class:`CandidateScores`: per-token log-probs
``[B, Cmax, 4]`` (log-softmax over the full vocabulary), EOS hidden states ``[B, Cmax, H]`` and the validity mask
``[B, Cmax]`` (False for the padding candidates of sessions with fewer than ``Cmax`` candidates; their log-probs
and hidden states are 0). Logits are computed only at the gathered positions.

``sequence_forward`` is the unpacked path the pairwise baselines use (each (prompt, candidate) pair its own row,
right-padded, ordinary causal attention) and ``reference_scores`` the slow obviously-correct reference (one pair at
a time, no padding, no custom mask); tests check all three agree to float tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

CANDIDATE_LEN = 4  # 3 SID tokens + EOS
BLOCK_LEN = CANDIDATE_LEN - 1  # tokens of a candidate that enter the sequence (EOS is only predicted)


@dataclass(frozen=True)
class PackedBatch:
    """Model inputs and gather indices of packed sessions (shapes in the module docstring)."""

    input_ids: torch.Tensor  # int64 [B, L]
    attention_mask: torch.Tensor  # float [B, 1, L, L], additive
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
    """Lay out a batch of sessions as packed rows (see the module docstring)."""
    if len(prompts) != len(candidates):
        raise ValueError(f"prompts and candidates must have the same length, given {len(prompts)}, {len(candidates)}")
    if len(prompts) == 0:
        raise ValueError("need at least 1 session, given 0")
    for b, (p, cs) in enumerate(zip(prompts, candidates, strict=True)):
        _check_session(b, p, cs)
    bsz = len(prompts)
    lengths = [len(p) + BLOCK_LEN * len(cs) for p, cs in zip(prompts, candidates, strict=True)]
    seq_len = max(lengths)
    cmax = max(len(cs) for cs in candidates)

    input_ids = torch.full((bsz, seq_len), int(pad_id), dtype=torch.long)
    position_ids = torch.zeros((bsz, seq_len), dtype=torch.long)
    allowed = torch.zeros((bsz, seq_len, seq_len), dtype=torch.bool)
    predict_pos = torch.zeros((bsz, cmax, CANDIDATE_LEN), dtype=torch.long)
    target_ids = torch.zeros((bsz, cmax, CANDIDATE_LEN), dtype=torch.long)
    eos_pos = torch.zeros((bsz, cmax), dtype=torch.long)
    valid = torch.zeros((bsz, cmax), dtype=torch.bool)

    causal3 = torch.tril(torch.ones((BLOCK_LEN, BLOCK_LEN), dtype=torch.bool))
    for b, (prompt, cands) in enumerate(zip(prompts, candidates, strict=True)):
        plen = len(prompt)
        input_ids[b, :plen] = torch.as_tensor(list(prompt), dtype=torch.long)
        position_ids[b, :plen] = torch.arange(plen)
        allowed[b, :plen, :plen] = torch.tril(torch.ones((plen, plen), dtype=torch.bool))
        for j, cand in enumerate(cands):
            start = plen + BLOCK_LEN * j
            block = slice(start, start + BLOCK_LEN)
            input_ids[b, block] = torch.as_tensor(list(cand[:BLOCK_LEN]), dtype=torch.long)
            position_ids[b, block] = torch.arange(plen, plen + BLOCK_LEN)
            allowed[b, block, :plen] = True
            allowed[b, block, block] = causal3
            predict_pos[b, j] = torch.tensor([plen - 1, start, start + 1, start + 2])
            target_ids[b, j] = torch.as_tensor(list(cand), dtype=torch.long)
            eos_pos[b, j] = start + BLOCK_LEN - 1
            valid[b, j] = True
        for pos in range(lengths[b], seq_len):  # padding sees only itself
            allowed[b, pos, pos] = True

    mask = torch.zeros((bsz, 1, seq_len, seq_len), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return PackedBatch(input_ids, mask, position_ids, predict_pos, target_ids, eos_pos, valid)


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The transformer body (returns last_hidden_state, post final norm) and the LM head of a causal LM."""
    return model.get_decoder(), model.get_output_embeddings()


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Log-softmax in float32 for half-precision models, in the model's precision otherwise."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _gather_scores(
    hidden: torch.Tensor, head: Any, predict_pos: torch.Tensor, target_ids: torch.Tensor, eos_pos: torch.Tensor,
    valid: torch.Tensor,
) -> CandidateScores:
    bsz, cmax, tlen = predict_pos.shape
    rows = torch.arange(bsz)[:, None, None].expand(bsz, cmax, tlen)
    h_pred = hidden[rows, predict_pos]  # [B, C, 4, H]
    logits = _at_least_fp32(head(h_pred))
    logps = torch.log_softmax(logits, dim=-1).gather(-1, target_ids[..., None]).squeeze(-1)
    eos_hidden = hidden[torch.arange(bsz)[:, None].expand(bsz, cmax), eos_pos]
    logps = logps * valid[..., None]
    eos_hidden = eos_hidden * valid[..., None].to(eos_hidden.dtype)
    return CandidateScores(logps, eos_hidden, valid)


def packed_forward(model: Any, batch: PackedBatch) -> CandidateScores:
    """One forward pass over packed sessions; gradients flow unless the caller disables them."""
    decoder, head = _decoder_and_head(model)
    out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                  use_cache=False)
    return _gather_scores(out.last_hidden_state, head, batch.predict_pos, batch.target_ids, batch.eos_pos,
                          batch.valid)


def sequence_forward(
    model: Any, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]], pad_id: int,
) -> CandidateScores:
    """Unpacked: row i is ``prompts[i] ‖ candidates[i][:3]``, right-padded, causal attention with a padding mask.

    Returns scores with ``Cmax = 1`` (shape ``[R, 1, 4]``): one candidate per row, as the pairwise baselines encode.
    """
    if len(prompts) != len(candidates):
        raise ValueError(f"prompts and candidates must have the same length, given {len(prompts)}, {len(candidates)}")
    if len(prompts) == 0:
        raise ValueError("need at least 1 row, given 0")
    for i, (p, c) in enumerate(zip(prompts, candidates, strict=True)):
        _check_session(i, p, [c])
    rows = len(prompts)
    lengths = [len(p) + BLOCK_LEN for p in prompts]
    seq_len = max(lengths)
    input_ids = torch.full((rows, seq_len), int(pad_id), dtype=torch.long)
    attn = torch.zeros((rows, seq_len), dtype=torch.long)
    predict_pos = torch.zeros((rows, 1, CANDIDATE_LEN), dtype=torch.long)
    target_ids = torch.zeros((rows, 1, CANDIDATE_LEN), dtype=torch.long)
    eos_pos = torch.zeros((rows, 1), dtype=torch.long)
    for i, (prompt, cand) in enumerate(zip(prompts, candidates, strict=True)):
        plen = len(prompt)
        input_ids[i, : lengths[i]] = torch.as_tensor([*prompt, *cand[:BLOCK_LEN]], dtype=torch.long)
        attn[i, : lengths[i]] = 1
        predict_pos[i, 0] = torch.arange(plen - 1, plen + BLOCK_LEN)
        target_ids[i, 0] = torch.as_tensor(list(cand), dtype=torch.long)
        eos_pos[i, 0] = plen + BLOCK_LEN - 1
    decoder, head = _decoder_and_head(model)
    position_ids = torch.arange(seq_len)[None].expand(rows, seq_len)
    out = decoder(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, use_cache=False)
    valid = torch.ones((rows, 1), dtype=torch.bool)
    return _gather_scores(out.last_hidden_state, head, predict_pos, target_ids, eos_pos, valid)


@torch.no_grad()
def reference_scores(
    model: Any, prompt: Sequence[int], candidates: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow reference: each (prompt, candidate) alone, full model forward, no mask, no padding.

    Returns ``(token_logps [C, 4], eos_hidden [C, H])``.
    """
    _check_session(0, prompt, candidates)
    logps, hiddens = [], []
    for cand in candidates:
        ids = torch.as_tensor([[*prompt, *cand[:BLOCK_LEN]]], dtype=torch.long)
        out = model(input_ids=ids, output_hidden_states=False, use_cache=False)
        body = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        logp_all = torch.log_softmax(_at_least_fp32(out.logits[0]), dim=-1)  # [P + 3, V]
        plen = len(prompt)
        steps = [logp_all[plen - 1 + t, int(cand[t])] for t in range(CANDIDATE_LEN)]
        logps.append(torch.stack(steps))
        hiddens.append(body[0, plen + BLOCK_LEN - 1])
    return torch.stack(logps), torch.stack(hiddens)
