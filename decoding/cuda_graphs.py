"""The two decode steps of a retrieval as one CUDA graph per shape (opt-in: ``TorchBeamEngine(cuda_graphs=True)``).

Contract — :class:`GraphedDecode` runs :func:`decoding.beam_search.decode_levels` (3 selections, 2 tree-attention
steps) from **static input buffers**, one set per shape key ``(R, P, bmax, constrained)``:

- ``__call__(cache, logits, pad, lengths, widths, bmax, constrained)`` copies the prefill's KV cache (every layer's
  keys and values, ``[R, kv_heads, P, head_dim]``), its last logits ``[R, 1, V]``, ``pad``, ``lengths`` and
  ``widths`` into the key's buffers, runs the steps and returns ``(tokens [R, bmax, 3], scores [R, bmax])``, fresh
  tensors the caller owns. The prompt's KV is copied once per retrieval (``R × P`` keys), never per beam.
- ``capture=True`` (CUDA only): the first call of a key warms the steps up on a side stream, captures them with
  ``torch.cuda.graph`` (graphs share one memory pool) and every call replays the graph: no Python, no kernel
  launches per op, no host synchronisation. ``capture=False`` runs the same code from the same buffers eagerly
  — the CPU tests' path, so the graph's inputs, cache construction and outputs are tested without a GPU.
- At most ``max_graphs`` keys are kept (least recently used dropped). Pad prompts to few lengths (the engine
  rounds ``P`` up to a multiple of ``prompt_bucket``) so that few graphs serve all requests.

The model must not synchronise with the host inside its forward (Hugging Face Qwen3 with a 4D float mask, explicit
positions and a ``DynamicCache`` does not); a model that does fails at capture with CUDA's own error.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from decoding.beam_search import decode_levels
from decoding.beam_select import TrieTensors
from decoding.sid_vocab import SidVocab


@dataclass
class _Graph:
    prompt_kv: list[tuple[torch.Tensor, torch.Tensor]]
    logits: torch.Tensor
    pad: torch.Tensor
    lengths: torch.Tensor
    widths: torch.Tensor
    graph: Any = None  # torch.cuda.CUDAGraph once captured
    out: tuple[torch.Tensor, torch.Tensor] | None = None


class GraphedDecode:
    """Static-buffer decode steps, captured as CUDA graphs when ``capture`` (see the module docstring)."""

    def __init__(self, model: Any, vocab: SidVocab, trie: TrieTensors, *, capture: bool, max_graphs: int = 16
                 ) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, given {max_graphs}")
        device = next(model.parameters()).device
        if capture and device.type != "cuda":
            raise ValueError(f"cuda_graphs needs the model on a CUDA device, given {device.type!r}")
        self.model, self.vocab, self.trie = model, vocab, trie
        self.capture, self.max_graphs = capture, max_graphs
        self._graphs: OrderedDict[tuple[int, ...], _Graph] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if capture else None

    def __call__(self, cache: Any, logits: torch.Tensor, pad: torch.Tensor, lengths: torch.Tensor,
                 widths: torch.Tensor, bmax: int, constrained: bool) -> tuple[torch.Tensor, torch.Tensor]:
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        key = (logits.shape[0], layers[0][0].shape[-2], bmax, int(constrained))
        g = self._graphs.get(key)
        if g is None:
            g = self._buffers(layers, logits, pad, lengths, widths)
        self._graphs[key] = g
        self._graphs.move_to_end(key)
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        for (k_buf, v_buf), (k, v) in zip(g.prompt_kv, layers, strict=True):
            k_buf.copy_(k)
            v_buf.copy_(v)
        for buf, src in ((g.logits, logits), (g.pad, pad), (g.lengths, lengths), (g.widths, widths)):
            buf.copy_(src)
        if not self.capture:  # the eager path: same buffers, same code
            tokens, scores = self._steps(g, self._fresh_cache(g), bmax, constrained)
            return tokens.clone(), scores.clone()
        if g.graph is None:
            self._capture(g, bmax, constrained)  # copies the inputs just written into the new buffers
            for (k_buf, v_buf), (k, v) in zip(g.prompt_kv, layers, strict=True):
                k_buf.copy_(k)
                v_buf.copy_(v)
        g.graph.replay()
        assert g.out is not None  # set by _capture
        return g.out[0].clone(), g.out[1].clone()

    @staticmethod
    def _buffers(layers: list[tuple[torch.Tensor, torch.Tensor]], logits: torch.Tensor, pad: torch.Tensor,
                 lengths: torch.Tensor, widths: torch.Tensor) -> _Graph:
        return _Graph(prompt_kv=[(torch.empty_like(k), torch.empty_like(v)) for k, v in layers],
                      logits=torch.empty_like(logits), pad=torch.empty_like(pad), lengths=torch.empty_like(lengths),
                      widths=torch.empty_like(widths))

    def _fresh_cache(self, g: _Graph) -> Any:
        """A cache over the static prompt keys/values (each layer's first update copies them once)."""
        return DynamicCache(ddp_cache_data=g.prompt_kv, config=self.model.config)

    def _steps(self, g: _Graph, cache: Any, bmax: int, constrained: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_levels(self.model, cache, g.logits, g.pad, g.lengths, g.widths, bmax, self.vocab, self.trie,
                             constrained)

    def _capture(self, g: _Graph, bmax: int, constrained: bool) -> None:
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # torch leaves Stream.__init__ untyped
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (allocator, lazy kernels), as PyTorch advises
            for _ in range(2):
                self._steps(g, self._fresh_cache(g), bmax, constrained)
        torch.cuda.current_stream().wait_stream(side)
        # the cache is built outside the graph; its layers' tensors become the buffers each call copies into
        cache = self._fresh_cache(g)
        g.prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            g.out = self._steps(g, cache, bmax, constrained)
        g.graph = graph
