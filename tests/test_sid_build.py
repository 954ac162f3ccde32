"""Residual k-means and index building: reference agreement, determinism, prefix tables = SID set, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sid_index.build import IndexConfig, build_index, index_stats
from sid_index.catalog import Catalog
from sid_index.embeddings import read_embeddings
from sid_index.index import SidIndex
from sid_index.rqkmeans import (
    Codebooks,
    RQKMeansConfig,
    assign_codes,
    assign_codes_reference,
    fit_balance_bias,
    train_codebooks,
)


def _catalog(n: int, pop: np.ndarray | None = None) -> Catalog:
    return Catalog(item_ids=[f"i{i}" for i in range(n)], titles=[f"t{i}" for i in range(n)], brands=[""] * n,
                   categories=["c" if i % 2 else "" for i in range(n)],
                   popularity=pop if pop is not None else np.arange(n, dtype=np.float64) % 7)


def _mixture(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)) * 4
    return (centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_batched_faiss_assignment_matches_reference() -> None:
    x = _mixture(400, 16, 10, seed=1)
    cb = train_codebooks(x, RQKMeansConfig(codebook_sizes=(8, 6, 5), seed=3))
    assert [c.shape for c in cb.centroids] == [(8, 16), (6, 16), (5, 16)]
    assert all(not b.any() for b in cb.biases)
    np.testing.assert_array_equal(assign_codes(x, cb, batch_size=37), assign_codes_reference(x, cb))


def test_biased_assignment_matches_reference() -> None:
    """The bias rides in an extra coordinate for faiss; the reference adds it to the distances directly."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    cents = [rng.normal(size=(k, 8)).astype(np.float32) for k in (7, 5, 3)]
    biases = [rng.uniform(-2, 2, size=k).astype(np.float32) for k in (7, 5, 3)]
    cb = Codebooks(tuple(cents), tuple(biases))
    got = assign_codes(x, cb, batch_size=64)
    np.testing.assert_array_equal(got, assign_codes_reference(x, cb))
    assert not np.array_equal(got, assign_codes_reference(x, Codebooks.plain(cents)))


def test_balance_bias_equalises_cluster_sizes() -> None:
    # 400 rows all nearest to centroid 0 (distance 0 vs 1 + small jitter): biases must spread them over 4
    rng = np.random.default_rng(0)
    d = np.ones((400, 4), dtype=np.float32) + rng.uniform(0, 0.5, size=(400, 4)).astype(np.float32)
    d[:, 0] = rng.uniform(0, 0.2, size=400)
    counts = np.bincount(np.argmin(d + fit_balance_bias(d), axis=1), minlength=4)
    assert counts.min() >= 80 and counts.max() <= 120


def test_balanced_uses_codes_more_evenly() -> None:
    # 40 tight clusters: after level 0 the residuals are mostly isotropic noise, where plain k-means codes collapse
    # onto the centroids nearest the origin
    x = _mixture(2000, 32, 40, seed=3)
    plain = build_index(_catalog(2000), x, IndexConfig(RQKMeansConfig(codebook_sizes=(16, 16, 16))))
    bal = build_index(_catalog(2000), x, IndexConfig(RQKMeansConfig(codebook_sizes=(16, 16, 16), balanced=True)))
    ent_plain = [lv["entropy_normalized"] for lv in index_stats(plain)["levels"]]
    ent_bal = [lv["entropy_normalized"] for lv in index_stats(bal)["levels"]]
    assert all(e > 0.99 for e in ent_bal) and ent_plain[2] < 0.9
    assert bal.num_sids > plain.num_sids
    assert bal.config["index"]["balanced"] is True


def test_same_seed_same_sids_other_seed_differs() -> None:
    x = _mixture(1500, 24, 30, seed=2)
    cat = _catalog(1500)
    a = build_index(cat, x, IndexConfig(RQKMeansConfig(codebook_sizes=(16, 8, 8), seed=5)))
    b = build_index(cat, x, IndexConfig(RQKMeansConfig(codebook_sizes=(16, 8, 8), seed=5)))
    c = build_index(cat, x, IndexConfig(RQKMeansConfig(codebook_sizes=(16, 8, 8), seed=6)))
    assert [a.sid_of_item(i) for i in cat.item_ids] == [b.sid_of_item(i) for i in cat.item_ids]
    assert [a.sid_of_item(i) for i in cat.item_ids] != [c.sid_of_item(i) for i in cat.item_ids]


def test_training_on_a_sample_still_assigns_everything() -> None:
    x = _mixture(3000, 16, 20, seed=4)
    cfg = IndexConfig(RQKMeansConfig(codebook_sizes=(8, 8, 8), train_points_per_centroid=20, assign_batch_size=500))
    assert cfg.rq.train_sample_size(3000) == 160
    ix = build_index(_catalog(3000), x, cfg)
    assert ix.num_items == 3000 and int(np.diff(ix.sid_item_indptr).sum()) == 3000
    assert ix.config["index"]["train_points_per_centroid"] == 20


def _children_reference(sids: set[tuple[int, int, int]], prefix: tuple[int, ...]) -> list[int]:
    return sorted({s[len(prefix)] for s in sids if s[: len(prefix)] == prefix})


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=80),
)
def test_prefix_tables_describe_exactly_the_sid_set(sizes: tuple[int, int, int],
                                                     raw: list[tuple[int, int, int]]) -> None:
    codes = np.array([(a % sizes[0], b % sizes[1], c % sizes[2]) for a, b, c in raw], dtype=np.int64)
    n = codes.shape[0]
    ix = SidIndex.from_codes([f"x{i}" for i in range(n)], codes, np.ones(n), None, sizes)
    sid_set = {tuple(c) for c in codes.tolist()}
    t = ix.tables
    paths = [tuple(p) for p in t.paths().tolist()]
    assert set(paths) == sid_set and len(paths) == len(sid_set)
    # a leaf's position is its SID row
    assert all(ix.sid_row_of_codes(p) == r for r, p in enumerate(paths))
    # children gathered from the CSR arrays equal the children enumerated from the SID set
    assert t.level0.tolist() == _children_reference(sid_set, ())
    for i, c0 in enumerate(t.level0.tolist()):
        assert t.l1_codes[t.l1_indptr[i] : t.l1_indptr[i + 1]].tolist() == _children_reference(sid_set, (c0,))
        for j in range(t.l1_indptr[i], t.l1_indptr[i + 1]):
            c1 = int(t.l1_codes[j])
            got = t.l2_codes[t.l2_indptr[j] : t.l2_indptr[j + 1]].tolist()
            assert got == _children_reference(sid_set, (c0, c1))


@settings(max_examples=8, deadline=None)
@given(st.integers(20, 120), st.integers(0, 1000))
def test_built_index_tables_match_sids(n: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    ix = build_index(_catalog(n), x, IndexConfig(RQKMeansConfig(codebook_sizes=(4, 4, 3), seed=seed % 7)))
    np.testing.assert_array_equal(ix.tables.paths(), ix.sid_codes)
    assert {tuple(ix.codes_of_item(i)) for i in ix.item_ids} == {tuple(r) for r in ix.sid_codes.tolist()}


def test_index_stats_numbers() -> None:
    # 4 items, 3 SIDs: (0,0,0) x2, (0,1,0), (1,1,1)
    codes = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 1, 1]])
    ix = SidIndex.from_codes(["a", "b", "c", "d"], codes, np.ones(4), None, (2, 4, 2))
    s = index_stats(ix)
    assert s["items"] == 4 and s["unique_sids"] == 3 and s["largest_group"] == 2
    assert s["collision_rate"] == pytest.approx(0.25) and s["items_sharing_a_sid"] == pytest.approx(0.5)
    lv0, lv1 = s["levels"][0], s["levels"][1]
    # level 0 codes over items: 0,0,0,1 -> p = (3/4, 1/4); H = 0.8113 bits; log2(2) = 1
    assert lv0["codes_used"] == 2 and lv0["utilization"] == 1.0
    assert lv0["entropy_bits"] == pytest.approx(0.811278, abs=1e-6)
    # level 1: codes 0,0,1,1 of 4 -> 2 used (50%), H = 1 bit, normalised 1/2
    assert lv1["utilization"] == 0.5 and lv1["entropy_normalized"] == pytest.approx(0.5)
    assert s["prefixes"] == {"depth1": 2, "depth2": 3, "depth3": 3}


def test_codebook_larger_than_items_is_an_error() -> None:
    x = _mixture(50, 8, 3, seed=0)
    with pytest.raises(ValueError, match=r"codebook_sizes\[0\] = 64 exceeds the 50 items to cluster"):
        build_index(_catalog(50), x, IndexConfig(RQKMeansConfig(codebook_sizes=(64, 4, 4))))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"codebook_sizes": (8, 0, 8)}, r"codebook_sizes\[1\] must be >= 1, given 0"),
        ({"codebook_sizes": (8, 8)}, "codebook_sizes must have 3 entries"),
        ({"kmeans_iters": 0}, "kmeans_iters must be >= 1"),
        ({"assign_batch_size": 0}, "assign_batch_size must be >= 1"),
        ({"max_train_points": 4}, "max_train_points must be >= the largest codebook"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"balance_rounds": 0}, "balance_rounds must be >= 1"),
    ],
)
def test_rqkmeans_config_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RQKMeansConfig(**kwargs)


def test_index_config_holds_the_kmeans_settings() -> None:
    cfg = IndexConfig(RQKMeansConfig(codebook_sizes=(8, 4, 2), seed=3))
    assert cfg.codebook_sizes == (8, 4, 2) and cfg.to_dict()["codebook_sizes"] == [8, 4, 2]
    assert cfg.to_dict()["seed"] == 3 and IndexConfig().rq == RQKMeansConfig()
    not_a_config: Any = {"seed": 1}
    with pytest.raises(TypeError, match="rq must be an RQKMeansConfig"):
        IndexConfig(not_a_config)


def test_nan_embeddings_and_mismatched_rows(tmp_path: Path) -> None:
    x = _mixture(30, 4, 2, seed=0)
    x[17, 2] = np.nan
    with pytest.raises(ValueError, match=r"embeddings hold NaN or inf at row 17 \(item_id 'i17'\)"):
        build_index(_catalog(30), x, IndexConfig(RQKMeansConfig(codebook_sizes=(2, 2, 2))))
    np.save(tmp_path / "e.npy", x)
    with pytest.raises(ValueError, match="NaN or inf at row 17"):
        read_embeddings(tmp_path / "e.npy", [f"i{i}" for i in range(30)])
    with pytest.raises(ValueError, match="embeddings rows must equal the catalog's 31 items, given 30"):
        read_embeddings(tmp_path / "e.npy", [f"i{i}" for i in range(31)])
    with pytest.raises(ValueError, match="embeddings rows must equal the catalog's 29 items, given 30"):
        build_index(_catalog(29), x, IndexConfig(RQKMeansConfig(codebook_sizes=(2, 2, 2))))


def test_parquet_embeddings_are_reordered_by_item_id(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    pq.write_table(pa.table({"item_id": ["c", "a", "b"], "embedding": [list(r) for r in emb.tolist()]}),
                   tmp_path / "e.parquet")
    got = read_embeddings(tmp_path / "e.parquet", ["a", "b", "c"])
    np.testing.assert_array_equal(got, emb[[1, 2, 0]])
    with pytest.raises(ValueError, match="no row for item_id 'z'"):
        read_embeddings(tmp_path / "e.parquet", ["a", "b", "z"])
    pq.write_table(pa.table({"item_id": ["a", "a", "b"], "embedding": [list(r) for r in emb.tolist()]}),
                   tmp_path / "d.parquet")
    with pytest.raises(ValueError, match="item_id 'a' is duplicated at rows 0 and 1"):
        read_embeddings(tmp_path / "d.parquet", ["a", "b", "c"])
    pq.write_table(pa.table({"item_id": ["a", "b", "c"], "embedding": [[1.0, 2.0], [1.0], [3.0, 4.0]]}),
                   tmp_path / "r.parquet")
    with pytest.raises(ValueError, match="embedding must have the same length in every row, given 1 at row 1"):
        read_embeddings(tmp_path / "r.parquet", ["a", "b", "c"])
