"""RDRW: the weight formula by hand, warm-up, the sliding window's quartiles, detachment, save/restore."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import torch

from training.rdrw import RdrwConfig, RdrwState, pair_similarity, rdrw_weight


def test_weight_by_hand() -> None:
    """Q1 = 0.2, Q2 = 0.4, Q3 = 0.6 (IQR 0.4), k = 12, w_min = 0.5, ε = 1e-6 (negligible):
    s = Q2 → σ(0) = 0.5 → w = 1 − 0.5·0.5 = 0.75;
    s = 0.6 → z = 12·0.2/0.4 = 6, σ(6) = 0.997527 → w = 1 − 0.5·0.997527 = 0.501237;
    s = 0.2 → z = −6, σ(−6) = 0.002473 → w = 0.998763."""
    w = rdrw_weight(torch.tensor([0.4, 0.6, 0.2]), 0.2, 0.4, 0.6, RdrwConfig())
    assert w.tolist() == pytest.approx([0.75, 0.501237, 0.998763], abs=1e-5)


def test_weight_is_monotone_and_bounded() -> None:
    s = torch.linspace(-1, 1, 101)
    w = rdrw_weight(s, -1.0, 0.0, 1.0, RdrwConfig())
    assert bool((w[1:] < w[:-1]).all()) and w.min() > 0.5 and w.max() < 1.0
    sat = rdrw_weight(s, -0.1, 0.0, 0.1, RdrwConfig())  # saturates in float32 but stays in [w_min, 1]
    assert bool((sat[1:] <= sat[:-1]).all()) and sat.min() >= 0.5 and sat.max() <= 1.0


def test_similarity_by_hand_and_detached() -> None:
    """cos((1,0), (1,0)) = 1, cos((1,0), (0,2)) = 0, cos((1,0), (−3,0)) = −1; input grads are cut."""
    h_top = torch.tensor([[1.0, 0.0]], requires_grad=True)
    h_neg = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]], requires_grad=True)
    s = pair_similarity(h_top, h_neg)
    assert s[0].tolist() == pytest.approx([1.0, 0.0, -1.0])
    assert not s.requires_grad


def test_warmup_gives_ones_then_window_quartiles() -> None:
    """M = 8: the first 8 pairs (two batches of 4) weigh 1; then the quartiles of exactly those 8 values set the
    weights of the next batch, and the window slides (the oldest values drop)."""
    cfg = RdrwConfig(window=8)
    st = RdrwState(cfg)
    first = torch.arange(8, dtype=torch.float32) / 10  # 0.0 .. 0.7
    assert torch.equal(st.weigh(first[:4]), torch.ones(4))
    assert st.quartiles is None and not st.warm
    assert torch.equal(st.weigh(first[4:]), torch.ones(4))
    q = np.quantile(first.double().numpy(), [0.25, 0.5, 0.75])  # 0.175, 0.35, 0.525
    assert st.quartiles == pytest.approx(tuple(q)) and st.quartiles == pytest.approx((0.175, 0.35, 0.525))
    nxt = torch.tensor([0.35, 0.9])
    w = st.weigh(nxt)
    assert w.tolist() == pytest.approx(rdrw_weight(nxt, float(q[0]), float(q[1]), float(q[2]), cfg).tolist())
    assert w[0].item() == pytest.approx(0.75, abs=1e-5)
    assert st.window_values().tolist() == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.35, 0.9])
    assert st.seen == 10


def test_state_round_trip_and_resume_is_seamless() -> None:
    """Interrupt after 3 batches, save, load, continue: every later weight equals the uninterrupted run's.

    Saved the way the training engine saves a checkpoint's extra state (``torch.save`` of ``state_dict()``)."""
    torch.manual_seed(0)
    batches = [torch.rand(6) for _ in range(8)]
    cfg = RdrwConfig(window=10)
    straight = RdrwState(cfg)
    expected = [straight.weigh(b) for b in batches]
    first = RdrwState(cfg)
    for b in batches[:3]:
        first.weigh(b)
    buf = io.BytesIO()
    torch.save({"rdrw": first.state_dict()}, buf)
    buf.seek(0)
    resumed = RdrwState.from_state_dict(torch.load(buf, weights_only=False)["rdrw"])
    assert resumed.seen == first.seen and resumed.quartiles == first.quartiles
    for b, e in zip(batches[3:], expected[3:], strict=True):
        assert torch.equal(resumed.weigh(b), e)
    assert resumed.quartiles is not None and straight.quartiles is not None
    assert math.isclose(resumed.quartiles[1], straight.quartiles[1])


def test_state_keeps_the_hidden_layer_and_old_states_load_with_the_default() -> None:
    state = RdrwState(RdrwConfig(window=4, hidden_layer=2))
    assert RdrwState.from_state_dict(state.state_dict()).cfg.hidden_layer == 2
    old = state.state_dict()
    del old["config"]["hidden_layer"]  # a checkpoint written before the field existed
    assert RdrwState.from_state_dict(old).cfg == RdrwConfig(window=4)


@pytest.mark.parametrize(("kwargs", "field"), [({"window": 2}, "window"), ({"w_min": 0.0}, "w_min"),
                                               ({"k": 0.0}, "k"), ({"eps": 0.0}, "eps")])
def test_config_validation_names_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RdrwConfig(**kwargs)


def test_bad_state_names_field() -> None:
    with pytest.raises(ValueError, match="seen"):
        RdrwState.from_state_dict({"config": {"window": 4}, "window": [0.1]})
    with pytest.raises(ValueError, match="window"):
        RdrwState.from_state_dict({"config": {"window": 4}, "seen": 9, "window": [0.1] * 5, "quartiles": None})
