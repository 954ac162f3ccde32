"""The simulator: deterministic for a seed, ground truth consistent, knobs move what they should."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sid_index.catalog import Catalog, read_catalog, write_catalog
from training.data.schema import Session, read_sessions
from training.data.sim_config import SimConfig
from training.data.simulator import SimStats, add_typo, iter_simulated_sessions, simulate_to_dir
from training.data.world import generate_world, world_from_catalog

SMALL = {"items": 400, "users": 60, "sessions_per_day": 150, "days": 3}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = simulate_to_dir(SimConfig(**SMALL, seed=3), tmp_path / "a")
    b = simulate_to_dir(SimConfig(**SMALL, seed=3), tmp_path / "b")
    c = simulate_to_dir(SimConfig(**SMALL, seed=4), tmp_path / "c")
    assert a == b
    assert read_sessions(tmp_path / "a/sessions.parquet") == read_sessions(tmp_path / "b/sessions.parquet")
    assert _digest(tmp_path / "a/catalog.parquet") == _digest(tmp_path / "b/catalog.parquet")
    assert read_sessions(tmp_path / "a/sessions.parquet") != read_sessions(tmp_path / "c/sessions.parquet")
    assert c.sessions == a.sessions


def test_sessions_and_truth_are_consistent(tmp_path: Path) -> None:
    cfg = SimConfig(**SMALL)
    stats = simulate_to_dir(cfg, tmp_path)
    sessions = read_sessions(tmp_path / "sessions.parquet")
    cat = read_catalog(tmp_path / "catalog.parquet")
    assert cat.num_items == cfg.items and len(sessions) == stats.sessions == 450
    assert sorted({s.day for s in sessions}) == [1, 2, 3]
    known = set(cat.item_ids)
    for s in sessions:
        assert s.relevant is not None and s.relevant_grades is not None  # simulated data carries the truth
        assert len(s.exposed) == cfg.exposure_length == len(set(s.exposed))
        assert 1 <= len(s.relevant) <= cfg.relevant_breadth
        assert set(s.relevant) <= known and set(s.history) <= known
        assert all(g in (1, 2, 3) for g in s.relevant_grades)
        assert len(s.ordered) <= 1
    # the pseudo-negative rate is recomputed from the written truth
    unclicked = [(x, s.relevant or ()) for s in sessions for x in s.exposed if x not in s.clicked]
    rate = sum(x in relevant for x, relevant in unclicked) / len(unclicked)
    assert rate == pytest.approx(stats.pseudo_negative_rate)
    assert 0 < rate < 1


def test_users_history_grows_with_their_clicks(tmp_path: Path) -> None:
    simulate_to_dir(SimConfig(**SMALL), tmp_path)
    by_user: dict[str, list[Session]] = {}
    for s in read_sessions(tmp_path / "sessions.parquet"):
        by_user.setdefault(s.user_id, []).append(s)
    checked = 0
    for sessions in by_user.values():
        for prev, nxt in itertools.pairwise(sessions):
            if prev.clicked and len(prev.history) + len(prev.clicked) <= 50:
                assert nxt.history[-len(prev.clicked):] == prev.clicked
                checked += 1
    assert checked > 20


def test_position_bias_raises_the_pseudo_negative_rate() -> None:
    world = generate_world(SimConfig(**SMALL))
    rates = []
    for bias in (0.0, 2.0):
        out: list[SimStats] = []
        for _ in iter_simulated_sessions(world, SimConfig(**SMALL, position_bias=bias), stats_out=out):
            pass
        rates.append(out[0].pseudo_negative_rate)
    assert rates[0] < rates[1]


def test_titles_carry_the_taxonomy() -> None:
    world = generate_world(SimConfig(items=300))
    for i in range(0, 300, 17):
        name = world.type_names[int(world.item_type[i])][0]
        assert name.lower() in world.titles[i].lower()
        assert world.item_brand_name[i] in world.titles[i]
    assert len(set(world.catalog_category)) == 24


def test_real_catalog_derives_categories(tmp_path: Path) -> None:
    titles = [f"{w} {k}" for k in range(20) for w in ("red cordless drill", "blue cordless drill",
                                                       "nitrile exam gloves", "latex exam gloves",
                                                       "pla printer filament", "petg printer filament")]
    ids = [f"p{i}" for i in range(len(titles))]
    write_catalog(Catalog(ids, titles, [""] * len(ids), [""] * len(ids), np.zeros(len(ids))),
                  tmp_path / "real.parquet")
    cfg = SimConfig(users=10, sessions_per_day=40, days=2, real_categories=3, real_items_per_type=20)
    stats = simulate_to_dir(cfg, tmp_path / "out", real_catalog=tmp_path / "real.parquet")
    assert stats.categories == 3 and "derived from titles" in stats.derivation
    cat = read_catalog(tmp_path / "out/catalog.parquet")
    assert cat.item_ids == ids
    by_word: dict[str, set[str]] = {}
    for t, c in zip(cat.titles, cat.categories, strict=True):
        by_word.setdefault(t.split()[1], set()).add(c)
    # items of one kind land in one derived category
    assert all(len(v) == 1 for v in by_word.values())
    assert len(read_sessions(tmp_path / "out/sessions.parquet")) == 80


def test_world_from_catalog_rejects_tiny() -> None:
    with pytest.raises(ValueError, match="at least 2 items"):
        world_from_catalog(["a"], ["t"], [""], None, SimConfig())


@pytest.mark.parametrize(("field", "value"), [("days", 0), ("position_bias", -1.0), ("typo_rate", 1.5)])
def test_config_validation_names_field(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=f"SimConfig.{field}"):
        SimConfig(**kwargs)


def test_typo_changes_one_word() -> None:
    rng = np.random.default_rng(0)
    out = {add_typo("extension", rng) for _ in range(30)}
    assert "extension" not in out or len(out) > 1
    assert all(abs(len(w) - len("extension")) <= 1 for w in out)
    assert add_typo("pla", rng) == "pla"
