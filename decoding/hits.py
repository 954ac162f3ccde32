"""Final beams → :class:`decoding.engine.SidHit` / :class:`decoding.engine.ItemHit` lists, shared by every engine.

Contract: :func:`hits_from_beams` takes one request's final beams as arrays (``codes [n, 3]`` with ``-1`` where a
token is not a SID token of its level, ``token_ids [n, 3]``, ``scores [n]`` descending, ``sid_rows [n]`` with ``-1``
for invalid SIDs) and returns its SID hits in that order and its items expanded by :func:`decoding.items.expand_items`
(popularity order within a SID, truncated to ``top_k``). :class:`IndexForDecoding` is the view of a SID index
that the engines read (``sid_index.index.SidIndex`` satisfies it).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from decoding.engine import ItemHit, SidHit
from decoding.items import expand_items
from sid_index.prefix_tables import PrefixTables


class IndexForDecoding(Protocol):
    """What the engines read from a SID index (``sid_index.index.SidIndex`` satisfies it)."""

    tables: PrefixTables
    sid_codes: np.ndarray
    sid_item_indptr: np.ndarray
    sid_item_rows: np.ndarray
    item_ids: list[str]

    @property
    def num_sids(self) -> int: ...


def hits_from_beams(codes: np.ndarray, token_ids: np.ndarray, scores: np.ndarray, sid_rows: np.ndarray,
                    index: IndexForDecoding, top_k: int) -> tuple[list[SidHit], list[ItemHit]]:
    """One request's ``(sid hits, item hits)`` from its final beams (see the module docstring)."""
    sids = [
        SidHit(codes=(int(c[0]), int(c[1]), int(c[2])), token_ids=(int(t[0]), int(t[1]), int(t[2])),
               score=float(s), sid_row=int(row))
        for c, t, s, row in zip(codes, token_ids, scores, sid_rows, strict=True)
    ]
    item_rows, item_sid, item_score = expand_items(sid_rows, scores, index.sid_item_indptr, index.sid_item_rows,
                                                   top_k)
    item_ids = index.item_ids
    items = [
        ItemHit(item_id=item_ids[int(i)], sid_row=int(sr), score=float(sc), rank=k + 1)
        for k, (i, sr, sc) in enumerate(zip(item_rows, item_sid, item_score, strict=True))
    ]
    return sids, items
