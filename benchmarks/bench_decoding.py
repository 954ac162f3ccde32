"""OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_decoding.py [--quick] [--out runs/bench]

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

Writes ``<out>/decoding.json`` and ``<out>/decoding.png`` (atomically) and prints a table. CPU times are noisy on a
shared machine; the ratios are measured side by side in one run.
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


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    model, vocab = build_model()
    rng = np.random.default_rng(0)
    n_hf = 2 if quick else 4
    report: dict[str, Any] = {"machine": "CPU, torch threads 1, shared with other jobs", "model": "Qwen3 4x256",
                              "vocab_size": vocab.vocab_size, "codebooks": SIZES}
    index = BenchIndex.random(2_000 if quick else 20_000, seed=1)
    engine = TorchBeamEngine(model, vocab, index, max_batch_rows=1024)

    # 1. engine vs HF at beam 128
    report["vs_hf"] = []
    for plen in (64, 200):
        prompts = [[int(t) for t in rng.integers(3, TEXT_TOKENS, size=plen)] for _ in range(8)]
        ours(engine, prompts[:1], 128, 1)  # warm-up
        row = {"prompt_len": plen, "beam": 128, "num_sids": index.num_sids,
               **side_by_side(engine, model, prompts[:n_hf], 128, vocab, index.tables)}
        row["ours_batched8_s"] = ours(engine, prompts, 128, 8)[0]
        if plen == 64:
            fn_runs = [hf_generate(model, p, 128, vocab, index.tables, vectorised=False) for p in prompts[:2]]
            _, res, _ = ours(engine, prompts[:2], 128, 1)
            row["hf_prefix_fn_s"] = statistics.median(r[0] for r in fn_runs)
            row["hf_prefix_fn_same"] = compare(res, [(r[1], r[2]) for r in fn_runs])["same_sids_and_order"]
        report["vs_hf"].append(row)
        print(f"[vs HF] prompt {plen}: ours {row['ours_s'] * 1e3:.1f} ms, batched {row['ours_batched8_s'] * 1e3:.1f} "
              f"ms, HF {row['hf_vec_s'] * 1e3:.0f} ms, ratio {row['ratio']:.1f}x, same {row['same_sids_and_order']}",
              flush=True)

    # 2. beam width
    report["beam_width"] = []
    prompts = [[int(t) for t in rng.integers(3, TEXT_TOKENS, size=64)] for _ in range(n_hf)]
    for width in (8, 32, 128):
        row = {"beam": width, **side_by_side(engine, model, prompts, width, vocab, index.tables)}
        report["beam_width"].append(row)
        print(f"[beam] {width}: ours {row['ours_s'] * 1e3:.1f} ms, HF {row['hf_vec_s'] * 1e3:.0f} ms, "
              f"ratio {row['ratio']:.1f}x", flush=True)

    # 3. catalog size
    report["catalog"] = []
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
        report["catalog"].append(row)
        print(f"[catalog] {n}: ours {t_ours * 1e3:.1f} ms, masking {row['masking_share']:.1%}", flush=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "decoding.json", report)
    plot(report, out_dir / "decoding.png")
    print_table(report)
    return report


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
    t = Table(title="engine vs HF constrained generate, beam 128 (ms per request, median)")
    for col in ("prompt", "SIDs", "HF vec", "HF prefix fn", "ours", "ours batched x8", "ratio", "CPU-time ratio",
                "same", "max |dscore|", "masking"):
        t.add_column(col)
    for r in report["vs_hf"]:
        t.add_row(str(r["prompt_len"]), str(r["num_sids"]), f"{r['hf_vec_s'] * 1e3:.0f}",
                  f"{r['hf_prefix_fn_s'] * 1e3:.0f}" if "hf_prefix_fn_s" in r else "-", f"{r['ours_s'] * 1e3:.1f}",
                  f"{r['ours_batched8_s'] * 1e3:.1f}", f"{r['ratio']:.1f}x", f"{r['cpu_ratio']:.1f}x",
                  r["same_sids_and_order"],
                  f"{r['max_score_diff']:.1e}", f"{r['masking_share']:.1%}")
    console.print(t)
    t = Table(title="beam width (64-token prompt, ms per request)")
    for col in ("beam", "HF vec", "ours", "ratio", "CPU-time ratio", "same"):
        t.add_column(col)
    for r in report["beam_width"]:
        t.add_row(str(r["beam"]), f"{r['hf_vec_s'] * 1e3:.0f}", f"{r['ours_s'] * 1e3:.1f}", f"{r['ratio']:.1f}x",
                  f"{r['cpu_ratio']:.1f}x", r["same_sids_and_order"])
    console.print(t)
    t = Table(title="catalog size (beam 128, 64-token prompt)")
    for col in ("SIDs", "ours ms", "masking ms", "masking share", "all valid", "index build s"):
        t.add_column(col)
    for r in report["catalog"]:
        t.add_row(f"{r['num_sids']:,}", f"{r['ours_s'] * 1e3:.1f}", f"{r['masking_ms']:.2f}",
                  f"{r['masking_share']:.1%}", str(r["all_valid"]), f"{r['build_s']:.1f}")
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and catalogs up to 100k (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    run(args.quick, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
