"""Request and response models of the HTTP API (pydantic); the OpenAPI document is generated from them.

Contract (``POST /retrieve``):
- ``query``: string, may be empty, at most ``MAX_QUERY_CHARS`` characters.
- ``user_id``: optional, at most ``MAX_ID_CHARS``; ``profile``: at most ``MAX_PROFILE_ENTRIES`` ``key → value``
  strings (keys ≤ ``MAX_PROFILE_KEY_CHARS``, values ≤ ``MAX_PROFILE_VALUE_CHARS``).
- ``history``: item ids, **most recent last**, at most ``MAX_HISTORY_ITEMS`` in the body; ids the catalog does not
  know are skipped and listed back in ``unknown_history_item_ids``; of the known ones the prompt keeps the most
  recent ``PromptConfig.max_history`` (50 by default).
- ``top_k``: items to return, ``1..MAX_TOP_K``; ``beam_width``: ``1..128`` (default 128); ``debug``: also return
  the prompt's token ids and each SID's token ids, so the scores can be checked by teacher forcing.
- Unknown fields are refused (422). Every error answers with :class:`ErrorResponse`.
This module imports only pydantic, so load-test clients may import it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_QUERY_CHARS = 512
MAX_ID_CHARS = 128
MAX_PROFILE_ENTRIES = 32
MAX_PROFILE_KEY_CHARS = 64
MAX_PROFILE_VALUE_CHARS = 256
MAX_HISTORY_ITEMS = 1000
MAX_TOP_K = 1000
MAX_BEAM_WIDTH = 128  # equals decoding.engine.MAX_BEAM_WIDTH (a test checks); kept here so clients need only pydantic
DEFAULT_TOP_K = 10

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
ProfileKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROFILE_KEY_CHARS)]
ProfileValue = Annotated[str, StringConstraints(max_length=MAX_PROFILE_VALUE_CHARS)]


class RetrieveRequest(BaseModel):
    """One retrieval: a search query in its user context."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"query": "cordless drill", "user_id": "u1", "profile": {"segment": "pro"},
                      "history": ["B000123", "B000456"], "top_k": 10, "beam_width": 128, "debug": False}],
    })

    query: str = Field("", max_length=MAX_QUERY_CHARS,
                       description=f"Search query; may be empty; at most {MAX_QUERY_CHARS} characters.")
    user_id: str | None = Field(None, max_length=MAX_ID_CHARS,
                                description=f"Optional user id (at most {MAX_ID_CHARS} characters); "
                                            "not used by the model, echoed back.")
    profile: dict[ProfileKey, ProfileValue] = Field(
        default_factory=dict, max_length=MAX_PROFILE_ENTRIES,
        description=f"User profile attributes, at most {MAX_PROFILE_ENTRIES} entries; keys 1..{MAX_PROFILE_KEY_CHARS} "
                    f"characters, values at most {MAX_PROFILE_VALUE_CHARS}.")
    history: list[ItemId] = Field(
        default_factory=list, max_length=MAX_HISTORY_ITEMS,
        description=f"Item ids the user interacted with, most recent last; at most {MAX_HISTORY_ITEMS}. Unknown ids "
                    "are skipped and listed back; the prompt keeps the most recent known ones up to the bundle's "
                    "history cap (50 by default).")
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description=f"Items to return, 1..{MAX_TOP_K}.")
    beam_width: int = Field(MAX_BEAM_WIDTH, ge=1, le=MAX_BEAM_WIDTH,
                            description=f"Beams of the constrained beam search, 1..{MAX_BEAM_WIDTH}; at most this many "
                                        "SIDs come back.")
    debug: bool = Field(False, description="Also return prompt token ids and each SID's token ids.")


class ItemOut(BaseModel):
    item_id: str = Field(description="Catalog item id.")
    sid: str = Field(description="The item's Semantic ID, e.g. <s0_3><s1_1><s2_4>.")
    score: float = Field(description="The SID's score: sum of its 3 token log-probs (≤ 0).")
    rank: int = Field(ge=1, description="1-based rank.")


class SidOut(BaseModel):
    sid: str = Field(description="Semantic ID string.")
    score: float = Field(description="Sum of the 3 SID tokens' log-softmax over the full vocabulary, given the prompt.")
    item_ids: list[str] = Field(description="Items with this SID, most popular first.")
    token_ids: list[int] | None = Field(None, description="The SID's 3 token ids (only with debug).")


class Timings(BaseModel):
    queue_seconds: float = Field(ge=0, description="Time waiting for a batch.")
    engine_seconds: float = Field(ge=0, description="Time of the engine batch this request ran in.")
    total_seconds: float = Field(ge=0, description="Time from arrival to response.")


class DebugInfo(BaseModel):
    prompt: str = Field(description="The rendered prompt text.")
    prompt_token_ids: list[int] = Field(description="Token ids the model was given (no special tokens added).")
    prompt_version: str = Field(description="Prompt-rendering version.")


class RetrieveResponse(BaseModel):
    items: list[ItemOut] = Field(description="Ranked items (at most top_k).")
    sids: list[SidOut] = Field(description="Ranked SIDs (at most beam_width).")
    model: str = Field(description="Name of the served model (from the bundle manifest).")
    engine: str = Field(description="Engine kind, e.g. torch.")
    user_id: str | None = Field(None, description="Echo of the request's user_id.")
    used_history_item_ids: list[str] = Field(description="History items that went into the prompt, most recent first.")
    unknown_history_item_ids: list[str] = Field(description="History ids the catalog does not know (skipped).")
    timings: Timings
    debug: DebugInfo | None = Field(None, description="Only when the request set debug.")


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, naming the field and bound where there is one.")
    type: str = Field(description="Error class: invalid_request_error, authentication_error, overloaded_error, "
                                  "timeout_error, not_found_error, server_error.")
    param: str | None = Field(None, description="The offending field, dotted (e.g. profile.segment), if any.")
    code: str | None = Field(None, description="Machine-readable reason, e.g. less_than_equal, queue_full.")


class ErrorResponse(BaseModel):
    """The one error body of every endpoint."""

    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str = Field(description="ok, or why not (loading, draining, engine_dead).")
