"""The simulator's world: a catalog with categories, product types, brands, attributes and popularity.

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
- :func:`world_for` picks one of the two from a config and an optional catalog file; :func:`world_catalog` turns
  a world back into the canonical :class:`~sid_index.catalog.Catalog`.
- Deterministic: ``numpy`` generators seeded by ``(seed, 1)`` (generated) and ``(seed, 2)`` (real catalog).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sid_index.catalog import Catalog, read_catalog
from training.data.sim_config import SimConfig
from training.data.taxonomy import ATTRIBUTES, BRAND_SYLLABLES, COLOURS, PACKS, TAXONOMY


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


# ------------------------------------------------------------------------------------ a generated catalog
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
    titles: list[str] = []
    brand_of: list[int] = []
    attrs_of: list[tuple[str, ...]] = []
    cat_of: list[str] = []
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


# ------------------------------------------------------------------------------------------ either world
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
