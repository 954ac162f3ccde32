"""TorchBeamEngine on a tiny Qwen3 and a real SidIndex: SIDs → items, chunking, batch invariance, errors;
and items.expand_items against its slow reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding.beam_search import teacher_forced_sid_scores
from decoding.engine import RetrievalRequest
from decoding.items import expand_items, expand_items_reference
from decoding.sid_vocab import SidVocab
from decoding.torch_engine import TorchBeamEngine
from sid_index.index import SidIndex

if TYPE_CHECKING:
    from transformers import Qwen3ForCausalLM

SIZES = (5, 5, 5)
Setup = tuple["Qwen3ForCausalLM", SidVocab, SidIndex]


@pytest.fixture(scope="module")
def setup() -> Setup:
    tok = make_tiny_tokenizer(SIZES, words=["a", "b", "c"])
    model = make_tiny_model(len(tok), seed=1)
    vocab = SidVocab.from_tokenizer(tok, SIZES)
    rng = np.random.default_rng(0)
    n_items = 90
    codes = rng.integers(0, 5, size=(n_items, 3))  # collisions: several items share a SID
    index = SidIndex.from_codes([f"item{i}" for i in range(n_items)], codes, rng.random(n_items) * 10, None, SIZES)
    return model, vocab, index


def prompts(vocab_size: int, lengths: list[int], seed: int = 0) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(t) for t in rng.integers(3, vocab_size, size=n)) for n in lengths]


def test_full_width_ranks_every_sid_and_expands_items_by_popularity(setup: Setup) -> None:
    model, vocab, index = setup
    engine = TorchBeamEngine(model, vocab, index)
    (prompt,) = prompts(vocab.vocab_size, [11])
    [res] = engine.retrieve_batch([RetrievalRequest(prompt, beam_width=128, top_k_items=1000)])
    ref = teacher_forced_sid_scores(model, prompt, index.sid_codes + np.asarray(vocab.offsets))
    order = np.argsort(-ref, kind="stable")
    assert [h.sid_row for h in res.sids] == order.tolist()
    assert all(h.valid for h in res.sids)
    np.testing.assert_allclose([h.score for h in res.sids], ref[order], atol=2e-5, rtol=0)
    assert [h.codes for h in res.sids] == [tuple(int(c) for c in index.sid_codes[r]) for r in order]
    # every item, SID by SID in score order, most popular first within a SID
    expected = []
    for r in order:
        rows = sorted(np.flatnonzero(index.item_sid_row == r), key=lambda i: (-index.item_popularity[i], i))
        expected += [(index.item_ids[i], int(r)) for i in rows]
    assert [(h.item_id, h.sid_row) for h in res.items] == expected
    assert [h.rank for h in res.items] == list(range(1, index.num_items + 1))
    score_of = {h.sid_row: h.score for h in res.sids}
    assert all(h.score == score_of[h.sid_row] for h in res.items)
    assert set(res.timings) >= {"prefill", "decode", "masking", "finalize"}
    assert all(v >= 0 for v in res.timings.values())


def test_top_k_items_truncates(setup: Setup) -> None:
    model, vocab, index = setup
    engine = TorchBeamEngine(model, vocab, index)
    (prompt,) = prompts(vocab.vocab_size, [6], seed=2)
    full, cut = engine.retrieve_batch([RetrievalRequest(prompt, beam_width=16, top_k_items=500),
                                       RetrievalRequest(prompt, beam_width=16, top_k_items=7)])
    assert len(cut.items) == 7
    assert cut.items == full.items[:7]
    assert cut.sids == full.sids


def test_batched_and_chunked_results_equal_single_requests(setup: Setup) -> None:
    model, vocab, index = setup
    ps = prompts(vocab.vocab_size, [4, 13, 1, 8, 20, 6], seed=3)
    reqs = [RetrievalRequest(p, beam_width=w, top_k_items=30, constrained=c)
            for p, w, c in zip(ps, [8, 128, 3, 64, 20, 1], [True, True, False, True, False, True], strict=True)]
    engine = TorchBeamEngine(model, vocab, index, max_batch_rows=130)  # forces several chunks
    together = engine.retrieve_batch(reqs)
    assert len(together) == len(reqs)
    assert max(r.timings["chunk_requests"] for r in together) >= 2
    by_tokens = TorchBeamEngine(model, vocab, index, max_prefill_tokens=25).retrieve_batch(reqs)  # prompt budget
    assert max(r.timings["chunk_requests"] for r in by_tokens) <= 3
    assert [[h.sid_row for h in r.sids] for r in by_tokens] == [[h.sid_row for h in r.sids] for r in together]
    for req, got in zip(reqs, together, strict=True):
        [alone] = TorchBeamEngine(model, vocab, index).retrieve_batch([req])
        expect_n = min(req.beam_width, index.num_sids) if req.constrained else req.beam_width
        assert len(got.sids) == len(alone.sids) == expect_n
        assert [(h.codes, h.token_ids, h.sid_row) for h in got.sids] == [
            (h.codes, h.token_ids, h.sid_row) for h in alone.sids]
        np.testing.assert_allclose([h.score for h in got.sids], [h.score for h in alone.sids], atol=1e-5, rtol=0)
        assert [h.item_id for h in got.items] == [h.item_id for h in alone.items]


def test_unconstrained_items_come_only_from_valid_sids(setup: Setup) -> None:
    model, vocab, index = setup
    (prompt,) = prompts(vocab.vocab_size, [9], seed=4)
    [res] = TorchBeamEngine(model, vocab, index).retrieve_batch(
        [RetrievalRequest(prompt, beam_width=64, top_k_items=1000, constrained=False)])
    valid_rows = [h.sid_row for h in res.sids if h.valid]
    assert len(res.sids) == 64
    for h in res.sids:
        if h.valid:
            assert h.codes == tuple(int(c) for c in index.sid_codes[h.sid_row])
        else:
            assert index.sid_row_of_codes(np.asarray(h.codes)) == -1 or min(h.codes) < 0
    assert sorted({h.sid_row for h in res.items}) == sorted(set(valid_rows))


def test_empty_batch_returns_no_results(setup: Setup) -> None:
    model, vocab, index = setup
    assert TorchBeamEngine(model, vocab, index).retrieve_batch([]) == []


def test_bad_input_names_the_field(setup: Setup) -> None:
    model, vocab, index = setup
    with pytest.raises(ValueError, match="max_batch_rows"):
        TorchBeamEngine(model, vocab, index, max_batch_rows=0)
    with pytest.raises(ValueError, match="max_prefill_tokens"):
        TorchBeamEngine(model, vocab, index, max_prefill_tokens=0)
    engine = TorchBeamEngine(model, vocab, index)
    with pytest.raises(ValueError, match=r"requests\[1\].prompt_ids"):
        engine.retrieve_batch([RetrievalRequest((3, 4)), RetrievalRequest((3, 10_000))])
    small = SidVocab(vocab.offsets, (5, 5, 4), vocab.eos_id, vocab.vocab_size)
    with pytest.raises(ValueError, match=r"vocab\.sizes"):
        TorchBeamEngine(model, small, index)


def test_eager_attention_gives_the_same_result_as_sdpa(setup: Setup) -> None:
    model, vocab, index = setup
    (prompt,) = prompts(vocab.vocab_size, [7], seed=5)
    req = RetrievalRequest(prompt, beam_width=24)
    [sdpa] = TorchBeamEngine(model, vocab, index).retrieve_batch([req])
    model.set_attn_implementation("eager")
    try:
        [eager] = TorchBeamEngine(model, vocab, index).retrieve_batch([req])
    finally:
        model.set_attn_implementation("sdpa")
    assert [h.sid_row for h in eager.sids] == [h.sid_row for h in sdpa.sids]
    np.testing.assert_allclose([h.score for h in eager.sids], [h.score for h in sdpa.sids], atol=1e-5, rtol=0)


def test_rejects_attention_that_ignores_custom_masks(setup: Setup) -> None:
    model, vocab, index = setup
    model.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="attention implementation"):
            TorchBeamEngine(model, vocab, index)
    finally:
        model.config._attn_implementation = "sdpa"


def test_dtype_option_runs_in_bfloat16() -> None:
    tok = make_tiny_tokenizer(SIZES)
    model = make_tiny_model(len(tok), seed=2)
    vocab = SidVocab.from_tokenizer(tok, SIZES)
    codes = np.random.default_rng(1).integers(0, 5, size=(40, 3))
    index = SidIndex.from_codes([f"i{i}" for i in range(40)], codes, np.ones(40), None, SIZES)
    engine = TorchBeamEngine(model, vocab, index, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    [res] = engine.retrieve_batch([RetrievalRequest((3, 4, 5), beam_width=16)])
    assert len(res.sids) == 16 and all(h.valid for h in res.sids)
    assert all(a.score >= b.score for a, b in zip(res.sids, res.sids[1:], strict=False))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 4), min_size=1, max_size=12), top_k=st.integers(1, 30),
    picks=st.lists(st.integers(-1, 11), min_size=0, max_size=12),
)
def test_expand_items_matches_reference(counts: list[int], top_k: int, picks: list[int]) -> None:
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    item_rows = np.random.default_rng(0).permutation(int(indptr[-1])).astype(np.int64)
    rows = np.asarray([p if p < len(counts) else -1 for p in picks], dtype=np.int64)
    scores = -np.arange(rows.shape[0], dtype=np.float64)
    got = expand_items(rows, scores, indptr, item_rows, top_k)
    ref = expand_items_reference(rows, scores, indptr, item_rows, top_k)
    assert list(zip(*(a.tolist() for a in got), strict=True)) == ref
