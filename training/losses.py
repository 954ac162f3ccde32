"""Preference losses as pure functions on per-token log-probs (equations cited at each function).

Notation (as in docs/alignment.md): ``ℓ_t(y) = log π_θ(y_t | x, y_<t)``, ``ℓ(y) = Σ_t ℓ_t(y)``, ``|y|`` = tokens
(4: 3 SID tokens + EOS), ``σ`` = sigmoid, ``sg`` = stop-gradient (``.detach()``).

Contract
--------
- Inputs are tensors of per-token log-probs ``[..., T]`` (from :mod:`training.packing`), never logits. Every
  function returns per-example losses (no reduction) plus what the trainer logs, so callers decide how to average.
- The three baselines work on the **pairwise decomposition**: one row per (y⁺, y⁻) pair.
  ``dpo_loss`` needs the frozen reference model's summed log-probs; ``simpo_loss`` and ``orpo_loss`` do not.
- RAD-DPO works on whole sessions: every positive (for the multi-label SFT term) and the top-tier positive y*
  against all N negatives at once (log-sum-exp). ``RadDpoConfig.tlgd`` / ``rdrw`` / ``ml_sft`` are the three
  ablation switches. Parts marked [R] are our reconstructions (docs/alignment.md, "What is the paper's, what is
  reconstructed"); their defaults live in the configs below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

_NEG_LARGE = -1e9  # stands for -inf in masked log-sum-exps (keeps gradients finite)


# --------------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class DpoConfig:
    """DPO (Rafailov et al. 2023) with its paper's default β."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"DpoConfig.beta must be > 0, given {self.beta}")


@dataclass(frozen=True)
class SimpoConfig:
    """SimPO (Meng et al. 2024) with its paper's defaults (γ/β = 0.5)."""

    beta: float = 2.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"SimpoConfig.beta must be > 0, given {self.beta}")
        if self.gamma < 0:
            raise ValueError(f"SimpoConfig.gamma must be >= 0, given {self.gamma}")


@dataclass(frozen=True)
class OrpoConfig:
    """ORPO (Hong et al. 2024) with its paper's default λ."""

    lam: float = 0.1

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"OrpoConfig.lam must be >= 0, given {self.lam}")


@dataclass(frozen=True)
class RadDpoConfig:
    """RAD-DPO's loss. β, γ are SimPO's defaults [R]; λ_sft = λ_pref = 1 [R]; the switches are the ablations.

    ``ml_sft=False`` ("without multi-label SFT") is read as: the SFT term covers the top-tier positive y* only
    (ordinary single-label SFT) instead of every positive — our reading, documented in docs/alignment.md.
    ``skip_same_sid_negatives`` [R]: a negative whose SID equals y*'s (an item collision) is the very same token
    sequence, so contrasting it is meaningless; it is left out of the log-sum-exp.
    """

    beta: float = 2.0
    gamma: float = 1.0
    lambda_sft: float = 1.0
    lambda_pref: float = 1.0
    tlgd: bool = True
    rdrw: bool = True
    ml_sft: bool = True
    skip_same_sid_negatives: bool = True

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"RadDpoConfig.beta must be > 0, given {self.beta}")
        if self.gamma < 0:
            raise ValueError(f"RadDpoConfig.gamma must be >= 0, given {self.gamma}")
        if self.lambda_sft < 0 or self.lambda_pref < 0:
            raise ValueError(f"RadDpoConfig.lambda_sft and lambda_pref must be >= 0, "
                             f"given {self.lambda_sft}, {self.lambda_pref}")


LOSS_KNOBS: dict[str, tuple[str, ...]] = {"dpo": ("beta",), "simpo": ("beta", "gamma"), "orpo": ("orpo_lambda",),
                                          "rad-dpo": ("beta", "gamma")}


def loss_configs(method: str, *, beta: float | None = None, gamma: float | None = None,
                 orpo_lambda: float | None = None, rad_switches: dict[str, bool] | None = None) -> dict[str, Any]:
    """``{"dpo", "simpo", "orpo", "rad"}`` configs with ``method``'s knobs set where given (None: the default).

    A knob the method does not have (e.g. ``gamma`` for dpo) raises, naming the knob and the method.
    """
    if method not in LOSS_KNOBS:
        raise ValueError(f"method must be one of {', '.join(LOSS_KNOBS)}, given {method!r}")
    given = {"beta": beta, "gamma": gamma, "orpo_lambda": orpo_lambda}
    stray = [k for k, v in given.items() if v is not None and k not in LOSS_KNOBS[method]]
    if stray:
        raise ValueError(f"{', '.join(stray)} is not a knob of {method} (it has {', '.join(LOSS_KNOBS[method])})")
    knobs = {("lam" if k == "orpo_lambda" else k): v for k, v in given.items() if v is not None}
    out: dict[str, Any] = {"dpo": DpoConfig(), "simpo": SimpoConfig(), "orpo": OrpoConfig(),
                           "rad": RadDpoConfig(**(rad_switches or {}))}
    key = "rad" if method == "rad-dpo" else method
    out[key] = replace(out[key], **knobs)
    return out


# ------------------------------------------------------------------------------------------------- helpers
def sequence_logps(token_logps: torch.Tensor) -> torch.Tensor:
    """ℓ(y) = Σ_t ℓ_t(y): ``[..., T] -> [...]``."""
    return token_logps.sum(dim=-1)


def length_normalised_reward(token_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """SimPO's reward r(y) = β/|y| · ℓ(y): ``[..., T] -> [...]``."""
    return beta * token_logps.mean(dim=-1)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, stable on both sides of −log 2 (Mächler 2012). x is clamped to ≤ −1e-7."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def shared_prefix_len(top_codes: torch.Tensor, neg_codes: torch.Tensor) -> torch.Tensor:
    """p_j = length of the longest common prefix of y⁻_j and y* in SID tokens (TLGD [P]).

    The batched tensor form of ``sid_index.tokens.shared_prefix_len`` (a test checks they agree on random codes):
    ``top_codes [B, 3]``, ``neg_codes [B, N, 3]`` → int64 ``[B, N]`` in 0..3.
    """
    equal = top_codes[:, None, :] == neg_codes  # [B, N, 3]
    return torch.cumprod(equal.long(), dim=-1).sum(dim=-1)


def tlgd_token_logps(neg_token_logps: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
    """TLGD [P]: ℓ̃_t(y⁻_j) = sg(ℓ_t) if t ≤ p_j else ℓ_t (t 1-based), same value, no gradient on the prefix.

    ``neg_token_logps [B, N, T]``, ``prefix_len [B, N]`` → ``[B, N, T]``.
    """
    t = torch.arange(neg_token_logps.shape[-1], device=neg_token_logps.device)
    in_prefix = t[None, None, :] < prefix_len[..., None]  # 0-based t < p  ⇔  1-based t ≤ p
    return torch.where(in_prefix, neg_token_logps.detach(), neg_token_logps)


# ----------------------------------------------------------------------------------------------- baselines
@dataclass(frozen=True)
class PairLoss:
    """Per-pair outputs of a baseline: loss [P], chosen/rejected rewards [P] (for margins)."""

    loss: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor


def dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
    cfg: DpoConfig,
) -> PairLoss:
    """DPO, Rafailov 2023 eq. 7 (TRL ``loss_type="sigmoid"``), on summed log-probs ``[P]``:

    L = −log σ(β[(ℓ(y⁺) − ℓ_ref(y⁺)) − (ℓ(y⁻) − ℓ_ref(y⁻))]); rewards β(ℓ − ℓ_ref).
    """
    chosen = cfg.beta * (policy_chosen - ref_chosen.detach())
    rejected = cfg.beta * (policy_rejected - ref_rejected.detach())
    return PairLoss(-F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach())


def simpo_loss(chosen_token_logps: torch.Tensor, rejected_token_logps: torch.Tensor, cfg: SimpoConfig) -> PairLoss:
    """SimPO, Meng 2024 eq. 6 (TRL CPO ``loss_type="simpo"``, ``cpo_alpha=0``), on ``[P, T]``:

    L = −log σ(β/|y⁺|·ℓ(y⁺) − β/|y⁻|·ℓ(y⁻) − γ).
    """
    chosen = length_normalised_reward(chosen_token_logps, cfg.beta)
    rejected = length_normalised_reward(rejected_token_logps, cfg.beta)
    return PairLoss(-F.logsigmoid(chosen - rejected - cfg.gamma), chosen.detach(), rejected.detach())


@dataclass(frozen=True)
class OrpoLoss(PairLoss):
    nll: torch.Tensor  # [P], detached (logging)
    odds_ratio_loss: torch.Tensor  # [P], detached (logging)


def orpo_loss(chosen_token_logps: torch.Tensor, rejected_token_logps: torch.Tensor, cfg: OrpoConfig) -> OrpoLoss:
    """ORPO, Hong 2024 eqs. 2–6 (TRL ``odds_ratio_loss``), on ``[P, T]``:

    L = NLL(y⁺) + λ·(−log σ(log odds(y⁺) − log odds(y⁻))), NLL(y⁺) = −ℓ(y⁺)/|y⁺|,
    odds(y) = p/(1 − p) with p = exp(ℓ(y)/|y|), so log odds(y) = ℓ/|y| − log(1 − exp(ℓ/|y|)).
    Rewards logged are the log odds.
    """
    mean_c = chosen_token_logps.mean(dim=-1)
    mean_r = rejected_token_logps.mean(dim=-1)
    log_odds_c = mean_c - log1mexp(mean_c)
    log_odds_r = mean_r - log1mexp(mean_r)
    ratio = -F.logsigmoid(log_odds_c - log_odds_r)
    nll = -mean_c
    return OrpoLoss(nll + cfg.lam * ratio, log_odds_c.detach(), log_odds_r.detach(), nll.detach(), ratio.detach())


# ------------------------------------------------------------------------------------------------- RAD-DPO
def multi_label_sft_loss(pos_token_logps: torch.Tensor, pos_valid: torch.Tensor) -> torch.Tensor:
    """MLGC's multi-label SFT [P; form R]: L_SFT = −(1/|Y⁺|) Σ_{y∈Y⁺} (1/|y|) Σ_t ℓ_t(y).

    ``pos_token_logps [B, P, T]``, ``pos_valid [B, P]`` (at least one True per row) → ``[B]``.
    """
    per_pos = -pos_token_logps.mean(dim=-1) * pos_valid
    return per_pos.sum(dim=-1) / pos_valid.sum(dim=-1).clamp(min=1)


def global_contrast_loss(
    top_reward: torch.Tensor, neg_rewards: torch.Tensor, neg_log_weights: torch.Tensor, neg_valid: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """MLGC's global preference contrast with RDRW weights [P, S; form R]:

    L_pref = softplus( LSE_j [ r̃(y⁻_j) + log w_j ] − r(y*) + γ ) = −log σ(−log Σ_j w_j·exp(r̃_j − r* + γ)).

    ``top_reward [B]``, ``neg_rewards / neg_log_weights / neg_valid [B, N]`` → ``[B]``; a row without a valid
    negative gives 0 (and no gradient).
    """
    logits = torch.where(neg_valid, neg_rewards + neg_log_weights.detach(), torch.full_like(neg_rewards, _NEG_LARGE))
    lse = torch.logsumexp(logits, dim=-1)
    has_neg = neg_valid.any(dim=-1)
    return torch.where(has_neg, F.softplus(lse - top_reward + gamma), torch.zeros_like(lse))


@dataclass(frozen=True)
class RadDpoTerms:
    """RAD-DPO's outputs. ``loss`` is the scalar to optimise; the rest is for logging (detached)."""

    loss: torch.Tensor  # scalar: per_session.mean()
    per_session: torch.Tensor  # [B]: λ_sft·L_SFT + λ_pref·L_pref of each session (with gradient)
    sft: torch.Tensor  # [B]
    pref: torch.Tensor  # [B]
    top_reward: torch.Tensor  # [B]
    neg_rewards: torch.Tensor  # [B, N]
    neg_used: torch.Tensor  # bool [B, N]: the negatives that entered the log-sum-exp


def rad_dpo_loss(
    pos_token_logps: torch.Tensor,
    pos_valid: torch.Tensor,
    top_index: torch.Tensor,
    neg_token_logps: torch.Tensor,
    neg_valid: torch.Tensor,
    prefix_len: torch.Tensor,
    neg_weights: torch.Tensor,
    cfg: RadDpoConfig,
) -> RadDpoTerms:
    """RAD-DPO = MLGC + TLGD + RDRW (docs/alignment.md, "What is the paper's, what is reconstructed"):

    L = λ_sft·L_SFT + λ_pref·L_pref per session, averaged over sessions (L_pref = 0 for a session without a
    usable negative).

    Shapes: ``pos_token_logps [B, P, T]``, ``pos_valid [B, P]``, ``top_index [B]`` (index of y* among the
    positives), ``neg_token_logps [B, N, T]``, ``neg_valid [B, N]``, ``prefix_len [B, N]`` (shared SID prefix of
    each negative with y*, see :func:`shared_prefix_len`), ``neg_weights [B, N]`` (RDRW weights in (0, 1],
    detached; ignored when ``cfg.rdrw`` is False).
    """
    bsz = pos_token_logps.shape[0]
    top_tok = pos_token_logps[torch.arange(bsz, device=pos_token_logps.device), top_index]  # [B, T]
    # without multi-label SFT: single-label SFT on y* only (our reading of the ablation)
    sft = multi_label_sft_loss(pos_token_logps, pos_valid) if cfg.ml_sft else -top_tok.mean(dim=-1)
    neg_tok = tlgd_token_logps(neg_token_logps, prefix_len) if cfg.tlgd else neg_token_logps
    top_reward = length_normalised_reward(top_tok, cfg.beta)
    neg_rewards = length_normalised_reward(neg_tok, cfg.beta)
    used = neg_valid
    if cfg.skip_same_sid_negatives:
        used = used & (prefix_len < 3)
    log_w = torch.log(neg_weights.detach().clamp(min=1e-12)) if cfg.rdrw else torch.zeros_like(neg_rewards)
    pref = global_contrast_loss(top_reward, neg_rewards, log_w, used, cfg.gamma)
    per_session = cfg.lambda_sft * sft + cfg.lambda_pref * pref
    return RadDpoTerms(per_session.mean(), per_session, sft.detach(), pref.detach(), top_reward.detach(),
                       neg_rewards.detach(), used)
