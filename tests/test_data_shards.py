"""Sharded samples: N independent shard jobs over a partitioned Parquet dataset give the files one job gives.

The dataset is the simulator's sessions written as ``day=D/part-P.parquet`` (6 files). Each shard job only reads
files from disk and writes its own folder (no state shared between jobs), so running them in one process here is
running them independently; N = 8 > 6 files leaves some shards empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_data_samples import SMALL, _category_index

from decoding.hard_search import QueryCategorizer
from sid_index.index import SidIndex
from training.data.samples import SampleConfig, build_samples, session_files
from training.data.shards import build_samples_sharded, build_shard, fit_shard, merge_fits, merge_shards, shard_files
from training.data.sim_config import SimConfig
from training.data.simulator import simulate_to_dir


def simulated_dataset(d: Path) -> tuple[Path, Path, SidIndex]:
    """Simulate into ``d``: (the single sessions file, the same sessions as a partitioned dataset, the index)."""
    simulate_to_dir(SimConfig(**SMALL, seed=1), d)
    table = pq.read_table(d / "sessions.parquet")
    parts = d / "sessions_by_day"
    for day in sorted(set(table.column("day").to_pylist())):
        rows = table.filter(pc.equal(table.column("day"), day))
        half = rows.num_rows // 2
        for p, piece in enumerate((rows.slice(0, half), rows.slice(half))):
            (parts / f"day={day}").mkdir(parents=True, exist_ok=True)
            pq.write_table(piece, parts / f"day={day}" / f"part-{p}.parquet")
    return d / "sessions.parquet", parts, _category_index(d / "catalog.parquet")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, SidIndex]:
    return simulated_dataset(tmp_path_factory.mktemp("sim"))


def _same_output(a: Path, b: Path) -> None:
    for split in ("train", "test"):
        ta, tb = pq.read_table(a / f"{split}.parquet"), pq.read_table(b / f"{split}.parquet")
        assert ta.num_rows > 10 and ta.equals(tb), split
    assert json.loads((a / "stats.json").read_text()) == json.loads((b / "stats.json").read_text())
    ca, cb = (QueryCategorizer.load(x / "query_categorizer.json") for x in (a, b))
    assert ca.class_counts == cb.class_counts and ca.word_counts == cb.word_counts


def test_shard_files_are_contiguous_and_cover_every_file(dataset: tuple[Path, Path, SidIndex]) -> None:
    files = session_files(dataset[1])
    assert len(files) == 6 and files[0].parent.name == "day=1"
    for n in (1, 2, 4, 8):
        shards = [shard_files(files, k, n) for k in range(n)]
        assert [f for s in shards for f in s] == files  # every file once, in order
    with pytest.raises(ValueError, match="shard must be in"):
        shard_files(files, 3, 3)


@pytest.mark.parametrize("num_shards", [3, 8])
def test_independent_shard_jobs_equal_one_job(dataset: tuple[Path, Path, SidIndex], tmp_path: Path,
                                              num_shards: int) -> None:
    _, parts, index = dataset
    cfg = SampleConfig(batch_size=16)
    build_samples(parts, index, tmp_path / "one", cfg)
    out = tmp_path / "sharded"
    for k in reversed(range(num_shards)):  # any order: the jobs do not depend on each other
        fit_shard(parts, k, num_shards, index, out, cfg)
    merge_fits(out, num_shards)
    for k in reversed(range(num_shards)):
        build_shard(parts, k, num_shards, index, out, cfg)
    merge_shards(parts, out, num_shards, cfg)
    _same_output(tmp_path / "one", out)
    assert not (out / "shards").exists()


def test_partitioned_dataset_gives_the_single_files_samples(dataset: tuple[Path, Path, SidIndex],
                                                            tmp_path: Path) -> None:
    single, parts, index = dataset
    a = build_samples(single, index, tmp_path / "file", SampleConfig())
    b = build_samples_sharded(parts, index, tmp_path / "dir", SampleConfig(), num_shards=2)
    assert a == b
    for split in ("train", "test"):
        ta, tb = (pq.read_table(x / f"{split}.parquet").sort_by("session_id") for x in (tmp_path / "file",
                                                                                        tmp_path / "dir"))
        assert ta.equals(tb)


def test_build_shard_needs_the_merged_categorizer(dataset: tuple[Path, Path, SidIndex], tmp_path: Path) -> None:
    _, parts, index = dataset
    with pytest.raises(ValueError, match="run merge_fits"):
        build_shard(parts, 0, 2, index, tmp_path, SampleConfig())
    with pytest.raises(ValueError, match="run fit_shard for shard 1"):
        fit_shard(parts, 0, 2, index, tmp_path, SampleConfig())
        merge_fits(tmp_path, 2)
