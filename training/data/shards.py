"""Samples from sessions larger than memory, in N independent shard jobs whose merged output equals one job's.

The input is a partitioned Parquet dataset (a directory; ``training.data.samples.session_files`` lists its files
in sorted relative-path order). Shard k of N owns a *contiguous* run of those files, balanced by row count
(:func:`shard_files`), so concatenating the shards' outputs in shard order reproduces the one-job order.

Four steps; steps 1 and 3 are the independent jobs (a cluster runs them as tasks: Ray, Spark, a batch queue),
steps 2 and 4 are small reductions. Every step writes its result atomically under ``out_dir`` and can be rerun.

1. :func:`fit_shard` (job k): the query categorizer's naive-Bayes counts on shard k's train sessions →
   ``out_dir/fit/shard-k-of-N.json``. The last day (which decides the split) is read from every file's day
   column, so every job agrees on it without talking to the others.
2. :func:`merge_fits`: the counts summed (``training.data.samples.merge_categorizers``: the same categorizer one
   job fits) → ``out_dir/query_categorizer.json``.
3. :func:`build_shard` (job k): pass 2 of the sample builder over shard k's files with the merged categorizer →
   ``out_dir/shards/shard-k-of-N/{train,test}.parquet`` and its counters. Negatives are drawn from a generator
   seeded by (seed, session id), so a session's sample does not depend on which shard builds it.
4. :func:`merge_shards`: the shards' rows streamed in shard order into ``out_dir/{train,test}.parquet`` (one
   record batch in memory at a time), the counters summed into ``stats.json``. Same files as
   ``training.data.samples.build_samples`` on the whole dataset (tested in ``tests/test_data_shards.py``).

Memory per job is bounded by the builder's batch size and the index, never by the number of sessions.
:func:`build_samples_sharded` runs the four steps one after another in this process (tests, one machine).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from decoding.hard_search import QueryCategorizer
from sid_index.atomic_files import write_json_atomic
from sid_index.index import SidIndex
from training.data.parquet_writer import open_parquet, parquet_errors
from training.data.sample_format import SPLITS, SampleWriter
from training.data.sample_stats import samples_stats
from training.data.samples import (
    SampleConfig,
    dataset_facts,
    fit_categorizer,
    merge_categorizers,
    pool_rows_of,
    session_files,
    write_samples,
)

logger = logging.getLogger(__name__)


def _check(shard: int, num_shards: int) -> None:
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, given {num_shards}")
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), given {shard}")


def _name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def shard_files(files: Sequence[Path], shard: int, num_shards: int) -> list[Path]:
    """Shard ``shard``'s files: a contiguous run, file i going to shard ⌊(rows before i)·N / total rows⌋.

    Every file goes to exactly one shard; with fewer files than shards some shards are empty.
    """
    _check(shard, num_shards)
    rows = [open_parquet(f, "sessions").metadata.num_rows for f in files]
    total = max(sum(rows), 1)
    out: list[Path] = []
    before = 0
    for f, n in zip(files, rows, strict=True):
        if before * num_shards // total == shard:
            out.append(f)
        before += n
    return out


def _split_map_required(cfg: SampleConfig, split_map: dict[str, str] | None) -> None:
    if cfg.split == "file" and split_map is None:
        raise ValueError("SampleConfig.split is 'file' but no split_map was given")


def fit_shard(dataset: str | os.PathLike[str], shard: int, num_shards: int, index: SidIndex, out_dir: str | Path,
              cfg: SampleConfig, split_map: dict[str, str] | None = None) -> Path:
    """Step 1 for shard ``shard``: its categorizer counts and train-pair count → ``fit/shard-k-of-N.json``."""
    _split_map_required(cfg, split_map)
    files = session_files(dataset)
    final_day, _ = dataset_facts(files)
    categorizer, pairs = fit_categorizer(shard_files(files, shard, num_shards), index, cfg, final_day, split_map)
    path = Path(out_dir) / "fit" / f"{_name(shard, num_shards)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"pairs": pairs, "categorizer": json.loads(categorizer.to_json())})
    return path


def merge_fits(out_dir: str | Path, num_shards: int) -> tuple[QueryCategorizer, int]:
    """Step 2: the shards' counts summed → ``query_categorizer.json`` (and ``fit/merged.json`` with the pairs)."""
    out = Path(out_dir)
    parts = []
    pairs = 0
    for k in range(num_shards):
        path = out / "fit" / f"{_name(k, num_shards)}.json"
        if not path.is_file():
            raise ValueError(f"shard fit {path} is missing: run fit_shard for shard {k} first")
        d = json.loads(path.read_text(encoding="utf-8"))
        parts.append(QueryCategorizer.from_json(json.dumps(d["categorizer"])))
        pairs += int(d["pairs"])
    merged = merge_categorizers(parts)
    merged.save(out / "query_categorizer.json")
    write_json_atomic(out / "fit" / "merged.json", {"pairs": pairs, "shards": num_shards})
    return merged, pairs


def build_shard(dataset: str | os.PathLike[str], shard: int, num_shards: int, index: SidIndex, out_dir: str | Path,
                cfg: SampleConfig, split_map: dict[str, str] | None = None,
                pool_item_ids: Sequence[str] | None = None) -> Path:
    """Step 3 for shard ``shard``: its samples and counters → ``shards/shard-k-of-N/`` (needs step 2's output)."""
    _split_map_required(cfg, split_map)
    out = Path(out_dir)
    cat_path = out / "query_categorizer.json"
    if not cat_path.is_file():
        raise ValueError(f"{cat_path} is missing: run merge_fits after every fit_shard first")
    files = session_files(dataset)
    final_day, _ = dataset_facts(files)
    shard_dir = out / "shards" / _name(shard, num_shards)
    shard_dir.mkdir(parents=True, exist_ok=True)
    counters = write_samples(shard_files(files, shard, num_shards), index, shard_dir, cfg,
                             QueryCategorizer.load(cat_path), final_day, split_map, pool_rows_of(index, pool_item_ids))
    write_json_atomic(shard_dir / "counters.json", {k: dict(v) for k, v in counters.items()})
    return shard_dir


def _concat_samples(parts: Sequence[Path], dest: Path, batch_size: int) -> None:
    """Stream every row of ``parts`` (checked samples files), in order, into ``dest`` (atomic)."""
    with SampleWriter(dest) as writer:
        for part in parts:
            batches = open_parquet(part, "samples").iter_batches(batch_size=batch_size)
            while True:
                with parquet_errors(part, "samples"):
                    batch = next(batches, None)
                if batch is None:
                    break
                writer.write_batch(batch)


def merge_shards(dataset: str | os.PathLike[str], out_dir: str | Path, num_shards: int, cfg: SampleConfig,
                 keep_shards: bool = False) -> dict[str, Any]:
    """Step 4: rows in shard order into ``train.parquet``/``test.parquet``, summed counters into ``stats.json``."""
    out = Path(out_dir)
    dirs = [out / "shards" / _name(k, num_shards) for k in range(num_shards)]
    for d in dirs:
        if not (d / "counters.json").is_file():
            raise ValueError(f"shard output {d} is incomplete: run build_shard for it first")
    for split in SPLITS:
        _concat_samples([d / f"{split}.parquet" for d in dirs], out / f"{split}.parquet", cfg.batch_size)
    counters: dict[str, Counter[str]] = {k: Counter() for k in (*SPLITS, "run")}
    for d in dirs:
        for key, values in json.loads((d / "counters.json").read_text(encoding="utf-8")).items():
            counters[key].update(values)
    final_day, truth = dataset_facts(session_files(dataset))
    merged = json.loads((out / "fit" / "merged.json").read_text(encoding="utf-8"))
    stats = samples_stats(counters, cfg, final_day, truth, QueryCategorizer.load(out / "query_categorizer.json"),
                          int(merged["pairs"]))
    write_json_atomic(out / "stats.json", stats, sort_keys=False)
    if not keep_shards:
        shutil.rmtree(out / "shards")
    logger.info("merged %d shards into %s", num_shards, out)
    return stats


def build_samples_sharded(dataset: str | os.PathLike[str], index: SidIndex, out_dir: str | Path, cfg: SampleConfig,
                          num_shards: int, split_map: dict[str, str] | None = None,
                          pool_item_ids: Sequence[str] | None = None, keep_shards: bool = False) -> dict[str, Any]:
    """The four steps in this process, in order; returns the statistics (``stats.json``)."""
    for k in range(num_shards):
        fit_shard(dataset, k, num_shards, index, out_dir, cfg, split_map)
    merge_fits(out_dir, num_shards)
    for k in range(num_shards):
        build_shard(dataset, k, num_shards, index, out_dir, cfg, split_map, pool_item_ids)
    return merge_shards(dataset, out_dir, num_shards, cfg, keep_shards)
