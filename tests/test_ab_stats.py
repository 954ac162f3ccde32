"""A/B statistics on hand-made numbers (derived in each docstring), and the delta method against the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.ab_stats import (
    RatioEstimate,
    bootstrap_se,
    lift,
    ratio_estimate,
    required_users_per_arm,
)


def test_binary_metric_and_lift_by_hand() -> None:
    """UCVR-like (n_i = 1). A: x = 1,0,1,0 → R = 0.5, d_i = x_i − 0.5 = ±0.5, s² = 4·0.25/3 = 1/3, se = √(1/12).
    B: x = 1,1,1,0 → R = 0.75, d = .25,.25,.25,−.75, s² = (3·.0625 + .5625)/3 = 0.25, se = √(0.25/4) = 0.25.
    D = 0.25, se_D = √(1/12 + 1/16) = √(7/48) = 0.381881; CI = 0.25 ± 1.959964·0.381881 = [−0.498473, 0.998473];
    z = 0.654654, p = 2·(1 − Φ(z)) = 0.512691.
    L = 0.75/0.5 − 1 = 0.5; se_L = √(Var_B/R_A² + R_B²·Var_A/R_A⁴) = √(0.0625/0.25 + 0.5625·(1/12)/0.0625) = √1 = 1.
    Users per arm: (1.959964 + 0.841621)² · (1/3 + 1/4) / 0.25² = 7.848879 · 9.3333 = 73.26 → 74.
    """
    a = ratio_estimate([1, 0, 1, 0], [1, 1, 1, 1])
    b = ratio_estimate([1, 1, 1, 0], [1, 1, 1, 1])
    assert (a.value, a.users) == (0.5, 4) and a.user_variance == pytest.approx(1 / 3)
    assert a.se == pytest.approx(math.sqrt(1 / 12))
    assert (b.value, b.se, b.user_variance) == pytest.approx((0.75, 0.25, 0.25))
    lf = lift(a, b)
    assert lf.diff == pytest.approx(0.25)
    assert lf.diff_ci == pytest.approx((-0.498473, 0.998473), abs=1e-6)
    assert lf.p_value == pytest.approx(0.512691, abs=1e-6)
    assert lf.rel == pytest.approx(0.5)
    assert lf.rel_ci == pytest.approx((0.5 - 1.959964, 0.5 + 1.959964), abs=1e-6)
    assert not lf.significant
    assert lf.users_per_arm_needed == 74


def test_ratio_metric_delta_method_by_hand() -> None:
    """CTR-like: x = clicks 2,0,4 over n = shown 2,2,4 → R = 6/8 = 0.75, n̄ = 8/3,
    d_i = (x_i − 0.75·n_i)/n̄ = (0.5, −1.5, 1)·3/8 = (0.1875, −0.5625, 0.375), mean 0,
    s² = (0.03515625 + 0.31640625 + 0.140625)/2 = 0.24609375, se = √(0.24609375/3) = 0.286411.
    (A user-level mean of the per-user CTRs, (1 + 0 + 1)/3 = 0.667, is *not* the metric.)"""
    e = ratio_estimate([2, 0, 4], [2, 2, 4])
    assert e.value == 0.75
    assert e.user_variance == pytest.approx(0.24609375)
    assert e.se == pytest.approx(0.286411, abs=1e-6)


def test_power_by_hand_and_edge_cases() -> None:
    """(z_.975 + z_.8)² = 2.801585² = 7.848879; σ² = 0.25 + 0.25, D = 0.1 → 7.848879·0.5/0.01 = 392.44 → 393.
    At 90% power z_.9 = 1.281552: (3.241516)² = 10.507423 → ·50 = 525.37 → 526."""
    assert required_users_per_arm(0.25, 0.25, 0.1) == 393
    assert required_users_per_arm(0.25, 0.25, -0.1) == 393
    assert required_users_per_arm(0.25, 0.25, 0.1, power=0.9) == 526
    assert required_users_per_arm(0.25, 0.25, 0.0) is None
    assert required_users_per_arm(math.nan, 0.25, 0.1) is None
    # no users, a zero denominator, one user: nan, never an exception
    assert math.isnan(ratio_estimate([], []).value)
    assert math.isnan(ratio_estimate([0, 0], [0, 0]).value)
    one = ratio_estimate([1], [2])
    assert one.value == 0.5 and math.isnan(one.se)
    with pytest.raises(ValueError, match="1-D of one length"):
        ratio_estimate([1, 2], [1])


def test_lift_when_b_never_converts() -> None:
    """B = 0 with se 0: L = −1 exactly; se_L = √(0/R_A² + 0) = 0, so the interval is the point −1;
    D = −0.5 with se_D = se_A = 0.25: z = 2, p = 2·(1 − Φ(2)) = 0.045500, significant."""
    a = RatioEstimate(0.5, 0.25, 10, 0.625)
    b = RatioEstimate(0.0, 0.0, 10, 0.0)
    lf = lift(a, b)
    assert lf.rel == -1.0 and lf.rel_ci == (-1.0, -1.0)
    assert lf.p_value == pytest.approx(0.045500, abs=1e-6)
    assert lf.significant
    with pytest.raises(ValueError, match="alpha must be in"):
        lift(a, b, alpha=1.5)


def test_delta_method_agrees_with_the_user_bootstrap() -> None:
    """Slow reference: on 3,000 simulated users (Poisson sessions, 10 items shown each, clustered click
    propensities), the delta-method standard error of CTR and UCVR is within 10% of the user bootstrap's."""
    rng = np.random.default_rng(0)
    sessions = rng.poisson(3, size=3000) + 1
    shown = 10 * sessions
    propensity = rng.beta(1, 12, size=3000)  # users differ: clicks cluster by user
    clicks = rng.binomial(shown, propensity)
    ordered = (rng.random(3000) < 0.3 + propensity).astype(np.float64)
    for x, n in ((clicks, shown), (ordered, np.ones(3000))):
        delta = ratio_estimate(x, n).se
        boot = bootstrap_se(x, n, resamples=1000, seed=1)
        assert delta == pytest.approx(boot, rel=0.1)
    # ignoring the clustering (one Bernoulli per item shown) understates the error of CTR
    ctr = clicks.sum() / shown.sum()
    naive = math.sqrt(ctr * (1 - ctr) / shown.sum())
    assert naive < 0.8 * ratio_estimate(clicks, shown).se
