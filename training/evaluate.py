"""Offline evaluation (``radgr eval``): a checkpoint, or the popularity baseline, on ``samples/test.parquet``.

Command: ``radgr eval --model RUN_DIR/final --index DIR --samples DIR [--beam-width 128 --top-k 500
--batch-size 8 --limit N --out eval.json] [--baseline popularity]``

Contract (the paper's metrics, docs/training.md "Evaluation", averaged over test sessions):
- A model is decoded through the :class:`decoding.engine.RetrievalEngine` interface (``TorchBeamEngine`` by
  default; any engine can be passed to :func:`evaluate_engine`), trie-constrained, at ``beam_width``; its SIDs
  (score order) and items (SIDs expanded, popularity order within a SID, top ``top_k``) are ranked lists.
- Item Recall@10/100/500 and MRR against the session's positive items; SID Recall@8/64/128 and MRR against the
  positives' SIDs (distinct). Hallucination rate: the same beam search *without* the trie; invalid generated SIDs
  over all generated SIDs, pooled.
- With simulated data (``relevant_items`` non-empty) the same metrics against the true relevance, on the sessions
  that have it (``truth`` block). Items unknown to the index are left out of the truth sets.
- ``--baseline popularity``: no model; SIDs ranked by the summed popularity of their items, where popularity =
  how often the item is a positive in ``train.parquet`` (ties: the index's popularity); the same ranking for
  every session. Two rows: ``popularity`` expands its top ``beam_width`` SIDs to items exactly as a model's beams
  are expanded (the same budget), ``popularity (items, no beam limit)`` ranks all items by their popularity.
- MiniOneRec's protocol beside them (``minionerec`` block: HR@K and NDCG@K, K = 3, 5, 10, one target item per
  session; :mod:`training.minionerec_eval`, whose table ``radgr eval`` prints and writes as ``.minionerec.md``).
- :func:`write_report` writes the JSON (one entry per evaluated method), a markdown table (``.md``) and a bar
  chart (``.png``) next to it, atomically.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from decoding.engine import MAX_BEAM_WIDTH, RetrievalEngine, RetrievalRequest, RetrievalResult
from decoding.engine_factory import ENGINE_KINDS, EngineKind
from decoding.items import expand_items
from decoding.prompt import PROMPT_VERSION, encode_prompt
from sid_index.atomic_files import write_json_atomic, write_text_atomic
from training.metrics import hallucination_rate, mean_metrics, session_metrics
from training.minionerec_eval import minionerec_metrics
from training.prompt_ids import check_prompt_version

logger = logging.getLogger(__name__)

ITEM_KS = (10, 100, 500)
SID_KS = (8, 64, 128)
# the paper's table columns, used by every radgr table (eval and the paper table): (header, block, metric key);
# block None = the hallucination rate, "item"/"sid" = the blocks of score_rankings' report
TABLE_COLUMNS: tuple[tuple[str, str | None, str | None], ...] = (
    ("halluc.", None, None), ("R@10", "item", "recall@10"), ("R@100", "item", "recall@100"),
    ("R@500", "item", "recall@500"), ("MRR", "item", "mrr"), ("SID R@8", "sid", "recall@8"),
    ("R@64", "sid", "recall@64"), ("R@128", "sid", "recall@128"), ("SID MRR", "sid", "mrr"))
Progress = Callable[[int], None]


@dataclass(frozen=True)
class EvalConfig:
    """Decoding and scope of one evaluation (validated; messages name the field and bound)."""

    beam_width: int = MAX_BEAM_WIDTH
    top_k: int = 500
    batch_size: int = 8
    limit: int | None = None
    hallucination: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.beam_width <= MAX_BEAM_WIDTH:
            raise ValueError(f"beam_width must be in [1, {MAX_BEAM_WIDTH}], given {self.beam_width}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, given {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, given {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, given {self.limit}")


@dataclass(frozen=True)
class SessionTargets:
    """What one test session's rankings are scored against (SIDs as index rows)."""

    session_id: str
    prompt: str
    positive_items: frozenset[str]
    positive_sids: frozenset[int]
    relevant_items: frozenset[str]
    relevant_sids: frozenset[int]


@dataclass(frozen=True)
class Ranking:
    """One session's output: SID rows in score order (-1 = invalid SID) and item ids in rank order."""

    sid_rows: tuple[int, ...]
    items: tuple[str, ...]


def targets_from_samples(samples: Sequence[Any], index: Any) -> list[SessionTargets]:
    """Targets of ``training.data.sample_format.Sample`` rows; positive SIDs come from ``positive_codes``."""
    out = []
    for s in samples:
        check_prompt_version(s)
        pos_sids = set()
        for codes in s.positive_codes:
            row = index.sid_row_of_codes(codes)
            if row < 0:
                raise ValueError(f"sample {s.session_id}: positive SID {tuple(codes)} is not in the index")
            pos_sids.add(int(row))
        rel_items = set()
        rel_sids = set()
        for item in s.relevant_items:
            r = index.item_row(item)
            if r is not None:
                rel_items.add(item)
                rel_sids.add(int(index.item_sid_row[r]))
        out.append(SessionTargets(s.session_id, s.prompt, frozenset(s.positive_items), frozenset(pos_sids),
                                  frozenset(rel_items), frozenset(rel_sids)))
    return out


def ranking_of(result: RetrievalResult) -> Ranking:
    return Ranking(tuple(h.sid_row for h in result.sids), tuple(h.item_id for h in result.items))


def score_rankings(rankings: Sequence[Ranking], targets: Sequence[SessionTargets], *, truth: bool = False,
                   item_ks: Sequence[int] = ITEM_KS, sid_ks: Sequence[int] = SID_KS) -> dict[str, Any]:
    """Mean item and SID metrics (positives, or the true relevance with ``truth``) over the sessions that have any.

    Returns ``{"sessions": n, "item": {"recall@10": ..., "mrr": ...}, "sid": {...}, "per_session": {"session_ids":
    [...], "item": {"recall@10": [...], ...}, "sid": {...}}}`` (the per-session values feed the confidence
    intervals and paired tests of ``training.eval_intervals``; ``sessions`` 0 and empty blocks when no session
    has targets).
    """
    if len(rankings) != len(targets):
        raise ValueError(f"rankings ({len(rankings)}) and targets ({len(targets)}) must pair up")
    item_rows, sid_rows, ids = [], [], []
    for rk, t in zip(rankings, targets, strict=True):
        items, sids = (t.relevant_items, t.relevant_sids) if truth else (t.positive_items, t.positive_sids)
        if not items:
            continue
        item_rows.append(session_metrics(list(rk.items), items, item_ks))
        valid = [r for r in rk.sid_rows if r >= 0]
        sid_rows.append(session_metrics(valid, sids, sid_ks))
        ids.append(t.session_id)
    if not item_rows:
        return {"sessions": 0, "item": {}, "sid": {}}
    per_session = {"session_ids": ids, "item": {k: [r[k] for r in item_rows] for k in item_rows[0]},
                   "sid": {k: [r[k] for r in sid_rows] for k in sid_rows[0]}}
    return {"sessions": len(item_rows), "item": mean_metrics(item_rows), "sid": mean_metrics(sid_rows),
            "per_session": per_session}


def run_engine(engine: RetrievalEngine, prompt_ids: Sequence[Sequence[int]], cfg: EvalConfig, *, constrained: bool,
               progress: Progress | None = None) -> tuple[list[RetrievalResult], float]:
    """Every prompt through ``engine.retrieve_batch`` in batches of ``cfg.batch_size``; (results, seconds)."""
    results: list[RetrievalResult] = []
    t0 = time.perf_counter()
    for start in range(0, len(prompt_ids), cfg.batch_size):
        chunk = prompt_ids[start : start + cfg.batch_size]
        reqs = [RetrievalRequest(prompt_ids=tuple(p), beam_width=cfg.beam_width, top_k_items=cfg.top_k,
                                 constrained=constrained) for p in chunk]
        out = engine.retrieve_batch(reqs)
        if len(out) != len(reqs):
            raise RuntimeError(f"engine {engine.name} returned {len(out)} results for {len(reqs)} requests")
        results.extend(out)
        if progress is not None:
            progress(len(chunk))
    return results, time.perf_counter() - t0


def evaluate_engine(engine: RetrievalEngine, tokenizer: Any, targets: Sequence[SessionTargets], cfg: EvalConfig,
                    *, progress: Progress | None = None) -> dict[str, Any]:
    """Metrics of a model behind ``engine`` (constrained; plus an unconstrained pass for hallucination)."""
    prompt_ids = [encode_prompt(tokenizer, t.prompt) for t in targets]
    results, seconds = run_engine(engine, prompt_ids, cfg, constrained=True, progress=progress)
    rankings = [ranking_of(r) for r in results]
    report: dict[str, Any] = {
        "engine": engine.name,
        "metrics": score_rankings(rankings, targets),
        "truth": score_rankings(rankings, targets, truth=True),
        "minionerec": minionerec_metrics(rankings, targets),  # HR/NDCG@3,5,10 (training/minionerec_eval.py)
        "hallucination_rate": None,
        "seconds": {"constrained": seconds, "per_request": seconds / max(len(targets), 1)},
    }
    if cfg.hallucination:
        free, free_s = run_engine(engine, prompt_ids, cfg, constrained=False, progress=progress)
        report["hallucination_rate"] = hallucination_rate([[h.valid for h in r.sids] for r in free])
        report["hallucination_per_session"] = {"invalid": [sum(not h.valid for h in r.sids) for r in free],
                                               "total": [len(r.sids) for r in free]}
        report["seconds"]["unconstrained"] = free_s
    return report


def popularity_from_train(train_samples: Sequence[Any], index: Any) -> np.ndarray:
    """float64 [n_items]: positive count of each item in the training samples, ties broken by index popularity."""
    counts = Counter(item for s in train_samples for item in s.positive_items)
    pop = np.zeros(index.num_items, dtype=np.float64)
    for item, n in counts.items():
        r = index.item_row(item)
        if r is not None:
            pop[r] = n
    base = np.asarray(index.item_popularity, dtype=np.float64)
    if base.max() > 0:
        pop += 0.5 * base / base.max()  # < 1: never outranks a whole train count
    return pop


def popularity_ranking(index: Any, item_pop: np.ndarray, num_sids: int, top_k: int, *,
                       items_by_sid: bool = True) -> Ranking:
    """The popularity baseline's ranking (the same for every session).

    SIDs: by summed item popularity, top ``num_sids`` (stable ties). Items: with ``items_by_sid`` the same
    expansion a model's beams get (those SIDs' items in SID order, popularity order inside a SID, top ``top_k``);
    without, every item by its own popularity (top ``top_k``; not limited to ``num_sids`` SIDs).
    """
    if item_pop.shape != (index.num_items,):
        raise ValueError(f"item_pop must have shape [{index.num_items}], given {item_pop.shape}")
    sid_pop = np.bincount(np.asarray(index.item_sid_row), weights=item_pop, minlength=index.num_sids)
    sid_order = np.argsort(-sid_pop, kind="stable")[:num_sids]
    if items_by_sid:
        item_rows, _, _ = expand_items(sid_order, -np.arange(sid_order.shape[0], dtype=np.float64),
                                       index.sid_item_indptr, index.sid_item_rows, top_k)
    else:
        item_rows = np.argsort(-item_pop, kind="stable")[:top_k]
    return Ranking(tuple(int(r) for r in sid_order), tuple(index.item_ids[int(i)] for i in item_rows))


def evaluate_popularity(index: Any, train_samples: Sequence[Any], targets: Sequence[SessionTargets],
                        cfg: EvalConfig, *, items_by_sid: bool = True) -> dict[str, Any]:
    """Metrics of the popularity baseline (no model; no hallucination: it only ranks valid SIDs)."""
    t0 = time.perf_counter()
    rk = popularity_ranking(index, popularity_from_train(train_samples, index), cfg.beam_width, cfg.top_k,
                            items_by_sid=items_by_sid)
    rankings = [rk] * len(targets)
    return {
        "engine": "popularity" if items_by_sid else "popularity-items",
        "metrics": score_rankings(rankings, targets),
        "truth": score_rankings(rankings, targets, truth=True),
        "minionerec": minionerec_metrics(rankings, targets),
        "hallucination_rate": 0.0,
        "seconds": {"constrained": time.perf_counter() - t0, "per_request": 0.0},
    }


# ---------------------------------------------------------------- report

def _row(name: str, block: dict[str, Any], halluc: float | None, entry: dict[str, Any] | None = None,
         ci_key: str = "ci") -> str:
    """One table row; with an ``entry`` carrying intervals (``training.eval_intervals``) each cell shows its 95 %
    interval and, for a compared entry, the significance mark of its paired test against the first row."""
    from training.eval_intervals import ci_cell, paired_mark

    cells = [name]
    ci = (entry or {}).get(ci_key, {})
    for header, kind, key in TABLE_COLUMNS:
        v = halluc if kind is None else block.get(kind, {}).get(key)
        mark = paired_mark(entry, header) if entry is not None and ci_key == "ci" else ""
        cells.append(ci_cell(None if v is None else float(v), ci.get(header), mark))
    return "| " + " | ".join(cells) + " |"


def markdown_table(entries: Sequence[dict[str, Any]]) -> str:
    """The paper's table layout: one row per method (and one per method against the true relevance)."""
    head = "| method | " + " | ".join(c for c, _, _ in TABLE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(TABLE_COLUMNS) + 1)]
    for e in entries:
        lines.append(_row(e["name"], e["metrics"], e.get("hallucination_rate"), e))
    for e in entries:
        if e.get("truth", {}).get("sessions"):
            lines.append(_row(f"{e['name']} (true relevance)", e["truth"], None, e, "ci_truth"))
    n = entries[0]["metrics"]["sessions"] if entries else 0
    note = ""
    if any("ci" in e for e in entries):
        note = (" [lo, hi]: 95% bootstrap interval over test sessions; * / **: the paired test against the first "
                "row gives p < 0.05 / 0.01.")
    return "\n".join(lines) + f"\n\n{n} test sessions with positives.{note}\n"


def write_report(entries: Sequence[dict[str, Any]], out: str | Path, meta: dict[str, Any]) -> dict[str, Path]:
    """``out`` (JSON without the per-session values), ``out`` with ``.md`` (table) and ``.png`` (bar chart)."""
    from training.eval_intervals import strip_sessions, write_chart

    out = Path(out)
    doc = {**meta, "results": [strip_sessions(e) for e in entries]}
    write_json_atomic(out, doc, indent=2, sort_keys=True)
    md = out.with_suffix(".md")
    text = markdown_table(entries)
    if "run_info" in meta:
        from training.run_info import format_run_info

        text += "\n" + format_run_info(meta["run_info"]) + "\n"
    write_text_atomic(md, text)
    png = out.with_suffix(".png")
    write_chart(entries, png)
    return {"json": out, "markdown": md, "png": png}


# ---------------------------------------------------------------- the command's library side


@dataclass(frozen=True)
class EvalRun:
    """Paths of ``radgr eval``; ``model_dir`` None with ``baseline`` set evaluates the baseline only."""

    index_dir: Path
    samples_dir: Path
    model_dir: Path | None = None
    baseline: str | None = None
    against_dir: Path | None = None  # a reference model evaluated first on the same sessions: the paired tests' base
    eval: EvalConfig = EvalConfig()
    engine: str = "auto"  # decoding.engine_factory: auto (vLLM where installed) | torch | vllm

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_KINDS:
            raise ValueError(f"engine must be one of {', '.join(ENGINE_KINDS)}, given {self.engine!r}")
        if self.model_dir is None and self.baseline is None:
            raise ValueError("give a model (--model) or a baseline (--baseline popularity), given neither")
        if self.baseline is not None and self.baseline != "popularity":
            raise ValueError(f"baseline must be 'popularity', given {self.baseline!r}")
        if self.against_dir is not None and self.model_dir is None:
            raise ValueError("against (--against) compares a model with a reference model: give --model too")


def load_engine(model_dir: Path, index: Any, index_dir: Path, engine: str = "auto") -> tuple[RetrievalEngine, Any]:
    """(engine, tokenizer) of a model directory; ``engine`` as :func:`decoding.engine_factory.build_engine` takes
    it (the Hugging Face model is loaded only for the PyTorch engine; vLLM loads the directory itself)."""
    import json

    from transformers import AutoTokenizer

    from decoding.engine_factory import EngineOptions, build_engine, needs_hf_model
    from decoding.sid_vocab import SidVocab
    from training.model import check_model_dir, load_model

    check_model_dir(model_dir)  # a truncated or corrupt file is named here, before anything reads it
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = load_model(model_dir) if needs_hf_model(engine) else None
    if model is not None:
        import torch

        # transformers types the input embeddings as nn.Module; a causal LM's are an nn.Embedding
        vocab_size = int(cast(torch.nn.Embedding, model.get_input_embeddings()).num_embeddings)
    else:
        vocab_size = int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])
    vocab = SidVocab.from_tokenizer(tokenizer, index.codebook_sizes, vocab_size=vocab_size)
    options = EngineOptions(kind=cast(EngineKind, engine))  # EngineOptions validates the value
    return build_engine(options, model_dir, index, index_dir, vocab, model=model), tokenizer


def run_eval(run: EvalRun, *, progress_factory: Callable[[str, int], Progress] | None = None
             ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate what ``run`` names; returns (entries, meta) for :func:`write_report`."""
    from sid_index.index import SidIndex
    from training.data.sample_format import read_samples
    from training.model import read_train_info

    index = SidIndex.load(run.index_dir)
    targets = load_test_targets(run.samples_dir, index, run.eval.limit)
    entries: list[dict[str, Any]] = []
    seed = None  # the evaluated model's training seed (evaluation itself draws nothing; the bootstrap's is fixed)
    models = [m for m in (run.against_dir, run.model_dir) if m is not None]  # the reference first: the paired base
    for model_dir in models:
        engine, tokenizer = load_engine(model_dir, index, run.index_dir, run.engine)
        passes = 2 if run.eval.hallucination else 1
        prog = progress_factory(f"decoding {model_dir}", passes * len(targets)) if progress_factory else None
        rep = evaluate_engine(engine, tokenizer, targets, run.eval, progress=prog)
        del engine
        info = read_train_info(model_dir)
        seed = (info.get("config") or {}).get("seed") if model_dir == run.model_dir else seed
        entries.append({"name": str(info.get("method", model_dir.name)), "model": str(model_dir),
                        "train_info": {k: info.get(k) for k in ("method", "steps", "model")}, **rep})
    if len(entries) == 2 and entries[0]["name"] == entries[1]["name"]:
        entries[0]["name"] += " (reference)"
    if run.baseline == "popularity":
        train = read_samples(run.samples_dir / "train.parquet")
        entries.append({"name": "popularity", "model": None, **evaluate_popularity(index, train, targets, run.eval)})
        entries.append({"name": "popularity (items, no beam limit)", "model": None,
                        **evaluate_popularity(index, train, targets, run.eval, items_by_sid=False)})
    from training.eval_intervals import add_eval_statistics
    from training.run_info import run_info

    add_eval_statistics(entries)
    meta = {"run_info": run_info(seed), "bootstrap": {"resamples": 2000, "seed": 0, "level": 0.95},
            "index": str(run.index_dir), "samples": str(run.samples_dir), "config": asdict(run.eval),
            "test_sessions": len(targets), "prompt_version": PROMPT_VERSION}
    return entries, meta


def load_test_targets(samples_dir: Path, index: Any, limit: int | None) -> Any:
    """Targets of the first ``limit`` sessions of ``samples_dir/test.parquet``; an empty split is an error."""
    from training.data.sample_format import read_samples

    test = read_samples(samples_dir / "test.parquet")
    if limit is not None:
        test = test[:limit]
    if not test:
        raise ValueError(f"{samples_dir / 'test.parquet'} holds no sessions")
    return targets_from_samples(test, index)
