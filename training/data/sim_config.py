"""SimConfig: every knob of the search-log simulator, with defaults and validation (world and sessions read it).

Contract: a frozen dataclass; ``__post_init__`` raises ``ValueError`` naming the field and its bound. The world
(:mod:`training.data.world`) reads ``items``, ``zipf_exponent``, ``real_categories``, ``real_items_per_type`` and
``seed``; the sessions (:mod:`training.data.simulator`) read the rest. ``sim_stats.json`` records it as written.
"""

from __future__ import annotations

from dataclasses import dataclass


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
