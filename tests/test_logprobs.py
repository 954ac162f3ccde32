"""``target_log_probs`` (gather − logsumexp, no full log-softmax) equals ``log_softmax(...).gather(...)``."""

from __future__ import annotations

import math

import pytest
import torch

from training.logprobs import at_least_fp32, target_log_probs


def test_by_hand() -> None:
    """logits (0, ln 3) → softmax (1/4, 3/4): log-probs ln(1/4) and ln(3/4)."""
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], dtype=torch.float64)
    got = target_log_probs(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(got, torch.tensor([math.log(0.25), math.log(0.75)], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_equals_log_softmax_gather_values_and_gradients(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    base = (torch.randn((3, 5, 4, 97), generator=gen) * 4).to(dtype)
    targets = torch.randint(0, 97, (3, 5, 4), generator=gen)
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    got = target_log_probs(a, targets)
    want = torch.log_softmax(at_least_fp32(b), dim=-1).gather(-1, targets[..., None])[..., 0]
    assert got.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
    torch.testing.assert_close(got, want)
    weights = torch.randn(got.shape, generator=gen, dtype=got.dtype)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad)


def test_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match="disagree"):
        target_log_probs(torch.zeros((2, 3, 5)), torch.zeros((2, 4), dtype=torch.long))
