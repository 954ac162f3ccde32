"""The vLLM retrieval engine: SID beam search driven step by step on an in-process vLLM engine.

The only production module that imports vLLM (an import-linter contract says so). Implements
:class:`decoding.engine.RetrievalEngine` with ``name = "vllm"`` and the results of
:class:`decoding.torch_engine.TorchBeamEngine` (same SIDs, same order, scores within float rounding).

Contract:

- ``VllmBeamEngine(model_dir, vocab, index, index_dir, config)`` starts ``vllm.LLM`` on ``model_dir`` (a model
  directory with its tokenizer, e.g. a bundle's ``model/``) in-process (uni executor, :func:`vllm_environment`),
  prefix caching on, KV blocks small enough that short prompts are cached (``config.block_size``, default 32).
- **Beam loop** (``retrieve_batch``): three steps, one per SID level. Each step submits every live beam of every
  request in the batch as one-token requests (prompt = request prompt + the beam's tokens), no detokenisation,
  sampling parameters built once per (level, node, fan-out) and never copied. Candidates come back as (beam, token,
  log-prob); per request the best ``beam_width`` of ``beam score + log-prob`` survive (numpy, one ``lexsort`` per
  step). The final beams map to SID rows and items through :func:`decoding.hits.hits_from_beams`.
- **Drivers** (``config.driver``): ``"core"`` (default) puts ``EngineCoreRequest`` objects straight into the engine
  core and reads the log-prob arrays of ``EngineCoreOutput`` (skips vLLM's input and output processing; binds to
  ``vllm.v1.engine``, docs/decoding.md "vLLM internals"); ``"llm"`` uses the public ``LLM.generate``.
- **Scores** are the full-vocabulary log-softmax, never renormalised after masking (docs/architecture.md).
  ``config.scoring``: ``"processor"`` (default): the trie logits processor writes the log-softmax on each beam's
  valid children and ``-inf`` elsewhere, with ``logprobs_mode="processed_logits"``, and each beam asks for
  ``min(beam_width, #children)`` log-probs; ``"token_ids"``: each beam asks for ``logprob_token_ids`` = its children
  (chunks of 128, vLLM's bound) in the default ``raw_logprobs`` mode. Unconstrained requests (hallucination): no
  mask, each beam's ``beam_width`` best tokens; a SID that is not a trie path gets ``sid_row = -1``.
- **The logits processor** keeps per-row state (depth, node, constrained) from ``extra_args["radgr_sid"]``
  and masks the batch with :func:`decoding.sid_trie.masked_log_softmax`; it finds the trie through
  ``vllm_config.additional_config["radgr"]`` (index directory, SID token layout), so it works in another process too.
- ``RetrievalResult.timings`` (seconds, shared by the batch): ``prefill`` (the level-0 step), ``decode`` (levels 1
  and 2), ``host`` (radgr's Python between steps), ``finalize`` (beams → items), and the count ``requests``
  (one-token vLLM requests submitted).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from decoding.engine import RetrievalRequest, RetrievalResult, check_prompt_ids
from decoding.hits import IndexForDecoding, hits_from_beams
from decoding.sid_trie import TrieLevels, masked_log_softmax, trie_of_index
from decoding.sid_vocab import SidVocab
from decoding.vllm_config import VllmEngineConfig, context_length, vllm_environment
from sid_index.tokens import NUM_LEVELS

if TYPE_CHECKING:  # types only: this module imports vLLM lazily
    from vllm.logprobs import FlatLogprobs
    from vllm.v1.engine.core_client import InprocClient

EXTRA_ARGS_KEY = "radgr_sid"
CONFIG_KEY = "radgr"
MAX_TOKEN_IDS_PER_REQUEST = 128  # vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS


# ---------------------------------------------------------------------------------------------- logits processor
def _processor_class() -> type:
    """The :class:`SidTrieLogitsProcessor` class (built lazily so that this module imports without vLLM)."""
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

    class _SidTrieLogitsProcessor(LogitsProcessor):
        """Trie mask + log-softmax on the rows whose ``extra_args`` carry ``radgr_sid = [depth, node, constrained]``."""

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            cfg = dict(vllm_config.additional_config or {}).get(CONFIG_KEY)  # None: not radgr's engine, pass through
            self.active = bool(cfg)
            self.trie: TrieLevels | None = trie_of_index(cfg["index_dir"]) if cfg else None
            self.offsets: tuple[int, ...] = tuple(int(o) for o in cfg["offsets"]) if cfg else ()
            self.eos_id = int(cfg["eos_id"]) if cfg else -1
            self.state: dict[int, tuple[int, int, bool]] = {}
            self.device = device

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            args = (sampling_params.extra_args or {}).get(EXTRA_ARGS_KEY)
            if args is not None and (not isinstance(args, list | tuple) or len(args) != 3):
                raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}] must be [depth, node, constrained], given {args!r}")

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            if batch_update is None:
                return
            for row in batch_update.removed:
                self.state.pop(row, None)
            for row, params, _prompt, _out in batch_update.added:
                args = (params.extra_args or {}).get(EXTRA_ARGS_KEY) if params is not None else None
                if args is None:
                    self.state.pop(row, None)
                else:
                    self.state[row] = (int(args[0]), int(args[1]), bool(args[2]))
            for a, b, direction in batch_update.moved:
                sa, sb = self.state.pop(a, None), self.state.pop(b, None)
                if sa is not None:
                    self.state[b] = sa
                if sb is not None and direction.name == "SWAP":
                    self.state[a] = sb

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.active or not self.state:
                return logits
            rows = sorted(r for r in self.state if r < logits.shape[0])
            vals = np.asarray([self.state[r] for r in rows], dtype=np.int64).reshape(-1, 3)
            assert self.trie is not None
            return masked_log_softmax(
                logits, torch.as_tensor(rows, dtype=torch.long, device=logits.device), torch.as_tensor(vals[:, 0]),
                torch.as_tensor(vals[:, 1]), torch.as_tensor(vals[:, 2].astype(bool)), self.trie, self.offsets,
                self.eos_id)

    _SidTrieLogitsProcessor.__name__ = "SidTrieLogitsProcessor"
    _SidTrieLogitsProcessor.__qualname__ = "SidTrieLogitsProcessor"
    return _SidTrieLogitsProcessor


# ---------------------------------------------------------------------------------------------- the engine
@dataclass
class _Beams:
    """Live beams of every request, flat: request ``req[i]``, tokens ``tokens[i, :level]``, node, score."""

    req: np.ndarray
    tokens: np.ndarray
    node: np.ndarray
    score: np.ndarray


class VllmBeamEngine:
    """SID beam search on vLLM (see the module docstring)."""

    name = "vllm"

    def __init__(self, model_dir: str | os.PathLike[str], vocab: SidVocab, index: IndexForDecoding,
                 index_dir: str | os.PathLike[str], config: VllmEngineConfig | None = None) -> None:
        self.config = config if config is not None else VllmEngineConfig()
        vllm_environment(self.config)
        from vllm import LLM, SamplingParams

        self._sampling_params = SamplingParams
        self.vocab = vocab
        self.index = index
        self.trie = TrieLevels.from_tables(index.tables)
        self.max_model_len = context_length(Path(model_dir), self.config.max_model_len)
        self._offsets = np.asarray(vocab.offsets, dtype=np.int64)
        self._sizes = np.asarray(vocab.sizes, dtype=np.int64)
        cfg = self.config
        processor = cfg.scoring == "processor"
        kwargs: dict[str, Any] = {}
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        self.llm = LLM(
            model=str(model_dir), tokenizer=str(model_dir), dtype=cfg.dtype, max_model_len=self.max_model_len,
            enforce_eager=True, enable_prefix_caching=True, block_size=cfg.block_size, max_num_seqs=cfg.max_num_seqs,
            max_logprobs=cfg.max_logprobs, seed=cfg.seed, distributed_executor_backend="uni",
            logprobs_mode="processed_logits" if processor else "raw_logprobs",
            logits_processors=[_processor_class()] if processor else None,
            additional_config={CONFIG_KEY: {"index_dir": str(Path(index_dir).resolve()),
                                            "offsets": [int(o) for o in vocab.offsets],
                                            "eos_id": int(vocab.eos_id)}} if processor else {},
            skip_tokenizer_init=False, **kwargs,
        )
        self._vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self._params_cache: dict[tuple[int, int, int, bool], Any] = {}
        self._token_params_cache: dict[tuple[int, int], list[tuple[list[int], Any]]] = {}
        self._request_counter = itertools.count()
        if cfg.driver == "core":
            from vllm.v1.engine import EngineCoreRequest

            self._core_request = EngineCoreRequest
            self._core = cast("InprocClient", self.llm.llm_engine.engine_core)  # the in-process client

    # -- sampling parameters, built once per (level, node, fan-out, mode) and never cloned
    def _params(self, depth: int, node: int, k: int, constrained: bool) -> Any:
        key = (depth, node if self.config.scoring == "processor" or not constrained else -2, k, constrained)
        got = self._params_cache.get(key)
        if got is None:
            extra = {EXTRA_ARGS_KEY: [depth, node, constrained]} if self.config.scoring == "processor" else None
            got = self._sampling_params(max_tokens=1, temperature=0.0, logprobs=k, detokenize=False,
                                        flat_logprobs=True, skip_clone=True, extra_args=extra)
            if len(self._params_cache) < 200_000:
                self._params_cache[key] = got
        return got

    def _token_id_params(self, depth: int, node: int) -> list[tuple[list[int], Any]]:
        """``(child token ids, params)`` per chunk of at most 128 children of ``node`` (cached per node)."""
        got = self._token_params_cache.get((depth, node))
        if got is None:
            _, child = self.trie.children(depth, np.asarray([node]))
            toks = (self._offsets[depth] + self.trie.codes[depth][child]).tolist()
            got = []
            for s in range(0, len(toks), MAX_TOKEN_IDS_PER_REQUEST):
                chunk = toks[s:s + MAX_TOKEN_IDS_PER_REQUEST]
                got.append((chunk, self._sampling_params(max_tokens=1, temperature=0.0, logprob_token_ids=chunk,
                                                         detokenize=False, flat_logprobs=True, skip_clone=True)))
            if len(self._token_params_cache) < 200_000:
                self._token_params_cache[(depth, node)] = got
        return got

    def retrieve_batch(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        check_prompt_ids(requests, self._vocab_size, self.max_model_len)
        if not requests:
            return []
        widths = np.asarray([r.beam_width for r in requests], dtype=np.int64)
        constrained = np.asarray([r.constrained for r in requests], dtype=bool)
        n = len(requests)
        beams = _Beams(req=np.arange(n), tokens=np.zeros((n, 0), dtype=np.int64), node=np.zeros(n, dtype=np.int64),
                       score=np.zeros(n, dtype=np.float64))
        times = {"prefill": 0.0, "decode": 0.0, "host": 0.0}
        submitted = 0
        for depth in range(NUM_LEVELS):
            t0 = time.perf_counter()
            prompts, params, owner, token_lists = self._step_requests(requests, beams, depth, widths, constrained)
            t1 = time.perf_counter()
            outputs = self._generate(prompts, params, token_lists)
            t2 = time.perf_counter()
            submitted += len(prompts)
            beams = self._prune(outputs, owner, token_lists, beams, depth, widths, constrained)
            t3 = time.perf_counter()
            times["host"] += (t1 - t0) + (t3 - t2)
            times["prefill" if depth == 0 else "decode"] += t2 - t1
        t4 = time.perf_counter()
        results = self._finalize(requests, beams, constrained)
        timings = {**times, "finalize": time.perf_counter() - t4, "requests": float(submitted)}
        return [RetrievalResult(sids=s, items=it, timings=dict(timings)) for s, it in results]

    def _generate(self, prompts: list[list[int]], params: list[Any], token_lists: list[list[int] | None]
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(token ids, log-probs)`` of every one-token request, in order. With ``token_ids`` scoring the requests
        asking for top-k log-probs run in a round of their own (vLLM returns only the sampled token's log-prob for
        them when one engine step mixes the two kinds)."""
        run = self._run_core if self.config.driver == "core" else self._run_llm
        split = [i for i, t in enumerate(token_lists) if t is None]
        if self.config.scoring == "processor" or not split or len(split) == len(prompts):
            return run(prompts, params)
        rest = [i for i, t in enumerate(token_lists) if t is not None]
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(prompts)
        for rows in (split, rest):
            got = run([prompts[i] for i in rows], [params[i] for i in rows])
            for i, o in zip(rows, got, strict=True):
                out[i] = o
        return out

    def _run_llm(self, prompts: list[list[int]], params: list[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The public path: ``LLM.generate`` (input processing, detokeniser-free output processing, flat log-probs)."""
        from vllm.inputs import TokensPrompt

        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        got = []
        for out in outs:
            lp = cast("FlatLogprobs", out.outputs[0].logprobs)  # every request asks for flat_logprobs
            s, e = lp.start_indices[0], lp.end_indices[0]
            got.append((np.asarray(lp.token_ids[s:e], dtype=np.int64), np.asarray(lp.logprobs[s:e], dtype=np.float64)))
        return got

    def _run_core(self, prompts: list[list[int]], params: list[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One level lower: ``EngineCoreRequest`` straight into the in-process engine core, log-prob arrays straight
        out of ``EngineCoreOutput.new_logprobs`` (binds to ``vllm.v1.engine``: docs/decoding.md "vLLM internals").

        Skips ``InputProcessor.process_inputs`` (parameter copy and validation; ours are built within the engine's
        bounds) and the output processor (``RequestOutput`` and log-prob dict building)."""
        now = time.time()
        pos: dict[str, int] = {}
        for i, (ids, sp) in enumerate(zip(prompts, params, strict=True)):
            rid = f"radgr-{next(self._request_counter)}"
            pos[rid] = i
            self._core.add_request(self._core_request(rid, ids, None, sp, None, now, None, None, None))
        got: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(prompts)
        try:
            while pos:
                outputs = self._core.get_output().outputs
                if not outputs and not self._core.engine_core.scheduler.has_requests():
                    raise RuntimeError(f"vLLM engine core finished with {len(pos)} requests unanswered")
                for o in outputs:
                    row = pos.pop(o.request_id, None)
                    if row is None or o.new_logprobs is None:
                        continue
                    got[row] = (np.asarray(o.new_logprobs.logprob_token_ids[0], dtype=np.int64),
                                np.asarray(o.new_logprobs.logprobs[0], dtype=np.float64))
        except BaseException:
            if pos:
                self._core.abort_requests(list(pos))
            raise
        return [g for g in got if g is not None]

    def _step_requests(self, requests: Sequence[RetrievalRequest], beams: _Beams, depth: int, widths: np.ndarray,
                       constrained: np.ndarray) -> tuple[list[list[int]], list[Any], list[int], list[list[int] | None]]:
        """One one-token vLLM request per live beam (per chunk of 128 ids in ``token_ids`` scoring)."""
        prompts: list[list[int]] = []
        params: list[Any] = []
        owner: list[int] = []
        token_lists: list[list[int] | None] = []
        con = constrained[beams.req]
        kids = np.zeros(beams.req.shape[0], dtype=np.int64)
        if con.any():
            kids[con] = self.trie.child_count(depth, beams.node[con])
        k = np.minimum(np.where(con, kids, self._vocab_size), widths[beams.req])
        by_tokens = self.config.scoring == "token_ids"
        for i in range(beams.req.shape[0]):
            r = int(beams.req[i])
            ids = [*requests[r].prompt_ids, *beams.tokens[i].tolist()]
            if by_tokens and con[i]:
                for chunk, sp in self._token_id_params(depth, int(beams.node[i])):
                    prompts.append(ids)
                    params.append(sp)
                    owner.append(i)
                    token_lists.append(chunk)
            else:
                prompts.append(ids)
                params.append(self._params(depth, int(beams.node[i]), int(k[i]), bool(con[i])))
                owner.append(i)
                token_lists.append(None)
        return prompts, params, owner, token_lists

    def _prune(self, outputs: Sequence[tuple[np.ndarray, np.ndarray]], owner: Sequence[int],
               token_lists: Sequence[list[int] | None],
               beams: _Beams, depth: int, widths: np.ndarray, constrained: np.ndarray) -> _Beams:
        """Read (beam, token, log-prob) candidates and keep each request's best ``beam_width``."""
        cand_beam: list[np.ndarray] = []
        cand_tok: list[np.ndarray] = []
        cand_lp: list[np.ndarray] = []
        for (tok, val), i, wanted in zip(outputs, owner, token_lists, strict=True):
            if wanted is not None:  # token_ids scoring: the sampled token comes back too; keep the children
                keep = np.isin(tok, np.asarray(wanted, dtype=np.int64))
                tok, val = tok[keep], val[keep]
            tok, first = np.unique(tok, return_index=True)  # the sampled token may repeat a top-k entry
            cand_beam.append(np.full(tok.shape[0], i, dtype=np.int64))
            cand_tok.append(tok)
            cand_lp.append(val[first])
        b = np.concatenate(cand_beam)
        tok = np.concatenate(cand_tok)
        score = beams.score[b] + np.concatenate(cand_lp)
        req = beams.req[b]
        con = constrained[req]
        code = tok - self._offsets[depth]
        in_level = (tok >= self._offsets[depth]) & (code < self._sizes[depth])
        child = np.full(tok.shape[0], -1, dtype=np.int64)
        if con.any():
            child[con] = self.trie.find_child(depth, beams.node[b[con]], np.where(in_level[con], code[con], -1))
        ok = np.isfinite(score) & (~con | (child >= 0))  # constrained: only valid children (the mask says so)
        b, tok, score, req, child = b[ok], tok[ok], score[ok], req[ok], child[ok]
        # per request, best first; ties broken by (parent beam, token) as the PyTorch engine's candidate order
        order = np.lexsort((tok, b, -score, req))
        b, tok, score, req, child = b[order], tok[order], score[order], req[order], child[order]
        starts = np.searchsorted(req, req, side="left")
        rank = np.arange(req.shape[0]) - starts
        keep = rank < widths[req]
        b, tok, score, req, child = b[keep], tok[keep], score[keep], req[keep], child[keep]
        tokens = np.concatenate([beams.tokens[b], tok[:, None]], axis=1)
        return _Beams(req=req, tokens=tokens, node=np.where(child >= 0, child, 0), score=score)

    def _finalize(self, requests: Sequence[RetrievalRequest], beams: _Beams, constrained: np.ndarray
                  ) -> list[tuple[Any, Any]]:
        tokens = beams.tokens
        codes = tokens - self._offsets[None, :]
        in_level = (tokens >= self._offsets[None, :]) & (codes < self._sizes[None, :])
        codes = np.where(in_level, codes, -1)
        rows = beams.node.copy()
        free = ~constrained[beams.req]
        if free.any():
            rows[free] = self.trie.sid_rows(codes[free])
        out = []
        bounds = np.searchsorted(beams.req, np.arange(len(requests) + 1), side="left")
        for r, req in enumerate(requests):
            s, e = int(bounds[r]), int(bounds[r + 1])
            out.append(hits_from_beams(codes[s:e], tokens[s:e], beams.score[s:e].astype(np.float32), rows[s:e],
                                       self.index, req.top_k_items))
        return out

    def close(self) -> None:
        """Shut the engine core down now (KV cache, workers, vLLM's process-global distributed state), so that a
        later engine in the same process starts clean; a second call does nothing."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del self.llm

