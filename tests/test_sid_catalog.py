"""Catalog: round trips through every format, validation errors naming field and row, the Amazon converter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sid_index.catalog import (
    Catalog,
    amazon_popularity_from_csv,
    catalog_from_amazon_items,
    item_texts,
    read_catalog,
    write_catalog,
)

AMAZON = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "amazon18-industrial"


def _cat() -> Catalog:
    return Catalog(item_ids=["007", "b", "c"], titles=["Drill, 18V", "Tape \"duct\"", "Gloves"],
                   brands=["Acme", "", "Ünï"], categories=["tools", "", ""], popularity=np.array([3.0, 0.0, 1.5]))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    cat = _cat()
    path = write_catalog(cat, tmp_path / f"cat{suffix}")
    back = read_catalog(path)
    assert back.item_ids == ["007", "b", "c"]
    assert back.titles == cat.titles and back.brands == cat.brands and back.categories == cat.categories
    np.testing.assert_array_equal(back.popularity, cat.popularity)
    checksum = [f"cat{suffix}.sha256"] if suffix == ".parquet" else []  # Parquet gets a .sha256 beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"cat{suffix}", *checksum]


def test_optional_columns_default(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text('{"item_id": "x", "title": "T"}\n\n{"item_id": "y", "title": "U", "brand": null}\n')
    cat = read_catalog(p)
    assert cat.brands == ["", ""] and cat.categories == ["", ""]
    np.testing.assert_array_equal(cat.popularity, [0.0, 0.0])


def test_item_texts() -> None:
    assert item_texts(_cat()) == ["Drill, 18V. Brand: Acme. Category: tools", 'Tape "duct"', "Gloves. Brand: Ünï"]


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"item_id": "a", "title": "t"}', '{"item_id": "a", "title": "u"}'], "'a' is duplicated at rows 0 and 1"),
        (['{"item_id": "", "title": "t"}'], "item_id is empty at row 0"),
        (['{"item_id": "a", "title": "t"}', '{"title": "u"}'], "item_id is empty at row 1"),
        (['{"item_id": 5, "title": "t"}'], "item_id must be a string, given int 5 at row 0"),
        (['{"item_id": "a", "title": "t"}', '{"item_id": "b", "title": "  "}'], "title is empty at row 1 .item_id 'b'"),
        (['{"item_id": "a", "title": "t", "popularity": -1}'], "popularity must be finite and >= 0, given -1"),
        (['{"item_id": "a", "title": "t", "popularity": "many"}'], "popularity must be a number, given 'many'"),
        (['{"item_id": "a", "brand": "t"}'], "has no column 'title'"),
        (['{"item_id": "a", "title": "t", "brand": 3}'], "brand must be a string, given int 3 at row 0"),
        (["not json"], "line 1 is not valid JSON"),
    ],
)
def test_bad_rows_name_field_and_row(tmp_path: Path, lines: list[str], match: str) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        read_catalog(p)


def test_csv_empty_title_and_bad_suffix(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("item_id,title\n1,ok\n2,\n")
    with pytest.raises(ValueError, match="title is empty at row 1"):
        read_catalog(p)
    with pytest.raises(ValueError, match="must end in one of"):
        read_catalog(tmp_path / "c.txt")


def test_amazon_converter(tmp_path: Path) -> None:
    items = {"10": {"title": " A saw ", "brand": "B", "categories": ""},
             "11": {"title": "Nails", "brand": "", "categories": [["Tools", "Nails"]]}}
    p = tmp_path / "items.json"
    p.write_text(json.dumps(items))
    inter = tmp_path / "valid.csv"
    inter.write_text('user_id,history_item_id,item_id\nu,"[10, 11, 10]",11\n')
    cat = catalog_from_amazon_items(p, popularity=amazon_popularity_from_csv([inter]))
    assert cat.item_ids == ["10", "11"] and cat.titles == ["A saw", "Nails"]
    assert cat.categories == ["", "Tools > Nails"]
    np.testing.assert_array_equal(cat.popularity, [2.0, 2.0])
    with pytest.raises(ValueError, match="names item_id '99'"):
        catalog_from_amazon_items(p, popularity={"99": 1.0})


def test_amazon_real_items() -> None:
    cat = catalog_from_amazon_items(AMAZON / "items.json")
    assert cat.num_items == 3686 and cat.item_ids[0] == "0"
