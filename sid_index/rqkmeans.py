"""Residual k-means (RQ-KMeans) with faiss: 3 codebooks, each fitted to the residuals the previous left.

Contract:

- :func:`train_codebooks` draws a seeded training sample (:func:`train_sample_rows`; :func:`fit_codebooks` trains on
  a sample read elsewhere, e.g. streamed from disk) of at most ``train_points_per_centroid × max(k)`` rows
  (``max_train_points`` caps it further), runs faiss k-means on it level by level (level ``l`` on the sample's
  residuals after levels ``< l``, seed ``seed + l``), and returns :class:`Codebooks`: per level float32 centroids
  ``[k_l, d]`` and float32 biases ``[k_l]`` (all zero unless balanced). Memory is bounded by the sample, not by the
  catalog. A codebook larger than the points it must cluster raises ``ValueError`` naming the level and both numbers.
- Code of a residual ``r`` at a level: ``argmin_j ||r - c_j||² + b_j``. Plain residual k-means (the paper's
  method, the default) has ``b = 0``. ``balanced=True`` (opt-in) refines each level's k-means with a per-centroid
  bias fitted by dual ascent so that the sample's clusters get about equal sizes (balanced k-means), which spreads
  items over more codes when residuals are noise-like.
- :func:`assign_codes` codes every row level by level on the running residual, in batches of
  ``assign_batch_size`` rows, returning int64 ``[n, 3]``; ``x`` may be a read-only memmap. Biases ride along as an
  extra coordinate (``||[r, 0] - [c, √(b − min b)]||² = ||r − c||² + b − min b``), so faiss' flat L2 search does it.
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
    balanced: bool = False
    balance_rounds: int = 5

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
        if self.balance_rounds < 1:
            raise ValueError(f"balance_rounds must be >= 1, given {self.balance_rounds}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, given {self.seed}")

    def train_sample_size(self, n: int) -> int:
        """How many of ``n`` rows the codebooks are trained on."""
        cap = self.train_points_per_centroid * max(self.codebook_sizes)
        if self.max_train_points is not None:
            cap = min(cap, self.max_train_points)
        return min(n, cap)


@dataclass(frozen=True)
class Codebooks:
    """Per level: centroids float32 ``[k_l, d]`` and biases float32 ``[k_l]`` (zeros for plain k-means)."""

    centroids: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if len(self.centroids) != NUM_LEVELS or len(self.biases) != NUM_LEVELS:
            raise ValueError(f"codebooks must hold {NUM_LEVELS} levels, given {len(self.centroids)} centroid sets "
                             f"and {len(self.biases)} bias sets")
        d = self.centroids[0].shape[1] if self.centroids[0].ndim == 2 else -1
        for level, (c, b) in enumerate(zip(self.centroids, self.biases, strict=True)):
            if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] != d or d < 1:
                raise ValueError(f"codebooks centroids[{level}] must have shape [k >= 1, {d}], given {list(c.shape)}")
            if b.shape != (c.shape[0],) or not np.all(np.isfinite(b)):
                raise ValueError(f"codebooks biases[{level}] must be {c.shape[0]} finite numbers, "
                                 f"given shape {list(b.shape)}")

    @property
    def dim(self) -> int:
        return int(self.centroids[0].shape[1])

    @staticmethod
    def plain(centroids: list[np.ndarray]) -> Codebooks:
        """Codebooks without biases (plain nearest-centroid codes)."""
        cs = tuple(np.ascontiguousarray(c, dtype=np.float32) for c in centroids)
        return Codebooks(cs, tuple(np.zeros(c.shape[0], dtype=np.float32) for c in cs))


def _check_x(x: np.ndarray) -> None:
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be 2-D [items >= 1, dim >= 1], given shape {list(x.shape)}")


def _sq_dists(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared L2 distances ``[m, k]`` (float32, via the expansion; clipped at 0)."""
    d = (r * r).sum(1)[:, None] - 2.0 * (r @ c.T) + (c * c).sum(1)[None, :]
    clipped: np.ndarray = np.maximum(d, 0.0, out=d)
    return clipped


def fit_balance_bias(dists: np.ndarray, steps: int = 100) -> np.ndarray:
    """Per-centroid biases ``b`` so that ``argmin_j dists[i, j] + b[j]`` gives about ``m / k`` rows per centroid.

    Dual ascent on the capacity constraints: raise the bias of over-full centroids, lower that of under-full ones,
    step size relative to the typical gap between a row's best and second-best distance, decaying over steps."""
    m, k = dists.shape
    if k == 1:
        return np.zeros(1, dtype=np.float32)
    target = m / k
    part = np.partition(dists, 1, axis=1)
    scale = float(np.median(part[:, 1] - part[:, 0])) + 1e-6
    b = np.zeros(k, dtype=np.float32)
    for t in range(steps):
        counts = np.bincount(np.argmin(dists + b, axis=1), minlength=k)
        b += np.float32(0.5 * scale / (1.0 + 0.05 * t)) * ((counts - target) / target).astype(np.float32)
    shifted: np.ndarray = b - b.min()
    return shifted


def _balanced_refine(residual: np.ndarray, centroids: np.ndarray, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced k-means from a plain start: ``rounds`` × (fit biases, biased assignment, centroid means)."""
    c = centroids.copy()
    k = c.shape[0]
    for _ in range(rounds):
        dists = _sq_dists(residual, c)
        a = np.argmin(dists + fit_balance_bias(dists), axis=1)
        order = np.argsort(a, kind="stable")
        counts = np.bincount(a, minlength=k)
        nonempty = np.flatnonzero(counts)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        sums = np.add.reduceat(residual[order], starts[nonempty], axis=0)
        c[nonempty] = sums / counts[nonempty, None]
    return c, fit_balance_bias(_sq_dists(residual, c))


def train_sample_rows(n: int, cfg: RQKMeansConfig) -> np.ndarray | None:
    """The sorted rows of ``n`` the codebooks train on (seeded), or ``None`` when they train on all rows; checks
    that no codebook is larger than the ``n`` items it must cluster."""
    for level, k in enumerate(cfg.codebook_sizes):
        if k > n:
            raise ValueError(f"codebook_sizes[{level}] = {k} exceeds the {n} items to cluster "
                             f"(a codebook needs at least as many items as codes)")
    m = cfg.train_sample_size(n)
    if m == n:
        return None
    rows: np.ndarray = np.sort(np.random.default_rng(cfg.seed).choice(n, size=m, replace=False))
    return rows


def train_codebooks(x: np.ndarray, cfg: RQKMeansConfig) -> Codebooks:
    """Fit the 3 residual codebooks on a seeded sample of ``x`` ``[n, d]`` (module docstring)."""
    _check_x(x)
    rows = train_sample_rows(x.shape[0], cfg)
    if rows is not None:
        sample = np.ascontiguousarray(x[rows], dtype=np.float32)
    else:
        sample = np.array(x, dtype=np.float32, copy=True, order="C")
    return fit_codebooks(sample, cfg, total_rows=x.shape[0])


def fit_codebooks(sample: np.ndarray, cfg: RQKMeansConfig, total_rows: int) -> Codebooks:
    """Fit the codebooks on ``sample`` (the rows of :func:`train_sample_rows`, float32 C-contiguous; modified in
    place: it ends as the residuals); ``total_rows`` is only logged."""
    import faiss

    _check_x(sample)
    m, d = sample.shape
    if cfg.balanced and m * max(cfg.codebook_sizes) > 1 << 28:
        raise ValueError(f"balanced k-means keeps a [sample, k] distance matrix: train sample {m} × codebook "
                         f"{max(cfg.codebook_sizes)} must be <= 2**28; lower max_train_points")
    log.info("training %d-level RQ-KMeans %s on %d of %d rows%s", NUM_LEVELS, cfg.codebook_sizes, m, total_rows,
             " (balanced)" if cfg.balanced else "")
    centroids: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    residual = sample
    for level, k in enumerate(cfg.codebook_sizes):
        km = faiss.Kmeans(d, k, niter=cfg.kmeans_iters, seed=cfg.seed + level, verbose=False,
                          max_points_per_centroid=max(1, -(-m // k)), min_points_per_centroid=1)
        km.train(residual)
        c = np.ascontiguousarray(km.centroids, dtype=np.float32).reshape(k, d)
        if cfg.balanced:
            c, b = _balanced_refine(residual, c, cfg.balance_rounds)
            a = np.argmin(_sq_dists(residual, c) + b, axis=1)
        else:
            b = np.zeros(k, dtype=np.float32)
            _, a2 = km.index.search(residual, 1)
            a = a2[:, 0]
        centroids.append(c)
        biases.append(b.astype(np.float32))
        residual -= c[a]
    return Codebooks(tuple(centroids), tuple(biases))


def assign_codes(x: np.ndarray, codebooks: Codebooks, batch_size: int = 65536) -> np.ndarray:
    """Code per level on the running residual, ``batch_size`` rows at a time → int64 ``[n, 3]``."""
    import faiss

    _check_x(x)
    n, d = x.shape
    if codebooks.dim != d:
        raise ValueError(f"codebooks dim must equal the embeddings dim {d}, given {codebooks.dim}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, given {batch_size}")
    indexes = []
    for c, b in zip(codebooks.centroids, codebooks.biases, strict=True):
        ix = faiss.IndexFlatL2(d + 1)  # the extra coordinate carries the bias (module docstring)
        ix.add(np.ascontiguousarray(np.c_[c, np.sqrt(b - b.min())], dtype=np.float32))
        indexes.append(ix)
    codes = np.empty((n, NUM_LEVELS), dtype=np.int64)
    for lo in range(0, n, batch_size):
        block = np.asarray(x[lo : lo + batch_size], dtype=np.float32)
        query = np.zeros((block.shape[0], d + 1), dtype=np.float32)
        query[:, :d] = block
        residual = query[:, :d]  # a view: updating it updates the query
        for level, (ix, c) in enumerate(zip(indexes, codebooks.centroids, strict=True)):
            _, a = ix.search(query, 1)
            codes[lo : lo + block.shape[0], level] = a[:, 0]
            residual -= c[a[:, 0]]
    return codes


def assign_codes_reference(x: np.ndarray, codebooks: Codebooks) -> np.ndarray:
    """Slow reference for :func:`assign_codes`: full biased squared-distance matrices in float64 numpy."""
    _check_x(x)
    residual = np.asarray(x, dtype=np.float64).copy()
    out = np.empty((x.shape[0], NUM_LEVELS), dtype=np.int64)
    for level, (c, b) in enumerate(zip(codebooks.centroids, codebooks.biases, strict=True)):
        c64 = np.asarray(c, dtype=np.float64)
        dist = ((residual[:, None, :] - c64[None, :, :]) ** 2).sum(axis=2) + np.asarray(b, dtype=np.float64)
        out[:, level] = np.argmin(dist, axis=1)
        residual -= c64[out[:, level]]
    return out
