"""SID token naming: level ``l`` code ``c`` is the token ``<s{l}_{c}>``; a SID is 3 such tokens.

Contract: ``sid_token(1, 17) == "<s1_17>"``; ``sid_string((3, 1, 4)) == "<s0_3><s1_1><s2_4>"``;
``parse_sid_string`` inverts ``sid_string`` and raises ``ValueError`` naming the bad part.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

NUM_LEVELS = 3

_TOKEN_RE = re.compile(r"<s(\d+)_(\d+)>")


def sid_token(level: int, code: int) -> str:
    """Token text of ``code`` at ``level`` (0-based)."""
    if not 0 <= level < NUM_LEVELS:
        raise ValueError(f"level must be in [0, {NUM_LEVELS}), given {level}")
    if code < 0:
        raise ValueError(f"code must be >= 0, given {code}")
    return f"<s{level}_{code}>"


def sid_string(codes: Sequence[int]) -> str:
    """The 3-token string of a SID, e.g. ``<s0_3><s1_1><s2_4>``."""
    if len(codes) != NUM_LEVELS:
        raise ValueError(f"a SID has {NUM_LEVELS} codes, given {len(codes)}")
    return "".join(sid_token(level, int(c)) for level, c in enumerate(codes))


def parse_sid_string(text: str) -> tuple[int, int, int]:
    """Codes of a SID string; the inverse of :func:`sid_string`."""
    parts = _TOKEN_RE.findall(text)
    if len(parts) != NUM_LEVELS or "".join(f"<s{a}_{b}>" for a, b in parts) != text:
        raise ValueError(f"not a {NUM_LEVELS}-token SID string: {text!r}")
    codes = []
    for expected, (level, code) in enumerate(parts):
        if int(level) != expected:
            raise ValueError(f"SID token {expected} must be level {expected}, given level {level} in {text!r}")
        codes.append(int(code))
    return codes[0], codes[1], codes[2]


def all_sid_tokens(codebook_sizes: Sequence[int]) -> list[str]:
    """Every SID token of every level, level by level, code by code (the tokenizer's order)."""
    return [sid_token(level, c) for level, size in enumerate(codebook_sizes) for c in range(size)]


def shared_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two SIDs' code tuples (0..3); ``training.losses`` has the batched form."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
