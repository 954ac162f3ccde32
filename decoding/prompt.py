"""The one prompt renderer: training, evaluation and serving all call it, so a served prompt is byte-for-byte
the trained one.

Contract (version ``PROMPT_VERSION``; change the version whenever the output of any input changes):
- ``render_prompt(query, profile, history_sids)``: ``history_sids`` are SID strings (``<s0_1><s1_2><s2_3>``),
  **most recent first**, already filtered and capped by the caller. ``profile`` keys are sorted.
- ``encode_prompt(tokenizer, text)`` tokenizes without adding special tokens; every caller uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PROMPT_VERSION = "radgr-prompt-v1"


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def render_prompt(query: str, profile: Mapping[str, str], history_sids: Sequence[str]) -> str:
    """Render one prompt. Whitespace in values is collapsed; profile items are ``key=value`` sorted by key."""
    profile_text = "; ".join(f"{_clean(k)}={_clean(v)}" for k, v in sorted(profile.items()))
    history_text = " ".join(history_sids)
    return f"query: {_clean(query)}\nprofile: {profile_text}\nhistory: {history_text}\nitem:"


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt (no special tokens added)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
