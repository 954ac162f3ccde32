"""Samples: negatives never contain a positive, streaming does not change the result, stats agree with the
files, the split rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from decoding.request_prompt import PromptConfig
from sid_index.catalog import read_catalog
from sid_index.index import SidIndex
from sid_index.tokens import shared_prefix_len
from training.data.sample_format import iter_sample_batches, read_samples
from training.data.samples import SampleConfig, build_samples
from training.data.schema import Session, read_sessions, write_sessions
from training.data.sim_config import SimConfig
from training.data.simulator import simulate_to_dir

SMALL = {"items": 300, "users": 40, "sessions_per_day": 80, "days": 3}


def _category_index(catalog_path: Path, seed: int = 0) -> SidIndex:
    """Level 0 = the item's category, levels 1-2 random: same-category items share the first SID token."""
    cat = read_catalog(catalog_path)
    names = sorted(set(cat.categories))
    rng = np.random.default_rng(seed)
    codes = np.stack([np.array([names.index(c) for c in cat.categories]), rng.integers(0, 4, cat.num_items),
                      rng.integers(0, 8, cat.num_items)], axis=1)
    return SidIndex.from_codes(cat.item_ids, codes, cat.popularity, cat.categories, (32, 4, 8))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SidIndex]:
    d = tmp_path_factory.mktemp("sim")
    simulate_to_dir(SimConfig(**SMALL, seed=1), d)
    return d, _category_index(d / "catalog.parquet")


def test_negatives_never_contain_a_positive(sim: tuple[Path, SidIndex], tmp_path: Path) -> None:
    d, index = sim
    build_samples(d / "sessions.parquet", index, tmp_path, SampleConfig())
    sessions = {s.session_id: s for s in read_sessions(d / "sessions.parquet")}
    samples = read_samples(tmp_path / "train.parquet") + read_samples(tmp_path / "test.parquet")
    assert len(samples) > 100
    for s in samples:
        sess = sessions[s.session_id]
        assert sess.relevant is not None  # simulated data carries the truth
        assert not set(s.negative_items) & set(s.positive_items)
        assert not set(s.negative_items) & (set(sess.clicked) | set(sess.ordered))
        pos_sids = set(s.positive_codes)
        assert not pos_sids & set(s.negative_codes)  # identical candidates are excluded too
        assert len(s.negative_items) == 3 == len(set(s.negative_items)) == len(set(s.negative_codes))
        # exposed-but-unclicked first, in display order, one per SID
        taken = {index.sid_of_item(p) for p in s.positive_items}
        unclicked = []
        for x in sess.exposed:
            if x not in sess.clicked and index.sid_of_item(x) not in taken:
                unclicked.append(x)
                taken.add(index.sid_of_item(x))
        k = min(3, len(unclicked))
        assert list(s.negative_items[:k]) == unclicked[:k]
        assert s.positive_items == tuple(dict.fromkeys(sess.clicked))
        top = s.positive_items[s.top_index]
        assert top == (sess.ordered[0] if sess.ordered else sess.clicked[0])
        assert s.negative_relevant == tuple(x in sess.relevant for x in s.negative_items)
        assert s.relevant_items == sess.relevant
        assert s.top_codes == index.codes_of_item(top)


def test_random_top_up_when_exposure_runs_out(tmp_path: Path, sim: tuple[Path, SidIndex]) -> None:
    _, index = sim
    items = index.item_ids
    sessions = [Session(session_id=f"s{k}", day=1 + k % 2, user_id="u", query="", exposed=(items[0], items[1]),
                        clicked=(items[0],), ordered=()) for k in range(30)]
    write_sessions(sessions, tmp_path / "s.parquet")
    stats = build_samples(tmp_path / "s.parquet", index, tmp_path / "out", SampleConfig(num_negatives=5))
    for s in read_samples(tmp_path / "out/train.parquet"):
        assert items[0] not in s.negative_items and len(s.negative_items) == 5
        if index.sid_of_item(items[1]) != index.sid_of_item(items[0]):
            assert s.negative_items[0] == items[1]
    assert stats["all"]["negatives_truly_relevant"] is None
    assert stats["ground_truth"] is False
    assert read_samples(tmp_path / "out/train.parquet")[0].negative_relevant is None


def test_streaming_batch_size_does_not_change_samples(sim: tuple[Path, SidIndex], tmp_path: Path) -> None:
    d, index = sim
    a = build_samples(d / "sessions.parquet", index, tmp_path / "a", SampleConfig(batch_size=7))
    b = build_samples(d / "sessions.parquet", index, tmp_path / "b", SampleConfig(batch_size=100000))
    assert a == b
    for split in ("train", "test"):
        assert read_samples(tmp_path / f"a/{split}.parquet") == read_samples(tmp_path / f"b/{split}.parquet")
        assert pq.ParquetFile(tmp_path / f"a/{split}.parquet").metadata.num_row_groups > 1
    batches = list(iter_sample_batches(tmp_path / "a/train.parquet", batch_size=5))
    assert max(len(x) for x in batches) == 5
    assert [s for x in batches for s in x] == read_samples(tmp_path / "a/train.parquet")


def test_stats_agree_with_the_files(sim: tuple[Path, SidIndex], tmp_path: Path) -> None:
    d, index = sim
    stats = build_samples(d / "sessions.parquet", index, tmp_path, SampleConfig())
    assert json.loads((tmp_path / "stats.json").read_text()) == stats
    samples = read_samples(tmp_path / "train.parquet") + read_samples(tmp_path / "test.parquet")
    pairs = [(s.top_codes, c) for s in samples for c in s.negative_codes]
    share1 = sum(shared_prefix_len(a, b) >= 1 for a, b in pairs) / len(pairs)
    share2 = sum(shared_prefix_len(a, b) >= 2 for a, b in pairs) / len(pairs)
    assert all(s.negative_relevant is not None for s in samples)  # simulated data carries the truth
    rel = sum(r for s in samples for r in s.negative_relevant or ()) / len(pairs)
    assert stats["all"]["share_first_token"] == pytest.approx(share1)
    assert stats["all"]["share_first_two_tokens"] == pytest.approx(share2)
    assert stats["all"]["negatives_truly_relevant"] == pytest.approx(rel)
    assert stats["all"]["samples"] == len(samples)
    # the category index puts a session's exposure (one category) on one first token
    assert share1 > 0.5 and 0 < share2 < share1
    assert 0 < rel < 1
    assert stats["categorizer_categories"] > 1
    assert (tmp_path / "query_categorizer.json").is_file()


def test_split_by_day_and_by_file(sim: tuple[Path, SidIndex], tmp_path: Path) -> None:
    d, index = sim
    build_samples(d / "sessions.parquet", index, tmp_path / "day", SampleConfig())
    train, test = read_samples(tmp_path / "day/train.parquet"), read_samples(tmp_path / "day/test.parquet")
    assert {s.day for s in train} == {1, 2} and {s.day for s in test} == {3}
    assert {s.split for s in train} == {"train"} and {s.split for s in test} == {"test"}
    ids = [s.session_id for s in read_sessions(d / "sessions.parquet")]
    split = {sid: ("test" if k % 5 == 0 else "train") for k, sid in enumerate(ids[:100])}
    stats = build_samples(d / "sessions.parquet", index, tmp_path / "file", SampleConfig(split="file"), split)
    assert stats["skipped_no_split"] == len(ids) - 100
    for name in ("train", "test"):
        assert all(split[s.session_id] == name for s in read_samples(tmp_path / f"file/{name}.parquet"))


def test_hard_search_switch(sim: tuple[Path, SidIndex], tmp_path: Path) -> None:
    d, index = sim
    on = build_samples(d / "sessions.parquet", index, tmp_path / "on", SampleConfig())
    off = build_samples(d / "sessions.parquet", index, tmp_path / "off",
                        SampleConfig(prompt=PromptConfig(hard_search=False, max_history=50)))
    assert on["all"]["history_items_in_prompt_per_sample"] < off["all"]["history_items_in_prompt_per_sample"]
    for s in read_samples(tmp_path / "on/train.parquet")[:50]:
        assert s.prompt.startswith("query: ") and s.prompt.endswith("\nitem:")


def test_per_sample_counts_agree_with_a_file(sim: tuple[Path, SidIndex], tmp_path: Path) -> None:
    d, index = sim
    stats = build_samples(d / "sessions.parquet", index, tmp_path, SampleConfig())
    samples = read_samples(tmp_path / "train.parquet")
    n = stats["train"]["samples"]
    assert n == len(samples)
    assert round(stats["train"]["positives_per_sample"] * n) == sum(len(s.positive_items) for s in samples)
    assert round(stats["train"]["negatives_per_sample"] * n) == sum(len(s.negative_items) for s in samples)
    assert stats["train"]["pairs_top_positive_negative"] == sum(len(s.negative_codes) for s in samples)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_negatives must be >= 0"):
        SampleConfig(num_negatives=-1)
    with pytest.raises(ValueError, match="split must be 'day' or 'file'"):
        SampleConfig(split="week")
