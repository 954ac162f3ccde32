"""Where the SID tokens live in a tokenizer's vocabulary.

Contract: level ``l`` code ``c`` has token id ``offsets[l] + c`` (the tokens of one level are contiguous);
``from_tokenizer`` checks this for every code of every level and raises ``ValueError`` naming the first token
that is missing or out of place. ``eos_id`` ends every candidate (3 SID tokens + EOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sid_index.tokens import NUM_LEVELS, sid_token


@dataclass(frozen=True)
class SidVocab:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    eos_id: int
    vocab_size: int

    def __post_init__(self) -> None:
        if len(self.offsets) != NUM_LEVELS or len(self.sizes) != NUM_LEVELS:
            raise ValueError(f"offsets and sizes need {NUM_LEVELS} levels, given {self.offsets}, {self.sizes}")

    def token_ids(self, codes: Sequence[int]) -> tuple[int, ...]:
        return tuple(self.offsets[level] + int(c) for level, c in enumerate(codes))

    def candidate_ids(self, codes: Sequence[int]) -> tuple[int, ...]:
        """The training target of one SID: its 3 token ids then EOS."""
        return (*self.token_ids(codes), self.eos_id)

    @staticmethod
    def from_tokenizer(tokenizer: Any, sizes: Sequence[int], vocab_size: int | None = None) -> SidVocab:
        offsets = []
        for level, size in enumerate(sizes):
            first = tokenizer.convert_tokens_to_ids(sid_token(level, 0))
            for c in (0, size - 1):  # endpoints first for a cheap early error
                tid = tokenizer.convert_tokens_to_ids(sid_token(level, c))
                if tid is None or tid == tokenizer.unk_token_id or tid != first + c:
                    raise ValueError(f"tokenizer SID token {sid_token(level, c)} is missing or not contiguous")
            vocab = tokenizer.get_vocab()
            for c in range(size):
                if vocab.get(sid_token(level, c)) != first + c:
                    raise ValueError(f"tokenizer SID token {sid_token(level, c)} is missing or not contiguous")
            offsets.append(int(first))
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos_token_id")
        return SidVocab(tuple(offsets), tuple(int(s) for s in sizes), int(tokenizer.eos_token_id),
                        int(vocab_size if vocab_size is not None else len(tokenizer)))
