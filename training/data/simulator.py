"""A search-log simulator with ground truth, built to produce RAD-DPO's three failure modes on purpose.

Contract:
- The world (catalog, categories, product types) comes from :mod:`training.data.world`, the knobs from
  :class:`~training.data.sim_config.SimConfig`.
- :func:`simulate` walks ``days`` × ``sessions_per_day`` sessions in order. Each: a user (stable preferences:
  category weights, a brand per preferred category, a price level, and a profile map) forms an intent from a
  target item (its product type, 0–2 of its attributes, sometimes its brand) and writes a query from it
  (synonyms, shuffled modifiers, typos). Relevant items (truth, graded 1–3) are the product type's items that best
  match the intent, at most ``relevant_breadth``. An imperfect ranker shows ``exposure_length`` items of the
  category ordered by relevance + ``ranker_noise``·N(0,1) + ``popularity_weight``·z(log popularity). A
  position-biased click model examines rank ``k`` (0-based) with probability ``(k+1) ** -position_bias`` and
  clicks an examined item with a probability rising with its grade and the user's preference; the best clicked
  item (grade, preference, noise) is ordered with a grade-dependent probability (orders are the top tier). Clicks
  join the user's history (oldest first).
- :func:`simulate_to_dir` writes ``catalog.parquet``, ``sessions.parquet`` and ``sim_stats.json``, each atomically.
- Deterministic: one ``numpy`` generator seeded by ``(seed, 3)`` for the sessions; the same config gives the same
  files.
- Returns :class:`SimStats`; the pseudo-negative rate is the share of exposed-but-unclicked items that are truly
  relevant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sid_index.atomic_files import write_json_atomic
from sid_index.catalog import write_catalog
from training.data.schema import Session, SessionWriter
from training.data.sim_config import SimConfig
from training.data.world import World, world_catalog, world_for

logger = logging.getLogger(__name__)

PRICE_LEVELS = ("low", "mid", "high")
REGIONS = ("north", "south", "east", "west", "central")
MEMBER_TIERS = ("basic", "plus")

# Click probability of an examined item by grade (0 = not relevant, 0.5 = same product type but not relevant).
_ATTRACT = {0.0: 0.02, 0.5: 0.08, 1.0: 0.30, 2.0: 0.50, 3.0: 0.70}
# Probability that the best clicked item is ordered, by its grade.
_ORDER = {0.0: 0.03, 0.5: 0.05, 1.0: 0.15, 2.0: 0.35, 3.0: 0.55}


@dataclass(frozen=True)
class SimStats:
    """What a run produced (written to ``sim_stats.json`` under ``stats``)."""

    sessions: int
    clicks_per_session: float
    sessions_with_click: float
    orders: int
    orders_per_session: float
    relevant_per_query: float
    exposed_relevant_per_session: float
    pseudo_negative_rate: float  # share of exposed-but-unclicked items that are truly relevant
    empty_queries: int
    items: int
    categories: int
    product_types: int
    derivation: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ sessions
def draw(cum: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability ∝ the increments of the cumulative weights ``cum`` (fast ``rng.choice(p=)``)."""
    k = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return min(k, len(cum) - 1)


_N_MOD_CUM = np.cumsum([0.3, 0.45, 0.25])
_POOL_CACHE_ENTRIES = 20_000


@dataclass
class SimUser:
    """A simulated user: stable preferences and a growing history (item ids, oldest first)."""

    user_id: str
    group_weights: np.ndarray
    group_cum: np.ndarray
    brands: frozenset[int]
    price_level: int
    profile: dict[str, str]
    history: list[str]


def _make_users(world: World, cfg: SimConfig, rng: np.random.Generator) -> list[SimUser]:
    n_groups = len(world.group_names)
    width = len(str(cfg.users - 1))
    log_pop = np.log(world.popularity + 1.0)
    group_cum = []
    for idx in world.group_items:
        group_cum.append(np.cumsum(np.exp(0.5 * (log_pop[idx] - log_pop[idx].max()))) if len(idx) else None)
    users = []
    for u in range(cfg.users):
        k = min(2, n_groups)
        prefs = rng.choice(n_groups, size=k, replace=False)
        w = np.full(n_groups, 0.1 / n_groups)
        w[prefs[0]] += 0.6
        if k > 1:
            w[prefs[1]] += 0.3
        w /= w.sum()
        brands = set()
        for g in prefs:
            cands = world.group_brands[int(g)]
            if len(cands):
                brands.add(int(cands[int(rng.integers(len(cands)))]))
        level = int(rng.integers(3))
        profile = {"price_level": PRICE_LEVELS[level], "region": REGIONS[int(rng.integers(len(REGIONS)))],
                   "member": MEMBER_TIERS[int(rng.random() < 0.3)]}
        history: list[str] = []
        w_cum = np.cumsum(w)
        for _ in range(int(rng.poisson(cfg.initial_history))):
            g = draw(w_cum, rng)
            cum = group_cum[g]
            if cum is not None:
                history.append(world.item_ids[int(world.group_items[g][draw(cum, rng)])])
        users.append(SimUser(f"u{u:0{width}d}", w, np.cumsum(w), frozenset(brands), level, profile, history))
    return users


def add_typo(word: str, rng: np.random.Generator) -> str:
    """One keyboard slip in a word of >= 4 letters: swap two neighbours, drop or double a letter."""
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 1))
    match int(rng.integers(3)):
        case 0:
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        case 1:
            return word[:i] + word[i + 1:]
        case _:
            return word[:i] + word[i] + word[i:]


def _write_query(world: World, target: int, n_mod: int, with_brand: bool, cfg: SimConfig,
                 rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    """Query text and the modifiers (attributes) it asks for."""
    names = world.type_names[int(world.item_type[target])]
    name = names[int(rng.integers(1, len(names)))] if len(names) > 1 and rng.random() < cfg.synonym_rate else names[0]
    attrs = world.item_attrs[target]
    n_mod = min(n_mod, len(attrs))
    mods = tuple(attrs[int(i)] for i in rng.choice(len(attrs), size=n_mod, replace=False)) if n_mod else ()
    words = list(mods)
    rng.shuffle(words)
    parts = [*words, name]
    if with_brand and world.item_brand[target] >= 0:
        parts.insert(0, world.item_brand_name[target].lower())
    if rng.random() < 0.2 and len(parts) > 1:  # some people put the product first
        parts = [parts[-1], *parts[:-1]]
    text = " ".join(parts)
    if rng.random() < cfg.typo_rate:
        tokens = text.split()
        j = int(rng.integers(len(tokens)))
        tokens[j] = add_typo(tokens[j], rng)
        text = " ".join(tokens)
    return text, mods


def examination(length: int, position_bias: float) -> np.ndarray:
    """Probability that rank k (0-based) of a shown list is examined: ``(k+1) ** -position_bias``, k < length."""
    return (np.arange(length) + 1.0) ** (-position_bias)


def click_and_order(grades: np.ndarray, affinity: np.ndarray, examined: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
    """The user model on one shown list: (clicked positions, ordered position or None).

    ``grades[k]`` is the truth of the item at rank k (0 not relevant, 0.5 same product type, 1..3 relevant),
    ``affinity[k]`` the user's preference for it, ``examined[k]`` the examination probability (at least as long
    as the list). Rank k is clicked with probability ``examined[k] · min(0.95, attract(grade) · affinity)``; of
    the clicked items the one with the best ``grade + log affinity + Gumbel`` is ordered with probability
    ``order(grade)``. Draws, in this order: one uniform per rank, one Gumbel per click, one uniform if any click.
    """
    attract = np.array([_ATTRACT[float(g)] for g in grades]) * affinity
    clicked_mask = rng.random(len(grades)) < examined[: len(grades)] * np.minimum(attract, 0.95)
    clicked_idx = np.flatnonzero(clicked_mask)
    if not len(clicked_idx):
        return clicked_idx, None
    utility = grades[clicked_idx] + np.log(affinity[clicked_idx]) + rng.gumbel(size=len(clicked_idx))
    best = int(clicked_idx[int(np.argmax(utility))])
    return clicked_idx, (best if rng.random() < _ORDER[float(grades[best])] else None)


@dataclass(frozen=True)
class Intent:
    """What a user wants in one session: the query they write and the truth over their category."""

    user: int  # index into Simulation.users
    pool: np.ndarray  # the category's item rows (the ranker's candidate pool)
    affinity: np.ndarray  # the user's affinity for each pool item
    query: str
    empty: bool  # an empty query (browse)
    relevant_rows: np.ndarray  # the relevant items, best first (at most relevant_breadth)
    relevant_grade: np.ndarray  # their grades 1..3
    pool_grade: np.ndarray  # per pool item: its grade if relevant, 0.5 same product type, else 0
    target_type: int  # the product type the user is after


class Simulation:
    """Users and the session model over one world; ``session`` draws one logged session from ``self.rng``.

    ``intent`` (what a user asks for, with its truth), ``affinity`` and :func:`click_and_order` are also used on
    their own by the online A/B replay (``training/ab_users.py``), which shows the user a server's ranking instead
    of the simulated ranker's.
    """

    def __init__(self, world: World, cfg: SimConfig) -> None:
        self.world = world
        self.cfg = cfg
        self.rng = np.random.default_rng([cfg.seed, 3])
        self.users = _make_users(world, cfg, self.rng)
        lp = np.log(world.popularity + 1.0)
        self.pop_z = (lp - lp.mean()) / max(float(lp.std()), 1e-9)
        self.log_pop = lp
        self.exam = examination(cfg.exposure_length, cfg.position_bias)
        self.attr_sets = [frozenset(a) for a in world.item_attrs]
        self._pool_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        # type t's items as positions in its group's item list (both sorted, and a type lies in one group)
        self.type_pos = [np.searchsorted(world.group_items[int(world.type_group[t])], rows)
                         for t, rows in enumerate(world.type_items)]
        self.n_sessions = 0
        self.n_clicks = 0
        self.n_with_click = 0
        self.n_orders = 0
        self.n_relevant = 0
        self.n_exposed_relevant = 0
        self.n_unclicked = 0
        self.n_unclicked_relevant = 0
        self.n_empty = 0

    def affinity(self, user: SimUser, rows: np.ndarray) -> np.ndarray:
        """Multiplicative preference of a user for items: preferred brand ×1.3, matching price level ×1.15."""
        w = self.world
        brand = np.isin(w.item_brand[rows], np.fromiter(user.brands, dtype=np.int64, count=len(user.brands)))
        aff: np.ndarray = np.where(brand, 1.3, 1.0) * np.where(w.item_price_level[rows] == user.price_level, 1.15, 1.0)
        return aff

    def _user_pool(self, u: int, group: int, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(affinity of the user for the pool's items, cumulative target weights), cached per (user, group)."""
        key = (u, group)
        hit = self._pool_cache.get(key)
        if hit is None:
            aff = self.affinity(self.users[u], pool)
            cum = np.cumsum(np.exp(self.log_pop[pool] - self.log_pop[pool].max()) * aff**3)
            hit = (aff, cum)
            if len(self._pool_cache) < _POOL_CACHE_ENTRIES:  # bounded: memory does not grow with users
                self._pool_cache[key] = hit
        return hit

    def intent(self, u: int, rng: np.random.Generator) -> Intent:
        """User ``u`` picks a category, a target item in it and writes a query; the truth follows from them."""
        w, cfg = self.world, self.cfg
        user = self.users[u]
        group = draw(user.group_cum, rng)
        pool = w.group_items[group]
        if len(pool) == 0:
            pool = np.arange(w.num_items)
        aff_pool, target_cum = self._user_pool(u, group, pool)
        target = int(pool[draw(target_cum, rng)])
        n_mod = draw(_N_MOD_CUM, rng)
        with_brand = bool(rng.random() < cfg.brand_query_rate)
        empty = bool(rng.random() < cfg.empty_query_rate)
        query, mods = ("", ()) if empty else _write_query(w, target, n_mod, with_brand, cfg, rng)
        # truth: the target's product type, graded by how many asked-for modifiers (and the brand) match
        same_type = w.type_items[int(w.item_type[target])]
        wanted = set(mods)
        n_want = len(wanted) + int(with_brand and not empty)
        attr_sets = self.attr_sets
        match = np.fromiter((len(wanted & attr_sets[i]) for i in same_type.tolist()), dtype=np.int64,
                            count=len(same_type))
        if with_brand and not empty:
            match += (w.item_brand[same_type] == w.item_brand[target]).astype(np.int64)
        grade = np.where(match >= n_want, 3, np.where(match > 0, 2, 1)) if n_want else np.full(len(same_type), 2)
        order = np.lexsort((-self.log_pop[same_type], -grade))[: cfg.relevant_breadth]
        relevant_rows = same_type[order]
        relevant_grade = grade[order]
        # the truth over the category (the ranker's pool)
        true_rel = np.zeros(len(pool))
        if len(w.group_items[group]):
            type_pos = self.type_pos[int(w.item_type[target])]  # positions of the type's items in the pool
            true_rel[type_pos] = 0.5
            true_rel[type_pos[order]] = relevant_grade
        else:
            true_rel[same_type] = 0.5
            true_rel[relevant_rows] = relevant_grade
        return Intent(user=u, pool=pool, affinity=aff_pool, query=query, empty=empty, relevant_rows=relevant_rows,
                      relevant_grade=relevant_grade, pool_grade=true_rel, target_type=int(w.item_type[target]))

    def session(self, day: int, index: int) -> Session:
        w, cfg, rng = self.world, self.cfg, self.rng
        u = int(rng.integers(len(self.users)))
        user = self.users[u]
        it = self.intent(u, rng)
        pool, true_rel, empty = it.pool, it.pool_grade, it.empty
        score = true_rel + cfg.ranker_noise * rng.standard_normal(len(pool)) + cfg.popularity_weight * self.pop_z[pool]
        top = np.argsort(-score, kind="stable")[: cfg.exposure_length]
        exposed_rows = pool[top]
        clicked_idx, best = click_and_order(true_rel[top], it.affinity[top], self.exam, rng)
        clicked_mask = np.zeros(len(top), dtype=bool)
        clicked_mask[clicked_idx] = True
        ordered: tuple[str, ...] = () if best is None else (w.item_ids[int(exposed_rows[best])],)
        exposed = tuple(w.item_ids[int(i)] for i in exposed_rows)
        clicked = tuple(exposed[int(i)] for i in clicked_idx)
        relevant = tuple(w.item_ids[int(i)] for i in it.relevant_rows)
        history = tuple(user.history[-cfg.history_cap:]) if cfg.history_cap else ()
        s = Session(
            session_id=f"d{day}-{index:07d}", day=day, user_id=user.user_id, query=it.query,
            profile=dict(user.profile), history=history, exposed=exposed, clicked=clicked, ordered=ordered,
            relevant=relevant, relevant_grades=tuple(int(g) for g in it.relevant_grade),
        )
        user.history.extend(clicked)
        if len(user.history) > 4 * max(cfg.history_cap, 1):
            del user.history[: len(user.history) - cfg.history_cap]
        # statistics
        relevant_set = set(relevant)
        unclicked = [x for k, x in enumerate(exposed) if not clicked_mask[k]]
        self.n_sessions += 1
        self.n_empty += int(empty)
        self.n_clicks += len(clicked)
        self.n_with_click += int(bool(clicked))
        self.n_orders += len(ordered)
        self.n_relevant += len(relevant)
        self.n_exposed_relevant += sum(x in relevant_set for x in exposed)
        self.n_unclicked += len(unclicked)
        self.n_unclicked_relevant += sum(x in relevant_set for x in unclicked)
        return s

    def stats(self) -> SimStats:
        n = max(self.n_sessions, 1)
        return SimStats(
            sessions=self.n_sessions,
            clicks_per_session=self.n_clicks / n,
            sessions_with_click=self.n_with_click / n,
            orders=self.n_orders,
            orders_per_session=self.n_orders / n,
            relevant_per_query=self.n_relevant / n,
            exposed_relevant_per_session=self.n_exposed_relevant / n,
            pseudo_negative_rate=self.n_unclicked_relevant / max(self.n_unclicked, 1),
            empty_queries=self.n_empty,
            items=self.world.num_items,
            categories=len(self.world.group_names),
            product_types=len(self.world.type_names),
            derivation=self.world.derivation,
        )


def iter_simulated_sessions(world: World, cfg: SimConfig, chunk: int = 4096,
                            stats_out: list[SimStats] | None = None) -> Iterator[list[Session]]:
    """Sessions in day order, ``chunk`` at a time; appends the final :class:`SimStats` to ``stats_out``."""
    sim = Simulation(world, cfg)
    buf: list[Session] = []
    for day in range(1, cfg.days + 1):
        for k in range(cfg.sessions_per_day):
            buf.append(sim.session(day, k))
            if len(buf) >= chunk:
                yield buf
                buf = []
    if buf:
        yield buf
    if stats_out is not None:
        stats_out.append(sim.stats())


def simulate(world: World, cfg: SimConfig, sessions_path: str | Path,
             progress: Callable[[int], None] | None = None) -> SimStats:
    """Write all simulated sessions (with truth) to ``sessions_path`` (atomic); returns the statistics."""
    stats: list[SimStats] = []
    with SessionWriter(sessions_path, with_truth=True) as writer:
        for batch in iter_simulated_sessions(world, cfg, stats_out=stats):
            writer.write(batch)
            if progress is not None:
                progress(len(batch))
    logger.info("simulated %d sessions into %s", stats[0].sessions, sessions_path)
    return stats[0]


# ------------------------------------------------------------------------------------------------ files
def simulate_to_dir(cfg: SimConfig, out_dir: str | Path, real_catalog: str | Path | None = None,
                    progress: Callable[[int], None] | None = None) -> SimStats:
    """Write ``catalog.parquet``, ``sessions.parquet`` and ``sim_stats.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = world_for(cfg, real_catalog)
    write_catalog(world_catalog(world), out / "catalog.parquet")
    stats = simulate(world, cfg, out / "sessions.parquet", progress)
    write_json_atomic(out / "sim_stats.json", {"config": asdict(cfg), "stats": stats.to_dict()}, sort_keys=False)
    return stats
