"""The streamed (larger-than-memory) index build: same SIDs as the in-memory build, chunked reads, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sid_index.build import IndexConfig, build_index
from sid_index.catalog import Catalog
from sid_index.index import SidIndex
from sid_index.rqkmeans import RQKMeansConfig
from sid_index.stream_build import NpyRows, build_index_streamed


def _mixture(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, d)) * 3
    return (centers[rng.integers(0, 12, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_streamed_build_gives_the_in_memory_sids(tmp_path: Path) -> None:
    """Same sample rows and seed, so the same codebooks; chunk boundaries (700 rows) differ from faiss' batches."""
    n = 3000
    x = _mixture(n, 16, seed=4)
    np.save(tmp_path / "emb.npy", x)
    ids = [f"i{i}" for i in range(n)]
    pop = np.arange(n, dtype=np.float64) % 11
    cats = ["a" if i % 3 else "b" for i in range(n)]
    cfg = IndexConfig(RQKMeansConfig(codebook_sizes=(16, 8, 8), seed=5, train_points_per_centroid=64,
                                     assign_batch_size=256))
    assert cfg.rq.train_sample_size(n) == 1024 < n  # the codebooks really train on a sample
    ref = build_index(Catalog(ids, ids, [""] * n, cats, pop), x, cfg)
    got = build_index_streamed(tmp_path / "emb.npy", ids, pop, cats, cfg, tmp_path / "ix", chunk_rows=700,
                               show_progress=False)
    loaded = SidIndex.load(tmp_path / "ix")
    for ix in (got, loaded):
        np.testing.assert_array_equal(ix.sid_codes, ref.sid_codes)
        np.testing.assert_array_equal(ix.sid_item_rows, ref.sid_item_rows)
        assert ix.item_category == cats and ix.item_ids == ids
    assert [loaded.sid_of_item(i) for i in ids] == [ref.sid_of_item(i) for i in ids]
    assert ref.num_sids > 100  # a real grouping, not everything in a few SIDs


def test_a_float16_file_gives_the_sids_of_its_values_in_float32(tmp_path: Path) -> None:
    """Half the bytes to read: the streamed build of a float16 file equals the in-memory build of the same values
    widened to float32 (chunks of 512 rows: several read-aheads, the last chunk short)."""
    n = 2100
    x16 = (_mixture(n, 16, seed=7) / 8).astype(np.float16)
    np.save(tmp_path / "emb16.npy", x16)
    ids = [f"i{i}" for i in range(n)]
    pop = np.ones(n)
    cfg = IndexConfig(RQKMeansConfig(codebook_sizes=(16, 8, 8), seed=1, train_points_per_centroid=64))
    cats = ["c"] * n
    ref = build_index(Catalog(ids, ids, [""] * n, cats, pop), x16.astype(np.float32), cfg)
    got = build_index_streamed(tmp_path / "emb16.npy", ids, pop, cats, cfg, None, chunk_rows=512,
                               show_progress=False)
    np.testing.assert_array_equal(got.sid_codes, ref.sid_codes)
    np.testing.assert_array_equal(got.sid_item_rows, ref.sid_item_rows)
    with NpyRows(tmp_path / "emb16.npy") as src:
        assert src.dtype == np.float16 and src.read(5, 9).dtype == np.float32


def test_npy_rows_reads_blocks_and_scattered_rows(tmp_path: Path) -> None:
    x = np.arange(60, dtype=np.float64).reshape(20, 3)
    np.save(tmp_path / "x.npy", x)
    with NpyRows(tmp_path / "x.npy") as src:
        assert src.shape == (20, 3)
        np.testing.assert_array_equal(src.read(5, 9), x[5:9])
        assert src.read(5, 9).dtype == np.float32
        rows = np.array([0, 1, 2, 7, 12, 13, 19])
        np.testing.assert_array_equal(src.take(rows), x[rows])
        with pytest.raises(IndexError, match=r"0 <= lo <= hi <= 20"):
            src.read(3, 21)
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="must hold a 2-D C-order float array"):
        NpyRows(tmp_path / "bad.npy")
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 8])
    with pytest.raises(ValueError, match=r"'.*cut\.npy' is not a complete \.npy array"):
        NpyRows(tmp_path / "cut.npy")


def test_streamed_build_names_bad_rows(tmp_path: Path) -> None:
    x = _mixture(300, 8, seed=1)
    x[250, 3] = np.nan
    np.save(tmp_path / "emb.npy", x)
    ids = [f"i{i}" for i in range(300)]
    cfg = IndexConfig(RQKMeansConfig(codebook_sizes=(4, 4, 4), train_points_per_centroid=8))
    with pytest.raises(ValueError, match=r"NaN or inf at row 250 \(item_id 'i250'\)"):
        build_index_streamed(tmp_path / "emb.npy", ids, np.ones(300), None, cfg, tmp_path / "ix",
                             chunk_rows=64, show_progress=False)
    with pytest.raises(ValueError, match="rows must equal the catalog's 299 items, given 300"):
        build_index_streamed(tmp_path / "emb.npy", ids[:299], np.ones(299), None, cfg, tmp_path / "ix",
                             show_progress=False)
    assert not (tmp_path / "ix").exists()
