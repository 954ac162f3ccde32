"""From a request (query, profile, history item ids) to the rendered prompt; training samples and the server
both call :func:`prompt_for_request`, so a served prompt is byte-for-byte the trained one.

Contract of ``prompt_for_request(query, profile, history_item_ids_oldest_first, index, categorizer, cfg)``, in order:
1. map each history item id to its index row; ids not in the index are skipped and listed in
   ``PromptBuild.unknown_item_ids`` (in history order);
2. hard search (when ``cfg.hard_search`` and a categorizer is given): keep the items whose category equals
   ``categorizer.predict(query)``; a query with no prediction (empty or unknown words) keeps everything;
3. reverse to most recent first and keep the first ``cfg.max_history``;
4. render with :func:`decoding.prompt.render_prompt` using each item's SID string.
``PromptBuild.used_item_ids`` are the items that entered the prompt, most recent first (one per SID shown).

:class:`PromptBuilder` is the fast path for many requests against one index (it caches SID strings and query
predictions); it must give exactly what :func:`prompt_for_request` gives (tests check it).

``encode_request_prompt(tokenizer, query, profile, history, index, categorizer, cfg)`` is what a server calls:
:func:`prompt_for_request`, then :func:`decoding.prompt.encode_prompt` of its text, both kept in an
:class:`EncodedPrompt`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from decoding.hard_search import QueryCategorizer, filter_history_by_category
from decoding.prompt import encode_prompt, render_prompt
from sid_index.index import SidIndex


@dataclass(frozen=True)
class PromptConfig:
    max_history: int = 50  # the paper's prompt (docs/data.md "Samples"): history capped, most recent first
    hard_search: bool = True  # the paper's hard search: keep only history items of the query's predicted category

    def __post_init__(self) -> None:
        if self.max_history < 0:
            raise ValueError(f"PromptConfig.max_history must be >= 0, given {self.max_history}")


@dataclass(frozen=True)
class PromptBuild:
    text: str
    used_item_ids: tuple[str, ...]  # most recent first
    unknown_item_ids: tuple[str, ...]  # history ids missing from the index, in history order


@dataclass(frozen=True)
class EncodedPrompt:
    """A request's prompt and its token ids (``encode_prompt`` of ``build.text``)."""

    build: PromptBuild
    token_ids: tuple[int, ...]


def _split_history(index: SidIndex, item_ids: Sequence[str]) -> tuple[list[str], list[int], list[str]]:
    """Step 1: ``(known ids, their index rows, unknown ids)``, each in history order."""
    known: list[str] = []
    rows: list[int] = []
    unknown: list[str] = []
    for item_id in item_ids:
        row = index.item_row(item_id)
        if row is None:
            unknown.append(item_id)
        else:
            known.append(item_id)
            rows.append(row)
    return known, rows, unknown


def prompt_for_request(
    query: str,
    profile: Mapping[str, str],
    history_item_ids_oldest_first: Sequence[str],
    index: SidIndex,
    categorizer: QueryCategorizer | None,
    cfg: PromptConfig = PromptConfig(),
) -> PromptBuild:
    """The prompt of one request (see the module docstring for the steps)."""
    known, rows, unknown = _split_history(index, history_item_ids_oldest_first)
    keep = list(range(len(known)))
    if cfg.hard_search and categorizer is not None and known:
        target = categorizer.predict(query)
        keep = filter_history_by_category(keep, [index.item_category[r] for r in rows], target)
    chosen = keep[::-1][: cfg.max_history]
    sids = [index.sid_str(int(index.item_sid_row[rows[k]])) for k in chosen]
    return PromptBuild(
        text=render_prompt(query, profile, sids),
        used_item_ids=tuple(known[k] for k in chosen),
        unknown_item_ids=tuple(unknown),
    )


def encode_request_prompt(
    tokenizer: Any,
    query: str,
    profile: Mapping[str, str],
    history_item_ids_oldest_first: Sequence[str],
    index: SidIndex,
    categorizer: QueryCategorizer | None,
    cfg: PromptConfig = PromptConfig(),
) -> EncodedPrompt:
    """The prompt of one request and its token ids under ``tokenizer``."""
    build = prompt_for_request(query, profile, history_item_ids_oldest_first, index, categorizer, cfg)
    return EncodedPrompt(build, tuple(encode_prompt(tokenizer, build.text)))


class PromptBuilder:
    """``prompt_for_request`` for many requests against one index and categorizer, with caches."""

    def __init__(self, index: SidIndex, categorizer: QueryCategorizer | None, cfg: PromptConfig = PromptConfig(),
                 cache_queries: int = 100_000) -> None:
        self.index = index
        self.categorizer = categorizer if cfg.hard_search else None
        self.cfg = cfg
        self._sid_of_row: dict[int, str] = {}
        self._target_of_query: dict[str, str | None] = {}
        self._cache_queries = cache_queries

    def _sid(self, row: int) -> str:
        sid = self._sid_of_row.get(row)
        if sid is None:
            sid = self._sid_of_row[row] = self.index.sid_str(int(self.index.item_sid_row[row]))
        return sid

    def _target(self, categorizer: QueryCategorizer, query: str) -> str | None:
        if query in self._target_of_query:
            return self._target_of_query[query]
        target = categorizer.predict(query)
        if len(self._target_of_query) < self._cache_queries:
            self._target_of_query[query] = target
        return target

    def build(
        self, query: str, profile: Mapping[str, str], history_item_ids_oldest_first: Sequence[str]
    ) -> PromptBuild:
        index = self.index
        known, rows, unknown = _split_history(index, history_item_ids_oldest_first)
        keep = list(range(len(known) - 1, -1, -1))  # most recent first
        if self.categorizer is not None and known:
            target = self._target(self.categorizer, query)
            if target is not None:
                cats = index.item_category
                keep = [k for k in keep if cats[rows[k]] == target]
        chosen = keep[: self.cfg.max_history]
        return PromptBuild(
            text=render_prompt(query, profile, [self._sid(rows[k]) for k in chosen]),
            used_item_ids=tuple(known[k] for k in chosen),
            unknown_item_ids=tuple(unknown),
        )
