"""SidIndex: grouping of colliding items, lookups, save/load round trip and the load-time checks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sid_index.index import IndexFormatError, SidIndex
from sid_index.narrow_arrays import narrow_popularity, pack_uint, unpack_uint, widen_popularity
from sid_index.tokens import sid_string


def _small_index() -> SidIndex:
    # items a and c collide on (1, 2, 3); c is more popular; e ties a on popularity, so row order breaks the tie
    codes = np.array([[1, 2, 3], [0, 0, 1], [1, 2, 3], [0, 0, 0], [1, 2, 3]])
    pop = np.array([1.0, 5.0, 3.0, 0.0, 1.0])
    return SidIndex.from_codes(["a", "b", "c", "d", "e"], codes, pop, ["x", "", "y", "x", "z"], (4, 4, 4))


def test_collisions_share_one_sid_in_popularity_order() -> None:
    ix = _small_index()
    assert ix.num_sids == 3 and ix.num_items == 5
    np.testing.assert_array_equal(ix.sid_codes, [[0, 0, 0], [0, 0, 1], [1, 2, 3]])
    assert ix.items_of_sid("<s0_1><s1_2><s2_3>") == ["c", "a", "e"]
    assert ix.items_of_sid_row(0) == ["d"]
    assert ix.sid_of_item("a") == ix.sid_of_item("c") == ix.sid_of_item("e") == "<s0_1><s1_2><s2_3>"
    assert ix.codes_of_item("b") == (0, 0, 1)


def test_lookups_and_unknowns() -> None:
    ix = _small_index()
    assert ix.item_row("d") == 3 and ix.item_row("zz") is None
    assert ix.sid_row_of_codes([0, 0, 1]) == 1
    assert ix.sid_row_of_codes([3, 3, 3]) == -1 and ix.sid_row_of_codes([9, 0, 0]) == -1
    np.testing.assert_array_equal(ix.sid_rows_of_codes(np.array([[1, 2, 3], [0, 1, 0], [-1, 0, 0]])), [2, -1, -1])
    assert ix.sid_row("<s0_0><s1_0><s2_0>") == 0 and ix.sid_row("<s0_3><s1_3><s2_3>") is None
    assert ix.items_of_sid("<s0_3><s1_3><s2_3>") == []
    with pytest.raises(KeyError, match="'zz'"):
        ix.sid_of_item("zz")
    with pytest.raises(IndexError, match="SID row"):
        ix.sid_str(3)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 5), st.integers(1, 5), st.integers(1, 5),
    st.lists(st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)), min_size=1, max_size=60),
    st.data(),
)
def test_every_item_reachable_and_groups_sorted(s0: int, s1: int, s2: int, raw: list[tuple[int, int, int]],
                                                data: st.DataObject) -> None:
    codes = np.array([(a % s0, b % s1, c % s2) for a, b, c in raw], dtype=np.int64)
    n = codes.shape[0]
    pop = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.5]), min_size=n, max_size=n)))
    ids = [f"item{i}" for i in range(n)]
    ix = SidIndex.from_codes(ids, codes, pop, None, (s0, s1, s2))
    # slow reference: group by codes with a dict
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, c in enumerate(codes.tolist()):
        groups.setdefault(tuple(c), []).append(i)
    assert ix.num_sids == len(groups)
    for key, rows in groups.items():
        want = [ids[i] for i in sorted(rows, key=lambda i: (-pop[i], i))]
        assert ix.items_of_sid(sid_string(key)) == want
    for i in range(n):
        assert ix.codes_of_item(ids[i]) == tuple(codes[i])
    np.testing.assert_array_equal(ix.tables.paths(), ix.sid_codes)


def test_save_load_round_trip(tmp_path: Path) -> None:
    ix = _small_index()
    ix.config["seed"] = 7
    out = ix.save(tmp_path / "ix")
    ix.save(out)  # replacing an existing index works and leaves no temporary directories behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]
    back = SidIndex.load(out)
    for name in ("sid_codes", "sid_item_indptr", "sid_item_rows", "item_sid_row", "item_popularity"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ix, name))
    for name in ("level0", "l1_indptr", "l1_codes", "l2_indptr", "l2_codes"):
        np.testing.assert_array_equal(getattr(back.tables, name), getattr(ix.tables, name))
    assert back.item_ids == ix.item_ids and back.item_category == ix.item_category
    assert back.codebook_sizes == (4, 4, 4) and back.config == {"seed": 7}
    assert [back.sid_of_item(i) for i in ix.item_ids] == [ix.sid_of_item(i) for i in ix.item_ids]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["codebook_sizes"] == [4, 4, 4]
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_load_names_missing_file(tmp_path: Path) -> None:
    out = _small_index().save(tmp_path / "ix")
    (out / "sid_item_rows.npy").unlink()
    with pytest.raises(IndexFormatError, match=re.escape("'sid_item_rows.npy' is missing")):
        SidIndex.load(out)
    with pytest.raises(IndexFormatError, match="does not exist"):
        SidIndex.load(tmp_path / "nope")


def test_load_names_checksum_mismatch(tmp_path: Path) -> None:
    out = _small_index().save(tmp_path / "ix")
    np.save(out / "item_popularity.npy", np.zeros(5), allow_pickle=False)
    with pytest.raises(IndexFormatError, match=re.escape("'item_popularity.npy' fails its sha256")):
        SidIndex.load(out)


def _save_packed(path: Path, values: list[int]) -> None:
    np.save(path, pack_uint(np.array(values, dtype=np.int64)), allow_pickle=False)


def test_load_names_shape_mismatch(tmp_path: Path) -> None:
    out = _small_index().save(tmp_path / "ix")
    # a consistent-looking manifest for a wrongly shaped array: shape check must catch it
    _save_packed(out / "sid_item_rows.npy", [0, 1, 2, 3])
    with pytest.raises(IndexFormatError, match=r"'sid_item_rows.npy' must have shape \[5\]"):
        SidIndex.load(out, verify_checksums=False)
    np.save(out / "sid_item_rows.npy", np.zeros(5, dtype=np.int64), allow_pickle=False)  # not packed
    with pytest.raises(IndexFormatError, match=r"'sid_item_rows\.npy' is not a packed integer"):
        SidIndex.load(out, verify_checksums=False)


@pytest.mark.parametrize(
    ("name", "values", "match"),
    [
        ("sid_item_rows.npy", [3, 1, 0, 2, 2], "'sid_item_rows.npy' must be a permutation"),
        ("sid_item_rows.npy", [3, 1, 0, 2, 4], "'sid_item_rows.npy' does not list a SID's items by popularity"),
        ("sid_item_counts.npy", [1, 1, 2], "'sid_item_counts.npy' must be >= 1 per SID and sum to 5"),
        ("sid_item_counts.npy", [1, 0, 4], "'sid_item_counts.npy' must be >= 1 per SID"),
        ("sid_codes.npy", [0, 0, 1, 0, 0, 0, 1, 2, 3], "'sid_codes.npy' must hold unique SIDs sorted"),
        ("item_key_rows.npy", [0, 0, 1, 2, 3], "'item_key_rows.npy' must be a permutation"),
        ("item_category_index.npy", [0, 0, 0, 0, 9], r"'item_category_index.npy' must be in \[0, 4\)"),
    ],
)
def test_load_rejects_inconsistent_cross_references(tmp_path: Path, name: str, values: list[int], match: str) -> None:
    out = _small_index().save(tmp_path / "ix")
    arr = np.array(values).reshape(-1, 3) if name == "sid_codes.npy" else np.array(values)
    np.save(out / name, pack_uint(arr), allow_pickle=False)
    with pytest.raises(IndexFormatError, match=match):
        SidIndex.load(out, verify_checksums=False)


def test_compact_files_and_narrow_types(tmp_path: Path) -> None:
    """Version 2 stores no derived array and each integer array in the fewest bytes; integer popularity narrows."""
    out = _small_index().save(tmp_path / "ix")
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "manifest.json", "categories.json", "item_ids.marisa", "item_ids.zlib", "item_popularity.npy",
        "sid_codes.npy", "sid_item_counts.npy", "sid_item_rows.npy", "item_key_rows.npy", "item_category_index.npy"])
    arrays = json.loads((out / "manifest.json").read_text())["arrays"]
    assert arrays["sid_codes.npy"] == {"shape": [3, 3], "bytes_per_value": 1}
    assert arrays["item_popularity.npy"]["dtype"] == "uint8"  # 1, 5, 3, 0, 1 are whole numbers
    assert np.load(out / "sid_codes.npy").dtype == np.uint8
    big = SidIndex.from_codes([f"i{k}" for k in range(300)], np.zeros((300, 3), dtype=np.int64),
                              np.linspace(0.1, 1.0, 300), None, (4, 4, 4)).save(tmp_path / "big")
    arrays = json.loads((big / "manifest.json").read_text())["arrays"]
    assert arrays["sid_item_rows.npy"]["bytes_per_value"] == 2 and arrays["item_category_index.npy"] == {
        "shape": [300], "bytes_per_value": 0}
    assert arrays["item_popularity.npy"]["dtype"] == "float64"
    back = SidIndex.load(big)
    np.testing.assert_array_equal(back.item_popularity, np.linspace(0.1, 1.0, 300))
    assert back.items_of_sid("<s0_0><s1_0><s2_0>")[:2] == ["i299", "i298"]


def test_sid_row_is_exact_about_the_string() -> None:
    ix = _small_index()
    assert ix.sid_row("<s0_1><s1_2><s2_3>") == 2
    for bad in ("<s0_01><s1_2><s2_3>", "<s0_1><s1_2>", "x<s0_1><s1_2><s2_3>", "<s1_1><s0_2><s2_3>", "",
                "<s0_9><s1_2><s2_3>"):
        assert ix.sid_row(bad) is None, bad
        assert ix.items_of_sid(bad) == []


def test_load_rejects_wrong_format_version(tmp_path: Path) -> None:
    out = _small_index().save(tmp_path / "ix")
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match=re.escape(
            f"index file {str(out / 'manifest.json')!r}: format_version must be 2, given 99")):
        SidIndex.load(out)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"item_ids": ["a", "a"]}, "item_id 'a' is duplicated at rows 0 and 1"),
        ({"item_ids": ["a", ""]}, "item_id is empty at row 1"),
        ({"item_ids": ["a", "b\x00"]}, r"item_id must not contain a NUL character, given 'b\\x00' at row 1"),
        ({"item_ids": ["a", 3]}, "item_id must be a string, given int at row 1"),
        ({"codes": np.array([[0, 0, 0], [0, 4, 0]])}, r"codes\[:, 1\] must be in \[0, 4\), given 4 at item row 1"),
        ({"codes": np.zeros((3, 3), dtype=np.int64)}, r"codes must have shape \[2, 3\]"),
        ({"popularity": np.array([1.0, np.nan])}, "popularity must be finite and >= 0"),
        ({"categories": ["x"]}, "categories must have 2 entries"),
        ({"codebook_sizes": (4, 0, 4)}, r"codebook_sizes\[1\] must be >= 1"),
    ],
)
def test_from_codes_rejects_bad_input(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"item_ids": ["a", "b"], "codes": np.array([[0, 0, 0], [1, 1, 1]]), "popularity": np.ones(2),
            "categories": None, "codebook_sizes": (4, 4, 4)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SidIndex.from_codes(**args)


def test_failed_save_leaves_the_old_index_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _small_index()
    out = old.save(tmp_path / "ix")
    new = SidIndex.from_codes(["z"], np.array([[1, 1, 1]]), np.ones(1), None, (4, 4, 4))
    import sid_index.index_files as index_files

    def boom(path: object) -> str:
        raise OSError("disk full")

    # fails after every data file is written, before the manifest and the rename
    monkeypatch.setattr(index_files, "sha256_file", boom)
    with pytest.raises(OSError, match="disk full"):
        new.save(out)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]
    assert SidIndex.load(out).item_ids == old.item_ids


def test_extra_json_is_checksummed(tmp_path: Path) -> None:
    out = _small_index().save(tmp_path / "ix", extra_json={"stats.json": {"items": 5}})
    assert json.loads((out / "stats.json").read_text()) == {"items": 5}
    (out / "stats.json").write_text('{"items": 6}')
    with pytest.raises(IndexFormatError, match=re.escape("'stats.json' fails its sha256")):
        SidIndex.load(out)
    with pytest.raises(ValueError, match="extra_json file names"):
        _small_index().save(tmp_path / "iy", extra_json={"../x.json": {}})


@pytest.mark.parametrize("name", ["item_ids.zlib", "item_ids.marisa", "categories.json"])
def test_load_names_corrupt_json_and_trie(tmp_path: Path, name: str) -> None:
    out = _small_index().save(tmp_path / "ix")
    (out / name).write_bytes(b"\x00garbage")
    with pytest.raises(IndexFormatError, match=re.escape(f"index file '{name}' is not")):
        SidIndex.load(out, verify_checksums=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=30), st.integers(0, 2))
def test_pack_uint_round_trip(values: list[int], extra_dims: int) -> None:
    a = np.array(values, dtype=np.int64).reshape(-1, *([1] * extra_dims))
    packed = pack_uint(a)
    assert packed.dtype == np.uint8 and packed.shape[-1] == (max(values).bit_length() + 7) // 8
    np.testing.assert_array_equal(unpack_uint(packed), a)


@pytest.mark.parametrize(("values", "dtype"), [([0.0, 3.0, 255.0], "uint8"), ([1.0, 70000.0], "uint32"),
                                               ([0.5, 2.25], "float32"), ([0.1, 2.0], "float64"),
                                               ([2.0**33], "float32"), ([2.0**33 + 1], "float64")])
def test_popularity_narrows_losslessly(values: list[float], dtype: str) -> None:
    stored = narrow_popularity(np.array(values))
    assert str(stored.dtype) == dtype
    np.testing.assert_array_equal(widen_popularity(stored), values)


@pytest.mark.parametrize("text", ["", "\x00a\x00b\x00c\x00d", "a\x00\x00c\x00d\x00e", "a\x00b\x00c\x00d\x00"])
def test_load_names_empty_item_ids(tmp_path: Path, text: str) -> None:
    import zlib

    out = _small_index().save(tmp_path / "ix")
    (out / "item_ids.zlib").write_bytes(zlib.compress(text.encode()))
    with pytest.raises(IndexFormatError, match=re.escape("'item_ids.zlib' holds an empty item id")):
        SidIndex.load(out, verify_checksums=False)
