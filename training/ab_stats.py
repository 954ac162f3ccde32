"""A/B statistics by user: ratio metrics with delta-method standard errors, lifts with 95% intervals, power.

Contract (every metric is clustered by user, the unit that was randomised):
- A metric is a ratio of per-user sums, ``R = Σ_i x_i / Σ_i n_i`` (CTR: clicks over items shown; orders per
  session: orders over sessions; UCVR: ``x_i = 1`` if user i ordered, ``n_i = 1``, a plain mean).
  :func:`ratio_estimate` gives ``R`` and its standard error by the delta method over users: with
  ``d_i = (x_i − R·n_i) / n̄`` (``n̄`` the mean of ``n``), ``Var(R) ≈ s²(d) / m`` for ``m`` users, ``s²`` the sample
  variance (ddof 1). ``user_variance = s²(d)`` is the per-user variance power calculations use.
- :func:`lift` compares two independent arms: absolute difference ``D = R_B − R_A`` with
  ``se = √(Var_A + Var_B)``; relative lift ``L = R_B / R_A − 1`` with ``se = √(Var_B/R_A² + R_B²·Var_A/R_A⁴)``
  (delta method); normal intervals ``± z_{1−α/2}·se``; a two-sided p-value for ``D = 0``; and the users per arm
  needed to detect a difference of the observed size with the stated power, two-sided level ``α`` and a 50/50
  split: ``n = ⌈(z_{1−α/2} + z_{power})² · (σ²_A + σ²_B) / D²⌉`` (``None`` when ``D = 0``).
- :func:`bootstrap_se` is the slow reference for :func:`ratio_estimate` (users resampled with replacement); a
  test checks the two agree.
- Undefined quantities (no users, a zero denominator, one user's variance) are ``nan``, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class RatioEstimate:
    """``value`` = Σx / Σn over ``users`` users; ``se`` its delta-method standard error."""

    value: float
    se: float
    users: int
    user_variance: float  # s²(d): Var(value) ≈ user_variance / users


def ratio_estimate(x: Sequence[float] | np.ndarray, n: Sequence[float] | np.ndarray) -> RatioEstimate:
    """Σx/Σn and its standard error by the delta method over users (see the module docstring)."""
    xs = np.asarray(x, dtype=np.float64)
    ns = np.asarray(n, dtype=np.float64)
    if xs.shape != ns.shape or xs.ndim != 1:
        raise ValueError(f"ratio_estimate: x and n must be 1-D of one length, given {xs.shape} and {ns.shape}")
    m = len(xs)
    if m == 0 or float(ns.sum()) <= 0:
        return RatioEstimate(math.nan, math.nan, m, math.nan)
    r = float(xs.sum() / ns.sum())
    if m < 2:
        return RatioEstimate(r, math.nan, m, math.nan)
    d = (xs - r * ns) / float(ns.mean())
    var_user = float(d.var(ddof=1))
    return RatioEstimate(r, math.sqrt(var_user / m), m, var_user)


@dataclass(frozen=True)
class Lift:
    """B against A on one metric (see the module docstring)."""

    a: float
    b: float
    diff: float  # R_B − R_A
    diff_ci: tuple[float, float]
    rel: float  # R_B / R_A − 1
    rel_ci: tuple[float, float]
    p_value: float  # two-sided, D = 0
    significant: bool  # the interval of the difference excludes 0
    users_per_arm_needed: int | None  # to detect |D| at the stated power and level; None when D = 0 or undefined
    alpha: float
    power: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def required_users_per_arm(var_a: float, var_b: float, diff: float, alpha: float = ALPHA,
                           power: float = POWER) -> int | None:
    """Users per arm for a two-sided level-``alpha`` test of a difference ``diff`` to have ``power``."""
    if not (math.isfinite(var_a) and math.isfinite(var_b) and math.isfinite(diff)) or diff == 0:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return max(1, math.ceil(z * z * (var_a + var_b) / (diff * diff)))


def lift(a: RatioEstimate, b: RatioEstimate, alpha: float = ALPHA, power: float = POWER) -> Lift:
    """The lift of arm B over arm A with ``1 − alpha`` intervals, p-value and users needed (module docstring)."""
    if not 0 < alpha < 1:
        raise ValueError(f"lift: alpha must be in (0, 1), given {alpha}")
    if not 0 < power < 1:
        raise ValueError(f"lift: power must be in (0, 1), given {power}")
    z = NormalDist().inv_cdf(1 - alpha / 2)
    diff = b.value - a.value
    se_diff = math.sqrt(a.se**2 + b.se**2)
    if a.value != 0 and math.isfinite(a.value):
        # L = R_B/R_A − 1: ∂L/∂R_B = 1/R_A, ∂L/∂R_A = −R_B/R_A² (also defined when R_B = 0)
        rel = b.value / a.value - 1
        se_rel = math.sqrt(b.se**2 / a.value**2 + b.value**2 * a.se**2 / a.value**4)
    else:
        rel, se_rel = math.nan, math.nan
    if se_diff > 0:
        p = 2 * (1 - NormalDist().cdf(abs(diff) / se_diff))
    else:
        p = math.nan if not math.isfinite(diff) or diff == 0 else 0.0
    diff_ci = (diff - z * se_diff, diff + z * se_diff)
    return Lift(
        a=a.value, b=b.value, diff=diff, diff_ci=diff_ci, rel=rel, rel_ci=(rel - z * se_rel, rel + z * se_rel),
        p_value=p, significant=bool(diff_ci[0] > 0 or diff_ci[1] < 0),
        users_per_arm_needed=required_users_per_arm(a.user_variance, b.user_variance, diff, alpha, power),
        alpha=alpha, power=power,
    )


def bootstrap_se(x: Sequence[float] | np.ndarray, n: Sequence[float] | np.ndarray, resamples: int = 2000,
                 seed: int = 0) -> float:
    """Slow reference: standard deviation of Σx/Σn over users resampled with replacement."""
    xs = np.asarray(x, dtype=np.float64)
    ns = np.asarray(n, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(xs), size=(resamples, len(xs)))
    values = xs[idx].sum(axis=1) / ns[idx].sum(axis=1)
    return float(values.std(ddof=1))
