"""Simulated users replayed against a served ranking: the online half of the search-log simulator.

Contract:
- :func:`load_world` rebuilds a simulated world from the directory ``radgr data simulate`` wrote: the config from
  ``sim_stats.json``, the world from it (generated taxonomy), or from ``catalog.parquet`` for a world that sat on a
  real catalog; the world's item ids and titles must equal the catalog's, or it raises ``ValueError``.
- :class:`Population` draws ``users`` fresh users from the world's user model (the simulator's
  :class:`~training.data.simulator.Simulation` with ``users`` replaced and seeded by ``seed``; the world itself is
  unchanged). User ``i``'s sessions draw from their own generator ``default_rng([seed, 4, i])``, so a user's whole
  trajectory depends only on the seed and on the rankings shown to them, never on the order in which concurrent
  requests complete.
- :meth:`Population.intent` draws what user ``i`` asks for next (query and truth, as the simulator does);
  :meth:`Population.request_body` is the ``POST /retrieve`` body for it (query, profile, user id, the user's
  history most recent last, capped at the world's ``history_cap``; ``top_k``, ``beam_width``).
- :meth:`Population.respond` applies the simulator's examination, click and order model
  (:func:`~training.data.simulator.click_and_order`) to the first ``exposure_length`` items a server returned:
  an item's grade is its relevance grade if it is among the intent's relevant items, 0.5 if it is of the target's
  product type, else 0 (the truth the simulator's ranker sees); ids the world does not know count as grade 0 and
  are counted. Clicked items join the user's history, as in the simulator.
- A session whose request failed shows nothing (:meth:`Population.respond` with no items): no click, no order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sid_index.catalog import read_catalog
from training.data.sim_config import SimConfig
from training.data.simulator import Intent, Simulation, click_and_order, examination
from training.data.world import World, generate_world, world_from_catalog

SIM_STATS_FILE = "sim_stats.json"
CATALOG_FILE = "catalog.parquet"
GENERATED_PREFIX = "generated"  # SimStats.derivation of a world from the built-in taxonomy starts with this


def load_world(world_dir: str | Path) -> tuple[World, SimConfig]:
    """The world and config of a ``radgr data simulate`` output directory (see the module docstring)."""
    root = Path(world_dir)
    stats_path = root / SIM_STATS_FILE
    if not stats_path.is_file():
        raise ValueError(f"world: {stats_path} not found (the output directory of radgr data simulate)")
    doc = json.loads(stats_path.read_text())
    cfg = SimConfig(**doc["config"])
    catalog = read_catalog(root / CATALOG_FILE)
    if str(doc["stats"]["derivation"]).startswith(GENERATED_PREFIX):
        world = generate_world(cfg)
    else:
        pop = catalog.popularity if float(np.ptp(catalog.popularity)) > 0 else None
        world = world_from_catalog(list(catalog.item_ids), list(catalog.titles), list(catalog.brands), pop, cfg)
    if list(catalog.item_ids) != world.item_ids or list(catalog.titles) != world.titles:
        raise ValueError(f"world: the world rebuilt from {stats_path} does not match {root / CATALOG_FILE} "
                         "(different item ids or titles)")
    return world, cfg


@dataclass(frozen=True)
class Response:
    """What one user did with one shown list."""

    shown: int  # items shown (the first exposure_length returned)
    clicks: int
    ordered: bool
    unknown_items: int  # returned ids the world does not know (grade 0)
    clicked_ids: tuple[str, ...]


class Population:
    """``users`` fresh simulated users of one world, each with their own random stream (see the module docstring)."""

    def __init__(self, world: World, cfg: SimConfig, users: int, seed: int) -> None:
        if users < 1:
            raise ValueError(f"Population.users must be >= 1, given {users}")
        self.world = world
        self.cfg = cfg
        self.sim = Simulation(world, replace(cfg, users=users, seed=seed))
        self.seed = seed
        self.rngs = [np.random.default_rng([seed, 4, i]) for i in range(users)]
        self.row_of = {item: row for row, item in enumerate(world.item_ids)}
        self.exam = examination(cfg.exposure_length, cfg.position_bias)

    def __len__(self) -> int:
        return len(self.sim.users)

    def user_id(self, i: int) -> str:
        return self.sim.users[i].user_id

    def intent(self, i: int) -> Intent:
        """User ``i``'s next search (query, truth), drawn from their own generator."""
        return self.sim.intent(i, self.rngs[i])

    def request_body(self, i: int, intent: Intent, top_k: int, beam_width: int) -> dict[str, object]:
        """The ``POST /retrieve`` body of user ``i``'s search (history most recent last, capped)."""
        user = self.sim.users[i]
        cap = self.cfg.history_cap
        history = user.history[-cap:] if cap else []
        return {"query": intent.query, "user_id": user.user_id, "profile": dict(user.profile),
                "history": list(history), "top_k": top_k, "beam_width": beam_width}

    def grades(self, intent: Intent, rows: np.ndarray) -> np.ndarray:
        """Truth of items (world rows) for an intent: relevance grade, 0.5 same product type, else 0."""
        grade = np.where(self.world.item_type[rows] == intent.target_type, 0.5, 0.0)
        relevant = {int(r): float(g) for r, g in zip(intent.relevant_rows, intent.relevant_grade, strict=True)}
        for k, r in enumerate(rows.tolist()):
            if r in relevant:
                grade[k] = relevant[r]
        return grade

    def respond(self, i: int, intent: Intent, item_ids: list[str]) -> Response:
        """User ``i`` examines, clicks and maybe orders from the returned items (first ``exposure_length``)."""
        shown = item_ids[: self.cfg.exposure_length]
        known = [self.row_of.get(item, -1) for item in shown]
        rows = np.array([r if r >= 0 else 0 for r in known], dtype=np.int64)
        is_known = np.array([r >= 0 for r in known], dtype=bool)
        user = self.sim.users[i]
        grade = np.where(is_known, self.grades(intent, rows), 0.0) if len(rows) else np.zeros(0)
        affinity = np.where(is_known, self.sim.affinity(user, rows), 1.0) if len(rows) else np.zeros(0)
        clicked_idx, best = click_and_order(grade, affinity, self.exam, self.rngs[i])
        clicked = tuple(shown[int(k)] for k in clicked_idx)
        user.history.extend(clicked)
        cap = self.cfg.history_cap
        if len(user.history) > 4 * max(cap, 1):  # as the simulator: keep memory bounded
            del user.history[: len(user.history) - cap]
        return Response(shown=len(shown), clicks=len(clicked), ordered=best is not None,
                        unknown_items=int((~is_known).sum()), clicked_ids=clicked)
