"""The PyTorch retrieval engine: trie-constrained (or unconstrained) SID beam search, then SIDs → items.

Contract (implements :class:`decoding.engine.RetrievalEngine`, ``name = "torch"``):

- ``TorchBeamEngine(model, vocab, index, *, max_batch_rows=2048, dtype=None, max_prefill_tokens=65536)``:
  ``model`` is a Hugging Face causal LM (e.g. Qwen3) whose vocabulary holds the SID tokens at ``vocab``'s
  offsets; ``index`` provides ``tables``, ``sid_codes``, ``sid_item_indptr``, ``sid_item_rows``, ``item_ids``,
  ``num_sids`` (a :class:`sid_index.index.SidIndex`).
  ``dtype`` (e.g. ``torch.bfloat16``) casts the model in place; ``None`` keeps its dtype. The model's attention
  implementation must be ``sdpa`` or ``eager`` (they honour the custom 4D float mask; flash kernels would not).
- ``retrieve_batch(requests)``: requests are grouped by mode (constrained / unconstrained), sorted by beam width
  and prompt length and cut into chunks whose padded beam rows (``requests × max beam width``) fit
  ``max_batch_rows`` and whose padded prompt tokens (``requests × longest prompt``) fit ``max_prefill_tokens``;
  each chunk is one :func:`decoding.beam_search.beam_search` call (prompt cache shared by all beams of a request,
  see there). Results come back in request order and do not depend on batch mates.
- ``RetrievalResult.timings`` (seconds, wall clock of the request's chunk, shared by its batch mates):
  ``prefill``, ``decode`` (two beam forwards), ``masking`` (trie expansion, top-k and mask building; counted
  apart from the forwards), ``finalize`` (beams → hits → items), and ``chunk_requests`` (how many requests
  shared the chunk).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from decoding.beam_search import BeamOutput, TrieTensors, beam_search
from decoding.engine import ItemHit, RetrievalRequest, RetrievalResult, SidHit, check_prompt_ids
from decoding.hits import IndexForDecoding, hits_from_beams
from decoding.sid_vocab import SidVocab

# attention implementations that apply a custom 4D additive float mask as given (flash-attention kernels do not)
_MASKED_ATTENTION = ("sdpa", "eager")


class TorchBeamEngine:
    """Batched SID beam search on a PyTorch causal LM (see the module docstring)."""

    name = "torch"

    def __init__(
        self, model: Any, vocab: SidVocab, index: IndexForDecoding, *, max_batch_rows: int = 2048,
        dtype: torch.dtype | None = None, max_prefill_tokens: int = 65536,
    ) -> None:
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, given {max_batch_rows}")
        if max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, given {max_prefill_tokens}")
        attn = model.config._attn_implementation
        if attn not in _MASKED_ATTENTION:
            raise ValueError(f"model attention implementation must be one of {_MASKED_ATTENTION} (the tree-shaped "
                             f"4D float mask needs it), given {attn!r}")
        if dtype is not None:
            model.to(dtype)
        model.eval()
        out_size = int(model.get_output_embeddings().weight.shape[0])
        last_sid_token = max(o + s for o, s in zip(vocab.offsets, vocab.sizes, strict=True)) - 1
        if last_sid_token >= out_size or vocab.eos_id >= out_size:
            raise ValueError(f"model vocabulary ({out_size} tokens) must hold every SID token and EOS "
                             f"(largest id {max(last_sid_token, vocab.eos_id)})")
        tables = index.tables
        for level, codes in enumerate((tables.level0, tables.l1_codes, tables.l2_codes)):
            if int(codes.max()) >= vocab.sizes[level]:
                raise ValueError(f"index level-{level} code {int(codes.max())} must be < vocab.sizes[{level}] = "
                                 f"{vocab.sizes[level]}")
        if tables.num_sids != index.num_sids:
            raise ValueError(f"index.tables must hold index.num_sids = {index.num_sids} SIDs, "
                             f"given {tables.num_sids}")
        self.model = model
        self.vocab = vocab
        self.index = index
        self.max_batch_rows = int(max_batch_rows)
        self.max_prefill_tokens = int(max_prefill_tokens)
        self._input_size = int(model.get_input_embeddings().weight.shape[0])
        self._device = next(model.parameters()).device
        self._trie = TrieTensors.from_tables(tables, self._device)

    def retrieve_batch(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        check_prompt_ids(requests, self._input_size)
        results: list[RetrievalResult | None] = [None] * len(requests)
        for chunk in self._chunks(requests):
            sub = [requests[i] for i in chunk]
            out = beam_search(self.model, [r.prompt_ids for r in sub], [r.beam_width for r in sub], self.vocab,
                              self._trie, constrained=sub[0].constrained)
            t0 = time.perf_counter()
            hits = self._finalize(out, sub)
            timings = {**out.timings, "finalize": time.perf_counter() - t0, "chunk_requests": float(len(sub))}
            for i, (sids, items) in zip(chunk, hits, strict=True):
                results[i] = RetrievalResult(sids=sids, items=items, timings=dict(timings))
        return [r for r in results if r is not None]

    def _chunks(self, requests: Sequence[RetrievalRequest]) -> list[list[int]]:
        """Request positions per chunk: same mode, similar widths and prompt lengths (less padding),
        ``len × max width <= max_batch_rows`` and ``len × longest prompt <= max_prefill_tokens`` (a lone request
        always forms a chunk)."""
        order = sorted(range(len(requests)), key=lambda i: (requests[i].constrained, requests[i].beam_width,
                                                            len(requests[i].prompt_ids)))
        chunks: list[list[int]] = []
        current: list[int] = []
        width = length = 0
        for i in order:
            req = requests[i]
            new_width = max(width, req.beam_width)
            new_length = max(length, len(req.prompt_ids))
            fits = (
                bool(current) and requests[current[0]].constrained == req.constrained
                and (len(current) + 1) * new_width <= self.max_batch_rows
                and (len(current) + 1) * new_length <= self.max_prefill_tokens
            )
            if fits:
                current.append(i)
                width, length = new_width, new_length
            else:
                if current:
                    chunks.append(current)
                current, width, length = [i], req.beam_width, len(req.prompt_ids)
        if current:
            chunks.append(current)
        return chunks

    def _finalize(self, out: BeamOutput, reqs: Sequence[RetrievalRequest]) -> list[tuple[list[SidHit], list[ItemHit]]]:
        token_ids = out.token_ids.cpu().numpy()
        codes = out.codes.cpu().numpy()
        scores = out.scores.cpu().numpy()
        rows = out.sid_rows.cpu().numpy()
        counts = out.counts.cpu().numpy()
        result = []
        for r, req in enumerate(reqs):
            n = int(counts[r])
            result.append(hits_from_beams(codes[r, :n], token_ids[r, :n], scores[r, :n], rows[r, :n], self.index,
                                          req.top_k_items))
        return result
