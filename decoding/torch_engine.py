"""The PyTorch retrieval engine: trie-constrained (or unconstrained) SID beam search, then SIDs → items.

Contract (implements :class:`decoding.engine.RetrievalEngine`, ``name = "torch"``):

- ``TorchBeamEngine(model, vocab, index, *, max_batch_rows=2048, dtype="auto", max_prefill_tokens=65536,
  cuda_graphs=False, prompt_bucket=64, sync_timings=False)``:
  ``model`` is a Hugging Face causal LM (e.g. Qwen3) whose vocabulary holds the SID tokens at ``vocab``'s
  offsets; ``index`` provides ``tables``, ``sid_codes``, ``sid_item_indptr``, ``sid_item_rows``, ``item_ids``,
  ``num_sids`` (a :class:`sid_index.index.SidIndex`).
  ``dtype`` (e.g. ``torch.bfloat16``) casts the model in place; ``None`` keeps its dtype; ``"auto"`` (default)
  casts a float32 model on CUDA to bfloat16 and keeps it on CPU (bf16 reorders near-ties, and the CPU parity
  tests compare float32 results). Scores are always computed in float32 from the logits. The model's attention
  implementation must be ``sdpa`` or ``eager`` (they honour the custom 4D float mask; flash kernels would not).
- ``cuda_graphs=True`` (CUDA only; refused with ``ValueError`` on CPU) replays the two decode steps as CUDA graphs
  (:class:`decoding.cuda_graphs.GraphedDecode`), one per ``(requests, padded prompt length, max beam width, mode)``,
  prompts padded to a multiple of ``prompt_bucket`` tokens so that few graphs serve all requests.
- No host synchronisation between the prefill and the end of the search; the results then come back to the host
  in two copies (through pinned memory on CUDA). ``sync_timings=True`` synchronises at each phase (profiling).
- ``retrieve_batch(requests)``: requests are grouped by mode (constrained / unconstrained), sorted by beam width
  and prompt length and cut into chunks whose padded beam rows (``requests × max beam width``) fit
  ``max_batch_rows`` and whose padded prompt tokens (``requests × longest prompt``) fit ``max_prefill_tokens``;
  each chunk is one :func:`decoding.beam_search.beam_search` call (prompt cache shared by all beams of a request,
  see there). Results come back in request order and do not depend on batch mates.
- ``RetrievalResult.timings`` (seconds, wall clock of the request's chunk, shared by its batch mates): the phases
  of :class:`decoding.beam_search.BeamOutput` (``prefill``, ``decode`` = two beam forwards + normalisers,
  ``masking`` = trie mask, top-k and mask building, and their parts), ``transfer`` (results to the host),
  ``finalize`` (beams → hits → items), and ``chunk_requests`` (how many requests shared the chunk).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from decoding.beam_search import BeamOutput, TrieTensors, beam_search
from decoding.cuda_graphs import GraphedDecode
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
        dtype: torch.dtype | Literal["auto"] | None = "auto", max_prefill_tokens: int = 65536,
        cuda_graphs: bool = False, prompt_bucket: int = 64, sync_timings: bool = False,
    ) -> None:
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, given {max_batch_rows}")
        if max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, given {max_prefill_tokens}")
        if prompt_bucket < 1:
            raise ValueError(f"prompt_bucket must be >= 1, given {prompt_bucket}")
        device = next(model.parameters()).device
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, given {device.type!r} "
                             "(CUDA graphs do not exist on CPU; leave it False there)")
        attn = model.config._attn_implementation
        if attn not in _MASKED_ATTENTION:
            raise ValueError(f"model attention implementation must be one of {_MASKED_ATTENTION} (the tree-shaped "
                             f"4D float mask needs it), given {attn!r}")
        if dtype == "auto":
            dtype = torch.bfloat16 if device.type == "cuda" and model.dtype == torch.float32 else None
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
        self._device = device
        self._trie = TrieTensors.from_tables(tables, self._device, vocab.sizes)
        self.sync_timings = bool(sync_timings)
        self._graphs = GraphedDecode(model, vocab, self._trie, capture=True) if cuda_graphs else None
        self._prompt_multiple = int(prompt_bucket) if cuda_graphs else 1

    def retrieve_batch(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        check_prompt_ids(requests, self._input_size)
        results: list[RetrievalResult | None] = [None] * len(requests)
        for chunk in self._chunks(requests):
            sub = [requests[i] for i in chunk]
            out = beam_search(self.model, [r.prompt_ids for r in sub], [r.beam_width for r in sub], self.vocab,
                              self._trie, constrained=sub[0].constrained, sync_timings=self.sync_timings,
                              steps=self._graphs, prompt_multiple=self._prompt_multiple)
            t0 = time.perf_counter()
            host = self._to_host(out)
            t1 = time.perf_counter()
            hits = self._finalize(host, sub)
            timings = {**out.timings, "transfer": t1 - t0, "finalize": time.perf_counter() - t1,
                       "chunk_requests": float(len(sub))}
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

    def _to_host(self, out: BeamOutput) -> tuple[np.ndarray, np.ndarray]:
        """``(ints [R, B, 8], scores [R, B])`` on the host: token ids, codes, SID row, count (per request, repeated)
        in one int64 copy and the float32 scores in another; through pinned memory on CUDA (one synchronisation)."""
        r, b = out.scores.shape
        ints = torch.cat([out.token_ids, out.codes, out.sid_rows[..., None], out.counts[:, None, None].expand(r, b, 1)],
                         -1)
        if self._device.type != "cuda":
            return ints.numpy(), out.scores.numpy()
        ints_h = torch.empty(ints.shape, dtype=ints.dtype, pin_memory=True)
        scores_h = torch.empty(out.scores.shape, dtype=out.scores.dtype, pin_memory=True)
        ints_h.copy_(ints, non_blocking=True)
        scores_h.copy_(out.scores, non_blocking=True)
        torch.cuda.current_stream(self._device).synchronize()
        return ints_h.numpy(), scores_h.numpy()

    def _finalize(self, host: tuple[np.ndarray, np.ndarray], reqs: Sequence[RetrievalRequest]
                  ) -> list[tuple[list[SidHit], list[ItemHit]]]:
        ints, scores = host
        result = []
        for r, req in enumerate(reqs):
            n = int(ints[r, 0, 7]) if ints.shape[1] else 0
            result.append(hits_from_beams(ints[r, :n, 3:6], ints[r, :n, 0:3], scores[r, :n], ints[r, :n, 6],
                                          self.index, req.top_k_items))
        return result
