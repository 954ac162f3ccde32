"""Amazon import: any category in the MiniOneRec layout, expansion of histories, the day split, end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from sid_index.catalog import read_catalog
from sid_index.index import SidIndex
from training.data.amazon import AmazonImportConfig, import_amazon
from training.data.sample_format import read_samples
from training.data.samples import SampleConfig, build_samples
from training.data.schema import read_sessions

REAL = Path(__file__).resolve().parents[1] / "../shared/datasets/amazon18-industrial"


def _write_layout(d: Path) -> None:
    """A made-up 'Toys' category in the same layout as the Industrial export."""
    d.mkdir(parents=True)
    items = {str(i): {"title": f"toy {i}", "description": "", "brand": "Acme" if i % 2 else "", "categories": ""}
             for i in range(6)}
    (d / "items.json").write_text(json.dumps(items))
    cols = ["user_id", "history_item_title", "item_title", "history_item_id", "item_id", "history_item_sid",
            "item_sid"]
    for name, rows in (("valid.csv", [("A1", "[0, 1, 2]", 3), ("A2", "[4]", 5)]),
                       ("test.csv", [("A1", "[0, 1, 2, 3]", 4)])):
        with (d / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for user, hist, item in rows:
                w.writerow([user, "[]", "t", hist, item, "[]", "<a_1><b_1><c_1>"])


def test_import_another_category_with_expansion(tmp_path: Path) -> None:
    _write_layout(tmp_path / "amazon18-toys")
    cat, stats = import_amazon(tmp_path / "amazon18-toys", tmp_path / "out", AmazonImportConfig(expand_histories=True))
    assert cat.num_items == 6 and read_catalog(tmp_path / "out/catalog.parquet").item_ids == [str(i) for i in range(6)]
    sessions = {s.session_id: s for s in read_sessions(tmp_path / "out/sessions.parquet")}
    # valid row 0: history [0,1,2] → 3, expanded into [0]→1 and [0,1]→2 (min_history 1); test rows never expand
    assert set(sessions) == {"valid-0", "valid-0-x1", "valid-0-x2", "valid-1", "test-0"}
    assert sessions["valid-0-x2"].history == ("0", "1") and sessions["valid-0-x2"].ordered == ("2",)
    assert sessions["valid-0"].clicked == sessions["valid-0"].ordered == ("3",)
    assert sessions["valid-0"].exposed == () and sessions["valid-0"].query == ""
    assert sessions["test-0"].day == 2 and sessions["valid-1"].day == 1
    assert stats.expanded_sessions == 2 and stats.test_sessions == 1 and stats.train_sessions == 4
    # popularity counts training-side files only (item 4 appears in valid history and the test target)
    pop = dict(zip(cat.item_ids, cat.popularity.tolist(), strict=True))
    assert pop["4"] == 1.0 and pop["3"] == 1.0 and pop["0"] == 1.0


def test_import_names_unknown_items(tmp_path: Path) -> None:
    _write_layout(tmp_path / "d")
    text = (tmp_path / "d/test.csv").read_text().replace("[0, 1, 2, 3]", "[0, 99]")
    (tmp_path / "d/test.csv").write_text(text)
    with pytest.raises(ValueError, match=r"test.csv row 0 field 'history_item_id': item '99'"):
        import_amazon(tmp_path / "d", tmp_path / "out", AmazonImportConfig())


def _random_index(catalog_path: Path) -> SidIndex:
    cat = read_catalog(catalog_path)
    codes = np.random.default_rng(0).integers(0, 16, size=(cat.num_items, 3))
    return SidIndex.from_codes(cat.item_ids, codes, cat.popularity, cat.categories, (16, 16, 16))


@pytest.mark.slow
def test_real_amazon_import_then_samples(tmp_path: Path) -> None:
    _, stats = import_amazon(REAL, tmp_path, AmazonImportConfig())  # expansion: see the made-up category above
    assert stats.items == 3686 and stats.test_sessions == 4533 and stats.train_sessions == 4532
    index = _random_index(tmp_path / "catalog.parquet")
    s = build_samples(tmp_path / "sessions.parquet", index, tmp_path / "samples", SampleConfig())
    assert s["test"]["samples"] == 4533 and s["train"]["samples"] == stats.train_sessions
    assert s["all"]["negatives_from_exposure_share"] == 0.0  # no exposures: all negatives are random
    assert s["all"]["negatives_truly_relevant"] is None
    sample = read_samples(tmp_path / "samples/test.parquet")[0]
    assert sample.prompt.startswith("query: \nprofile: \nhistory: <s0_")
    assert len(sample.negative_items) == 3 and sample.positive_items[0] not in sample.negative_items
