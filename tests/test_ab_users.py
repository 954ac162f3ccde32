"""The A/B replay's user side: the simulator's click and order model as a function, the world rebuilt from a
``radgr data simulate`` directory, fresh users with their own random streams, truth of returned items, arms."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.ab_test import arm_of
from training.ab_users import Population, load_world
from training.data.sim_config import SimConfig
from training.data.simulator import click_and_order, examination, simulate_to_dir

SMALL = SimConfig(items=200, users=20, sessions_per_day=40, days=1, seed=5)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    simulate_to_dir(SMALL, out)
    return out


def test_examination_and_click_rates_match_the_model() -> None:
    """examination(3, 1) = 1, 1/2, 1/3. With grades 3, 2, 0.5 and affinity 1 the click probability of rank k is
    exam·attract = 1·0.70, 0.5·0.50, (1/3)·0.08 = 0.700, 0.250, 0.0267; affinity 2 caps grade 3 at 0.95.
    With one clickable item (grade 3, the others never examined) it is ordered with probability 0.55 of its clicks.
    Seeded, 20,000 draws: within ±0.015."""
    assert examination(3, 1.0) == pytest.approx([1.0, 0.5, 1 / 3])
    assert examination(2, 0.0) == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(0)
    grades, exam = np.array([3.0, 2.0, 0.5]), examination(3, 1.0)
    clicks = np.zeros(3)
    for _ in range(20_000):
        idx, _best = click_and_order(grades, np.ones(3), exam, rng)
        clicks[idx] += 1
    assert clicks / 20_000 == pytest.approx([0.70, 0.25, 0.08 / 3], abs=0.015)
    capped = sum(len(click_and_order(np.array([3.0]), np.array([2.0]), exam, rng)[0]) for _ in range(20_000))
    assert capped / 20_000 == pytest.approx(0.95, abs=0.01)
    outcomes = [click_and_order(np.array([3.0, 3.0]), np.ones(2), np.array([1.0, 0.0]), rng) for _ in range(20_000)]
    n_click = sum(len(c) for c, _ in outcomes)
    n_order = sum(b is not None for _, b in outcomes)
    assert all(b in (None, 0) for _, b in outcomes)
    assert n_order / n_click == pytest.approx(0.55, abs=0.015)
    empty, best = click_and_order(np.zeros(0), np.zeros(0), exam, rng)
    assert len(empty) == 0 and best is None


def test_load_world_rebuilds_the_simulated_world(world_dir: Path, tmp_path: Path) -> None:
    world, cfg = load_world(world_dir)
    assert cfg == SMALL and world.num_items == 200
    with pytest.raises(ValueError, match="not found"):
        load_world(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "catalog.parquet").write_bytes((world_dir / "catalog.parquet").read_bytes())
    doc = json.loads((world_dir / "sim_stats.json").read_text())
    doc["config"]["seed"] = 6  # another world, same catalog file
    (other / "sim_stats.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="does not match"):
        load_world(other)


def test_population_streams_are_per_user_and_deterministic(world_dir: Path) -> None:
    world, cfg = load_world(world_dir)
    p1, p2 = Population(world, cfg, 50, seed=3), Population(world, cfg, 50, seed=3)
    assert len(p1) == 50 and p1.user_id(7) == p2.user_id(7)
    # user 7's searches do not depend on what other users did before
    for i in (0, 1, 2, 8, 9):
        p1.intent(i)
    a, b = p1.intent(7), p2.intent(7)
    assert a.query == b.query and np.array_equal(a.relevant_rows, b.relevant_rows)
    other = Population(world, cfg, 50, seed=4)
    assert [other.intent(i).query for i in range(20)] != [p2.intent(i).query for i in range(20)]
    with pytest.raises(ValueError, match=r"Population\.users must be >= 1"):
        Population(world, cfg, 0, seed=0)


def test_grades_request_body_and_response(world_dir: Path) -> None:
    world, cfg = load_world(world_dir)
    pop = Population(world, cfg, 5, seed=0)
    intent = pop.intent(0)
    same_type = np.flatnonzero(world.item_type == intent.target_type)
    other = np.flatnonzero(world.item_type != intent.target_type)[:2]
    not_relevant = [r for r in same_type.tolist() if r not in set(intent.relevant_rows.tolist())]
    rows = np.array([*intent.relevant_rows[:2].tolist(), *not_relevant[:1], *other.tolist()], dtype=np.int64)
    expected = [*intent.relevant_grade[:2].astype(float).tolist(), *([0.5] if not_relevant else []), 0.0, 0.0]
    assert pop.grades(intent, rows).tolist() == expected

    body = pop.request_body(0, intent, top_k=10, beam_width=32)
    user = pop.sim.users[0]
    assert body["query"] == intent.query and body["user_id"] == user.user_id
    assert body["history"] == user.history[-cfg.history_cap:] and (body["top_k"], body["beam_width"]) == (10, 32)
    assert body["profile"] == user.profile

    # the relevant items first, then ids the world does not know (grade 0, counted); only exposure_length shown
    shown = [world.item_ids[int(r)] for r in intent.relevant_rows] + [f"nope{i}" for i in range(20)]
    before = len(user.history)
    resp = pop.respond(0, intent, shown)
    assert resp.shown == cfg.exposure_length
    assert resp.unknown_items == cfg.exposure_length - len(intent.relevant_rows)
    assert not any(c.startswith("nope") for c in resp.clicked_ids)
    assert user.history[before:] == list(resp.clicked_ids) and resp.clicks == len(resp.clicked_ids)
    nothing = pop.respond(0, pop.intent(0), [])  # a failed request shows nothing
    assert (nothing.shown, nothing.clicks, nothing.ordered) == (0, 0, False)


def test_arm_of_is_a_stated_salted_hash_with_a_fair_split() -> None:
    ids = [f"u{i:05d}" for i in range(10_000)]
    arms = [arm_of(u, "radgr-ab-v1") for u in ids]
    assert arms == [arm_of(u, "radgr-ab-v1") for u in ids]
    share_b = Counter(arms)["B"] / len(ids)
    assert 0.48 < share_b < 0.52
    other = [arm_of(u, "another-salt") for u in ids]
    moved = sum(x != y for x, y in zip(arms, other, strict=True)) / len(ids)
    assert 0.45 < moved < 0.55  # a new salt re-randomises
    # recomputable by anyone: parity of the first 8 bytes of SHA-256("<salt>:<user_id>")
    import hashlib

    digest = hashlib.sha256(b"radgr-ab-v1:u00042").digest()
    assert arm_of("u00042", "radgr-ab-v1") == "AB"[int.from_bytes(digest[:8], "big") % 2]
