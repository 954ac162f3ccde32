"""Per-token log-probabilities from logits: the one place radgr turns logits into the numbers its losses use.

Contract:
- ``target_log_probs(logits [..., V], targets [...])`` = ``log_softmax(logits)[target]`` over the full vocabulary,
  computed in at least float32 (``at_least_fp32``: half-precision logits are upcast, float32/float64 kept), so a
  bf16 model's losses are not computed in bf16. It is computed as ``logits[target] − logsumexp(logits)``: only
  one value per row is needed, so the full ``[..., V]`` log-softmax is never materialised (a test checks it
  against ``log_softmax(...).gather(...)``, values and gradients).
- Pure functions; gradients flow through ``logits``.
"""

from __future__ import annotations

import torch


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is float16/bfloat16, unchanged otherwise."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-prob of each target token under its logits row: ``[..., V]``, ``[...]`` long → ``[...]``."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {list(logits.shape)} and targets {list(targets.shape)} disagree on the leading "
                         f"dimensions")
    wide = at_least_fp32(logits)
    return wide.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(wide, dim=-1)
