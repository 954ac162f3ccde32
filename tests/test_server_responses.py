"""The response encoder against its reference: orjson bytes parse to what ``json.dumps`` writes (beam-128-sized
bodies with unicode ids, extreme floats), non-finite scores are refused by name, and the SID-string memo returns
the index's own strings."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from test_bundle_fixtures import make_tiny_bundle

from decoding.bundle import load_bundle
from server.metrics import ServerMetrics
from server.responses import encode_json, finite
from server.settings import ServerSettings
from server.state import ServingState


def _body(rng: np.random.Generator) -> dict[str, Any]:
    scores = np.sort(rng.normal(scale=30.0, size=128))[::-1]
    sids = [{"sid": f"<s0_{k % 7}><s1_{k % 5}><s2_{k}>", "score": float(s),
             "item_ids": [f"ítem-{k}-{j}-\u00e9\u4e2d\"q\\" for j in range(k % 4)], "token_ids": None}
            for k, s in enumerate(scores)]
    items = [{"item_id": f"i{k}", "sid": sids[k]["sid"], "score": sids[k]["score"], "rank": k + 1}
             for k in range(100)]
    return {"items": items, "sids": sids, "model": "m", "engine": "torch", "user_id": None,
            "used_history_item_ids": ["a"], "unknown_history_item_ids": [],
            "timings": {"queue_seconds": 0.0, "engine_seconds": 1e-300, "total_seconds": 1.7976931348623157e308},
            "debug": None}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encode_json_agrees_with_json_dumps(seed: int) -> None:
    body = _body(np.random.default_rng(seed))
    fast = encode_json(body)
    slow = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    assert json.loads(fast) == json.loads(slow) == body  # the same values, floats round-tripped exactly
    assert fast.decode("utf-8")  # UTF-8, unicode ids kept


def test_finite_names_what_is_not_finite() -> None:
    assert finite(-1.5, "a SID score") == -1.5
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="an item score is not finite"):
            finite(bad, "an item score")


def test_sid_text_memo_returns_the_index_strings(tmp_path: Any) -> None:
    bundle = load_bundle(make_tiny_bundle(tmp_path), with_model=False)
    state = ServingState(settings=ServerSettings(), metrics=ServerMetrics(), bundle=bundle)
    rows = list(range(bundle.index.num_sids))
    first = [state.sid_text(r) for r in rows]
    again = [state.sid_text(r) for r in reversed(rows)][::-1]
    assert first == again == [bundle.index.sid_str(r) for r in rows]
    with pytest.raises(IndexError, match="SID row must be in"):
        state.sid_text(bundle.index.num_sids)
