"""The one engine interface that evaluation and the server call; every engine (PyTorch, vLLM) implements it.

Contract:
- A :class:`RetrievalRequest` carries already-encoded prompt token ids (render with
  :func:`decoding.prompt.render_prompt`, encode with :func:`decoding.prompt.encode_prompt`), a beam width in
  ``1..MAX_BEAM_WIDTH``, how many items to return, and whether decoding is trie-constrained.
- ``RetrievalEngine.retrieve_batch(requests)`` returns one :class:`RetrievalResult` per request, in order.
  Results for a request do not depend on which other requests share its batch.
- ``RetrievalResult.sids`` holds at most ``beam_width`` SIDs, scores descending. A SID's score is the sum of
  its 3 token log-probs (log-softmax over the full vocabulary; in constrained mode invalid tokens are masked
  and the distribution is *not* renormalised). In unconstrained mode ``sid_row == -1`` marks an invalid SID.
- ``RetrievalResult.items`` expands the SIDs in score order to their items (popularity order within a SID),
  truncated to ``top_k_items``; an item's score is its SID's score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sid_index.tokens import NUM_LEVELS

MAX_BEAM_WIDTH = 128


@dataclass(frozen=True)
class RetrievalRequest:
    prompt_ids: tuple[int, ...]
    beam_width: int = MAX_BEAM_WIDTH
    top_k_items: int = 100
    constrained: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.beam_width <= MAX_BEAM_WIDTH:
            raise ValueError(f"beam_width must be in [1, {MAX_BEAM_WIDTH}], given {self.beam_width}")
        if self.top_k_items < 1:
            raise ValueError(f"top_k_items must be >= 1, given {self.top_k_items}")
        if len(self.prompt_ids) == 0:
            raise ValueError("prompt_ids must hold at least one token, given 0")


@dataclass(frozen=True)
class SidHit:
    codes: tuple[int, int, int]
    token_ids: tuple[int, int, int]
    score: float
    sid_row: int  # row in the SID index; -1 when the SID is not valid (unconstrained mode only)

    @property
    def valid(self) -> bool:
        return self.sid_row >= 0


@dataclass(frozen=True)
class ItemHit:
    item_id: str
    sid_row: int
    score: float
    rank: int  # 1-based


@dataclass(frozen=True)
class RetrievalResult:
    sids: list[SidHit]
    items: list[ItemHit]
    # seconds per phase (prefill, decode, masking or host, finalize) plus counts named as such: chunk_requests
    # (torch: requests sharing the chunk), requests (vllm: one-token engine requests submitted for the batch)
    timings: dict[str, float] = field(default_factory=dict)


class RetrievalEngine(Protocol):
    """What evaluation and the server depend on. ``name`` is e.g. ``"torch"`` or ``"vllm"``."""

    name: str

    def retrieve_batch(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]: ...


def check_prompt_ids(requests: Sequence[RetrievalRequest], vocab_size: int, max_len: int | None = None) -> None:
    """Raise ``ValueError`` naming ``requests[i].prompt_ids`` when a token id is outside ``[0, vocab_size)`` or the
    prompt plus a 3-token SID would exceed ``max_len`` (when given); every engine checks its input with it."""
    for i, req in enumerate(requests):
        ids = np.asarray(req.prompt_ids, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        if bad.size:
            raise ValueError(f"requests[{i}].prompt_ids must be token ids in [0, {vocab_size}), given {int(bad[0])}")
        if max_len is not None and len(ids) + NUM_LEVELS > max_len:
            raise ValueError(f"requests[{i}].prompt_ids must hold at most {max_len - NUM_LEVELS} tokens "
                             f"(max_model_len {max_len}), given {len(ids)}")
