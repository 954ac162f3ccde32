"""Beam search against slow references: teacher-forced scoring of every SID, a per-beam Python beam search,
Hugging Face ``generate`` with a prefix constraint; plus property and batch-invariance tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import GenerationConfig

from decoding.beam_search import (
    TrieTensors,
    beam_search,
    csr_expand,
    segmented_topk,
    teacher_forced_sid_scores,
)
from decoding.sid_vocab import SidVocab
from sid_index.prefix_tables import PrefixTables

if TYPE_CHECKING:
    from transformers import Qwen3ForCausalLM

SIZES = (6, 6, 6)
Lm = tuple["Qwen3ForCausalLM", SidVocab]


@pytest.fixture(scope="module")
def lm() -> Lm:
    tok = make_tiny_tokenizer(SIZES, words=["a", "b", "c", "drill", "tape"])
    model = make_tiny_model(len(tok), seed=3)
    return model, SidVocab.from_tokenizer(tok, SIZES)


def random_catalog(rng: np.random.Generator, n: int, sizes: tuple[int, ...] = SIZES) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, 3)
    return grid[np.sort(rng.choice(grid.shape[0], size=min(n, grid.shape[0]), replace=False))]


def random_prompt(rng: np.random.Generator, vocab_size: int, length: int) -> list[int]:
    return [int(t) for t in rng.integers(3, vocab_size, size=length)]


def reference_beam_search(model: Qwen3ForCausalLM, prompt: Sequence[int], width: int, vocab: SidVocab,
                          codes: np.ndarray, constrained: bool = True) -> list[tuple[tuple[int, ...], float]]:
    """Slow, obviously correct: per beam a full forward of prompt + prefix, all candidates, keep the best ``width``.

    Returns ``[(tokens, score)]`` best first. Constrained candidates are the tokens that extend a path of ``codes``.
    """
    paths = {tuple(int(o + c) for o, c in zip(vocab.offsets, row, strict=True)) for row in codes}
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    with torch.inference_mode():
        for level in range(3):
            cands: list[tuple[tuple[int, ...], float]] = []
            for prefix, score in beams:
                logits = model(input_ids=torch.tensor([[*prompt, *prefix]])).logits[0, -1].double()
                logp = torch.log_softmax(logits, -1)
                allowed: Sequence[int] = (sorted({p[level] for p in paths if p[:level] == prefix}) if constrained
                                          else range(logp.shape[0]))
                cands += [((*prefix, t), score + float(logp[t])) for t in allowed]
            cands.sort(key=lambda x: -x[1])
            beams = cands[:width]
    return beams


def test_csr_expand_lists_children_of_live_beams_in_order() -> None:
    indptr = torch.tensor([0, 2, 2, 5])
    beam, child, counts = csr_expand(indptr, torch.tensor([2, 0, 1, 0]), torch.tensor([True, True, True, False]))
    assert beam.tolist() == [0, 0, 0, 1, 1]
    assert child.tolist() == [2, 3, 4, 0, 1]
    assert counts.tolist() == [3, 2, 0, 0]


def test_segmented_topk_respects_segments_and_widths() -> None:
    scores = torch.tensor([0.1, 0.5, 0.3, -1.0, 2.0, 1.0])
    sizes = torch.tensor([3, 0, 3])  # segment 1 is empty
    vals, idx = segmented_topk(scores, sizes, torch.tensor([2, 2, 1]))
    assert torch.equal(idx[0], torch.tensor([1, 2]))
    assert torch.isinf(vals[1]).all()
    assert idx[2, 0] == 4 and torch.isinf(vals[2, 1])


@pytest.mark.parametrize("seed", [0, 1])
def test_full_width_returns_every_sid_ranked_as_teacher_forcing(lm: Lm, seed: int) -> None:
    model, vocab = lm
    rng = np.random.default_rng(seed)
    codes = random_catalog(rng, 60)
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(codes))
    prompt = random_prompt(rng, vocab.vocab_size, 9 + seed)
    out = beam_search(model, [prompt], [128], vocab, trie)
    ref = teacher_forced_sid_scores(model, prompt, codes + np.asarray(vocab.offsets))
    order = np.argsort(-ref, kind="stable")
    assert int(out.counts[0]) == len(codes)
    np.testing.assert_array_equal(out.sid_rows[0, : len(codes)].numpy(), order)
    np.testing.assert_allclose(out.scores[0, : len(codes)].numpy(), ref[order], atol=2e-5, rtol=0)
    np.testing.assert_array_equal(out.codes[0, : len(codes)].numpy(), codes[order])
    assert torch.isinf(out.scores[0, len(codes):]).all()


def hf_constrained_generate(model: Any, prompt: Sequence[int], width: int, vocab: SidVocab,
                            codes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """HF beam search with a prefix constraint; every generation parameter set in a fresh GenerationConfig.

    ``model`` is typed ``Any`` (as in :func:`decoding.beam_search.beam_search`): transformers types ``generate``'s
    ``self`` as a protocol that its own model classes do not meet statically."""
    allowed: dict[tuple[int, ...], list[int]] = {}
    for row in codes:
        toks = tuple(int(o + c) for o, c in zip(vocab.offsets, row, strict=True))
        for level in range(3):
            allowed.setdefault(toks[:level], []).append(toks[level])
    allowed = {k: sorted(set(v)) for k, v in allowed.items()}
    plen = len(prompt)

    def prefix_fn(batch_id: int, ids: torch.Tensor) -> list[int]:
        return allowed[tuple(ids[plen:].tolist())]  # SID tokens only: EOS impossible, so every beam has 3 tokens

    cfg = GenerationConfig(
        num_beams=width, num_return_sequences=width, do_sample=False, length_penalty=0.0, max_new_tokens=3,
        min_new_tokens=0, early_stopping=True, eos_token_id=vocab.eos_id, pad_token_id=vocab.eos_id,
        bos_token_id=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None,
        no_repeat_ngram_size=None, diversity_penalty=None, use_cache=True, output_scores=True,
        return_dict_in_generate=True,
    )
    with torch.inference_mode():
        gen = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, plen, dtype=torch.long),
                             generation_config=cfg, prefix_allowed_tokens_fn=prefix_fn)
    seqs = gen.sequences[:, plen:]
    if width == 1:  # HF runs greedy search for num_beams=1 and reports no sequence scores: score its output
        return seqs, torch.as_tensor(teacher_forced_sid_scores(model, prompt, seqs.numpy()))
    return seqs, gen.sequences_scores


@pytest.mark.parametrize(("width", "seed"), [(1, 0), (4, 1), (8, 2), (16, 3)])
def test_smaller_width_matches_hf_generate(lm: Lm, width: int, seed: int) -> None:
    model, vocab = lm
    rng = np.random.default_rng(10 + seed)
    codes = random_catalog(rng, 120)
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(codes))
    prompt = random_prompt(rng, vocab.vocab_size, 5 + 3 * seed)
    seqs, seq_scores = hf_constrained_generate(model, prompt, width, vocab, codes)
    out = beam_search(model, [prompt], [width], vocab, trie)
    assert int(out.counts[0]) == width
    np.testing.assert_array_equal(out.token_ids[0].numpy(), seqs.numpy())
    np.testing.assert_allclose(out.scores[0].numpy(), seq_scores.numpy(), atol=2e-5, rtol=0)


@pytest.mark.parametrize("constrained", [True, False])
def test_matches_per_beam_reference_beam_search(lm: Lm, constrained: bool) -> None:
    model, vocab = lm
    rng = np.random.default_rng(5)
    codes = random_catalog(rng, 80)
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(codes))
    prompt = random_prompt(rng, vocab.vocab_size, 7)
    width = 6
    ref = reference_beam_search(model, prompt, width, vocab, codes, constrained=constrained)
    out = beam_search(model, [prompt], [width], vocab, trie, constrained=constrained)
    assert [tuple(t) for t in out.token_ids[0].tolist()] == [t for t, _ in ref]
    np.testing.assert_allclose(out.scores[0].numpy(), [s for _, s in ref], atol=2e-5, rtol=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_sids=st.integers(1, 150), width=st.integers(1, 40), seed=st.integers(0, 10_000),
    prompt_len=st.integers(1, 12),
)
def test_property_every_sid_valid_and_scores_sorted(lm: Lm, n_sids: int, width: int, seed: int, prompt_len: int
                                                    ) -> None:
    model, vocab = lm
    rng = np.random.default_rng(seed)
    codes = random_catalog(rng, n_sids)
    tables = PrefixTables.from_sorted_codes(codes)
    trie = TrieTensors.from_tables(tables)
    prompt = random_prompt(rng, vocab.vocab_size, prompt_len)
    out = beam_search(model, [prompt], [width], vocab, trie)
    n = int(out.counts[0])
    assert n == min(width, len(codes))
    rows = out.sid_rows[0, :n].numpy()
    assert (rows >= 0).all() and len(set(rows.tolist())) == n
    paths = tables.paths()
    np.testing.assert_array_equal(out.codes[0, :n].numpy(), paths[rows])
    np.testing.assert_array_equal(out.token_ids[0, :n].numpy(), paths[rows] + np.asarray(vocab.offsets))
    scores = out.scores[0, :n].numpy()
    assert (np.diff(scores) <= 0).all()
    np.testing.assert_allclose(scores, teacher_forced_sid_scores(model, prompt, out.token_ids[0, :n].numpy()),
                               atol=2e-5, rtol=0)


@pytest.mark.parametrize("constrained", [True, False])
def test_request_batched_with_others_equals_alone(lm: Lm, constrained: bool) -> None:
    model, vocab = lm
    rng = np.random.default_rng(7)
    codes = random_catalog(rng, 150)
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(codes))
    prompts = [random_prompt(rng, vocab.vocab_size, n) for n in (8, 3, 17, 1)]
    widths = [32, 5, 128, 9]
    together = beam_search(model, prompts, widths, vocab, trie, constrained=constrained)
    for r, (prompt, width) in enumerate(zip(prompts, widths, strict=True)):
        alone = beam_search(model, [prompt], [width], vocab, trie, constrained=constrained)
        n = int(alone.counts[0])
        assert int(together.counts[r]) == n
        np.testing.assert_array_equal(together.token_ids[r, :n].numpy(), alone.token_ids[0, :n].numpy())
        np.testing.assert_array_equal(together.sid_rows[r, :n].numpy(), alone.sid_rows[0, :n].numpy())
        np.testing.assert_allclose(together.scores[r, :n].numpy(), alone.scores[0, :n].numpy(), atol=1e-5, rtol=0)


def test_unconstrained_marks_invalid_sids_and_non_sid_tokens() -> None:
    """Unconstrained = any vocabulary token at every level. With few SID tokens, boosted by a bias on the output
    layer, the 128 beams hold every all-SID-token sequence (5³ = 125), so valid and invalid SIDs both appear."""
    sizes = (2, 1, 2)
    tok = make_tiny_tokenizer(sizes)
    model = make_tiny_model(len(tok), seed=11)
    vocab = SidVocab.from_tokenizer(tok, sizes)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[vocab.offsets[0]:] = 8.0
    model.lm_head = head
    codes = np.asarray([[0, 0, 0], [0, 0, 1], [1, 0, 1]])
    tables = PrefixTables.from_sorted_codes(codes)
    trie = TrieTensors.from_tables(tables)
    prompt = [3, 4, 5]
    width = 128
    out = beam_search(model, [prompt], [width], vocab, trie, constrained=False)
    ref = reference_beam_search(model, prompt, width, vocab, codes, constrained=False)
    assert [tuple(t) for t in out.token_ids[0].tolist()] == [t for t, _ in ref]
    np.testing.assert_allclose(out.scores[0].numpy(), [s for _, s in ref], atol=2e-5, rtol=0)
    valid = {tuple(int(c) for c in row): r for r, row in enumerate(tables.paths())}
    found = set()
    n_invalid = 0
    for toks, got_codes, row in zip(out.token_ids[0].tolist(), out.codes[0].tolist(), out.sid_rows[0].tolist(),
                                    strict=True):
        expect_codes = tuple(t - o if o <= t < o + s else -1
                             for t, o, s in zip(toks, vocab.offsets, vocab.sizes, strict=True))
        assert tuple(got_codes) == expect_codes
        assert row == valid.get(expect_codes, -1)
        if row >= 0:
            found.add(row)
        else:
            n_invalid += 1
    assert found == set(range(len(codes)))
    assert n_invalid == width - len(codes)


def test_sid_rows_lookup_finds_valid_codes_only() -> None:
    codes = np.asarray([[0, 1, 2], [0, 3, 0], [2, 0, 5], [2, 1, 1]])
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(codes))
    query = torch.tensor([[2, 0, 5], [0, 1, 2], [0, 1, 3], [-1, 1, 2], [2, 1, 1], [9, 9, 9], [0, 3, 6], [1, 0, 0]])
    assert trie.sid_rows(query).tolist() == [2, 0, -1, -1, 3, -1, -1, -1]


def test_bad_input_names_the_field(lm: Lm) -> None:
    model, vocab = lm
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(random_catalog(np.random.default_rng(0), 10)))
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(model, [[3, 4]], [129], vocab, trie)
    with pytest.raises(ValueError, match="beam_widths"):
        beam_search(model, [[3, 4]], [1, 2], vocab, trie)
    with pytest.raises(ValueError, match="prompt"):
        beam_search(model, [[]], [4], vocab, trie)
