"""Checks of one ``POST /retrieve`` 200 body, on plain JSON (no pydantic, no radgr imports).

Contract: :func:`response_problem(body, beam_width, top_k)` returns ``None`` for a valid body, else a short,
stable message (it names the check, not the values, so Locust groups failures by kind). A valid body has:
- ``items``: a non-empty list of at most ``top_k`` objects with ``item_id`` (non-empty string), ``sid``,
  ``score`` (finite, ≤ 0: a sum of log-probs) and ``rank``; ranks are exactly 1..n in order and scores never
  increase;
- ``sids``: a non-empty list of at most ``beam_width`` objects with ``sid``, ``score`` (finite, ≤ 0, never
  increasing) and ``item_ids``; every SID string looks like ``<s0_a><s1_b><s2_c>`` and appears once;
- every item's SID is one of ``sids`` and the item is among that SID's ``item_ids``; the item's score equals its
  SID's.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

SID_PATTERN = re.compile(r"<s0_\d+><s1_\d+><s2_\d+>")
_SCORE_TOL = 1e-6


def _score(entry: Any) -> float | None:
    value = entry.get("score") if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value <= _SCORE_TOL else None


def _descending(scores: list[float]) -> bool:
    return all(a >= b - _SCORE_TOL for a, b in itertools.pairwise(scores))


def response_problem(body: Any, beam_width: int, top_k: int) -> str | None:
    """``None`` when ``body`` is a valid answer to a request with ``beam_width`` and ``top_k``, else what is wrong."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    items, sids = body.get("items"), body.get("sids")
    if not isinstance(items, list) or not isinstance(sids, list):
        return "items or sids missing"
    if not items:
        return "no items"
    if not sids:
        return "no sids"
    if len(items) > top_k:
        return "more items than top_k"
    if len(sids) > beam_width:
        return "more sids than beam_width"
    sid_scores: dict[str, float] = {}
    sid_items: dict[str, set[str]] = {}
    ordered: list[float] = []
    for entry in sids:
        sid = entry.get("sid") if isinstance(entry, dict) else None
        score = _score(entry)
        if not isinstance(sid, str) or not SID_PATTERN.fullmatch(sid):
            return "malformed sid"
        if score is None:
            return "sid score not a finite log-prob"
        if sid in sid_scores:
            return "duplicate sid"
        ids = entry.get("item_ids")
        if not isinstance(ids, list) or not ids:
            return "sid without item_ids"
        sid_scores[sid] = score
        sid_items[sid] = {str(i) for i in ids}
        ordered.append(score)
    if not _descending(ordered):
        return "sid scores not sorted descending"
    ordered = []
    for rank, entry in enumerate(items, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("item_id"), str) or not entry["item_id"]:
            return "item without item_id"
        if entry.get("rank") != rank:
            return "item ranks not 1..n"
        score = _score(entry)
        if score is None:
            return "item score not a finite log-prob"
        sid = entry.get("sid")
        if not isinstance(sid, str) or sid not in sid_scores:
            return "item sid not among sids"
        if entry["item_id"] not in sid_items[sid]:
            return "item not among its sid's item_ids"
        if abs(score - sid_scores[sid]) > _SCORE_TOL:
            return "item score differs from its sid's"
        ordered.append(score)
    if not _descending(ordered):
        return "item scores not sorted descending"
    return None
