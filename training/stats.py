"""Confidence intervals and paired tests for retrieval metrics, over test sessions and training seeds.

Contract (docs/alignment.md, "Statistics"):
- A *sample* of one metric of one method is a ``[seeds, sessions]`` array of per-session values (``num``), and,
  for a ratio metric such as the hallucination rate (invalid / generated SIDs, pooled), a matching ``den``; the
  estimate is ``num.mean()``, or ``num.sum() / den.sum()`` for a ratio. One evaluated checkpoint is one seed.
- ``bootstrap_ci(sample)``: percentile bootstrap of the estimate, resampling sessions (and, with more than one
  seed, seeds) with replacement; ``level`` 0.95 by default, ``resamples`` 2,000, a fixed ``seed`` so a report
  is reproducible.
- ``paired_difference(a, b)``: the difference a − b over the *same* sessions (and, when both have the same number
  of seeds, the same seeds: seed k of a is paired with seed k of b), by a paired bootstrap drawing one set of
  session (and seed) indices per resample for both methods. Returns the difference, its percentile CI, its
  standard error (sd of the resampled differences) and a two-sided bootstrap p-value ``2 × min(P*(Δ ≤ 0),
  P*(Δ ≥ 0))`` (floored at 1 / resamples), which is below 0.05 exactly when the 95 % percentile interval
  excludes 0. ``paired_se`` is the analytic one: sd of the per-session seed-averaged differences / √sessions.
- ``significance_mark(p)``: ``*`` for p < 0.05, ``**`` for p < 0.01, ``""`` otherwise.
Pure numpy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_RESAMPLES = 2000
ALPHA = 0.05


@dataclass(frozen=True)
class MetricSample:
    """Per-session values ``num`` [seeds, sessions] (and ``den`` for a ratio metric) of one method."""

    num: np.ndarray
    den: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.num.ndim != 2 or self.num.shape[0] < 1 or self.num.shape[1] < 1:
            raise ValueError(f"num must be [seeds >= 1, sessions >= 1], given shape {self.num.shape}")
        if self.den is not None and self.den.shape != self.num.shape:
            raise ValueError(f"den must have num's shape {self.num.shape}, given {self.den.shape}")

    @classmethod
    def of(cls, rows: npt.ArrayLike, den: npt.ArrayLike | None = None) -> MetricSample:
        return cls(np.asarray(rows, dtype=np.float64), None if den is None else np.asarray(den, dtype=np.float64))

    @property
    def seeds(self) -> int:
        return int(self.num.shape[0])

    @property
    def sessions(self) -> int:
        return int(self.num.shape[1])

    def estimate(self) -> float:
        if self.den is None:
            return float(self.num.mean())
        total = float(self.den.sum())
        return float(self.num.sum()) / total if total > 0 else float("nan")

    def per_session(self) -> np.ndarray:
        """[sessions] seed-averaged values (ratio metrics: per-session ratio of the seed sums; 0/0 -> 0)."""
        if self.den is None:
            return np.asarray(self.num.mean(axis=0))
        den = self.den.sum(axis=0)
        return np.asarray(np.divide(self.num.sum(axis=0), den, out=np.zeros_like(den), where=den > 0))

    def resampled(self, seed_idx: np.ndarray, session_idx: np.ndarray) -> np.ndarray:
        """[R] estimates for R resamples: seed_idx [R, seeds], session_idx [R, sessions] (indices drawn)."""
        num = self.num[seed_idx[:, :, None], session_idx[:, None, :]]  # [R, seeds, sessions]
        if self.den is None:
            return np.asarray(num.mean(axis=(1, 2)))
        den = self.den[seed_idx[:, :, None], session_idx[:, None, :]].sum(axis=(1, 2))
        return np.asarray(np.divide(num.sum(axis=(1, 2)), den, out=np.full_like(den, np.nan), where=den > 0))


def _draw(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros((resamples, 1), dtype=np.int64)
    return rng.integers(0, n, size=(resamples, n))


def bootstrap_ci(sample: MetricSample, *, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> dict[str, float]:
    """``{"estimate", "lo", "hi", "se"}``: percentile bootstrap over sessions (and seeds when more than one)."""
    _check(level, resamples)
    rng = np.random.default_rng(seed)
    stats = sample.resampled(_draw(rng, resamples, sample.seeds), _draw(rng, resamples, sample.sessions))
    lo, hi = np.nanquantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": sample.estimate(), "lo": float(lo), "hi": float(hi), "se": float(np.nanstd(stats, ddof=1))}


def paired_difference(a: MetricSample, b: MetricSample, *, level: float = 0.95,
                      resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """a − b on the same sessions (and seeds): ``{"diff", "lo", "hi", "se", "p", "paired_se", "sessions"}``."""
    _check(level, resamples)
    if a.sessions != b.sessions:
        raise ValueError(f"a and b must hold the same sessions, given {a.sessions} and {b.sessions}")
    rng = np.random.default_rng(seed)
    sessions = _draw(rng, resamples, a.sessions)
    seeds_a = _draw(rng, resamples, a.seeds)
    # the same seed indices for both when seeds pair up (seed k of a with seed k of b), else independent draws
    seeds_b = seeds_a if b.seeds == a.seeds else _draw(rng, resamples, b.seeds)
    diffs = a.resampled(seeds_a, sessions) - b.resampled(seeds_b, sessions)
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    p = 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0)))
    d = a.per_session() - b.per_session()
    return {"diff": a.estimate() - b.estimate(), "lo": float(lo), "hi": float(hi),
            "se": float(np.std(diffs, ddof=1)), "p": float(min(1.0, max(p, 1.0 / resamples))),
            "paired_se": paired_se(d), "sessions": a.sessions}


def paired_se(per_session_diff: np.ndarray) -> float:
    """Analytic standard error of a mean paired difference: sd (ddof 1) / √n."""
    d = np.asarray(per_session_diff, dtype=np.float64)
    if d.size < 2:
        return float("nan")
    return float(d.std(ddof=1) / np.sqrt(d.size))


def sessions_needed(per_session_sd: float, target_se: float) -> int:
    """Sessions for a paired standard error of at most ``target_se``: ⌈(sd / target)²⌉."""
    if not target_se > 0:
        raise ValueError(f"target_se must be > 0, given {target_se}")
    return int(np.ceil((per_session_sd / target_se) ** 2))


def significance_mark(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return "**" if p < 0.01 else "*" if p < ALPHA else ""


def _check(level: float, resamples: int) -> None:
    if not 0.5 <= level < 1.0:
        raise ValueError(f"level must be in [0.5, 1), given {level}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, given {resamples}")
