"""The request mix a load test draws from: a JSON file of request bodies, built from a bundle's data.

Contract:
- :class:`MixRequest` is one request's user context: ``query`` (may be empty), ``history`` (item ids, most
  recent last; ids the catalog does not know are allowed, the server skips and lists them), ``profile`` (key,
  value pairs). :class:`RequestMix` holds the requests plus the ``beam_widths`` and ``top_ks`` each request's
  values are drawn from, and a free-text ``source``; all within the API's bounds (checked in ``__post_init__``).
- :meth:`RequestMix.body` draws one ``POST /retrieve`` body with a caller's ``random.Random`` (uniform over
  requests, beam widths and top-Ks), so a seeded user replays the same sequence.
- The file (``save`` / ``load``): ``{"format": MIX_FORMAT, "source", "beam_widths", "top_ks", "requests":
  [{"query", "history", "profile"}]}``; ``load`` refuses another format or a broken entry, naming the entry.
- Builders on plain data (the CLI reads the bundle and passes lists; this module imports nothing of radgr's
  other packages, so the locustfile can use it): :func:`synthetic_queries` draws queries of 1..4 words from a
  query categorizer's per-category word counts; :func:`synthetic_requests` pairs queries with histories of varied
  length drawn from item ids (:data:`HISTORY_LENGTHS`, a share of empty queries, a share of unknown ids);
  :func:`requests_from_sessions` takes logged sessions' own query, profile and history.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadtest.profiles import MAX_BEAM_WIDTH, MAX_TOP_K

MIX_FORMAT = "radgr-loadtest-mix-v1"
MAX_QUERY_CHARS = 512  # server.schemas.MAX_QUERY_CHARS (a test checks they agree)
MAX_HISTORY_ITEMS = 1000  # server.schemas.MAX_HISTORY_ITEMS
HISTORY_LENGTHS = (0, 1, 2, 5, 10, 20, 50, 100)  # most sessions short, some at and beyond the prompt's cap of 50


@dataclass(frozen=True)
class MixRequest:
    """One request's user context (see the module docstring)."""

    query: str
    history: tuple[str, ...] = ()
    profile: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if len(self.query) > MAX_QUERY_CHARS:
            raise ValueError(f"MixRequest.query must be ≤ {MAX_QUERY_CHARS} characters, given {len(self.query)}")
        if len(self.history) > MAX_HISTORY_ITEMS:
            raise ValueError(f"MixRequest.history must hold ≤ {MAX_HISTORY_ITEMS} ids, given {len(self.history)}")
        if any(not item for item in self.history):
            raise ValueError("MixRequest.history ids must not be empty")

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "history": list(self.history), "profile": dict(self.profile)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MixRequest:
        profile = obj.get("profile") or {}
        return cls(query=str(obj.get("query", "")), history=tuple(str(h) for h in obj.get("history") or ()),
                   profile=tuple(sorted((str(k), str(v)) for k, v in dict(profile).items())))


@dataclass(frozen=True)
class RequestMix:
    """Requests plus the beam widths and top-Ks to draw (see the module docstring)."""

    requests: tuple[MixRequest, ...]
    beam_widths: tuple[int, ...] = (MAX_BEAM_WIDTH,)
    top_ks: tuple[int, ...] = (10,)
    source: str = ""

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError("RequestMix.requests must hold at least one request, given 0")
        for name, values, high in (("beam_widths", self.beam_widths, MAX_BEAM_WIDTH),
                                   ("top_ks", self.top_ks, MAX_TOP_K)):
            if not values:
                raise ValueError(f"RequestMix.{name} must hold at least one value, given ()")
            for v in values:
                if not 1 <= v <= high:
                    raise ValueError(f"RequestMix.{name} values must be in 1..{high}, given {v}")

    def with_choices(self, beam_widths: Sequence[int], top_ks: Sequence[int]) -> RequestMix:
        return replace(self, beam_widths=tuple(beam_widths), top_ks=tuple(top_ks))

    def body(self, rng: random.Random) -> dict[str, Any]:
        """One ``POST /retrieve`` body drawn with ``rng``."""
        req = self.requests[rng.randrange(len(self.requests))]
        return {**req.to_json(), "beam_width": rng.choice(self.beam_widths), "top_k": rng.choice(self.top_ks)}

    def to_json(self) -> dict[str, Any]:
        return {"format": MIX_FORMAT, "source": self.source, "beam_widths": list(self.beam_widths),
                "top_ks": list(self.top_ks), "requests": [r.to_json() for r in self.requests]}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the mix as JSON (temporary sibling, then rename)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(self.to_json()))
        tmp.replace(out)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RequestMix:
        obj = json.loads(Path(path).read_text())
        if not isinstance(obj, dict) or obj.get("format") != MIX_FORMAT:
            got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"mix file {str(path)!r}: format must be {MIX_FORMAT!r}, given {got!r}")
        requests = []
        for i, entry in enumerate(obj.get("requests") or []):
            try:
                requests.append(MixRequest.from_json(entry))
            except (ValueError, TypeError, AttributeError) as exc:
                raise ValueError(f"mix file {str(path)!r} request {i}: {exc}") from None
        return cls(requests=tuple(requests), beam_widths=tuple(int(b) for b in obj.get("beam_widths") or ()),
                   top_ks=tuple(int(k) for k in obj.get("top_ks") or ()), source=str(obj.get("source", "")))


def synthetic_queries(word_counts: Mapping[str, Mapping[str, int]], n: int, rng: random.Random,
                      max_words: int = 4) -> list[str]:
    """``n`` queries: a category drawn by its vocabulary size, then 1..``max_words`` words by their counts."""
    cats = sorted(c for c, words in word_counts.items() if words)
    if not cats:
        raise ValueError("synthetic_queries needs at least one category with words, given none")
    vocab = {c: sorted(word_counts[c].items()) for c in cats}
    cat_weights = [sum(count for _, count in vocab[c]) for c in cats]
    out = []
    for _ in range(n):
        words = vocab[rng.choices(cats, weights=cat_weights)[0]]
        k = rng.randint(1, max_words)
        out.append(" ".join(rng.choices([w for w, _ in words], weights=[c for _, c in words], k=k)))
    return out


def synthetic_requests(queries: Sequence[str], item_ids: Sequence[str], n: int, rng: random.Random, *,
                       history_lengths: Sequence[int] = HISTORY_LENGTHS, empty_query_share: float = 0.1,
                       unknown_history_share: float = 0.05) -> list[MixRequest]:
    """``n`` requests: a query (empty with probability ``empty_query_share``) and a history whose length is drawn
    from ``history_lengths``, its ids from ``item_ids`` (each replaced by an unknown id with probability
    ``unknown_history_share``)."""
    if not queries or not item_ids:
        raise ValueError(f"synthetic_requests needs queries and item ids, given {len(queries)} and {len(item_ids)}")
    if not 0.0 <= empty_query_share <= 1.0 or not 0.0 <= unknown_history_share <= 1.0:
        raise ValueError("synthetic_requests shares must be in [0, 1], given "
                         f"empty_query_share={empty_query_share}, unknown_history_share={unknown_history_share}")
    out = []
    for i in range(n):
        query = "" if rng.random() < empty_query_share else queries[i % len(queries)]
        length = min(rng.choice(list(history_lengths)), MAX_HISTORY_ITEMS)
        history = tuple(f"unknown-{rng.randrange(10**6)}" if rng.random() < unknown_history_share
                        else item_ids[rng.randrange(len(item_ids))] for _ in range(length))
        out.append(MixRequest(query=query[:MAX_QUERY_CHARS], history=history))
    return out


def requests_from_sessions(sessions: Iterable[Mapping[str, Any]], n: int, rng: random.Random) -> list[MixRequest]:
    """Up to ``n`` requests drawn without replacement from session rows (``query``, ``history`` oldest first,
    ``profile`` as a mapping or as (key, value) pairs), histories cut to the API's bound (most recent kept)."""
    rows = list(sessions)
    picked = rows if len(rows) <= n else rng.sample(rows, n)
    out = []
    for row in picked:
        profile = row.get("profile") or {}
        pairs = profile.items() if isinstance(profile, Mapping) else profile
        history = tuple(row.get("history") or ())[-MAX_HISTORY_ITEMS:]
        out.append(MixRequest(query=str(row.get("query") or "")[:MAX_QUERY_CHARS], history=history,
                              profile=tuple(sorted((str(k), str(v)) for k, v in pairs))))
    return out
