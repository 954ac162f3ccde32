"""OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_decoding.py [--quick] [--out runs/bench] [--profile]
    [--sections vs_hf,beam_width,catalog,profile] [--json PATH]

Decoding benchmark: :class:`decoding.torch_engine.TorchBeamEngine` (shared prompt KV cache, tree-attention beam
steps, CSR trie masks) against Hugging Face ``generate(num_beams=B, ...)`` with a trie constraint, on the same
random Qwen3 model (4 layers x 256 hidden), the same prompts and catalog, one CPU thread.

1. **Engine vs HF at beam 128**, 64- and 200-token prompts, 20k SIDs (codebooks 256/256/256): the two must return
   the same SIDs in the same order (scores within float tolerance); median seconds per request for both, the ratio.
   HF's constraint is the fair version: a ``LogitsProcessor`` that masks all beams at once with the same CSR
   gathers (``hf_vec``); the usual per-beam ``prefix_allowed_tokens_fn`` (a dict lookup per beam per step,
   ``hf_prefix_fn``) is timed too for the 64-token prompt. Ours is timed alone (one request per call, 3 runs per
   prompt, back to back with HF's run on the same prompt; the ratio is the median of these paired ratios, also in
   process CPU time, which load from other jobs disturbs less) and batched (8 requests per call, time per request).
2. **Beam width** 8 / 32 / 128 (64-token prompt): ours and HF (vectorised), seconds per request.
3. **Catalog size** 1k → 1M SIDs (random unique codes, 256/256/256), beam 128, 64-token prompt: seconds per request
   and the share of time spent on masking (trie expansion, top-k, mask building).

4. **Profile** (``--profile``, or ``profile`` in ``--sections``): where a beam-128 retrieval's time goes, one
   request per call and 8 per call, 64- and 200-token prompts: each phase of the engine's timings (prefill inputs,
   prefill, the full-vocabulary normalisers and candidate scores, the trie mask, top-k, attention masks, step 1,
   step 2, final codes, transfer, item expansion) in wall and CPU ms per request, "other" (the call's wall time
   not in any phase: Python around the search), the trie mask's share of the decode steps, the model's FLOPs per
   phase, the rate reached and the CPU time of the forward's matrix products alone (the floor without less
   arithmetic); and a ``torch.profiler`` table of one retrieval grouped into matrix products, attention and the rest.

Writes ``<out>/decoding.json`` and ``<out>/decoding.png`` (atomically; ``--json PATH`` writes the report there too)
and prints a table. ``--quick`` is a smoke run (fewer repeats, 2,000 SIDs, catalogs up to 100k). CPU times are noisy
on a shared machine; the ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoding.beam_search import TrieTensors, csr_expand
from decoding.engine import RetrievalRequest, RetrievalResult
from decoding.sid_vocab import SidVocab
from decoding.torch_engine import TorchBeamEngine
from sid_index.prefix_tables import PrefixTables

SIZES = (256, 256, 256)
TEXT_TOKENS = 4096  # a BPE-sized text vocabulary in front of the SID tokens


@dataclass
class BenchIndex:
    """One item per SID: just what the engine reads (``decoding.hits.IndexForDecoding``)."""

    tables: PrefixTables
    sid_codes: np.ndarray
    sid_item_indptr: np.ndarray
    sid_item_rows: np.ndarray
    item_ids: list[str]

    @property
    def num_sids(self) -> int:
        return int(self.sid_codes.shape[0])

    @staticmethod
    def random(n_sids: int, seed: int) -> BenchIndex:
        space = SIZES[0] * SIZES[1] * SIZES[2]
        keys = np.sort(np.random.default_rng(seed).choice(space, size=n_sids, replace=False))
        codes = np.stack([keys // (SIZES[1] * SIZES[2]), (keys // SIZES[2]) % SIZES[1], keys % SIZES[2]], 1)
        codes = codes.astype(np.int64)
        return BenchIndex(PrefixTables.from_sorted_codes(codes), codes, np.arange(n_sids + 1, dtype=np.int64),
                          np.arange(n_sids, dtype=np.int64), [f"i{r}" for r in range(n_sids)])


def build_model(seed: int = 0) -> tuple[Any, SidVocab]:
    torch.manual_seed(seed)
    vocab_size = TEXT_TOKENS + sum(SIZES)
    # attn_implementation is a PreTrainedConfig keyword its typed dataclass signature does not list
    cfg = Qwen3Config(  # type: ignore[call-arg]  # untyped kwarg
        vocab_size=vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )
    model = Qwen3ForCausalLM(cfg).eval()
    offsets = (TEXT_TOKENS, TEXT_TOKENS + SIZES[0], TEXT_TOKENS + SIZES[0] + SIZES[1])
    return model, SidVocab(offsets, SIZES, eos_id=2, vocab_size=vocab_size)


class TrieLogitsProcessor(LogitsProcessor):
    """HF constraint, vectorised over all beams: each row's trie node by ``searchsorted``, children by CSR gathers."""

    def __init__(self, tables: PrefixTables, vocab: SidVocab, prompt_len: int) -> None:
        self.trie = TrieTensors.from_tables(tables)
        self.offsets = vocab.offsets
        self.prompt_len = prompt_len
        # per level: key (parent node, code) of every child node, sorted
        n0 = tables.level0.shape[0]
        parents = (np.zeros(n0, dtype=np.int64), np.repeat(np.arange(n0), np.diff(tables.l1_indptr)))
        self.radix = max(SIZES)
        self.child_keys = [torch.as_tensor(p * self.radix + c) for p, c in
                           zip(parents, (tables.level0, tables.l1_codes), strict=True)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        rows = input_ids.shape[0]
        node = torch.zeros(rows, dtype=torch.long)
        live = torch.ones(rows, dtype=torch.bool)
        for level in range(step):
            code = input_ids[:, self.prompt_len + level] - self.offsets[level]
            key = node * self.radix + code
            pos = torch.searchsorted(self.child_keys[level], key).clamp_max(self.child_keys[level].shape[0] - 1)
            live &= self.child_keys[level][pos] == key
            node = pos
        beam, child, _ = csr_expand(self.trie.indptr[step], node, live)
        mask = torch.full_like(scores, float("-inf"))
        mask[beam, self.offsets[step] + self.trie.codes[step][child]] = 0.0
        return cast(torch.FloatTensor, scores + mask)  # the base class promises FloatTensor (a float Tensor)


def prefix_fn_for(tables: PrefixTables, vocab: SidVocab, prompt_len: int) -> Callable[[int, torch.Tensor], list[int]]:
    """The usual HF constraint: a Python callback per beam per step, answered by a dict lookup."""
    allowed: dict[tuple[int, ...], list[int]] = {}
    for row in tables.paths() + np.asarray(vocab.offsets):
        toks = tuple(int(t) for t in row)
        for level in range(3):
            allowed.setdefault(toks[:level], []).append(toks[level])
    allowed = {k: sorted(set(v)) for k, v in allowed.items()}

    def fn(batch_id: int, ids: torch.Tensor) -> list[int]:
        return allowed.get(tuple(ids[prompt_len:].tolist()), [vocab.eos_id])

    return fn


def hf_generate(model: Any, prompt: list[int], width: int, vocab: SidVocab, tables: PrefixTables,
                vectorised: bool) -> tuple[float, np.ndarray, np.ndarray, float]:
    """One HF constrained beam search; ``(wall s, tokens [B, 3], scores [B], CPU s)``. Every parameter explicit."""
    cfg = GenerationConfig(
        num_beams=width, num_return_sequences=width, do_sample=False, length_penalty=0.0, max_new_tokens=3,
        min_new_tokens=0, early_stopping=True, eos_token_id=vocab.eos_id, pad_token_id=vocab.eos_id,
        bos_token_id=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None,
        no_repeat_ngram_size=None, use_cache=True, output_scores=True, return_dict_in_generate=True,
    )
    plen = len(prompt)
    kwargs: dict[str, Any] = (
        {"logits_processor": LogitsProcessorList([TrieLogitsProcessor(tables, vocab, plen)])} if vectorised
        else {"prefix_allowed_tokens_fn": prefix_fn_for(tables, vocab, plen)}
    )
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, plen, dtype=torch.long),
                             generation_config=cfg, **kwargs)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, out.sequences[:, plen:].numpy(), out.sequences_scores.float().numpy(), cpu


def ours(engine: TorchBeamEngine, prompts: list[list[int]], width: int, batch: int
         ) -> tuple[float, list[RetrievalResult], dict[str, float]]:
    """Median wall seconds per request (``batch`` requests per call) and the results; timings summed by phase
    (plus ``cpu_s``: median process CPU seconds per request)."""
    reqs = [RetrievalRequest(tuple(p), beam_width=width, top_k_items=width) for p in prompts]
    per_request: list[float] = []
    per_request_cpu: list[float] = []
    results: list[RetrievalResult] = []
    phases: dict[str, float] = {}
    for i in range(0, len(reqs), batch):
        chunk = reqs[i:i + batch]
        t0, c0 = time.perf_counter(), time.process_time()
        res = engine.retrieve_batch(chunk)
        per_request.append((time.perf_counter() - t0) / len(chunk))
        per_request_cpu.append((time.process_time() - c0) / len(chunk))
        results += res
        for k in ("prefill", "decode", "masking", "finalize"):
            phases[k] = phases.get(k, 0.0) + res[0].timings[k]
    phases["cpu_s"] = statistics.median(per_request_cpu)
    return statistics.median(per_request), results, phases


def side_by_side(engine: TorchBeamEngine, model: Any, prompts: list[list[int]], width: int, vocab: SidVocab,
                 tables: PrefixTables, repeats: int = 3) -> dict[str, Any]:
    """Per prompt, back to back (so both see the same machine load): ours ``repeats`` times, then HF once.

    ``ratio`` is the median over prompts of HF time / our median time on that prompt (paired); the CPU-time ratio
    likewise. ``ours_s``/``hf_vec_s`` are medians over all runs; ``masking_share`` from our runs' phase timings.
    """
    ours_t, ours_cpu, hf_t, hf_cpu, ratios, cpu_ratios, results, hf_out = [], [], [], [], [], [], [], []
    phases: dict[str, float] = {}
    for p in prompts:
        runs = [ours(engine, [p], width, 1) for _ in range(repeats)]
        t_o = statistics.median(r[0] for r in runs)
        c_o = statistics.median(r[2]["cpu_s"] for r in runs)
        for r in runs:
            for k in ("prefill", "decode", "masking", "finalize"):
                phases[k] = phases.get(k, 0.0) + r[2][k]
        t_h, toks, scores, c_h = hf_generate(model, p, width, vocab, tables, vectorised=True)
        ours_t.append(t_o)
        ours_cpu.append(c_o)
        hf_t.append(t_h)
        hf_cpu.append(c_h)
        ratios.append(t_h / t_o)
        cpu_ratios.append(c_h / c_o)
        results.append(runs[0][1][0])
        hf_out.append((toks, scores))
    return {"ours_s": statistics.median(ours_t), "hf_vec_s": statistics.median(hf_t),
            "ours_cpu_s": statistics.median(ours_cpu), "hf_vec_cpu_s": statistics.median(hf_cpu),
            "ratio": statistics.median(ratios), "cpu_ratio": statistics.median(cpu_ratios),
            "ratios": ratios, "masking_share": share(phases), **compare(results, hf_out)}


MASKING = ("prefill_inputs", "trie_mask", "topk", "attn_mask", "final")  # what decoding.beam_search sums as masking
PHASES = ("prefill_inputs", "prefill", "scoring", "trie_mask", "topk", "attn_mask", "step1", "step2", "final",
          "transfer", "finalize")


def model_flops(model: Any, rows: int, keys: int, logits_rows: int) -> float:
    """FLOPs (2 per multiply-add) of one forward of ``rows`` new tokens attending to ``keys`` keys (as the masked
    kernel computes them: every key) with ``logits_rows`` rows of output logits."""
    c = model.config
    qd, kvd = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_token = c.num_hidden_layers * (c.hidden_size * (2 * qd + 2 * kvd) + 3 * c.hidden_size * c.intermediate_size)
    attention = c.num_hidden_layers * rows * keys * qd * 2
    return float(2 * (rows * per_token + attention + logits_rows * c.hidden_size * c.vocab_size))


def matmul_floor_ms(model: Any, rows: int, logits_rows: int, repeats: int = 5) -> float:
    """Thread CPU ms of just the model's matrix products for one forward of ``rows`` tokens (every linear layer on
    the model's own weights, then the output layer on ``logits_rows`` rows), median of ``repeats``: the floor a
    forward cannot go under on this core without less arithmetic."""
    weights = [m.weight for m in model.model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings().weight
    x = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    h = torch.randn(logits_rows, head.shape[1])
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            t0 = time.thread_time()
            for w in weights:
                torch.nn.functional.linear(x[w.shape[1]], w)
            torch.nn.functional.linear(h, head)
            times.append(time.thread_time() - t0)
    return 1e3 * statistics.median(times[1:])


def profile(engine: TorchBeamEngine, model: Any, rng: np.random.Generator, repeats: int) -> dict[str, Any]:
    """4. where a beam-128 retrieval's time goes (see the module docstring); medians per request."""
    out: dict[str, Any] = {"rows": []}
    width = 128
    for plen in (64, 200):
        prompts = [tuple(int(t) for t in rng.integers(3, TEXT_TOKENS, size=plen)) for _ in range(8)]
        reqs = [RetrievalRequest(p, beam_width=width, top_k_items=width) for p in prompts]
        engine.retrieve_batch(reqs[:1])
        engine.retrieve_batch(reqs)  # warm-up of both shapes
        for batch in (1, 8):
            calls: list[dict[str, float]] = []
            for i in range(repeats if batch == 1 else max(1, repeats // 3)):
                chunk = reqs[i % 8:i % 8 + 1] if batch == 1 else reqs
                t0, c0 = time.perf_counter(), time.process_time()
                res = engine.retrieve_batch(chunk)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                t = res[0].timings
                calls.append({**{k: v / batch for k, v in t.items() if k != "chunk_requests"},
                              "call": wall / batch, "call_cpu": cpu / batch,
                              "other": (wall - sum(t[k] for k in PHASES)) / batch})
            med = {k: statistics.median(c[k] for c in calls) for k in calls[0]}
            flops = {"prefill": model_flops(model, plen, plen, 1),
                     "step1": model_flops(model, width, plen + width, width),
                     "step2": model_flops(model, width, plen + 2 * width, width)}
            row: dict[str, Any] = {
                "prompt_len": plen, "beam": width, "requests_per_call": batch, "calls": len(calls),
                "ms": {k: 1e3 * med[k] for k in (*PHASES, "other", "call")},
                "cpu_ms": {**{k: 1e3 * med[f"cpu_{k}"] for k in PHASES if f"cpu_{k}" in med},
                           "call": 1e3 * med["call_cpu"]},
                "gflop_per_request": {k: v / 1e9 for k, v in flops.items()},
                "gflops_reached_cpu": {k: v / med[f"cpu_{k}"] / 1e9 for k, v in flops.items()},
                "matmul_floor_cpu_ms": {"prefill": matmul_floor_ms(model, plen * batch, batch) / batch,
                                        "step": matmul_floor_ms(model, width * batch, width * batch) / batch},
                # shares in CPU time (preemption by other processes inflates wall-clock phases unevenly)
                "trie_mask_share_of_steps": med["cpu_trie_mask"] / (med["cpu_step1"] + med["cpu_step2"]),
                "masking_share": sum(med[f"cpu_{k}"] for k in MASKING) / med["call_cpu"],
                "trie_mask_share_of_steps_wall": med["trie_mask"] / (med["step1"] + med["step2"]),
            }
            out["rows"].append(row)
            print(f"[profile] prompt {plen}, {batch} per call: {row['ms']['call']:.1f} ms/request wall, "
                  f"{row['cpu_ms']['call']:.1f} ms CPU; trie mask {row['trie_mask_share_of_steps']:.2%} of the steps",
                  flush=True)
    out["ops"] = op_profile(engine, [RetrievalRequest(tuple(int(t) for t in rng.integers(3, TEXT_TOKENS, size=64)),
                                                      beam_width=width, top_k_items=width)])
    return out


def op_profile(engine: TorchBeamEngine, reqs: list[RetrievalRequest]) -> dict[str, Any]:
    """``torch.profiler`` over 3 calls: self CPU ms per call grouped into matrix products, attention and the rest,
    and the top ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            engine.retrieve_batch(reqs)
    groups = {"matmul": 0.0, "attention": 0.0, "other ops": 0.0}
    ops = []
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1e3 / 3
        kind = ("matmul" if ev.key in ("aten::mm", "aten::addmm", "aten::bmm") else
                "attention" if "scaled_dot_product" in ev.key else "other ops")
        groups[kind] += ms
        ops.append((ms, ev.key, ev.count // 3))
    ops.sort(reverse=True)
    return {"groups_ms": groups, "top": [{"op": k, "ms": ms, "calls": n} for ms, k, n in ops[:10]]}


def share(phases: dict[str, float]) -> float:
    """Masking's share of the engine's phase time."""
    return phases["masking"] / sum(phases[k] for k in ("prefill", "decode", "masking", "finalize"))


def compare(results: list[RetrievalResult], hf: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    same, max_diff = 0, 0.0
    for res, (toks, scores) in zip(results, hf, strict=True):
        mine = np.asarray([h.token_ids for h in res.sids])
        if mine.shape == toks.shape and np.array_equal(mine, toks):
            same += 1
            max_diff = max(max_diff, float(np.abs(np.asarray([h.score for h in res.sids]) - scores).max()))
    return {"same_sids_and_order": f"{same}/{len(results)}", "max_score_diff": max_diff}


SECTIONS = ("vs_hf", "beam_width", "catalog", "profile")


def run(quick: bool, out_dir: Path, sections: tuple[str, ...] = SECTIONS[:3], json_path: Path | None = None,
        repeats: int | None = None) -> dict[str, Any]:
    """The sections asked for; ``repeats`` single calls per profiled prompt length (default 3 quick, 8 full)."""
    torch.set_num_threads(1)
    model, vocab = build_model()
    rng = np.random.default_rng(0)
    n_hf = 2 if quick else 4
    report: dict[str, Any] = {"machine": f"CPU, torch threads 1, load average {os.getloadavg()[0]:.1f} at start",
                              "model": "Qwen3 4x256", "vocab_size": vocab.vocab_size, "codebooks": SIZES,
                              "quick": quick, "sections": list(sections)}
    index = BenchIndex.random(2_000 if quick else 20_000, seed=1)
    engine = TorchBeamEngine(model, vocab, index, max_batch_rows=1024)
    if "profile" in sections:
        report["profile"] = profile(engine, model, rng, repeats or (3 if quick else 8))
    if "vs_hf" in sections:
        report["vs_hf"] = vs_hf(engine, model, vocab, index, rng, n_hf)
    if "beam_width" in sections:
        report["beam_width"] = beam_width(engine, model, vocab, index, rng, n_hf)
    if "catalog" in sections:
        report["catalog"] = catalog(model, vocab, rng, quick)
    report["load_average_end"] = os.getloadavg()[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "decoding.json", report)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_path, report)
    if all(k in report for k in SECTIONS[:3]):
        plot(report, out_dir / "decoding.png")
    print_table(report)
    return report


def vs_hf(engine: TorchBeamEngine, model: Any, vocab: SidVocab, index: BenchIndex, rng: np.random.Generator,
          n_hf: int) -> list[dict[str, Any]]:
    """1. engine vs HF at beam 128, 64- and 200-token prompts."""
    rows = []
    for plen in (64, 200):
        prompts = [[int(t) for t in rng.integers(3, TEXT_TOKENS, size=plen)] for _ in range(8)]
        ours(engine, prompts[:1], 128, 1)  # warm-up
        row = {"prompt_len": plen, "beam": 128, "num_sids": index.num_sids,
               **side_by_side(engine, model, prompts[:n_hf], 128, vocab, index.tables)}
        row["ours_batched8_s"] = ours(engine, prompts, 128, 8)[0]
        row["ours_8_singles_s"] = ours(engine, prompts, 128, 1)[0]  # the same 8 prompts one per call, same moment
        row["batch8_speedup"] = row["ours_8_singles_s"] / row["ours_batched8_s"]
        if plen == 64:
            fn_runs = [hf_generate(model, p, 128, vocab, index.tables, vectorised=False) for p in prompts[:2]]
            _, res, _ = ours(engine, prompts[:2], 128, 1)
            row["hf_prefix_fn_s"] = statistics.median(r[0] for r in fn_runs)
            row["hf_prefix_fn_same"] = compare(res, [(r[1], r[2]) for r in fn_runs])["same_sids_and_order"]
        rows.append(row)
        print(f"[vs HF] prompt {plen}: ours {row['ours_s'] * 1e3:.1f} ms, batched {row['ours_batched8_s'] * 1e3:.1f} "
              f"ms, HF {row['hf_vec_s'] * 1e3:.0f} ms, ratio {row['ratio']:.1f}x, same {row['same_sids_and_order']}",
              flush=True)
    return rows


def beam_width(engine: TorchBeamEngine, model: Any, vocab: SidVocab, index: BenchIndex, rng: np.random.Generator,
               n_hf: int) -> list[dict[str, Any]]:
    """2. beam width 8 / 32 / 128 at a 64-token prompt."""
    rows = []
    prompts = [[int(t) for t in rng.integers(3, TEXT_TOKENS, size=64)] for _ in range(n_hf)]
    for width in (8, 32, 128):
        row = {"beam": width, **side_by_side(engine, model, prompts, width, vocab, index.tables)}
        rows.append(row)
        print(f"[beam] {width}: ours {row['ours_s'] * 1e3:.1f} ms, HF {row['hf_vec_s'] * 1e3:.0f} ms, "
              f"ratio {row['ratio']:.1f}x", flush=True)
    return rows


def catalog(model: Any, vocab: SidVocab, rng: np.random.Generator, quick: bool) -> list[dict[str, Any]]:
    """3. catalog size 1k -> 1M SIDs at beam 128."""
    rows = []
    sizes = (1_000, 10_000, 100_000) if quick else (1_000, 10_000, 100_000, 1_000_000)
    prompts = [[int(t) for t in rng.integers(3, TEXT_TOKENS, size=64)] for _ in range(3 if quick else 5)]
    for n in sizes:
        t0 = time.perf_counter()
        idx = BenchIndex.random(n, seed=2)
        eng = TorchBeamEngine(model, vocab, idx)
        build_s = time.perf_counter() - t0
        ours(eng, prompts[:1], 128, 1)
        t_ours, res, phases = ours(eng, prompts, 128, 1)
        valid = all(h.valid and tuple(idx.sid_codes[h.sid_row]) == h.codes for r in res for h in r.sids)
        row = {"num_sids": n, "ours_s": t_ours, "masking_share": share(phases), "ours_cpu_s": phases["cpu_s"],
               "masking_ms": 1e3 * phases["masking"] / len(prompts), "build_s": build_s, "all_valid": valid}
        rows.append(row)
        print(f"[catalog] {n}: ours {t_ours * 1e3:.1f} ms, masking {row['masking_share']:.1%}", flush=True)
    return rows


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    os.replace(tmp, path)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    labels = [f"{r['prompt_len']}-token prompt" for r in report["vs_hf"]]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [r["hf_vec_s"] * 1e3 for r in report["vs_hf"]], 0.4, label="HF generate (vectorised trie)")
    ax.bar(x + 0.2, [r["ours_s"] * 1e3 for r in report["vs_hf"]], 0.4, label="radgr torch engine")
    for i, r in enumerate(report["vs_hf"]):
        ax.text(i, r["hf_vec_s"] * 1e3, f"{r['ratio']:.0f}x", ha="center", va="bottom")
    ax.set_xticks(x, labels)
    ax.set_ylabel("ms per request")
    ax.set_yscale("log")
    ax.set_title("beam 128, one request per call")
    ax.legend(fontsize=8)
    ax = axes[1]
    widths = [r["beam"] for r in report["beam_width"]]
    ax.plot(widths, [r["hf_vec_s"] * 1e3 for r in report["beam_width"]], "o-", label="HF generate")
    ax.plot(widths, [r["ours_s"] * 1e3 for r in report["beam_width"]], "o-", label="radgr torch engine")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("beam width")
    ax.set_ylabel("ms per request")
    ax.set_title("64-token prompt")
    ax.legend(fontsize=8)
    ax = axes[2]
    ns = [r["num_sids"] for r in report["catalog"]]
    ax.plot(ns, [r["ours_s"] * 1e3 for r in report["catalog"]], "o-", label="ms per request")
    ax.set_xscale("log")
    ax.set_xlabel("SIDs in the catalog")
    ax.set_ylabel("ms per request (beam 128)")
    ax2 = ax.twinx()
    ax2.plot(ns, [100 * r["masking_share"] for r in report["catalog"]], "s--", color="C3", label="masking %")
    ax2.set_ylabel("masking share of time (%)")
    ax.set_ylim(bottom=0)
    ax2.set_ylim(0, max(100 * r["masking_share"] for r in report["catalog"]) * 1.3)
    ax.set_title("catalog size")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    if "profile" in report:
        print_profile(console, report["profile"])
    if "vs_hf" in report:
        t = Table(title="engine vs HF constrained generate, beam 128 (ms per request, median)")
        for col in ("prompt", "SIDs", "HF vec", "HF prefix fn", "ours", "ours batched x8", "x8 vs singles", "ratio",
                    "CPU-time ratio", "same", "max |dscore|", "masking"):
            t.add_column(col)
        for r in report["vs_hf"]:
            t.add_row(str(r["prompt_len"]), str(r["num_sids"]), f"{r['hf_vec_s'] * 1e3:.0f}",
                      f"{r['hf_prefix_fn_s'] * 1e3:.0f}" if "hf_prefix_fn_s" in r else "-", f"{r['ours_s'] * 1e3:.1f}",
                      f"{r['ours_batched8_s'] * 1e3:.1f}", f"{r['batch8_speedup']:.2f}x", f"{r['ratio']:.1f}x",
                      f"{r['cpu_ratio']:.1f}x", r["same_sids_and_order"], f"{r['max_score_diff']:.1e}",
                      f"{r['masking_share']:.1%}")
        console.print(t)
    if "beam_width" in report:
        t = Table(title="beam width (64-token prompt, ms per request)")
        for col in ("beam", "HF vec", "ours", "ratio", "CPU-time ratio", "same"):
            t.add_column(col)
        for r in report["beam_width"]:
            t.add_row(str(r["beam"]), f"{r['hf_vec_s'] * 1e3:.0f}", f"{r['ours_s'] * 1e3:.1f}", f"{r['ratio']:.1f}x",
                      f"{r['cpu_ratio']:.1f}x", r["same_sids_and_order"])
        console.print(t)
    if "catalog" in report:
        t = Table(title="catalog size (beam 128, 64-token prompt)")
        for col in ("SIDs", "ours ms", "masking ms", "masking share", "all valid", "index build s"):
            t.add_column(col)
        for r in report["catalog"]:
            t.add_row(f"{r['num_sids']:,}", f"{r['ours_s'] * 1e3:.1f}", f"{r['masking_ms']:.2f}",
                      f"{r['masking_share']:.1%}", str(r["all_valid"]), f"{r['build_s']:.1f}")
        console.print(t)


def print_profile(console: Any, prof: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="where a beam-128 retrieval's time goes (ms per request, median; wall / CPU)")
    t.add_column("phase")
    for r in prof["rows"]:
        t.add_column(f"P={r['prompt_len']}, {r['requests_per_call']}/call")
    for phase in (*PHASES, "other", "call"):
        t.add_row(phase, *[f"{r['ms'][phase]:.2f} / {r['cpu_ms'][phase]:.2f}" if phase in r["cpu_ms"]
                           else f"{r['ms'][phase]:.2f}" for r in prof["rows"]])
    t.add_row("trie mask / steps (CPU)", *[f"{r['trie_mask_share_of_steps']:.2%}" for r in prof["rows"]])
    t.add_row("masking / call (CPU)", *[f"{r['masking_share']:.1%}" for r in prof["rows"]])
    for phase in ("prefill", "step1", "step2"):
        t.add_row(f"{phase} GFLOP/s (CPU)", *[f"{r['gflops_reached_cpu'][phase]:.0f}" for r in prof["rows"]])
    for phase in ("prefill", "step"):
        t.add_row(f"{phase}: its matmuls alone (CPU ms)",
                  *[f"{r['matmul_floor_cpu_ms'][phase]:.2f}" for r in prof["rows"]])
    console.print(t)
    ops = prof["ops"]
    console.print("torch.profiler, one 64-token retrieval (self CPU ms): " +
                  ", ".join(f"{k} {v:.1f}" for k, v in ops["groups_ms"].items()) + "; top: " +
                  ", ".join(f"{o['op']} {o['ms']:.1f} ({o['calls']}x)" for o in ops["top"][:6]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and catalogs up to 100k (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--profile", action="store_true", help="add the per-phase profile (section 'profile')")
    parser.add_argument("--sections", default=",".join(SECTIONS[:3]),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON report to this path")
    args = parser.parse_args(argv)
    sections = tuple(s for s in args.sections.split(",") if s)
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        parser.error(f"--sections must name sections of {','.join(SECTIONS)}, given {','.join(bad)}")
    if args.profile and "profile" not in sections:
        sections = ("profile", *sections)
    run(args.quick, args.out, sections, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
