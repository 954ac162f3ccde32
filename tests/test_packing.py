"""Packed forward (one pass per session, block-diagonal mask, aligned positions) equals encoding every
(prompt, candidate) pair on its own; the pairwise row path equals it too."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from training.packing import (
    CANDIDATE_LEN,
    pack_sessions,
    packed_forward,
    reference_scores,
    sequence_forward,
)

SIZES = (4, 4, 4)


def _random_sessions(tok: Any, n_cands: list[int],
                     seed: int = 0) -> tuple[list[list[int]], list[list[tuple[int, ...]]]]:
    from decoding.sid_vocab import SidVocab

    vocab = SidVocab.from_tokenizer(tok, SIZES)
    rng = random.Random(seed)
    words = [tok.convert_tokens_to_ids(w) for w in ("query:", "a", "b", "c", "drill", "tape", "history:", "item:")]
    prompts, cands = [], []
    for c in n_cands:
        prompts.append([rng.choice(words) for _ in range(rng.randint(3, 9))])
        cands.append([vocab.candidate_ids([rng.randrange(s) for s in SIZES]) for _ in range(c)])
    return prompts, cands


def test_mask_layout_by_hand() -> None:
    """Session 0: prompt p0 p1, candidates a, b; session 1: prompt q0, candidate c. Pmax = 2, Cmax = 2, L = 8.

    Row 0 columns: p0 p1 | a0 a1 a2 | b0 b1 b2; row 1: pad q0 | c0 c1 c2 | dummy dummy dummy.
    Row 0: a1 (col 3) sees p0 p1 a0 a1; b0 (col 5) sees p0 p1 b0; positions 0 1 | 2 3 4 | 2 3 4.
    Row 1: the pad (col 0) and the dummy block see only themselves; c0 (col 2) sees q0 c0; positions of c are 1 2 3.
    Both rows predict candidate token 0 at column 1 (last prompt column), block j's EOS at column 4 + 3j.
    """
    batch = pack_sessions([[7, 8], [9]], [[(10, 11, 12, 2), (13, 14, 15, 2)], [(16, 17, 18, 2)]], pad_id=0)
    blocked = batch.attention_mask[:, 0] < 0

    def visible(b: int) -> list[list[int]]:
        return [[int(k) for k in torch.nonzero(~blocked[b, q]).flatten()] for q in range(8)]

    assert visible(0) == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 5], [0, 1, 5, 6],
                          [0, 1, 5, 6, 7]]
    assert visible(1) == [[0], [1], [1, 2], [1, 2, 3], [1, 2, 3, 4], [5], [6], [7]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3, 4], [0, 0, 1, 2, 3, 0, 0, 0]]
    assert batch.input_ids.tolist() == [[7, 8, 10, 11, 12, 13, 14, 15], [0, 9, 16, 17, 18, 0, 0, 0]]
    assert batch.predict_pos[0].tolist() == [[1, 2, 3, 4], [1, 5, 6, 7]] == batch.predict_pos[1].tolist()
    assert batch.eos_pos.tolist() == [[4, 7], [4, 7]]
    assert batch.valid.tolist() == [[True, True], [True, False]]
    assert batch.attention_mask.dtype == torch.float32
    assert float(batch.attention_mask.min()) == torch.finfo(torch.float32).min


def test_packed_equals_separate_encoding_single_session(tiny_lm_factory: Any) -> None:
    model, tok = tiny_lm_factory(SIZES, seed=1)
    prompts, cands = _random_sessions(tok, [5], seed=3)
    out = packed_forward(model, pack_sessions(prompts, cands, pad_id=tok.pad_token_id))
    ref_lp, ref_h = reference_scores(model, prompts[0], cands[0])
    torch.testing.assert_close(out.token_logps[0], ref_lp, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out.eos_hidden[0], ref_h, atol=2e-5, rtol=1e-5)
    assert out.token_logps.shape == (1, 5, CANDIDATE_LEN)


def test_packed_eos_state_of_an_inner_layer_equals_separate_encoding(tiny_lm_factory: Any) -> None:
    """``hidden_layer`` picks the same hidden state packed as encoded alone (layer 1, and 0 = the embeddings),
    and it is not the final-layer state."""
    model, tok = tiny_lm_factory(SIZES, seed=1)
    prompts, cands = _random_sessions(tok, [2, 4], seed=3)
    batch = pack_sessions(prompts, cands, pad_id=tok.pad_token_id)
    last = packed_forward(model, batch)
    for layer in (1, 0):
        out = packed_forward(model, batch, hidden_layer=layer)
        torch.testing.assert_close(out.token_logps, last.token_logps)  # the scores do not depend on it
        for b, c in enumerate((2, 4)):
            _, ref_h = reference_scores(model, prompts[b], cands[b], hidden_layer=layer)
            torch.testing.assert_close(out.eos_hidden[b, :c], ref_h, atol=2e-5, rtol=1e-5)
        assert not torch.allclose(out.eos_hidden, last.eos_hidden)


def test_packed_batch_with_different_candidate_counts(tiny_lm_factory: Any) -> None:
    """Sessions with 1, 6 and 3 candidates and different prompt lengths in one batch: padding candidates are
    invalid and zero, no NaN anywhere, every real candidate equals its separate encoding."""
    model, tok = tiny_lm_factory(SIZES, seed=2)
    counts = [1, 6, 3]
    prompts, cands = _random_sessions(tok, counts, seed=5)
    out = packed_forward(model, pack_sessions(prompts, cands, pad_id=tok.pad_token_id))
    assert not torch.isnan(out.token_logps).any() and not torch.isnan(out.eos_hidden).any()
    assert out.valid.tolist() == [[j < c for j in range(6)] for c in counts]
    for b, c in enumerate(counts):
        ref_lp, ref_h = reference_scores(model, prompts[b], cands[b])
        torch.testing.assert_close(out.token_logps[b, :c], ref_lp, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(out.eos_hidden[b, :c], ref_h, atol=2e-5, rtol=1e-5)
        assert out.token_logps[b, c:].abs().sum() == 0


def test_packed_equals_separate_in_float64_exactly_enough(tiny_lm_factory: Any) -> None:
    model, tok = tiny_lm_factory(SIZES, seed=4)
    model = model.double()
    prompts, cands = _random_sessions(tok, [2, 4], seed=9)
    out = packed_forward(model, pack_sessions(prompts, cands, pad_id=tok.pad_token_id, dtype=torch.float64))
    for b in range(2):
        ref_lp, _ = reference_scores(model, prompts[b], cands[b])
        torch.testing.assert_close(out.token_logps[b, : len(cands[b])], ref_lp, atol=1e-10, rtol=1e-10)


def test_sequence_forward_equals_reference(tiny_lm_factory: Any) -> None:
    model, tok = tiny_lm_factory(SIZES, seed=6)
    prompts, cands = _random_sessions(tok, [3, 2], seed=11)
    flat_p = [prompts[b] for b in range(2) for _ in cands[b]]
    flat_c = [c for b in range(2) for c in cands[b]]
    out = sequence_forward(model, flat_p, flat_c, pad_id=tok.pad_token_id)
    ref = torch.cat([reference_scores(model, prompts[b], cands[b])[0] for b in range(2)])
    torch.testing.assert_close(out.token_logps[:, 0], ref, atol=2e-5, rtol=1e-5)


def test_packed_gradients_match_separate(tiny_lm_factory: Any) -> None:
    """The gradient of the summed log-probs is the same packed and pairwise (the mask isolates blocks)."""
    model, tok = tiny_lm_factory(SIZES, seed=7)
    prompts, cands = _random_sessions(tok, [3, 1], seed=2)
    packed = packed_forward(model, pack_sessions(prompts, cands, pad_id=tok.pad_token_id))
    g1 = torch.autograd.grad(packed.token_logps.sum(), list(model.parameters()))
    flat_p = [prompts[b] for b in range(2) for _ in cands[b]]
    flat_c = [c for b in range(2) for c in cands[b]]
    rows = sequence_forward(model, flat_p, flat_c, pad_id=tok.pad_token_id)
    g2 = torch.autograd.grad(rows.token_logps.sum(), list(model.parameters()))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("prompts", "cands", "msg"),
    [([[]], [[(1, 2, 3, 4)]], "prompt"), ([[1]], [[]], "candidates"), ([[1]], [[(1, 2, 3)]], "4 token ids"),
     ([[1], [2]], [[(1, 2, 3, 4)]], "same length")],
)
def test_bad_input_names_field(prompts: list[list[int]], cands: list[list[tuple[int, ...]]], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        pack_sessions(prompts, cands, pad_id=0)
