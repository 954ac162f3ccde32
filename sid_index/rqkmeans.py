"""Residual k-means (RQ-KMeans) with faiss: 3 codebooks, each fitted to the residuals the previous left.

Contract:

- :func:`train_codebooks` draws a seeded training sample of at most ``train_points_per_centroid × max(k)`` rows
  (``max_train_points`` caps it further), runs faiss k-means on it level by level (level ``l`` on the sample's
  residuals after levels ``< l``, seed ``seed + l``), and returns one float32 ``[k_l, d]`` codebook per level.
  Memory is bounded by the sample, not by the catalog. A codebook larger than the points it must cluster raises
  ``ValueError`` naming the level and both numbers.
- :func:`assign_codes` gives every row its nearest centroid per level (on the running residual), in batches of
  ``assign_batch_size`` rows, returning int64 ``[n, 3]``. ``x`` may be a read-only memmap.
- :func:`assign_codes_reference` is the slow, obviously-correct numpy version (full distance matrix); tests check
  that both agree.
- Same inputs and seed → same codebooks and codes (faiss k-means is seeded; the sample is drawn with numpy's
  ``default_rng(seed)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from sid_index.tokens import NUM_LEVELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RQKMeansConfig:
    """Residual k-means settings. Defaults: demo-sized codebooks; the paper used (8192, 4096, 2048)."""

    codebook_sizes: tuple[int, int, int] = (256, 256, 256)
    seed: int = 0
    kmeans_iters: int = 20
    train_points_per_centroid: int = 256
    max_train_points: int | None = None
    assign_batch_size: int = 65536

    def __post_init__(self) -> None:
        sizes = tuple(self.codebook_sizes)
        if len(sizes) != NUM_LEVELS:
            raise ValueError(f"codebook_sizes must have {NUM_LEVELS} entries, given {len(sizes)}")
        for level, k in enumerate(sizes):
            if int(k) < 1:
                raise ValueError(f"codebook_sizes[{level}] must be >= 1, given {k}")
        object.__setattr__(self, "codebook_sizes", tuple(int(k) for k in sizes))
        if self.kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be >= 1, given {self.kmeans_iters}")
        if self.train_points_per_centroid < 1:
            raise ValueError(f"train_points_per_centroid must be >= 1, given {self.train_points_per_centroid}")
        if self.max_train_points is not None and self.max_train_points < max(self.codebook_sizes):
            raise ValueError(f"max_train_points must be >= the largest codebook ({max(self.codebook_sizes)}), "
                             f"given {self.max_train_points}")
        if self.assign_batch_size < 1:
            raise ValueError(f"assign_batch_size must be >= 1, given {self.assign_batch_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, given {self.seed}")

    def train_sample_size(self, n: int) -> int:
        """How many of ``n`` rows the codebooks are trained on."""
        cap = self.train_points_per_centroid * max(self.codebook_sizes)
        if self.max_train_points is not None:
            cap = min(cap, self.max_train_points)
        return min(n, cap)


def _check_x(x: np.ndarray) -> None:
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be 2-D [items >= 1, dim >= 1], given shape {list(x.shape)}")


def train_codebooks(x: np.ndarray, cfg: RQKMeansConfig) -> list[np.ndarray]:
    """Fit the 3 residual codebooks on a seeded sample of ``x`` ``[n, d]``; returns float32 ``[k_l, d]`` each."""
    import faiss

    _check_x(x)
    n, d = x.shape
    for level, k in enumerate(cfg.codebook_sizes):
        if k > n:
            raise ValueError(f"codebook_sizes[{level}] = {k} exceeds the {n} items to cluster "
                             f"(a codebook needs at least as many items as codes)")
    m = cfg.train_sample_size(n)
    if m < n:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(n, size=m, replace=False))
        sample = np.ascontiguousarray(x[rows], dtype=np.float32)
    else:
        sample = np.array(x, dtype=np.float32, copy=True, order="C")
    log.info("training %d-level RQ-KMeans %s on %d of %d rows", NUM_LEVELS, cfg.codebook_sizes, m, n)
    codebooks: list[np.ndarray] = []
    residual = sample
    for level, k in enumerate(cfg.codebook_sizes):
        km = faiss.Kmeans(d, k, niter=cfg.kmeans_iters, seed=cfg.seed + level, verbose=False,
                          max_points_per_centroid=max(1, -(-m // k)), min_points_per_centroid=1)
        km.train(residual)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32).reshape(k, d)
        codebooks.append(centroids)
        _, assign = km.index.search(residual, 1)
        residual -= centroids[assign[:, 0]]
    return codebooks


def _check_codebooks(codebooks: list[np.ndarray], d: int) -> None:
    if len(codebooks) != NUM_LEVELS:
        raise ValueError(f"codebooks must hold {NUM_LEVELS} levels, given {len(codebooks)}")
    for level, c in enumerate(codebooks):
        if c.ndim != 2 or c.shape[1] != d or c.shape[0] < 1:
            raise ValueError(f"codebooks[{level}] must have shape [k >= 1, {d}], given {list(c.shape)}")


def assign_codes(x: np.ndarray, codebooks: list[np.ndarray], batch_size: int = 65536) -> np.ndarray:
    """Nearest centroid per level on the running residual, ``batch_size`` rows at a time → int64 ``[n, 3]``."""
    import faiss

    _check_x(x)
    n, d = x.shape
    _check_codebooks(codebooks, d)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, given {batch_size}")
    indexes = []
    for c in codebooks:
        ix = faiss.IndexFlatL2(d)
        ix.add(np.ascontiguousarray(c, dtype=np.float32))
        indexes.append(ix)
    codes = np.empty((n, NUM_LEVELS), dtype=np.int64)
    for lo in range(0, n, batch_size):
        residual = np.array(x[lo : lo + batch_size], dtype=np.float32, copy=True, order="C")
        for level, (ix, c) in enumerate(zip(indexes, codebooks, strict=True)):
            _, a = ix.search(residual, 1)
            codes[lo : lo + residual.shape[0], level] = a[:, 0]
            residual -= c[a[:, 0]]
    return codes


def assign_codes_reference(x: np.ndarray, codebooks: list[np.ndarray]) -> np.ndarray:
    """Slow reference for :func:`assign_codes`: full squared-distance matrices in float64 numpy."""
    _check_x(x)
    _check_codebooks(codebooks, x.shape[1])
    residual = np.asarray(x, dtype=np.float64).copy()
    out = np.empty((x.shape[0], NUM_LEVELS), dtype=np.int64)
    for level, c in enumerate(codebooks):
        c64 = np.asarray(c, dtype=np.float64)
        dist = ((residual[:, None, :] - c64[None, :, :]) ** 2).sum(axis=2)
        out[:, level] = np.argmin(dist, axis=1)
        residual -= c64[out[:, level]]
    return out
