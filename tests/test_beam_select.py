"""The fast beam-search level against its references, and the GPU-readiness contract checked on CPU.

- dense trie selection (:func:`select_constrained`) equals the CSR reference (:func:`select_constrained_csr`),
  bit for bit, on random tries, logits, dead beams and widths (Hypothesis);
- the tree attention mask equals a per-beam loop;
- the search after the prefill reads no tensor value on the host (``.item()``, ``.tolist()``, ``bool()``,
  ``int()``… raise while it runs);
- the CUDA-graph runner's static-buffer path (``capture=False``: same buffers, cache construction and code as
  the captured graph) returns what the plain search returns, across shapes and reused buffers; CUDA-only options
  are refused on CPU with a message naming them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding.beam_search import beam_search, decode_levels, left_pad, prefill_mask, tree_step_mask
from decoding.beam_select import TrieTensors, segmented_topk, select_constrained, select_constrained_csr
from decoding.cuda_graphs import GraphedDecode
from decoding.engine import RetrievalRequest
from decoding.sid_vocab import SidVocab
from decoding.torch_engine import TorchBeamEngine
from sid_index.index import SidIndex
from sid_index.prefix_tables import PrefixTables

if TYPE_CHECKING:
    from transformers import Qwen3ForCausalLM

SIZES = (6, 5, 7)
Lm = tuple["Qwen3ForCausalLM", SidVocab]


@pytest.fixture(scope="module")
def lm() -> Lm:
    tok = make_tiny_tokenizer(SIZES, words=["a", "b", "c"])
    return make_tiny_model(len(tok), seed=5), SidVocab.from_tokenizer(tok, SIZES)


def catalog(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    space = int(np.prod(SIZES))
    keys = np.sort(rng.choice(space, size=min(n, space), replace=False))
    return np.stack([keys // (SIZES[1] * SIZES[2]), (keys // SIZES[2]) % SIZES[1], keys % SIZES[2]], 1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n_sids=st.integers(1, 150), n_req=st.integers(1, 3), bcur=st.integers(1, 9),
       level=st.integers(0, 2), bmax=st.integers(1, 40))
def test_dense_selection_equals_csr_reference(seed: int, n_sids: int, n_req: int, bcur: int, level: int,
                                              bmax: int) -> None:
    rng = np.random.default_rng(seed)
    codes = catalog(seed, n_sids)
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(codes), sizes=SIZES)
    n_nodes = int(trie.allowed[level].shape[0])
    bcur = 1 if level == 0 else bcur
    vocab_size, offset = 40, 3
    logits = torch.as_tensor(rng.normal(size=(n_req, bcur, vocab_size)), dtype=torch.float32)
    lse = torch.logsumexp(logits, -1)
    scores = torch.as_tensor(rng.normal(size=(n_req, bcur)) - 5, dtype=torch.float32)
    scores[torch.as_tensor(rng.random((n_req, bcur)) < 0.3)] = float("-inf")  # dead beams
    nodes = torch.as_tensor(rng.integers(0, n_nodes, size=(n_req, bcur)))
    widths = torch.as_tensor(rng.integers(1, bmax + 1, size=n_req))
    widths[0] = bmax
    fast = select_constrained(logits, lse, scores, nodes, trie, level, offset, widths, bmax)
    ref = select_constrained_csr(logits, lse, scores, nodes, trie, level, offset, widths, bmax)
    for name, a, b in zip(("scores", "parent", "node", "token"), fast, ref, strict=True):
        assert torch.equal(a, b), name


def test_tree_mask_equals_a_per_beam_loop() -> None:
    pad = torch.tensor([2, 0])
    plen, bmax = 5, 4
    ancestors = torch.tensor([[[3], [0], [0], [2]], [[1], [1], [3], [0]]])
    mask = tree_step_mask(pad, plen, ancestors, torch.float32)
    assert mask.shape == (2, 1, bmax, plen + 2 * bmax)
    for r in range(2):
        for b in range(bmax):
            seen = {k for k in range(plen) if k >= int(pad[r])} | {plen + int(ancestors[r, b, 0]), plen + bmax + b}
            for k in range(plen + 2 * bmax):
                assert (mask[r, 0, b, k] == 0) == (k in seen), (r, b, k)


def refuse_host_reads(mp: pytest.MonkeyPatch) -> None:
    """Every way Python reads a tensor's value on the host raises (the synchronisations CUDA would pay)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a tensor value was read on the host inside the decode loop")

    for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        mp.setattr(torch.Tensor, name, refuse)


def prefill(model: Any, prompts: list[list[int]], vocab: SidVocab) -> tuple[Any, ...]:
    ids, pad, lengths = left_pad(prompts, vocab.eos_id)
    positions = (torch.arange(ids.shape[1])[None, :] - pad[:, None]).clamp_min(0)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=prefill_mask(pad, ids.shape[1], torch.float32),
                    position_ids=positions, use_cache=True, logits_to_keep=1)
    return out.past_key_values, out.logits[:, -1:, :], pad, lengths


@pytest.mark.parametrize("constrained", [True, False])
def test_decode_loop_reads_nothing_on_the_host(lm: Lm, constrained: bool) -> None:
    model, vocab = lm
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(catalog(1, 120)), sizes=SIZES)
    prompts = [[7, 8, 9, 3], [10, 4]]
    expected = beam_search(model, prompts, [16, 9], vocab, trie, constrained=constrained)
    cache, logits, pad, lengths = prefill(model, prompts, vocab)
    widths = torch.tensor([16, 9])
    with pytest.MonkeyPatch.context() as mp, torch.inference_mode():
        refuse_host_reads(mp)
        tokens, scores = decode_levels(model, cache, logits, pad, lengths, widths, 16, vocab, trie, constrained)
    torch.testing.assert_close(scores, expected.scores, rtol=0, atol=0)
    assert torch.equal(tokens, expected.token_ids)


def test_static_buffer_steps_equal_the_plain_search(lm: Lm) -> None:
    """GraphedDecode(capture=False) is the CUDA-graph path minus the capture: inputs copied into per-shape static
    buffers, a cache rebuilt over them, the same decode code. Two shapes and one graph slot: buffers are reused
    and evicted, results stay equal."""
    model, vocab = lm
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(catalog(2, 160)), sizes=SIZES)
    runner = GraphedDecode(model, vocab, trie, capture=False, max_graphs=1)
    cases = [([[5, 6, 7, 8, 9]], [32], True), ([[4, 3], [9, 9, 9]], [8, 20], False), ([[5, 6, 7, 8, 9]], [32], True),
             ([[11, 3, 4, 5, 6]], [32], True)]
    for prompts, widths, constrained in cases:
        plain = beam_search(model, prompts, widths, vocab, trie, constrained=constrained)
        staged = beam_search(model, prompts, widths, vocab, trie, constrained=constrained, steps=runner)
        for a, b in zip((plain.token_ids, plain.scores, plain.sid_rows, plain.counts),
                        (staged.token_ids, staged.scores, staged.sid_rows, staged.counts), strict=True):
            assert torch.equal(a, b)
    assert len(runner._graphs) == 1


def test_prompt_bucketing_keeps_the_results(lm: Lm) -> None:
    model, vocab = lm
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(catalog(3, 150)), sizes=SIZES)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 4]]
    plain = beam_search(model, prompts, [24, 24], vocab, trie)
    bucketed = beam_search(model, prompts, [24, 24], vocab, trie, prompt_multiple=16)
    assert torch.equal(plain.token_ids, bucketed.token_ids)
    torch.testing.assert_close(plain.scores, bucketed.scores, atol=1e-5, rtol=0)


def test_timings_name_every_phase(lm: Lm) -> None:
    model, vocab = lm
    trie = TrieTensors.from_tables(PrefixTables.from_sorted_codes(catalog(4, 50)), sizes=SIZES)
    t = beam_search(model, [[5, 6]], [8], vocab, trie).timings
    fine = ("prefill_inputs", "prefill", "scoring", "trie_mask", "topk", "attn_mask", "step1", "step2", "final")
    assert all(t[k] > 0 and f"cpu_{k}" in t for k in fine)
    assert t["decode"] == pytest.approx(t["scoring"] + t["step1"] + t["step2"])
    assert t["masking"] == pytest.approx(t["prefill_inputs"] + t["trie_mask"] + t["topk"] + t["attn_mask"] + t["final"])


def test_cuda_only_options_are_refused_on_cpu(lm: Lm) -> None:
    model, vocab = lm
    codes = catalog(5, 30)
    index = SidIndex.from_codes([f"i{i}" for i in range(len(codes))], codes, np.ones(len(codes)), None, SIZES)
    with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device, given 'cpu'"):
        TorchBeamEngine(model, vocab, index, cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs needs the model on a CUDA device"):
        GraphedDecode(model, vocab, TrieTensors.from_tables(index.tables), capture=True)
    with pytest.raises(ValueError, match="prompt_bucket must be >= 1, given 0"):
        TorchBeamEngine(model, vocab, index, prompt_bucket=0)
    engine = TorchBeamEngine(model, vocab, index)  # dtype "auto" keeps float32 on CPU
    assert next(model.parameters()).dtype == torch.float32
    [res] = engine.retrieve_batch([RetrievalRequest((5, 6, 7), beam_width=16, top_k_items=5)])
    assert len(res.sids) == 16 and res.timings["transfer"] >= 0


def test_equal_scores_go_to_the_earlier_candidate() -> None:
    """Ties are broken by candidate order (parent slot, then code), the vLLM engine's rule: at the boundary of the
    top k and inside it. Scores 1, 2, 2, 0.5, 2: the best two are columns 1 and 2 (not 4); the best four 1, 2, 4, 0."""
    scores = torch.tensor([1.0, 2.0, 2.0, 0.5, 2.0])
    vals, idx = segmented_topk(scores, torch.tensor([5]), torch.tensor([2]))
    assert idx.tolist() == [[1, 2]] and vals.tolist() == [[2.0, 2.0]]
    _, idx = segmented_topk(scores, torch.tensor([5]), torch.tensor([4]))
    assert idx.tolist() == [[1, 2, 4, 0]]
