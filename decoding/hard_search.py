"""The paper's "SIM hard search": keep only history items relevant to the query, judged by category.

Contract:
- :class:`QueryCategorizer` is a multinomial naive Bayes over query words (lower-cased alphanumeric words,
  Laplace smoothing ``alpha``) that predicts an item category. ``fit(pairs)`` takes ``(query, category)`` pairs
  (training sessions' query and their top positive's category); pairs with an empty query or category are
  ignored. It is additive: :meth:`QueryCategorizer.update` adds counts, so it can be fit batch by batch.
- ``predict(query)`` returns the most probable category (ties → the smallest category string), or ``None`` when the
  query has no word seen in training (empty query, unknown words) or nothing was fit.
- ``to_json()`` / ``from_json()`` round-trip exactly (``save``/``load`` write and read a file atomically).
- :func:`filter_history_by_category` keeps the history items whose category equals the target category, in their
  order; a ``None`` target keeps everything (no query → no filter).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sid_index.atomic_files import write_text_atomic

T = TypeVar("T")

FORMAT = "radgr-query-categorizer-v1"
_WORD = re.compile(r"[a-z0-9]+")


def query_words(query: str) -> list[str]:
    """The words the categorizer sees: lower-cased runs of letters and digits."""
    return _WORD.findall(query.lower())


@dataclass
class QueryCategorizer:
    """Multinomial naive Bayes: query words → item category (see the module docstring)."""

    alpha: float = 1.0
    class_counts: dict[str, int] = field(default_factory=dict)  # pairs seen per category
    word_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # category → word → count
    _log_cache: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"QueryCategorizer.alpha must be > 0, given {self.alpha}")

    # ------------------------------------------------------------------ fitting
    def update(self, pairs: Iterable[tuple[str, str]]) -> QueryCategorizer:
        """Add ``(query, category)`` pairs; empty queries/categories are skipped."""
        for query, category in pairs:
            words = query_words(query)
            if not words or not category:
                continue
            self.class_counts[category] = self.class_counts.get(category, 0) + 1
            wc = self.word_counts.setdefault(category, {})
            for w in words:
                wc[w] = wc.get(w, 0) + 1
        self._log_cache = None
        return self

    @classmethod
    def fit(cls, pairs: Iterable[tuple[str, str]], alpha: float = 1.0) -> QueryCategorizer:
        return cls(alpha=alpha).update(pairs)

    @property
    def categories(self) -> list[str]:
        return sorted(self.class_counts)

    # ------------------------------------------------------------------ prediction
    def _tables(self) -> dict[str, Any]:
        if self._log_cache is None:
            cats = self.categories
            vocab = sorted({w for wc in self.word_counts.values() for w in wc})
            total = sum(self.class_counts.values())
            log_prior = {c: math.log(self.class_counts[c] / total) for c in cats}
            log_lik: dict[str, dict[str, float]] = {}
            log_unseen: dict[str, float] = {}
            for c in cats:
                wc = self.word_counts.get(c, {})
                denom = sum(wc.values()) + self.alpha * len(vocab)
                log_lik[c] = {w: math.log((n + self.alpha) / denom) for w, n in wc.items()}
                log_unseen[c] = math.log(self.alpha / denom)
            self._log_cache = {"cats": cats, "vocab": set(vocab), "prior": log_prior, "lik": log_lik,
                               "unseen": log_unseen}
        return self._log_cache

    def log_posterior(self, query: str) -> dict[str, float] | None:
        """Unnormalised log P(category | query) over known words; ``None`` when no word is known."""
        if not self.class_counts:
            return None
        t = self._tables()
        words = [w for w in query_words(query) if w in t["vocab"]]
        if not words:
            return None
        return {c: t["prior"][c] + sum(t["lik"][c].get(w, t["unseen"][c]) for w in words) for c in t["cats"]}

    def predict(self, query: str) -> str | None:
        """Most probable category of ``query``; ``None`` for an empty or wholly unknown query."""
        post = self.log_posterior(query)
        if post is None:
            return None
        return min(post, key=lambda c: (-post[c], c))

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "alpha": self.alpha, "class_counts": self.class_counts,
                           "word_counts": self.word_counts}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QueryCategorizer:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"query categorizer JSON field 'format' must be {FORMAT!r}, given {got!r}")
        for key in ("alpha", "class_counts", "word_counts"):
            if key not in data:
                raise ValueError(f"query categorizer JSON is missing field {key!r}")
        return cls(alpha=float(data["alpha"]),
                   class_counts={str(k): int(v) for k, v in data["class_counts"].items()},
                   word_counts={str(c): {str(w): int(n) for w, n in wc.items()}
                                for c, wc in data["word_counts"].items()})

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QueryCategorizer:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def filter_history_by_category(history: Sequence[T], categories: Sequence[str], target: str | None) -> list[T]:
    """History items (in order) whose category equals ``target``; everything when ``target`` is ``None``."""
    if len(history) != len(categories):
        raise ValueError(f"categories must have one entry per history item ({len(history)}), given {len(categories)}")
    if target is None:
        return list(history)
    return [h for h, c in zip(history, categories, strict=True) if c == target]
