"""Losses against numbers worked out by hand (each docstring shows the arithmetic), and their properties."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from sid_index.tokens import shared_prefix_len as scalar_shared_prefix_len
from training.losses import (
    DpoConfig,
    OrpoConfig,
    RadDpoConfig,
    SimpoConfig,
    dpo_loss,
    global_contrast_loss,
    log1mexp,
    multi_label_sft_loss,
    orpo_loss,
    rad_dpo_loss,
    shared_prefix_len,
    simpo_loss,
    tlgd_token_logps,
)


def _tok(mean: float, t: int = 4) -> list[float]:
    return [mean] * t


def test_dpo_by_hand() -> None:
    """β = 0.1, ℓ(y⁺) = −2, ℓ(y⁻) = −3, ℓ_ref(y⁺) = ℓ_ref(y⁻) = −2.5:
    margin = 0.1·[(−2 + 2.5) − (−3 + 2.5)] = 0.1·1.0 = 0.1;  L = −log σ(0.1) = log(1 + e^−0.1)
    = log(1 + 0.904837) = 0.644397.  Rewards: 0.1·0.5 = 0.05 and 0.1·(−0.5) = −0.05."""
    out = dpo_loss(torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-2.5]), torch.tensor([-2.5]), DpoConfig())
    assert out.loss.item() == pytest.approx(0.644397, abs=1e-6)
    assert out.chosen_reward.item() == pytest.approx(0.05) and out.rejected_reward.item() == pytest.approx(-0.05)


def test_dpo_equal_chosen_rejected_is_log2_and_no_gradient() -> None:
    """Identical policy and reference on both sides: margin 0, L = log 2 = 0.693147, gradient 0."""
    lp = torch.tensor([-1.3], requires_grad=True)
    out = dpo_loss(lp, lp, torch.tensor([-1.0]), torch.tensor([-1.0]), DpoConfig())
    assert out.loss.item() == pytest.approx(math.log(2))
    (g,) = torch.autograd.grad(out.loss.sum(), lp)
    assert g.abs().item() < 1e-7


def test_simpo_by_hand() -> None:
    """β = 2, γ = 1; y⁺ token log-probs all −0.5 (mean −0.5), y⁻ all −1 (mean −1):
    2·(−0.5) − 2·(−1) − 1 = −1 + 2 − 1 = 0 → L = log 2 = 0.693147.
    Second pair: y⁺ mean −0.25, y⁻ mean −1.5: −0.5 + 3 − 1 = 1.5 → log(1 + e^−1.5) = log 1.223130 = 0.201413."""
    out = simpo_loss(torch.tensor([_tok(-0.5), _tok(-0.25)]), torch.tensor([_tok(-1.0), _tok(-1.5)]), SimpoConfig())
    assert out.loss.tolist() == pytest.approx([0.693147, 0.201413], abs=1e-6)
    assert out.chosen_reward.tolist() == pytest.approx([-1.0, -0.5])


def test_orpo_by_hand() -> None:
    """λ = 0.1; y⁺ mean token log-prob log 0.5 → p = 0.5, odds 1, log odds 0; y⁻ mean log 0.2 → p = 0.2, odds 0.25,
    log odds −1.386294. Odds-ratio term: −log σ(1.386294) = log(1 + 0.25) = 0.223144. NLL(y⁺) = −log 0.5 = 0.693147.
    L = 0.693147 + 0.1·0.223144 = 0.715461."""
    out = orpo_loss(torch.tensor([_tok(math.log(0.5))]), torch.tensor([_tok(math.log(0.2))]), OrpoConfig())
    assert out.loss.item() == pytest.approx(0.715461, abs=1e-6)
    assert out.nll.item() == pytest.approx(0.693147, abs=1e-6)
    assert out.odds_ratio_loss.item() == pytest.approx(0.223144, abs=1e-6)
    assert out.chosen_reward.item() == pytest.approx(0.0, abs=1e-6)
    assert out.rejected_reward.item() == pytest.approx(-1.386294, abs=1e-6)


def test_log1mexp_is_stable_both_sides() -> None:
    x = torch.tensor([-1e-5, -0.5, -0.7, -3.0, -40.0], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), torch.log(1 - torch.exp(x)), rtol=1e-6, atol=1e-12)


def test_shared_prefix_len_by_hand() -> None:
    """y* = (1, 2, 3): (1, 2, 0) shares 2, (1, 0, 3) shares 1 (prefix stops at the first difference), (0, 2, 3)
    shares 0, (1, 2, 3) shares 3."""
    top = torch.tensor([[1, 2, 3]])
    neg = torch.tensor([[[1, 2, 0], [1, 0, 3], [0, 2, 3], [1, 2, 3]]])
    assert shared_prefix_len(top, neg).tolist() == [[2, 1, 0, 3]]


def test_batched_shared_prefix_len_agrees_with_the_scalar_one() -> None:
    """The batched tensor form equals ``sid_index.tokens.shared_prefix_len`` on every (y*, negative) of random codes
    (codes drawn from 3 values so that shared prefixes of every length 0..3 occur)."""
    g = torch.Generator().manual_seed(0)
    top = torch.randint(0, 3, (64, 3), generator=g)
    neg = torch.randint(0, 3, (64, 9, 3), generator=g)
    neg[:, 0] = top  # at least one identical SID per row
    got = shared_prefix_len(top, neg)
    want = [[scalar_shared_prefix_len(top[b].tolist(), neg[b, j].tolist()) for j in range(9)] for b in range(64)]
    assert got.tolist() == want
    assert set(got.flatten().tolist()) == {0, 1, 2, 3}


def test_multi_label_sft_by_hand() -> None:
    """Two positives with mean token log-probs −0.5 and −1.5 (third slot padding): (0.5 + 1.5)/2 = 1.0."""
    pos = torch.tensor([[_tok(-0.5), _tok(-1.5), _tok(-9.0)]])
    assert multi_label_sft_loss(pos, torch.tensor([[True, True, False]])).item() == pytest.approx(1.0)


def _session(neg_means: Sequence[float],
             pos_means: Sequence[float] = (-0.5, -1.5)) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.tensor([[_tok(m) for m in pos_means]], requires_grad=True)
    neg = torch.tensor([[_tok(m) for m in neg_means]], requires_grad=True)
    return pos, neg


def test_rad_dpo_by_hand() -> None:
    """β = 2, γ = 1; positives mean −0.5 (y*) and −1.5; negatives mean −1 and −2 → r* = −1, r̃ = (−2, −4);
    w = (1, 0.5): LSE(−2 + log 1, −4 + log 0.5) = log(e^−2 + 0.5·e^−4) = log(0.135335 + 0.009158)
    = log 0.144493 = −1.934524; argument −1.934524 + 1 + 1 = 0.065476; softplus = log(1 + 1.067668) = 0.726421.
    L_SFT = (0.5 + 1.5)/2 = 1.0 → L = 1.726421. Without ML-SFT: L_SFT = 0.5 → 1.226421. Without RDRW (w = 1):
    log(e^−2 + e^−4) = −1.873071, +2 → 0.126929, softplus = log(1 + 1.135335) = 0.758624 → L = 1.758624."""
    pos, neg = _session([-1.0, -2.0])
    args = (pos, torch.tensor([[True, True]]), torch.tensor([0]), neg, torch.tensor([[True, True]]),
            torch.tensor([[1, 0]]), torch.tensor([[1.0, 0.5]]))
    assert rad_dpo_loss(*args, RadDpoConfig()).loss.item() == pytest.approx(1.726421, abs=1e-5)
    assert rad_dpo_loss(*args, RadDpoConfig(ml_sft=False)).loss.item() == pytest.approx(1.226421, abs=1e-5)
    assert rad_dpo_loss(*args, RadDpoConfig(rdrw=False)).loss.item() == pytest.approx(1.758624, abs=1e-5)


def test_rad_dpo_preference_with_one_negative_equals_simpo() -> None:
    """N = 1, w = 1, no TLGD: softplus(r⁻ − r* + γ) = −log σ(r* − r⁻ − γ), SimPO exactly, value and gradient."""
    torch.manual_seed(0)
    top = (-torch.rand(5, 4) * 3).requires_grad_()
    neg = (-torch.rand(5, 4) * 3).requires_grad_()
    cfg = RadDpoConfig(tlgd=False, rdrw=False, lambda_sft=0.0)
    terms = rad_dpo_loss(top[:, None], torch.ones(5, 1, dtype=torch.bool), torch.zeros(5, dtype=torch.long),
                         neg[:, None], torch.ones(5, 1, dtype=torch.bool), torch.zeros(5, 1, dtype=torch.long),
                         torch.ones(5, 1), cfg)
    ref = simpo_loss(top, neg, SimpoConfig()).loss
    torch.testing.assert_close(terms.pref, ref.detach())
    g1 = torch.autograd.grad(terms.loss, (top, neg))
    g2 = torch.autograd.grad(ref.mean(), (top, neg))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)
    # the same with the weight passed as 1 while RDRW is on: log 1 = 0
    on = rad_dpo_loss(top[:, None], torch.ones(5, 1, dtype=torch.bool), torch.zeros(5, dtype=torch.long),
                      neg[:, None], torch.ones(5, 1, dtype=torch.bool), torch.zeros(5, 1, dtype=torch.long),
                      torch.ones(5, 1), RadDpoConfig(tlgd=False, lambda_sft=0.0))
    torch.testing.assert_close(on.pref, ref.detach())


def test_tlgd_keeps_value_and_zeroes_prefix_gradient() -> None:
    """Negative 0 shares 2 tokens with y*, negative 1 shares 0: with TLGD the loss is the same number, the
    gradient on negative 0's tokens 1–2 is exactly 0 and on its tokens 3–4 unchanged; negative 1 is untouched."""
    pos, neg = _session([-1.0, -2.0])
    neg.data[0, 0] = torch.tensor([-0.3, -0.7, -1.1, -0.2])
    args = dict(pos_valid=torch.tensor([[True, True]]), top_index=torch.tensor([0]),
                neg_valid=torch.tensor([[True, True]]), prefix_len=torch.tensor([[2, 0]]),
                neg_weights=torch.tensor([[1.0, 1.0]]))
    with_t = rad_dpo_loss(pos, neg_token_logps=neg, cfg=RadDpoConfig(), **args)
    without = rad_dpo_loss(pos, neg_token_logps=neg, cfg=RadDpoConfig(tlgd=False), **args)
    assert with_t.loss.item() == without.loss.item()
    (g_with,) = torch.autograd.grad(with_t.loss, neg)
    (g_without,) = torch.autograd.grad(without.loss, neg)
    assert g_with[0, 0, :2].abs().sum() == 0 and g_without[0, 0, :2].abs().min() > 0
    torch.testing.assert_close(g_with[0, 0, 2:], g_without[0, 0, 2:])
    torch.testing.assert_close(g_with[0, 1], g_without[0, 1])


def test_tlgd_token_logps_same_forward() -> None:
    x = torch.randn(2, 3, 4, requires_grad=True)
    p = torch.tensor([[0, 1, 3], [4, 2, 0]])
    y = tlgd_token_logps(x, p)
    assert torch.equal(y, x)
    (g,) = torch.autograd.grad(y.sum(), x)
    expect = (torch.arange(4)[None, None] >= p[..., None]).float()
    assert torch.equal(g, expect)


def test_rdrw_weights_are_detached_in_the_loss() -> None:
    """A weight that requires grad must not receive a gradient (w is a constant of the loss)."""
    pos, neg = _session([-1.0, -2.0])
    w = torch.tensor([[0.7, 0.9]], requires_grad=True)
    terms = rad_dpo_loss(pos, torch.tensor([[True, True]]), torch.tensor([0]), neg, torch.tensor([[True, True]]),
                         torch.tensor([[0, 0]]), w, RadDpoConfig())
    assert not terms.loss.requires_grad or torch.autograd.grad(terms.loss, w, allow_unused=True)[0] is None


def test_lower_weight_lowers_the_penalty() -> None:
    """log w enters the LSE: a down-weighted negative contributes less loss (never more)."""
    pos, neg = _session([-1.0, -2.0])
    common = (pos, torch.tensor([[True, True]]), torch.tensor([0]), neg, torch.tensor([[True, True]]),
              torch.tensor([[0, 0]]))
    full = rad_dpo_loss(*common, torch.tensor([[1.0, 1.0]]), RadDpoConfig()).loss.item()
    half = rad_dpo_loss(*common, torch.tensor([[0.5, 1.0]]), RadDpoConfig()).loss.item()
    assert half < full


def test_same_sid_negative_is_skipped_and_empty_rows_are_zero() -> None:
    """A negative with p = 3 (same SID as y*) leaves the LSE; a session without usable negatives has L_pref = 0."""
    r = global_contrast_loss(torch.tensor([-1.0]), torch.tensor([[-2.0, -3.0]]), torch.zeros(1, 2),
                             torch.tensor([[False, False]]), 1.0)
    assert r.item() == 0.0
    pos, neg = _session([-1.0, -0.5])
    common = (pos, torch.tensor([[True, True]]), torch.tensor([0]), neg, torch.tensor([[True, True]]))
    skip = rad_dpo_loss(*common, torch.tensor([[0, 3]]), torch.ones(1, 2), RadDpoConfig())
    only = rad_dpo_loss(*common, torch.tensor([[0, 0]]), torch.ones(1, 2),
                        RadDpoConfig(skip_same_sid_negatives=False))
    assert skip.neg_used.tolist() == [[True, False]] and only.neg_used.tolist() == [[True, True]]
    assert skip.pref.item() == pytest.approx(math.log1p(math.exp(-2.0 + 1.0 + 1.0)))  # only r = −2 left: log 2


@pytest.mark.parametrize(("cls", "kwargs", "field"), [
    (DpoConfig, {"beta": 0.0}, "beta"), (SimpoConfig, {"gamma": -1.0}, "gamma"), (OrpoConfig, {"lam": -0.1}, "lam"),
    (RadDpoConfig, {"beta": -2.0}, "beta"), (RadDpoConfig, {"lambda_sft": -1.0}, "lambda_sft"),
])
def test_config_validation_names_field(cls: type, kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_loss_configs_set_only_the_methods_knobs() -> None:
    from training.losses import DpoConfig, OrpoConfig, RadDpoConfig, SimpoConfig, loss_configs

    out = loss_configs("rad-dpo", beta=2.5, gamma=0.3, rad_switches={"tlgd": False})
    assert out["rad"] == RadDpoConfig(beta=2.5, gamma=0.3, tlgd=False)
    assert (out["dpo"], out["simpo"], out["orpo"]) == (DpoConfig(), SimpoConfig(), OrpoConfig())
    assert loss_configs("orpo", orpo_lambda=0.5)["orpo"] == OrpoConfig(lam=0.5)
    assert loss_configs("dpo")["dpo"] == DpoConfig()
    with pytest.raises(ValueError, match="gamma is not a knob of dpo"):
        loss_configs("dpo", gamma=0.3)
    with pytest.raises(ValueError, match="method must be one of"):
        loss_configs("ppo")
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        loss_configs("simpo", gamma=-1.0)
