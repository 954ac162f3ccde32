"""An engine result → the ``/retrieve`` response body, as JSON bytes.

Contract of ``build_response_body(state, body, prompt, outcome, t_arrival)``:
- the bytes are one JSON object valid under :class:`server.schemas.RetrieveResponse` (a test validates them), built
  from plain dicts and serialised once (``json.dumps``): the route returns them as they are, so the response is
  neither built as pydantic models nor validated and encoded again by FastAPI (at beam 128 that was a fifth of a
  tiny model's request);
- ``sids``: every SID hit in the engine's order with its SID string, score and items (``token_ids`` only with
  ``debug``); a hit outside the index (``sid_row`` not a row of the index, impossible under the trie) is dropped
  and counted in ``radgr_invalid_sids_total``;
- ``items``: the engine's ranked items, the first ``top_k`` (an item whose ``sid_row`` is not a row of the index
  is dropped the same way);
- the prompt's used and unknown history ids, the model (bundle name) and engine names, ``user_id`` echoed;
- timings in seconds (never negative): queue and engine time from the batcher, total since ``t_arrival``;
- ``debug`` (when asked): the prompt, its token ids and the prompt version;
- a score that is not finite raises ``ValueError`` (JSON has no NaN/Infinity; the trie makes every score finite).
"""

from __future__ import annotations

import json
import time
from typing import Any

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
    sid_strings: dict[int, str] = {}

    def sid_str(row: int) -> str:
        text = sid_strings.get(row)
        if text is None:
            text = sid_strings[row] = index.sid_str(row)
        return text

    sids: list[dict[str, Any]] = []
    invalid = 0
    for hit in result.sids:
        if not 0 <= hit.sid_row < index.num_sids:
            invalid += 1
            continue
        sids.append({"sid": sid_str(hit.sid_row), "score": float(hit.score),
                     "item_ids": index.items_of_sid_row(hit.sid_row),
                     "token_ids": list(hit.token_ids) if body.debug else None})
    items: list[dict[str, Any]] = []
    for it in result.items[: body.top_k]:
        if not 0 <= it.sid_row < index.num_sids:
            invalid += 1
            continue
        items.append({"item_id": it.item_id, "sid": sid_str(it.sid_row), "score": float(it.score),
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
    return json.dumps(response, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
