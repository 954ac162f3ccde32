"""A search-log simulator with ground truth, built to produce RAD-DPO's three failure modes on purpose.

Contract:
- :func:`generate_world` builds a catalog from the built-in taxonomy (``training/data/taxonomy.py``): categories
  → subcategories → product types, brands, attributes, prices, Zipf popularity; titles are written from these
  (``"<Brand> <attr> <attr> <Product Type> <model>, <colour>, <pack>"``), so text embeddings of one product type
  are near and SIDs of one category share prefixes. The catalog category is ``"<Category> > <Subcategory>"``.
- :func:`world_from_catalog` sits on a real catalog (titles, optional brand/popularity): categories and product
  types are *derived* — hashed TF-IDF of title words, k-means (faiss, seeded) into ``real_categories`` clusters,
  then each cluster again into product types of about ``real_items_per_type`` items; a type's name and synonyms
  are its most characteristic words (highest mean TF-IDF), an item's attributes its other title words. The
  catalog category becomes ``"cluster NN: w1 w2 w3"``.
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
- Deterministic: one ``numpy`` generator seeded by ``seed``; the same config gives the same files.
- Returns :class:`SimStats`; the pseudo-negative rate is the share of exposed-but-unclicked items that are truly
  relevant.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sid_index.atomic_files import write_json_atomic
from sid_index.catalog import Catalog, read_catalog, write_catalog
from training.data.schema import Session, SessionWriter
from training.data.taxonomy import ATTRIBUTES, BRAND_SYLLABLES, COLOURS, PACKS, TAXONOMY

logger = logging.getLogger(__name__)

PRICE_LEVELS = ("low", "mid", "high")
REGIONS = ("north", "south", "east", "west", "central")
MEMBER_TIERS = ("basic", "plus")

# Click probability of an examined item by grade (0 = not relevant, 0.5 = same product type but not relevant).
_ATTRACT = {0.0: 0.02, 0.5: 0.08, 1.0: 0.30, 2.0: 0.50, 3.0: 0.70}
# Probability that the best clicked item is ordered, by its grade.
_ORDER = {0.0: 0.03, 0.5: 0.05, 1.0: 0.15, 2.0: 0.35, 3.0: 0.55}


@dataclass(frozen=True)
class SimConfig:
    """Simulator knobs. Defaults suit a 15-minute end-to-end demo on 2 CPU cores with a tiny model."""

    items: int = 2400  # catalog size (generated catalogs only)
    users: int = 800
    sessions_per_day: int = 1500
    days: int = 8  # the paper: 7 days to train, 1 to test
    exposure_length: int = 10  # items shown per session
    position_bias: float = 1.0  # examination of rank k (0-based) = (k+1) ** -position_bias; 0 = no bias
    ranker_noise: float = 1.0  # std of the ranker's Gaussian noise on the relevance grade
    popularity_weight: float = 0.5  # weight of z-scored log-popularity in the ranker
    relevant_breadth: int = 6  # multi-label breadth: at most this many relevant items per query
    zipf_exponent: float = 1.0  # popularity of the item at popularity rank r ∝ r ** -zipf_exponent
    typo_rate: float = 0.08  # share of queries with one typo
    synonym_rate: float = 0.5  # share of queries naming the product type by a synonym
    brand_query_rate: float = 0.25  # share of queries naming the target's brand
    empty_query_rate: float = 0.02  # share of sessions with an empty query (browse)
    initial_history: int = 8  # mean number of items in a user's history before day 1
    history_cap: int = 50  # at most this many history items are written per session
    real_categories: int = 0  # categories to derive from a real catalog; 0 = about sqrt(items / 8)
    real_items_per_type: int = 30  # product-type cluster size to aim for on a real catalog
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("items", "users", "sessions_per_day", "days", "exposure_length", "relevant_breadth",
                    "real_items_per_type")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SimConfig.{name} must be >= 1, given {getattr(self, name)}")
        for name in ("position_bias", "ranker_noise", "popularity_weight", "zipf_exponent", "initial_history"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"SimConfig.{name} must be >= 0, given {getattr(self, name)}")
        for name in ("typo_rate", "synonym_rate", "brand_query_rate", "empty_query_rate"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SimConfig.{name} must be in [0, 1], given {v}")
        if self.history_cap < 0:
            raise ValueError(f"SimConfig.history_cap must be >= 0, given {self.history_cap}")
        if self.real_categories < 0:
            raise ValueError(f"SimConfig.real_categories must be >= 0, given {self.real_categories}")


@dataclass
class World:
    """The catalog as the simulator sees it (generated or derived from a real catalog)."""

    item_ids: list[str]
    titles: list[str]
    item_brand_name: list[str]  # "" when unknown
    catalog_category: list[str]  # the canonical catalog's category column
    popularity: np.ndarray  # float64 [n]
    item_group: np.ndarray  # int64 [n]: top-level category id (the ranker's candidate pool)
    item_type: np.ndarray  # int64 [n]: product type id
    item_brand: np.ndarray  # int64 [n]: brand id, -1 unknown
    item_price_level: np.ndarray  # int64 [n] in 0..2
    item_attrs: list[tuple[str, ...]]  # words/phrases a query may use as modifiers
    type_names: list[tuple[str, ...]]  # canonical name first, then synonyms
    type_group: np.ndarray  # int64 [T]
    group_names: list[str]
    brand_names: list[str]
    derivation: str  # how categories were obtained, for the report
    group_items: list[np.ndarray] = field(default_factory=list)
    type_items: list[np.ndarray] = field(default_factory=list)
    group_brands: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        n_groups, n_types = len(self.group_names), len(self.type_names)
        self.group_items = [np.flatnonzero(self.item_group == g) for g in range(n_groups)]
        self.type_items = [np.flatnonzero(self.item_type == t) for t in range(n_types)]
        self.group_brands = [np.unique(self.item_brand[idx][self.item_brand[idx] >= 0]) for idx in self.group_items]

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class SimStats:
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


# ---------------------------------------------------------------------------------------------- the catalog
def zipf_popularity(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Popularity ∝ rank ** -exponent over a random ranking, scaled so the top item has 1000."""
    ranks = rng.permutation(n) + 1
    return 1000.0 * ranks.astype(np.float64) ** (-exponent)


def _brand_name(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        k = int(rng.integers(2, 4))
        name = "".join(BRAND_SYLLABLES[int(i)] for i in rng.integers(0, len(BRAND_SYLLABLES), size=k)).capitalize()
        if name not in used:
            used.add(name)
            return name


def _model_code(rng: np.random.Generator) -> str:
    letters = "".join(chr(ord("A") + int(i)) for i in rng.integers(0, 26, size=2))
    return f"{letters}-{int(rng.integers(100, 1000))}"


def generate_world(cfg: SimConfig) -> World:
    """A generated catalog from the built-in taxonomy (see the module docstring)."""
    rng = np.random.default_rng([cfg.seed, 1])
    group_names = list(TAXONOMY)
    type_names: list[tuple[str, ...]] = []
    type_group: list[int] = []
    type_subcat: list[str] = []
    for g, (cat, subcats) in enumerate(TAXONOMY.items()):
        for sub, types in subcats.items():
            for spec in types:
                type_names.append(tuple(spec.split("|")))
                type_group.append(g)
                type_subcat.append(f"{cat} > {sub}")
    n_types = len(type_names)
    used: set[str] = set()
    brand_names: list[str] = []
    brand_tier: list[float] = []
    group_brand_ids: list[list[int]] = []
    for _ in group_names:
        ids = []
        for _ in range(6):
            brand_names.append(_brand_name(rng, used))
            brand_tier.append(float(rng.choice([0.7, 1.0, 1.5])))
            ids.append(len(brand_names) - 1)
        group_brand_ids.append(ids)
    type_weight = rng.dirichlet(np.full(n_types, 4.0))
    item_type = rng.choice(n_types, size=cfg.items, p=type_weight)
    item_type[:n_types] = np.arange(n_types)[: min(n_types, cfg.items)]  # every type has an item if possible
    type_base_price = np.exp(rng.normal(3.0, 0.8, size=n_types))
    titles, brand_of, attrs_of, cat_of = [], [], [], []
    prices = np.empty(cfg.items)
    brand_zipf = 1.0 / np.arange(1, 7) ** 0.8
    brand_zipf /= brand_zipf.sum()
    for i in range(cfg.items):
        t = int(item_type[i])
        g = type_group[t]
        b = group_brand_ids[g][int(rng.choice(6, p=brand_zipf))]
        pool = ATTRIBUTES[group_names[g]]
        picks = rng.choice(len(pool), size=2, replace=False)
        a1, a2 = pool[int(picks[0])], pool[int(picks[1])]
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        pack = PACKS[int(rng.integers(len(PACKS)))]
        canonical = type_names[t][0]
        titles.append(f"{brand_names[b]} {a1.title()} {a2.title()} {canonical.title()} {_model_code(rng)}, "
                      f"{colour.title()}, {pack.title()}")
        brand_of.append(b)
        attrs_of.append((a1, a2, colour))
        cat_of.append(type_subcat[t])
        prices[i] = type_base_price[t] * brand_tier[b] * math.exp(float(rng.normal(0.0, 0.25)))
    item_type = item_type.astype(np.int64)
    price_level = _price_levels(prices, item_type, n_types)
    width = len(str(cfg.items - 1))
    return World(
        item_ids=[f"i{i:0{width}d}" for i in range(cfg.items)],
        titles=titles,
        item_brand_name=[brand_names[b] for b in brand_of],
        catalog_category=cat_of,
        popularity=zipf_popularity(cfg.items, cfg.zipf_exponent, rng),
        item_group=np.asarray(type_group, dtype=np.int64)[item_type],
        item_type=item_type,
        item_brand=np.asarray(brand_of, dtype=np.int64),
        item_price_level=price_level,
        item_attrs=attrs_of,
        type_names=type_names,
        type_group=np.asarray(type_group, dtype=np.int64),
        group_names=group_names,
        brand_names=brand_names,
        derivation=f"generated taxonomy: {len(group_names)} categories, {len(set(type_subcat))} subcategories, "
                   f"{n_types} product types",
    )


def _price_levels(prices: np.ndarray, item_type: np.ndarray, n_types: int) -> np.ndarray:
    """Price terciles within each product type: 0 low, 1 mid, 2 high."""
    level = np.ones(len(prices), dtype=np.int64)
    for t in range(n_types):
        idx = np.flatnonzero(item_type == t)
        if len(idx) >= 3:
            order = np.argsort(prices[idx], kind="stable")
            level[idx[order]] = (np.arange(len(idx)) * 3) // len(idx)
    return level


# ------------------------------------------------------------------------------------ a real catalog's taxonomy
_WORD_RE = re.compile(r"[a-z0-9][a-z0-9.\-/]*[a-z0-9]|[a-z]")
_STOP = frozenset((
    "and", "the", "for", "with", "of", "in", "to", "a", "an", "by", "on", "or", "x", "pack", "set", "pcs", "pc",
    "piece", "pieces", "inch", "inches", "mm", "cm", "ft", "lb", "lbs", "oz", "count", "ct", "new",
))


def title_words(title: str) -> list[str]:
    """Lower-cased title words without stop words, bare numbers and single characters."""
    return [w for w in _WORD_RE.findall(title.lower()) if len(w) > 1 and w not in _STOP and not w.isdigit()]


def _hashed_tfidf(docs: list[list[str]], dim: int) -> np.ndarray:
    """L2-normalised TF-IDF rows over words hashed into ``dim`` buckets (crc32, stable across runs)."""
    buckets = [[zlib.crc32(w.encode()) % dim for w in words] for words in docs]
    df = np.zeros(dim)
    for b in buckets:
        df[np.unique(np.asarray(b, dtype=np.int64))] += 1
    idf = np.log((1 + len(docs)) / (1 + df)) + 1.0
    x = np.zeros((len(docs), dim), dtype=np.float32)
    for i, b in enumerate(buckets):
        np.add.at(x[i], np.asarray(b, dtype=np.int64), 1.0)
    x *= idf.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster ids by faiss spherical k-means (seeded); ``k`` is clipped to the number of rows."""
    import faiss

    k = max(1, min(k, x.shape[0]))
    if k == 1:
        return np.zeros(x.shape[0], dtype=np.int64)
    km = faiss.Kmeans(x.shape[1], k, niter=25, nredo=3, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=100000, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x))
    _, assign = km.index.search(np.ascontiguousarray(x), 1)
    return assign[:, 0].astype(np.int64)


def _top_words(rows: np.ndarray, docs: list[list[str]], df: dict[str, int], n_docs: int, k: int) -> list[str]:
    """The ``k`` most characteristic words of a set of documents (mean TF-IDF)."""
    score: dict[str, float] = {}
    for i in rows:
        for w in set(docs[int(i)]):
            score[w] = score.get(w, 0.0) + math.log((1 + n_docs) / (1 + df[w]))
    return [w for w, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def world_from_catalog(
    item_ids: list[str], titles: list[str], brands: list[str], popularity: np.ndarray | None, cfg: SimConfig
) -> World:
    """A world on a real catalog: categories and product types derived from the titles (module docstring)."""
    n = len(item_ids)
    if n < 2:
        raise ValueError(f"a real catalog needs at least 2 items, given {n}")
    rng = np.random.default_rng([cfg.seed, 2])
    docs = [title_words(t) for t in titles]
    df: dict[str, int] = {}
    for words in docs:
        for w in set(words):
            df[w] = df.get(w, 0) + 1
    x = _hashed_tfidf(docs, dim=2048)
    n_groups = cfg.real_categories or max(2, round(math.sqrt(n / 8)))
    group = _kmeans(x, n_groups, cfg.seed)
    group_ids = sorted(set(group.tolist()))
    remap = {g: k for k, g in enumerate(group_ids)}
    group = np.asarray([remap[g] for g in group.tolist()], dtype=np.int64)
    item_type = np.zeros(n, dtype=np.int64)
    type_group: list[int] = []
    type_names: list[tuple[str, ...]] = []
    group_names: list[str] = []
    for g in range(len(group_ids)):
        rows = np.flatnonzero(group == g)
        group_names.append(f"cluster {g:02d}: " + " ".join(_top_words(rows, docs, df, n, 3)))
        sub = _kmeans(x[rows], max(1, round(len(rows) / cfg.real_items_per_type)), cfg.seed + g + 1)
        for s in sorted(set(sub.tolist())):
            members = rows[sub == s]
            words = _top_words(members, docs, df, n, 3) or ["item"]
            item_type[members] = len(type_names)
            type_names.append(tuple(dict.fromkeys((" ".join(words[:2]), words[0], " ".join(words[1:3])))))
            type_group.append(g)
    brand_index: dict[str, int] = {}
    item_brand = np.full(n, -1, dtype=np.int64)
    for i, b in enumerate(brands):
        b = b.strip()
        if b:
            item_brand[i] = brand_index.setdefault(b, len(brand_index))
    type_words = [set(" ".join(names).split()) for names in type_names]
    attrs = [tuple(dict.fromkeys(w for w in docs[i] if w not in type_words[int(item_type[i])]))[:6]
             for i in range(n)]
    pop = (np.asarray(popularity, dtype=np.float64) if popularity is not None and np.ptp(popularity) > 0
           else zipf_popularity(n, cfg.zipf_exponent, rng))
    return World(
        item_ids=list(item_ids),
        titles=list(titles),
        item_brand_name=[b.strip() for b in brands],
        catalog_category=[group_names[int(g)] for g in group],
        popularity=pop,
        item_group=group,
        item_type=item_type,
        item_brand=item_brand,
        item_price_level=rng.integers(0, 3, size=n).astype(np.int64),
        item_attrs=attrs,
        type_names=type_names,
        type_group=np.asarray(type_group, dtype=np.int64),
        group_names=group_names,
        brand_names=list(brand_index),
        derivation=(f"derived from titles: hashed TF-IDF (2048 buckets, bare numbers dropped) + faiss spherical "
                    f"k-means (3 restarts) into "
                    f"{len(group_names)} categories, then each category into {len(type_names)} product types in all "
                    f"(~{cfg.real_items_per_type} items each); names = most characteristic title words"),
    )


# ------------------------------------------------------------------------------------------------ sessions
def draw(cum: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability ∝ the increments of the cumulative weights ``cum`` (fast ``rng.choice(p=)``)."""
    k = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return min(k, len(cum) - 1)


_N_MOD_CUM = np.cumsum([0.3, 0.45, 0.25])
_POOL_CACHE_ENTRIES = 20_000


@dataclass
class _User:
    user_id: str
    group_weights: np.ndarray
    group_cum: np.ndarray
    brands: frozenset[int]
    price_level: int
    profile: dict[str, str]
    history: list[str]


def _make_users(world: World, cfg: SimConfig, rng: np.random.Generator) -> list[_User]:
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
        users.append(_User(f"u{u:0{width}d}", w, np.cumsum(w), frozenset(brands), level, profile, history))
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


class _Simulation:
    def __init__(self, world: World, cfg: SimConfig) -> None:
        self.world = world
        self.cfg = cfg
        self.rng = np.random.default_rng([cfg.seed, 3])
        self.users = _make_users(world, cfg, self.rng)
        lp = np.log(world.popularity + 1.0)
        self.pop_z = (lp - lp.mean()) / max(float(lp.std()), 1e-9)
        self.log_pop = lp
        self.exam = (np.arange(cfg.exposure_length) + 1.0) ** (-cfg.position_bias)
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

    def _affinity(self, user: _User, rows: np.ndarray) -> np.ndarray:
        """Multiplicative preference of a user for items: preferred brand ×1.3, matching price level ×1.15."""
        w = self.world
        brand = np.isin(w.item_brand[rows], np.fromiter(user.brands, dtype=np.int64, count=len(user.brands)))
        return np.where(brand, 1.3, 1.0) * np.where(w.item_price_level[rows] == user.price_level, 1.15, 1.0)

    def _user_pool(self, u: int, group: int, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(affinity of the user for the pool's items, cumulative target weights), cached per (user, group)."""
        key = (u, group)
        hit = self._pool_cache.get(key)
        if hit is None:
            aff = self._affinity(self.users[u], pool)
            cum = np.cumsum(np.exp(self.log_pop[pool] - self.log_pop[pool].max()) * aff**3)
            hit = (aff, cum)
            if len(self._pool_cache) < _POOL_CACHE_ENTRIES:  # bounded: memory does not grow with users
                self._pool_cache[key] = hit
        return hit

    def session(self, day: int, index: int) -> Session:
        w, cfg, rng = self.world, self.cfg, self.rng
        u = int(rng.integers(len(self.users)))
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
        # an imperfect ranker over the category
        true_rel = np.zeros(len(pool))
        if len(w.group_items[group]):
            type_pos = self.type_pos[int(w.item_type[target])]  # positions of the type's items in the pool
            true_rel[type_pos] = 0.5
            true_rel[type_pos[order]] = relevant_grade
        else:
            true_rel[same_type] = 0.5
            true_rel[relevant_rows] = relevant_grade
        score = true_rel + cfg.ranker_noise * rng.standard_normal(len(pool)) + cfg.popularity_weight * self.pop_z[pool]
        top = np.argsort(-score, kind="stable")[: cfg.exposure_length]
        exposed_rows = pool[top]
        exposed_rel = true_rel[top]
        attract = np.array([_ATTRACT[float(g)] for g in exposed_rel]) * aff_pool[top]
        clicked_mask = rng.random(len(top)) < self.exam[: len(top)] * np.minimum(attract, 0.95)
        clicked_idx = np.flatnonzero(clicked_mask)
        ordered: tuple[str, ...] = ()
        if len(clicked_idx):
            utility = exposed_rel[clicked_idx] + np.log(aff_pool[top][clicked_idx]) + rng.gumbel(size=len(clicked_idx))
            best = int(clicked_idx[int(np.argmax(utility))])
            if rng.random() < _ORDER[float(exposed_rel[best])]:
                ordered = (w.item_ids[int(exposed_rows[best])],)
        exposed = tuple(w.item_ids[int(i)] for i in exposed_rows)
        clicked = tuple(exposed[int(i)] for i in clicked_idx)
        relevant = tuple(w.item_ids[int(i)] for i in relevant_rows)
        history = tuple(user.history[-cfg.history_cap:]) if cfg.history_cap else ()
        s = Session(
            session_id=f"d{day}-{index:07d}", day=day, user_id=user.user_id, query=query,
            profile=dict(user.profile), history=history, exposed=exposed, clicked=clicked, ordered=ordered,
            relevant=relevant, relevant_grades=tuple(int(g) for g in relevant_grade),
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
    sim = _Simulation(world, cfg)
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
def world_catalog(world: World) -> Catalog:
    """The canonical catalog of a world (category = the catalog category column of the world)."""
    return Catalog(item_ids=list(world.item_ids), titles=list(world.titles), brands=list(world.item_brand_name),
                   categories=list(world.catalog_category), popularity=np.asarray(world.popularity, dtype=np.float64))


def world_for(cfg: SimConfig, real_catalog: str | Path | None = None) -> World:
    """A generated world, or one derived from the titles (and brands/popularity if present) of a catalog file."""
    if real_catalog is None:
        return generate_world(cfg)
    cat = read_catalog(real_catalog)
    pop = cat.popularity if float(np.ptp(cat.popularity)) > 0 else None
    return world_from_catalog(list(cat.item_ids), list(cat.titles), list(cat.brands), pop, cfg)


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
