"""Training samples from sessions and a SID index (docs/data.md "Samples"), streamed batch by batch.

Contract of :func:`build_samples` (one sample per session that has a positive known to the index):
- Input: one sessions Parquet file, or a partitioned dataset directory (every ``*.parquet`` under it, in sorted
  relative-path order: :func:`session_files`). Its passes are functions a sharded build reuses
  (:mod:`training.data.shards`): :func:`fit_categorizer`, :func:`write_samples`, and the statistics of
  :mod:`training.data.sample_stats`.
- Split: ``"day"`` — the last day in the file is ``test``, every earlier day ``train``; ``"file"`` — a CSV
  ``session_id,split`` (``train``/``test``) names each session's split, sessions it does not name are skipped.
- Pass 1 fits the :class:`~decoding.hard_search.QueryCategorizer` on the *train* sessions' (query, category of the
  top positive) pairs. Pass 2 builds samples batch by batch (memory bounded by ``batch_size``).
- Prompt: :func:`decoding.request_prompt.prompt_for_request` (hard search on by default, most recent first, capped).
- Positives Y⁺: the clicked items, then ordered items not clicked, that are in the index. ``top_index`` points at
  the first ordered positive if there is one, else the first clicked one (y*).
- Negatives (``num_negatives`` = N = 3): exposed-but-unclicked items in display order first, then random catalog
  items (uniform, without replacement; generator seeded by ``seed`` and the session id, so batch size never changes
  the result). Never a positive; with ``exclude_same_sid`` (default) never an item whose SID equals a positive's
  SID (the candidate sequences would be identical). Fewer than N only when the pool runs out.
- ``negative_relevant`` is the truth (negative ∈ the session's ``relevant``) when the sessions carry it, else null.
- Writes ``train.parquet``, ``test.parquet``, ``stats.json`` and ``query_categorizer.json`` into the output
  directory, each atomically; returns the statistics (see :mod:`training.data.sample_stats` for the keys).

The rows' format (Arrow schema, :class:`~training.data.sample_format.Sample`, reader, writer) is
:mod:`training.data.sample_format`.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from decoding.hard_search import QueryCategorizer
from decoding.prompt import PROMPT_VERSION
from decoding.request_prompt import PromptBuilder, PromptConfig, prompt_for_request
from sid_index.atomic_files import write_json_atomic
from sid_index.index import SidIndex
from training.data.sample_format import SPLITS, Sample, SampleWriter
from training.data.sample_stats import count_sample, samples_stats
from training.data.schema import DEFAULT_BATCH_SIZE, Session, iter_session_batches, last_day, sessions_have_truth

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleConfig:
    """Knobs of :func:`build_samples` (see the module docstring); validated on construction."""

    num_negatives: int = 3  # N, from a secondary source ([S] in docs/alignment.md)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    split: str = "day"  # "day" or "file"
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    exclude_same_sid: bool = True

    def __post_init__(self) -> None:
        if self.num_negatives < 0:
            raise ValueError(f"SampleConfig.num_negatives must be >= 0, given {self.num_negatives}")
        if self.split not in ("day", "file"):
            raise ValueError(f"SampleConfig.split must be 'day' or 'file', given {self.split!r}")
        if self.batch_size < 1:
            raise ValueError(f"SampleConfig.batch_size must be >= 1, given {self.batch_size}")


# ------------------------------------------------------------------------------------------ one session
def _row(index: SidIndex, item: str) -> int:
    """Catalog row of an item that must be in the index (``KeyError`` naming it otherwise)."""
    row = index.item_row(item)
    if row is None:
        raise KeyError(f"item_id {item!r} is not in the index")
    return row


def positives_of(session: Session, index: SidIndex) -> tuple[list[str], int]:
    """(positives known to the index, index of the top-tier positive); ``([], -1)`` when there is none."""
    pos = list(dict.fromkeys([*session.clicked, *session.ordered]))
    pos = [p for p in pos if index.item_row(p) is not None]
    if not pos:
        return [], -1
    ordered = set(session.ordered)
    top = next((k for k, p in enumerate(pos) if p in ordered), 0)
    return pos, top


def session_rng(seed: int, session_id: str) -> random.Random:
    """The generator of one session's random negatives: independent of batch size and order (seeded by a string,
    which Python hashes with SHA-512, so it is stable across runs and platforms)."""
    return random.Random(f"{seed}:{session_id}")


def choose_negatives(
    session: Session, positives: Sequence[str], index: SidIndex, n: int, make_rng: Callable[[], random.Random],
    exclude_same_sid: bool = True, pool_rows: np.ndarray | None = None,
) -> tuple[list[str], int, int]:
    """(negatives, how many came from the exposure, how many exposed items were dropped for sharing a SID with a
    positive or an earlier negative).

    ``make_rng()`` is called (once) only when the exposure runs short and random items are needed."""
    pos_set = set(positives)
    pos_sids = {int(index.item_sid_row[_row(index, p)]) for p in positives}
    chosen: list[str] = []
    seen: set[str] = set()
    neg_sids: set[int] = set()
    dropped = 0
    clicked = set(session.clicked) | set(session.ordered)
    for item in session.exposed:
        if len(chosen) >= n:
            break
        if item in clicked or item in pos_set or item in seen:
            continue
        row = index.item_row(item)
        if row is None:
            continue
        sid = int(index.item_sid_row[row])
        if exclude_same_sid and (sid in pos_sids or sid in neg_sids):
            dropped += 1
            continue
        chosen.append(item)
        seen.add(item)
        neg_sids.add(sid)
    from_exposure = len(chosen)
    pool_size = index.num_items if pool_rows is None else len(pool_rows)
    attempts = 0
    rng = make_rng() if len(chosen) < n else None
    while rng is not None and len(chosen) < n and attempts < 20 * n + 100:
        attempts += 1
        k = rng.randrange(pool_size)
        row = k if pool_rows is None else int(pool_rows[k])
        item = index.item_ids[row]
        sid = int(index.item_sid_row[row])
        if item in pos_set or item in seen or (exclude_same_sid and (sid in pos_sids or sid in neg_sids)):
            continue
        chosen.append(item)
        seen.add(item)
        neg_sids.add(sid)
    return chosen, from_exposure, dropped


def _codes(index: SidIndex, item: str) -> tuple[int, int, int]:
    c = index.sid_codes[int(index.item_sid_row[_row(index, item)])]
    return int(c[0]), int(c[1]), int(c[2])


def build_sample(
    session: Session, split: str, index: SidIndex, categorizer: QueryCategorizer | None, cfg: SampleConfig,
    counters: Counter[str] | None = None, pool_rows: np.ndarray | None = None, prompts: PromptBuilder | None = None,
) -> Sample | None:
    """The sample of one session, ``None`` if it has no positive in the index. ``prompts`` (built on the same
    index, categorizer and ``cfg.prompt``) is the cached fast path of :func:`prompt_for_request`."""
    positives, top = positives_of(session, index)
    if not positives:
        return None
    negatives, n_exp, dropped = choose_negatives(session, positives, index, cfg.num_negatives,
                                                 lambda: session_rng(cfg.seed, session.session_id),
                                                 cfg.exclude_same_sid, pool_rows)
    build = (prompts.build(session.query, session.profile, session.history) if prompts is not None else
             prompt_for_request(session.query, session.profile, session.history, index, categorizer, cfg.prompt))
    pos_codes = tuple(_codes(index, p) for p in positives)
    neg_codes = tuple(_codes(index, x) for x in negatives)
    relevant = set(session.relevant) if session.relevant is not None else None
    neg_rel = tuple(x in relevant for x in negatives) if relevant is not None else None
    sample = Sample(
        session_id=session.session_id, day=session.day, split=split, prompt=build.text,
        prompt_version=PROMPT_VERSION, positive_items=tuple(positives), positive_codes=pos_codes, top_index=top,
        negative_items=tuple(negatives), negative_codes=neg_codes, negative_relevant=neg_rel,
        relevant_items=tuple(session.relevant or ()), relevant_grades=tuple(session.relevant_grades or ()),
    )
    if counters is not None:
        count_sample(counters, sample, cfg.num_negatives, n_exp, dropped, build)
    return sample


# ------------------------------------------------------------------------------------------ the whole run
def read_split_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``session_id,split`` CSV (with that header) → mapping; splits must be ``train`` or ``test``."""
    out: dict[str, str] = {}
    with Path(path).open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"session_id", "split"} <= set(reader.fieldnames):
            raise ValueError(f"split file {str(path)!r} needs the columns 'session_id' and 'split'")
        for row_no, rec in enumerate(reader):
            if rec["split"] not in SPLITS:
                raise ValueError(f"split file {str(path)!r} row {row_no} field 'split': must be one of {SPLITS}, "
                                 f"given {rec['split']!r}")
            out[rec["session_id"]] = rec["split"]
    return out


def _split_of(session: Session, cfg: SampleConfig, final_day: int, split_map: dict[str, str] | None) -> str | None:
    if cfg.split == "file":
        return None if split_map is None else split_map.get(session.session_id)
    return "test" if session.day == final_day else "train"


def fit_categorizer_from_sessions(
    sessions_path: str | os.PathLike[str], index: SidIndex, cfg: SampleConfig, final_day: int,
    split_map: dict[str, str] | None,
) -> tuple[QueryCategorizer, int]:
    """Fit on the train split's (query, category of top positive) pairs; returns (categorizer, pairs used).

    Reads only the five columns it needs; rows with nulls are skipped here (the full pass names them)."""
    cat = QueryCategorizer()
    used = 0
    columns = ["session_id", "day", "query", "clicked", "ordered"]
    for batch in pq.ParquetFile(sessions_path).iter_batches(batch_size=cfg.batch_size, columns=columns):
        pairs = []
        for sid, day, query, clicked, ordered in zip(*(batch.column(c).to_pylist() for c in columns), strict=True):
            if not query or sid is None or day is None or clicked is None or ordered is None:
                continue
            s = Session(session_id=sid, day=day, user_id="", query=query, clicked=tuple(clicked),
                        ordered=tuple(ordered))
            if _split_of(s, cfg, final_day, split_map) != "train":
                continue
            pos, top = positives_of(s, index)
            if pos:
                category = index.item_category[_row(index, pos[top])]
                if category:
                    pairs.append((query, category))
        cat.update(pairs)
        used += len(pairs)
    return cat, used


def session_files(sessions_path: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files of a sessions input: the file itself, or every ``*.parquet`` under a directory (a
    partitioned dataset, e.g. ``day=3/part-0.parquet``), sorted by relative path: that order is the dataset's."""
    path = Path(sessions_path)
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"), key=lambda f: f.relative_to(path).as_posix())
        if not files:
            raise ValueError(f"sessions directory {str(path)!r} holds no *.parquet file")
        return files
    return [path]


def dataset_facts(files: Sequence[Path]) -> tuple[int, bool]:
    """(last day over every file, whether the sessions carry truth); every file must agree on the truth columns."""
    days = [d for d in (last_day(f) for f in files) if d is not None]
    if not days:
        raise ValueError(f"sessions {', '.join(str(f) for f in files[:3])} hold no session")
    truths = {sessions_have_truth(f) for f in files}
    if len(truths) > 1:
        raise ValueError("sessions files disagree: some carry the truth columns, some do not")
    return max(days), truths.pop()


def fit_categorizer(files: Sequence[Path], index: SidIndex, cfg: SampleConfig, final_day: int,
                    split_map: dict[str, str] | None) -> tuple[QueryCategorizer, int]:
    """:func:`fit_categorizer_from_sessions` over several files, counts summed (:func:`merge_categorizers`)."""
    fits = [fit_categorizer_from_sessions(f, index, cfg, final_day, split_map) for f in files]
    return merge_categorizers([c for c, _ in fits]), sum(n for _, n in fits)


def merge_categorizers(parts: Sequence[QueryCategorizer]) -> QueryCategorizer:
    """One categorizer whose counts are the sums of ``parts``' (naive Bayes counts add: the same predictions as a
    categorizer fitted on all their pairs)."""
    out = QueryCategorizer()
    for part in parts:
        for cat, n in part.class_counts.items():
            out.class_counts[cat] = out.class_counts.get(cat, 0) + n
        for cat, words in part.word_counts.items():
            wc = out.word_counts.setdefault(cat, {})
            for w, n in words.items():
                wc[w] = wc.get(w, 0) + n
    return out


def pool_rows_of(index: SidIndex, pool_item_ids: Sequence[str] | None) -> np.ndarray | None:
    """Index rows of the random-negative pool (ids missing from the index ignored); None for the whole catalog."""
    if pool_item_ids is None:
        return None
    rows = [index.item_row(i) for i in pool_item_ids]
    pool_rows = np.asarray(sorted({r for r in rows if r is not None}), dtype=np.int64)
    if len(pool_rows) == 0:
        raise ValueError("pool_item_ids: none of the catalog's items is in the index")
    return pool_rows


def write_samples(
    files: Sequence[Path], index: SidIndex, out: Path, cfg: SampleConfig, categorizer: QueryCategorizer,
    final_day: int, split_map: dict[str, str] | None = None, pool_rows: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Counter[str]]:
    """Pass 2 over ``files`` in order: ``out/train.parquet`` and ``out/test.parquet`` (atomic), and the counters
    ``{"train": ..., "test": ..., "run": sessions / skipped_no_positive / skipped_no_split}`` (they add across
    shards; :func:`training.data.sample_stats.samples_stats` turns them into the statistics)."""
    use_cat = categorizer if cfg.prompt.hard_search else None
    prompts = PromptBuilder(index, use_cat, cfg.prompt)
    counters: dict[str, Counter[str]] = {s: Counter() for s in (*SPLITS, "run")}
    run = counters["run"]
    writers = {s: SampleWriter(out / f"{s}.parquet") for s in SPLITS}
    predicted: dict[str, str | None] = {}  # query → predicted category, for the accuracy statistic
    ok = False
    try:
        for path in files:
            for batch in iter_session_batches(path, cfg.batch_size):
                for s in batch:
                    run["sessions"] += 1
                    split = _split_of(s, cfg, final_day, split_map)
                    if split is None:
                        run["skipped_no_split"] += 1
                        continue
                    sample = build_sample(s, split, index, use_cat, cfg, counters[split], pool_rows, prompts)
                    if sample is None:
                        run["skipped_no_positive"] += 1
                        continue
                    writers[split].add(sample, cfg.batch_size)
                    top_row = index.item_row(sample.positive_items[sample.top_index])
                    top_category = index.item_category[top_row] if top_row is not None else ""
                    if s.query and top_category:
                        guess = predicted[s.query] if s.query in predicted else categorizer.predict(s.query)
                        if len(predicted) < 100_000:  # bounded cache
                            predicted[s.query] = guess
                        counters[split]["categorized"] += 1
                        counters[split]["categorized_right"] += int(guess == top_category)
                if progress is not None:
                    progress(len(batch))
        ok = True
    finally:
        for w in writers.values():
            w.close(ok)
    return counters


def build_samples(
    sessions_path: str | os.PathLike[str], index: SidIndex, out_dir: str | os.PathLike[str], cfg: SampleConfig,
    split_map: dict[str, str] | None = None, pool_item_ids: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Build samples (module docstring) in one job; returns the statistics also written to ``stats.json``.

    ``sessions_path`` is a Parquet file or a partitioned dataset directory (:func:`session_files`; the sharded
    build of :mod:`training.data.shards` gives the same output). ``pool_item_ids`` restricts random negatives to
    those catalog items (ids missing from the index are ignored).
    """
    if cfg.split == "file" and split_map is None:
        raise ValueError("SampleConfig.split is 'file' but no split_map was given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = session_files(sessions_path)
    final_day, truth = dataset_facts(files)
    categorizer, cat_pairs = fit_categorizer(files, index, cfg, final_day, split_map)
    counters = write_samples(files, index, out, cfg, categorizer, final_day, split_map,
                             pool_rows_of(index, pool_item_ids), progress)
    categorizer.save(out / "query_categorizer.json")
    stats = samples_stats(counters, cfg, final_day, truth, categorizer, cat_pairs)
    write_json_atomic(out / "stats.json", stats, sort_keys=False)
    logger.info("wrote %d train and %d test samples to %s", counters["train"]["samples"], counters["test"]["samples"],
                out)
    return stats
