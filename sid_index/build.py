"""Catalog + embeddings → :class:`~sid_index.index.SidIndex`, and the statistics reported about an index.

Contract:

- :class:`IndexConfig` (frozen, validated) holds every build setting (``balanced`` is an opt-in variant: balanced
  k-means per level; the default is the paper's plain residual k-means); ``build_index(catalog, embeddings, cfg)``
  trains the residual codebooks on a sample, assigns all items in batches, groups identical codes into SIDs
  (popularity order within a SID) and records the config in the index manifest. Deterministic for a fixed seed.
- :func:`index_stats` returns a JSON-ready dict: ``items``, ``unique_sids``, ``collision_rate`` (= 1 − SIDs/items),
  ``items_sharing_a_sid`` (fraction of items whose SID has ≥ 2 items), ``largest_group``, ``mean_group``, and per
  level ``codes_used``, ``utilization`` (codes used / codebook size) and ``entropy_bits`` / ``entropy_normalized``
  (entropy of the items' code distribution at that level, over ``log2(codebook size)``), plus ``prefixes`` (trie
  node counts at depths 1, 2, 3).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sid_index.catalog import Catalog
from sid_index.embeddings import check_finite
from sid_index.index import SidIndex
from sid_index.rqkmeans import RQKMeansConfig, assign_codes, train_codebooks
from sid_index.tokens import NUM_LEVELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexConfig:
    """How to turn embeddings into SIDs (see :class:`~sid_index.rqkmeans.RQKMeansConfig` for the k-means fields)."""

    codebook_sizes: tuple[int, int, int] = (256, 256, 256)
    seed: int = 0
    kmeans_iters: int = 20
    train_points_per_centroid: int = 256
    max_train_points: int | None = None
    assign_batch_size: int = 65536
    balanced: bool = False
    balance_rounds: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "codebook_sizes", tuple(int(k) for k in self.codebook_sizes))
        self.rqkmeans()  # validates every field, messages name it

    def rqkmeans(self) -> RQKMeansConfig:
        """The k-means part of this config (same field names)."""
        return RQKMeansConfig(
            codebook_sizes=self.codebook_sizes, seed=self.seed, kmeans_iters=self.kmeans_iters,  # type: ignore[arg-type]
            train_points_per_centroid=self.train_points_per_centroid, max_train_points=self.max_train_points,
            assign_batch_size=self.assign_batch_size, balanced=self.balanced, balance_rounds=self.balance_rounds,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["codebook_sizes"] = list(self.codebook_sizes)
        return d


def build_index(catalog: Catalog, embeddings: np.ndarray, cfg: IndexConfig,
                provenance: dict[str, Any] | None = None) -> SidIndex:
    """Residual k-means codes for every catalog item, grouped into a :class:`SidIndex` (module docstring)."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [items, dim], given shape {list(embeddings.shape)}")
    if embeddings.shape[0] != catalog.num_items:
        raise ValueError(f"embeddings rows must equal the catalog's {catalog.num_items} items, "
                         f"given {embeddings.shape[0]}")
    check_finite(embeddings, catalog.item_ids)
    rq = cfg.rqkmeans()
    codebooks = train_codebooks(embeddings, rq)
    codes = assign_codes(embeddings, codebooks, batch_size=rq.assign_batch_size)
    config = {"index": cfg.to_dict(), "embedding_dim": int(embeddings.shape[1]), **(provenance or {})}
    return SidIndex.from_codes(catalog.item_ids, codes, catalog.popularity, catalog.categories,
                               cfg.codebook_sizes, config=config)


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0].astype(np.float64)
    p /= p.sum()
    return float(-(p * np.log2(p)).sum())


def index_stats(index: SidIndex) -> dict[str, Any]:
    """Sizes, collisions and per-level codebook use of ``index`` (see the module docstring for each key)."""
    n, s = index.num_items, index.num_sids
    group = np.diff(index.sid_item_indptr)
    item_codes = index.sid_codes[index.item_sid_row]
    levels = []
    for level in range(NUM_LEVELS):
        k = index.codebook_sizes[level]
        counts = np.bincount(item_codes[:, level], minlength=k)
        used = int(np.count_nonzero(counts))
        h = _entropy_bits(counts)
        levels.append({
            "level": level, "codebook_size": k, "codes_used": used, "utilization": used / k,
            "entropy_bits": h, "entropy_normalized": h / math.log2(k) if k > 1 else 0.0,
        })
    return {
        "items": n,
        "unique_sids": s,
        "collision_rate": 1.0 - s / n,
        "items_sharing_a_sid": float(group[group > 1].sum()) / n,
        "largest_group": int(group.max()),
        "mean_group": n / s,
        "codebook_sizes": list(index.codebook_sizes),
        "levels": levels,
        "prefixes": {"depth1": int(index.tables.level0.shape[0]), "depth2": int(index.tables.l1_codes.shape[0]),
                     "depth3": s},
    }
