"""Catalog + embeddings → :class:`~sid_index.index.SidIndex`, and the statistics reported about an index.

Contract:

- :class:`IndexConfig` (frozen, validated) holds every build setting: ``rq``, the residual k-means settings
  (:class:`~sid_index.rqkmeans.RQKMeansConfig`; ``balanced`` is an opt-in variant: balanced k-means per level; the
  default is the paper's plain residual k-means) and ``unique_sids`` (opt-in: items that share all 3 codes are moved
  to the nearest free codes, :mod:`sid_index.collisions`; the report is recorded as ``config["collisions"]``).
  ``build_index(catalog, embeddings, cfg)``
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
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sid_index.catalog import Catalog
from sid_index.collisions import resolve_collisions
from sid_index.embeddings import check_finite
from sid_index.index import SidIndex
from sid_index.rqkmeans import RQKMeansConfig, assign_codes, train_codebooks
from sid_index.tokens import NUM_LEVELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexConfig:
    """How to turn embeddings into SIDs: the residual k-means settings (validated by :class:`RQKMeansConfig`)."""

    rq: RQKMeansConfig = field(default_factory=RQKMeansConfig)
    unique_sids: bool = False  # opt-in collision resolution (sid_index.collisions); the paper lets items share

    def __post_init__(self) -> None:
        if not isinstance(self.rq, RQKMeansConfig):
            raise TypeError(f"rq must be an RQKMeansConfig, given {type(self.rq).__name__}")

    @property
    def codebook_sizes(self) -> tuple[int, int, int]:
        return self.rq.codebook_sizes

    def to_dict(self) -> dict[str, Any]:
        """The build config as recorded in the index manifest (``config["index"]``: the k-means fields, flat)."""
        d = asdict(self.rq)
        d["codebook_sizes"] = list(self.rq.codebook_sizes)
        d["unique_sids"] = self.unique_sids
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
    codebooks = train_codebooks(embeddings, cfg.rq)
    codes = assign_codes(embeddings, codebooks, batch_size=cfg.rq.assign_batch_size)
    config = {"index": cfg.to_dict(), "embedding_dim": int(embeddings.shape[1]), **(provenance or {})}
    if cfg.unique_sids:
        codes, report = resolve_collisions(embeddings, codes, codebooks)
        config["collisions"] = report.to_dict()
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
