"""End to end from the CLI: simulate → index build (precomputed text embeddings) → samples; import-amazon."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from sid_index.catalog import read_catalog
from training.data.sample_format import read_samples
from training.data.schema import read_sessions
from training.data.world import title_words


def _text_embeddings(titles: list[str], dim: int = 64) -> np.ndarray:
    """A stand-in for MiniLM: hashed bag of title words (similar titles → near vectors), L2-normalised."""
    x = np.zeros((len(titles), dim), dtype=np.float32)
    for i, t in enumerate(titles):
        for w in title_words(t):
            x[i, sum(map(ord, w)) % dim] += 1.0
    unit: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    return unit


@pytest.mark.slow
def test_simulate_index_samples_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = tmp_path / "sim"
    args = ["data", "simulate", "--out", str(sim), "--items", "400", "--users", "50", "--sessions-per-day", "120",
            "--days", "3", "--seed", "5"]
    assert main(args) == 0
    assert "pseudo_negative_rate" in capsys.readouterr().out
    cat = read_catalog(sim / "catalog.parquet")
    np.save(tmp_path / "emb.npy", _text_embeddings(cat.titles))
    assert main(["index", "build", "--catalog", str(sim / "catalog.parquet"), "--out", str(sim / "index"),
                 "--codebooks", "8,8,8", "--embeddings", str(tmp_path / "emb.npy")]) == 0
    assert main(["data", "samples", "--sessions", str(sim / "sessions.parquet"), "--index", str(sim / "index"),
                 "--catalog", str(sim / "catalog.parquet"), "--out", str(sim / "samples"), "--batch-size", "50"]) == 0
    out = capsys.readouterr().out
    assert "share_first_token" in out
    stats = json.loads((sim / "samples/stats.json").read_text())
    assert stats["train"]["samples"] > 0 and stats["test"]["samples"] > 0
    assert stats["all"]["share_first_token"] > 0
    assert 0 < stats["all"]["negatives_truly_relevant"] < 1
    test = read_samples(sim / "samples/test.parquet")
    assert {s.day for s in test} == {3}
    # the switch: no hard search, other N and history cap
    assert main(["data", "samples", "--sessions", str(sim / "sessions.parquet"), "--index", str(sim / "index"),
                 "--out", str(sim / "samples2"), "--no-hard-search", "--num-negatives", "2", "--max-history",
                 "3"]) == 0
    stats2 = json.loads((sim / "samples2/stats.json").read_text())
    assert stats2["hard_search"] is False and stats2["num_negatives"] == 2
    assert all(len(s.negative_items) == 2 for s in read_samples(sim / "samples2/train.parquet"))
    assert stats2["all"]["history_items_in_prompt_per_sample"] <= 3


def test_samples_split_file_and_conflict(tmp_path: Path) -> None:
    sim = tmp_path / "sim"
    assert main(["data", "simulate", "--out", str(sim), "--items", "200", "--users", "20", "--sessions-per-day",
                 "30", "--days", "2"]) == 0
    cat = read_catalog(sim / "catalog.parquet")
    codes = np.stack([np.arange(cat.num_items) % 4, np.arange(cat.num_items) % 5, np.arange(cat.num_items) % 7], 1)
    from sid_index.index import SidIndex

    SidIndex.from_codes(cat.item_ids, codes, cat.popularity, cat.categories, (4, 5, 7)).save(sim / "index")
    ids = [s.session_id for s in read_sessions(sim / "sessions.parquet")]
    (tmp_path / "split.csv").write_text("session_id,split\n" + "".join(
        f"{sid},{'test' if k % 3 == 0 else 'train'}\n" for k, sid in enumerate(ids)))
    base = ["data", "samples", "--sessions", str(sim / "sessions.parquet"), "--index", str(sim / "index"),
            "--out", str(tmp_path / "s")]
    assert main([*base, "--split-file", str(tmp_path / "split.csv"), "--split-by-day"]) == 2
    assert main([*base, "--split-file", str(tmp_path / "split.csv")]) == 0
    assert json.loads((tmp_path / "s/stats.json").read_text())["split"] == "file"


def test_import_amazon_cli(tmp_path: Path) -> None:
    from test_data_amazon import _write_layout

    _write_layout(tmp_path / "d")
    assert main(["data", "import-amazon", "--dataset", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
                 "--expand-histories"]) == 0
    assert len(read_sessions(tmp_path / "o/sessions.parquet")) == 5
