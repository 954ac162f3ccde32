"""An engine result → the ``/retrieve`` response body, as JSON bytes.

Contract of ``build_response_body(state, body, prompt, outcome, t_arrival)``:
- the bytes are one JSON object valid under :class:`server.schemas.RetrieveResponse` (a test validates them), built
  from plain dicts and serialised once (:func:`encode_json`, orjson): the route returns them as they are, so the
  response is neither built as pydantic models nor validated and encoded again by FastAPI (at beam 128 that was a
  fifth of a tiny model's request); SID strings come from the state's memo (``ServingState.sid_text``);
- ``sids``: every SID hit in the engine's order with its SID string, score and items (``token_ids`` only with
  ``debug``); a hit outside the index (``sid_row`` not a row of the index, impossible under the trie) is dropped
  and counted in ``radgr_invalid_sids_total``;
- ``items``: the engine's ranked items, the first ``top_k`` (an item whose ``sid_row`` is not a row of the index
  is dropped the same way);
- the prompt's used and unknown history ids, the model (bundle name) and engine names, ``user_id`` echoed;
- timings in seconds (never negative): queue and engine time from the batcher, total since ``t_arrival``;
- ``debug`` (when asked): the prompt, its token ids and the prompt version;
- a score that is not finite raises ``ValueError`` naming it (JSON has no NaN/Infinity; the trie makes every score
  finite).
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

from decoding.prompt import PROMPT_VERSION
from decoding.request_prompt import EncodedPrompt
from server import schemas
from server.batch_jobs import BatchOutcome
from server.state import ServingState


def build_response_body(state: ServingState, body: schemas.RetrieveRequest, prompt: EncodedPrompt,
                        outcome: BatchOutcome, t_arrival: float) -> bytes:
    """The JSON response to ``body`` from its batch outcome (see the module docstring)."""
    assert state.bundle is not None and state.engine is not None
    index = state.bundle.index
    result = outcome.result
    sid_str = state.sid_text
    sids: list[dict[str, Any]] = []
    invalid = 0
    for hit in result.sids:
        if not 0 <= hit.sid_row < index.num_sids:
            invalid += 1
            continue
        sids.append({"sid": sid_str(hit.sid_row), "score": finite(hit.score, "a SID score"),
                     "item_ids": index.items_of_sid_row(hit.sid_row),
                     "token_ids": list(hit.token_ids) if body.debug else None})
    items: list[dict[str, Any]] = []
    for it in result.items[: body.top_k]:
        if not 0 <= it.sid_row < index.num_sids:
            invalid += 1
            continue
        items.append({"item_id": it.item_id, "sid": sid_str(it.sid_row), "score": finite(it.score, "an item score"),
                      "rank": it.rank})
    if invalid:
        state.metrics.invalid_sids.inc(invalid)
    debug = ({"prompt": prompt.build.text, "prompt_token_ids": list(prompt.token_ids),
              "prompt_version": PROMPT_VERSION} if body.debug else None)
    response = {
        "items": items, "sids": sids, "model": state.bundle.name, "engine": state.engine.name,
        "user_id": body.user_id, "used_history_item_ids": list(prompt.build.used_item_ids),
        "unknown_history_item_ids": list(prompt.build.unknown_item_ids),
        "timings": {"queue_seconds": max(0.0, outcome.queue_seconds),
                    "engine_seconds": max(0.0, outcome.engine_seconds),
                    "total_seconds": max(0.0, time.monotonic() - t_arrival)},
        "debug": debug,
    }
    return encode_json(response)


def encode_json(doc: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of ``doc`` by orjson (several times faster than ``json.dumps`` on a beam-128 response,
    which stays the reference: a test compares them). orjson writes a float that is not finite as ``null``: the
    caller checks its floats (:func:`finite`)."""
    return orjson.dumps(doc)


def finite(value: float, what: str) -> float:
    """``value`` as a float, or ``ValueError`` naming ``what`` when it is not finite (JSON has no NaN/Infinity)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} is not finite: {value}")
    return value
