"""Samples' prompts → token ids, checked: what SFT, alignment and evaluation all do before a prompt meets a model.

Contract:
- ``check_prompt_version(sample)`` is the one prompt-version check: a sample rendered by another prompt version
  than this radgr's (``decoding.prompt.PROMPT_VERSION``) raises ``ValueError`` naming the session and both
  versions ("rebuild the samples"), because its token ids would not match what the model is served.
- ``PromptIds(tokenizer, max_length)`` encodes prompts with ``decoding.prompt.encode_prompt``, each distinct prompt
  once (samples repeat prompts), and rejects a prompt that encodes to no tokens or that leaves no room for a SID
  (prompt + ``NUM_LEVELS`` SID tokens above ``max_length``, the model's ``max_position_embeddings``).
"""

from __future__ import annotations

from typing import Any

from decoding.prompt import PROMPT_VERSION, encode_prompt
from sid_index.tokens import NUM_LEVELS


def check_prompt_version(sample: Any) -> None:
    """Raise ``ValueError`` unless ``sample.prompt_version`` is the version this radgr renders."""
    if sample.prompt_version != PROMPT_VERSION:
        raise ValueError(f"sample {sample.session_id} has prompt_version {sample.prompt_version!r}, this radgr "
                         f"renders {PROMPT_VERSION!r}: rebuild the samples")


class PromptIds:
    """Token ids of prompts, each distinct prompt encoded once and checked (see the module docstring)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self._cache: dict[str, list[int]] = {}

    def __call__(self, prompt: str, where: str) -> list[int]:
        """The prompt's token ids; ``where`` names the sample in error messages."""
        ids = self._cache.get(prompt)
        if ids is None:
            ids = encode_prompt(self.tokenizer, prompt)
            if not ids:
                raise ValueError(f"{where}: prompt encodes to no tokens: {prompt!r}")
            if len(ids) + NUM_LEVELS > self.max_length:
                raise ValueError(f"{where}: prompt + SID is {len(ids) + NUM_LEVELS} tokens, above the model's "
                                 f"max_position_embeddings {self.max_length}; cap the history (max_history) when "
                                 f"building the samples")
            self._cache[prompt] = ids
        return ids
