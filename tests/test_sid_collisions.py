"""Collision-free SIDs (``sid_index.collisions``), reference SIDs as an index, and a collision-free index served.

The hand-made tree (d = 2): level-0 centroids (0, 0) and (100, 0); level-1 (0, 0) and (0, 10); level-2 (j, 0) for
j = 0..3. Items at x = (t, 0) all get codes (0, 0, 0); their last-level residual is (t, 0), so the score of level-2
code j is (t − j)².
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_bundle_fixtures import make_tiny_inputs

from sid_index.build import IndexConfig, build_index, index_stats
from sid_index.catalog import Catalog
from sid_index.collisions import resolve_collisions
from sid_index.index import SidIndex
from sid_index.reference_sids import read_reference_codes, reference_index
from sid_index.rqkmeans import Codebooks, RQKMeansConfig, assign_codes

TREE = Codebooks.plain([np.array([[0.0, 0.0], [100.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 10.0]]),
                        np.array([[j, 0.0] for j in range(4)])])


def _points(*ts: float) -> np.ndarray:
    return np.array([[t, 0.0] for t in ts], dtype=np.float32)


def test_movers_take_the_nearest_free_code_in_their_prefix_then_the_next_level1_code() -> None:
    """Items t = 0.2, 0, 0.1, -0.05, 0.3 share (0, 0, 0). Keeper: t = 0 (score 0). Movers nearest first:
    -0.05 (0.0025) → j = 1 (j = 0 taken; (−0.05 − 1)² = 1.1025 is the next best); 0.1 (0.01) → j = 2 (1, 0 taken);
    0.2 → j = 3; 0.3: prefix (0, 0) is full, so level 1 goes to its next-best code 1 (residual (0.3, −10)), whose
    best level-2 code is 0 → (0, 1, 0). A sixth item far away (t = 100.5) never collided and keeps its codes."""
    x = np.vstack([_points(0.2, 0.0, 0.1, -0.05, 0.3), [[100.5, 0.0]]]).astype(np.float32)
    codes = assign_codes(x, TREE)
    assert codes[:5].tolist() == [[0, 0, 0]] * 5 and codes[5].tolist() == [1, 0, 0]
    new, rep = resolve_collisions(x, codes, TREE)
    assert new.tolist() == [[0, 0, 3], [0, 0, 0], [0, 0, 2], [0, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert (rep.items, rep.colliding_items, rep.moved) == (6, 5, 4)
    assert (rep.same_prefix, rep.new_level1, rep.new_level0) == (3, 1, 0)
    assert codes[:5].tolist() == [[0, 0, 0]] * 5  # the input is not modified


def test_a_full_level0_code_sends_movers_to_the_next_level0_code() -> None:
    """Codebooks 2 × 1 × 2: level-0 code 0 holds 2 SIDs. Four items at t = 0, 0.1, 0.2, 0.3 → (0, 0, 0), (0, 0, 1),
    then level-0 code 1 (residual (t − 100, 0): level-2 scores (t − 100 − j)², j = 0 best, then 1)."""
    cb = Codebooks.plain([TREE.centroids[0], TREE.centroids[1][:1], TREE.centroids[2][:2]])
    x = _points(0.0, 0.1, 0.2, 0.3)
    new, rep = resolve_collisions(x, assign_codes(x, cb), cb)
    assert new.tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1]]
    assert (rep.same_prefix, rep.new_level1, rep.new_level0) == (1, 0, 2)


def test_more_items_than_sids_is_an_error() -> None:
    cb = Codebooks.plain([TREE.centroids[0][:1], TREE.centroids[1][:1], TREE.centroids[2][:2]])
    x = _points(0.0, 0.1, 0.2)
    with pytest.raises(ValueError, match=r"3 items cannot all have unique SIDs.*hold only 2"):
        resolve_collisions(x, assign_codes(x, cb), cb)


def _catalog(n: int) -> Catalog:
    return Catalog(item_ids=[f"i{i}" for i in range(n)], titles=[f"t{i}" for i in range(n)], brands=[""] * n,
                   categories=[""] * n, popularity=np.arange(n, dtype=np.float64) % 5)


def _crowded(n: int, seed: int) -> np.ndarray:
    """Embeddings in 3 tight clusters: residual k-means with small codebooks must collide."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 8)) * 10
    return (centers[rng.integers(0, 3, n)] + 0.01 * rng.normal(size=(n, 8))).astype(np.float32)


def test_build_with_unique_sids_gives_one_item_per_sid_and_keeps_prefixes() -> None:
    cat, x = _catalog(60), _crowded(60, seed=0)
    rq = RQKMeansConfig(codebook_sizes=(4, 4, 8), seed=1)
    plain = build_index(cat, x, IndexConfig(rq))
    unique = build_index(cat, x, IndexConfig(rq, unique_sids=True))
    assert index_stats(plain)["unique_sids"] < 60  # the catalog does collide
    stats = index_stats(unique)
    assert stats["unique_sids"] == 60 and stats["largest_group"] == 1
    rep = unique.config["collisions"]
    assert rep["moved"] == 60 - index_stats(plain)["unique_sids"]
    before = plain.sid_codes[plain.item_sid_row]
    after = unique.sid_codes[unique.item_sid_row]
    changed = np.flatnonzero((before != after).any(axis=1))
    assert changed.size == rep["moved"]
    same_prefix = (before[changed, :2] == after[changed, :2]).all(axis=1)
    assert int(same_prefix.sum()) == rep["same_prefix"]
    # every SID of the plain index keeps exactly one of its items (groups are never emptied)
    assert set(map(tuple, before.tolist())) <= set(map(tuple, after.tolist()))
    # deterministic: the same build twice gives the same codes
    again = build_index(cat, x, IndexConfig(rq, unique_sids=True))
    np.testing.assert_array_equal(again.sid_codes[again.item_sid_row], after)
    assert unique.config["index"]["unique_sids"] is True


def test_reference_sids_load_as_an_index(tmp_path: Path) -> None:
    cat = _catalog(4)
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"i0": ["<a_1>", "<b_2>", "<c_3>"], "i1": ["<a_1>", "<b_2>", "<c_3>"],
                                "i2": ["<a_0>", "<b_0>", "<c_9>"], "i3": ["<a_7>", "<b_0>", "<c_0>"],
                                "other": ["<a_0>", "<b_0>", "<c_0>"]}))
    assert read_reference_codes(path, ["i2", "i0"]).tolist() == [[0, 0, 9], [1, 2, 3]]
    index = reference_index(cat, path, (8, 4, 10))
    assert index.num_sids == 3 and index.items_of_sid("<s0_1><s1_2><s2_3>") == ["i1", "i0"]  # popularity 1 > 0
    with pytest.raises(ValueError, match=r"codes\[:, 2\] must be in \[0, 4\), given 9"):
        reference_index(cat, path, (8, 4, 4))  # code 9 does not fit a 4-code last level
    path.write_text(json.dumps({"i0": ["<a_1>", "<b_2>", "c_3"]}))
    with pytest.raises(ValueError, match="item 'i0': token 'c_3'"):
        read_reference_codes(path, ["i0"])
    path.write_text(json.dumps({"i0": ["<a_1>", "<b_2>", "<c_3>"]}))
    with pytest.raises(ValueError, match=r"1 catalog items have no reference SID, e\.g\. 'i1'"):
        read_reference_codes(path, ["i0", "i1"])


@pytest.mark.slow
def test_a_collision_free_index_is_served_one_item_per_sid(tmp_path: Path) -> None:
    """Bundle → server with a collision-free index built from crowded embeddings: beam 64 covers every SID, so
    the response ranks all 24 items, each SID carrying exactly one item."""
    from decoding.bundle import write_bundle
    from server.app import create_app
    from server.settings import ServerSettings

    tiny = make_tiny_inputs(tmp_path / "inputs", n_items=24)
    cat = Catalog(item_ids=tiny.item_ids, titles=tiny.item_ids, brands=[""] * 24,
                  categories=["drill" if i % 2 == 0 else "tape" for i in range(24)],
                  popularity=np.arange(24, dtype=np.float64))
    index = build_index(cat, _crowded(24, seed=2), IndexConfig(RQKMeansConfig(codebook_sizes=(4, 4, 4), seed=0),
                                                              unique_sids=True))
    assert index.num_sids == 24
    index_dir = index.save(tmp_path / "index")
    assert SidIndex.load(index_dir).num_sids == 24
    bundle = write_bundle(tmp_path / "bundle", tiny.model_dir, index_dir, tiny.categorizer_json,
                          {"method": "sft", "data": "synthetic-tiny", "steps": 0, "metrics": {}}, name="unique")
    with TestClient(create_app(ServerSettings(bundle=bundle, engine="torch"))) as client:
        r = client.post("/retrieve", json={"query": "drill", "history": tiny.item_ids[:3], "top_k": 24,
                                           "beam_width": 64})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["sids"]) == 24 and all(len(s["item_ids"]) == 1 for s in body["sids"])
    assert sorted(h["item_id"] for h in body["items"]) == sorted(tiny.item_ids)
