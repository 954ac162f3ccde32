"""The vectorised ``pack_sessions`` lays out exactly what a plain loop, filling the mask block by block, lays out.

The loop below is the slow reference (it was ``pack_sessions`` before the layout was vectorised): every tensor of
the ``PackedBatch`` must be equal, on hand-picked and random batches (different prompt lengths, candidate counts,
dtypes).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import torch

from training.packing import BLOCK_LEN, CANDIDATE_LEN, PackedBatch, pack_sessions


def _pack_sessions_loop(prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[Sequence[int]]],
                        pad_id: int, dtype: torch.dtype) -> PackedBatch:
    bsz = len(prompts)
    pmax = max(len(p) for p in prompts)
    cmax = max(len(cs) for cs in candidates)
    seq_len = pmax + BLOCK_LEN * cmax
    input_ids = torch.full((bsz, seq_len), int(pad_id), dtype=torch.long)
    position_ids = torch.zeros((bsz, seq_len), dtype=torch.long)
    allowed = torch.zeros((bsz, seq_len, seq_len), dtype=torch.bool)
    diag = torch.arange(seq_len)
    allowed[:, diag, diag] = True
    target_ids = torch.zeros((bsz, cmax, CANDIDATE_LEN), dtype=torch.long)
    valid = torch.zeros((bsz, cmax), dtype=torch.bool)
    causal3 = torch.tril(torch.ones((BLOCK_LEN, BLOCK_LEN), dtype=torch.bool))
    for b, (prompt, cands) in enumerate(zip(prompts, candidates, strict=True)):
        plen = len(prompt)
        cols = slice(pmax - plen, pmax)
        input_ids[b, cols] = torch.as_tensor(list(prompt), dtype=torch.long)
        position_ids[b, cols] = torch.arange(plen)
        allowed[b, cols, cols] = torch.tril(torch.ones((plen, plen), dtype=torch.bool))
        for j, cand in enumerate(cands):
            start = pmax + BLOCK_LEN * j
            block = slice(start, start + BLOCK_LEN)
            input_ids[b, block] = torch.as_tensor(list(cand[:BLOCK_LEN]), dtype=torch.long)
            position_ids[b, block] = torch.arange(plen, plen + BLOCK_LEN)
            allowed[b, block, cols] = True
            allowed[b, block, block] = causal3
            target_ids[b, j] = torch.as_tensor(list(cand), dtype=torch.long)
            valid[b, j] = True
    starts = pmax + BLOCK_LEN * torch.arange(cmax)[:, None]
    predict = torch.cat([torch.full((cmax, 1), pmax - 1), starts + torch.arange(BLOCK_LEN)], dim=1)
    predict_pos = predict[None].expand(bsz, cmax, CANDIDATE_LEN).clone()
    eos_pos = (starts[:, 0] + BLOCK_LEN - 1)[None].expand(bsz, cmax).clone()
    mask = torch.zeros((bsz, 1, seq_len, seq_len), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return PackedBatch(input_ids, mask, position_ids, predict_pos, target_ids, eos_pos, valid)


def _assert_same(a: PackedBatch, b: PackedBatch) -> None:
    for name in PackedBatch.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        assert torch.equal(x, y), name


def test_vectorised_layout_equals_loop_by_hand() -> None:
    prompts = [[7, 8], [9]]
    cands = [[(10, 11, 12, 2), (13, 14, 15, 2)], [(16, 17, 18, 2)]]
    _assert_same(pack_sessions(prompts, cands, pad_id=0), _pack_sessions_loop(prompts, cands, 0, torch.float32))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_vectorised_layout_equals_loop_on_random_batches(seed: int, dtype: torch.dtype) -> None:
    rng = random.Random(seed)
    bsz = rng.randint(1, 5)
    prompts = [[rng.randrange(3, 50) for _ in range(rng.randint(1, 12))] for _ in range(bsz)]
    cands = [[tuple(rng.randrange(50, 90) for _ in range(CANDIDATE_LEN)) for _ in range(rng.randint(1, 6))]
             for _ in range(bsz)]
    pad = rng.choice([0, 1, 99])
    fast = pack_sessions(prompts, cands, pad_id=pad, dtype=dtype)
    _assert_same(fast, _pack_sessions_loop(prompts, cands, pad, dtype))
