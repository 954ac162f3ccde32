"""An engine result → the ``/retrieve`` response body.

Contract of ``build_response(state, body, prompt, outcome, t_arrival)``:
- ``sids``: every SID hit in the engine's order with its SID string, score and items (``token_ids`` only with
  ``debug``); a hit outside the index (``sid_row`` not a row of the index, impossible under the trie) is dropped
  and counted in ``radgr_invalid_sids_total``;
- ``items``: the engine's ranked items, the first ``top_k`` (an item whose ``sid_row`` is not a row of the index
  is dropped the same way);
- the prompt's used and unknown history ids, the model (bundle name) and engine names, ``user_id`` echoed;
- timings in seconds (never negative): queue and engine time from the batcher, total since ``t_arrival``;
- ``debug`` (when asked): the prompt, its token ids and the prompt version.
"""

from __future__ import annotations

import time

from decoding.prompt import PROMPT_VERSION
from decoding.request_prompt import EncodedPrompt
from server import schemas
from server.batch_jobs import BatchOutcome
from server.state import ServingState


def build_response(state: ServingState, body: schemas.RetrieveRequest, prompt: EncodedPrompt,
                   outcome: BatchOutcome, t_arrival: float) -> schemas.RetrieveResponse:
    """The response to ``body`` from its batch outcome (see the module docstring)."""
    assert state.bundle is not None and state.engine is not None
    index = state.bundle.index
    result = outcome.result
    sids: list[schemas.SidOut] = []
    invalid = 0
    for hit in result.sids:
        if not 0 <= hit.sid_row < index.num_sids:
            invalid += 1
            continue
        sids.append(schemas.SidOut(sid=index.sid_str(hit.sid_row), score=float(hit.score),
                                   item_ids=index.items_of_sid_row(hit.sid_row),
                                   token_ids=list(hit.token_ids) if body.debug else None))
    items: list[schemas.ItemOut] = []
    for it in result.items[: body.top_k]:
        if not 0 <= it.sid_row < index.num_sids:
            invalid += 1
            continue
        items.append(schemas.ItemOut(item_id=it.item_id, sid=index.sid_str(it.sid_row), score=float(it.score),
                                     rank=it.rank))
    if invalid:
        state.metrics.invalid_sids.inc(invalid)
    debug = (schemas.DebugInfo(prompt=prompt.build.text, prompt_token_ids=list(prompt.token_ids),
                               prompt_version=PROMPT_VERSION) if body.debug else None)
    return schemas.RetrieveResponse(
        items=items, sids=sids, model=state.bundle.name, engine=state.engine.name, user_id=body.user_id,
        used_history_item_ids=list(prompt.build.used_item_ids),
        unknown_history_item_ids=list(prompt.build.unknown_item_ids),
        timings=schemas.Timings(queue_seconds=max(0.0, outcome.queue_seconds),
                                engine_seconds=max(0.0, outcome.engine_seconds),
                                total_seconds=max(0.0, time.monotonic() - t_arrival)),
        debug=debug)
