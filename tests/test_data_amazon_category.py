"""Bring your own Amazon category: a dataset built from scratch in the MiniOneRec layout (items.json, train.csv,
valid.csv, test.csv with only the three columns the importer needs, ASIN-like item ids) goes through import,
index, samples and ``radgr eval --baseline popularity``, whose report carries MiniOneRec's protocol.

By hand: train.csv holds 2 rows and valid.csv 1 (3 training-side sessions, day 1); test.csv holds 2 (day 2).
Popularity counts training-side files only: B3 appears 3 times (twice as a target, once in a history), B1 twice,
B2, B4 once each, B5 never; so the popularity baseline ranks B3 first, and the test row whose target is B3 is a
hit at rank 0, while the one whose target is B5 (never seen) is ranked last, at rank 4 (B3, B4, B1, B2, B5):
HR@3 = NDCG@3 = 1/2; HR@5 = HR@10 = 1; NDCG@5 = (1 + 1/log2 6) / 2 = 0.693426.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from sid_index.catalog import read_catalog
from sid_index.index import SidIndex
from training.data.amazon import AmazonImportConfig, import_amazon
from training.data.samples import SampleConfig, build_samples
from training.evaluate import EvalConfig, EvalRun, run_eval

ITEMS = ["B1", "B2", "B3", "B4", "B5"]


def _write_category(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "items.json").write_text(json.dumps(
        {i: {"title": f"guitar string set {i}", "description": "", "brand": "Fender", "categories": ""}
         for i in ITEMS}))
    files = {"train.csv": [("u1", ["B1"], "B3"), ("u2", ["B1", "B2"], "B3")],
             "valid.csv": [("u3", ["B3"], "B4")],
             "test.csv": [("u1", ["B1", "B3"], "B3"), ("u4", ["B4"], "B5")]}
    for name, rows in files.items():
        with (d / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["user_id", "history_item_id", "item_id"])  # the only columns the importer reads
            for user, hist, item in rows:
                w.writerow([user, repr(hist), item])


@pytest.mark.slow
def test_a_new_category_from_scratch_imports_and_evaluates(tmp_path: Path) -> None:
    src, out = tmp_path / "amazon18-musical", tmp_path / "out"
    _write_category(src)
    cat, stats = import_amazon(src, out, AmazonImportConfig())
    assert stats.files == ("train.csv", "valid.csv", "test.csv")
    assert (stats.items, stats.train_sessions, stats.test_sessions) == (5, 3, 2)
    assert dict(zip(cat.item_ids, cat.popularity.tolist(), strict=True)) == {
        "B1": 2.0, "B2": 1.0, "B3": 3.0, "B4": 1.0, "B5": 0.0}
    catalog = read_catalog(out / "catalog.parquet")
    codes = np.array([[i, 0, 0] for i in range(5)])  # one SID per item
    index = SidIndex.from_codes(catalog.item_ids, codes, catalog.popularity, catalog.categories, (8, 4, 4))
    index_dir = index.save(tmp_path / "index")
    build_samples(out / "sessions.parquet", index, tmp_path / "samples", SampleConfig(num_negatives=1))
    entries, meta = run_eval(EvalRun(index_dir=index_dir, samples_dir=tmp_path / "samples", baseline="popularity",
                                     eval=EvalConfig(beam_width=5, top_k=5, hallucination=False)))
    assert meta["test_sessions"] == 2
    m = entries[0]["minionerec"]
    assert (m["examples"], m["skipped"]) == (2, 0)
    assert (m["hr@3"], m["ndcg@3"], m["hr@5"], m["hr@10"]) == pytest.approx((0.5, 0.5, 1.0, 1.0))
    assert m["ndcg@5"] == pytest.approx(0.693426, abs=1e-6)


def test_a_category_without_a_required_column_is_named(tmp_path: Path) -> None:
    src = tmp_path / "d"
    _write_category(src)
    (src / "test.csv").write_text("user_id,item_id\nu1,B1\n")
    with pytest.raises(ValueError, match=r"test.csv: missing column 'history_item_id'"):
        import_amazon(src, tmp_path / "out", AmazonImportConfig())
