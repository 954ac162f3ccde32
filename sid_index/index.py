"""The Semantic-ID index: SIDs ↔ items, item → SID, and the decoding prefix tables, saved as safe files.

Contract (``S`` unique SIDs, ``n`` items; all arrays numpy int64 unless noted):

- ``sid_codes [S, 3]``: unique SIDs sorted lexicographically; row ``r`` is SID ``r`` (the same row numbering as
  the leaves of :class:`~sid_index.prefix_tables.PrefixTables`).
- ``sid_item_indptr [S + 1]`` / ``sid_item_rows [n]``: the item rows of SID ``r`` are
  ``sid_item_rows[indptr[r]:indptr[r + 1]]``, by popularity descending, ties by item row ascending.
- ``item_ids`` (catalog order, row ``i``), ``item_sid_row [n]``, ``item_category`` (``""`` when unknown),
  ``item_popularity`` float64 ``[n]``.
- Lookups: item id → row goes through a marisa-trie; SID string → row parses the string and binary-searches the
  sorted codes (``None`` when unknown or not in the canonical ``<s0_a><s1_b><s2_c>`` form).
- Item ids are non-empty strings without NUL characters (NUL separates them on disk), unique.

On disk (:meth:`SidIndex.save`, :meth:`SidIndex.load`) an index is a compact directory (format version 2: packed
integer ``.npy`` arrays, zlib-compressed ids, the item marisa-trie, ``manifest.json``);
:mod:`sid_index.index_files` defines that format, publishes it atomically and checks it on load
(:class:`IndexFormatError` names the missing file, the checksum that does not match, or the array whose
shape/content is inconsistent). In memory the arrays stay int64 / float64.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import marisa_trie
import numpy as np

from sid_index.index_files import (
    IndexFormatError,
    IndexParts,
    check_codebook_sizes,
    codes_key,
    read_index_dir,
    write_index_dir,
)
from sid_index.prefix_tables import PrefixTables
from sid_index.tokens import NUM_LEVELS, parse_sid_string, sid_string

__all__ = ["IndexFormatError", "SidIndex"]

_CANONICAL_SID = re.compile(r"<s0_(0|[1-9][0-9]*)><s1_(0|[1-9][0-9]*)><s2_(0|[1-9][0-9]*)>")


def _item_trie(item_ids: list[str]) -> tuple[marisa_trie.Trie, np.ndarray]:
    """Check the ids (strings, non-empty, no NUL, unique: ``ValueError`` naming the row) and return their
    marisa-trie and the array mapping its key ids to rows. Fast checks first; a failure finds the row slowly."""
    try:
        joined = "\x00".join(item_ids)
    except TypeError:
        row = next(r for r, iid in enumerate(item_ids) if not isinstance(iid, str))
        raise ValueError(f"item_id must be a string, given {type(item_ids[row]).__name__} at row {row}") from None
    if "" in item_ids:
        raise ValueError(f"item_id is empty at row {item_ids.index('')}")
    if joined.count("\x00") != len(item_ids) - 1:
        row = next(r for r, iid in enumerate(item_ids) if "\x00" in iid)
        raise ValueError(f"item_id must not contain a NUL character, given {item_ids[row]!r} at row {row}")
    del joined
    trie = marisa_trie.Trie(item_ids)
    if len(trie) != len(item_ids):
        seen: dict[str, int] = {}
        for row, iid in enumerate(item_ids):
            if iid in seen:
                raise ValueError(f"item_id {iid!r} is duplicated at rows {seen[iid]} and {row}")
            seen[iid] = row
    rows = np.empty(len(item_ids), dtype=np.int64)
    rows[np.fromiter(map(trie.key_id, item_ids), dtype=np.int64, count=len(item_ids))] = np.arange(len(item_ids))
    return trie, rows


class SidIndex:
    """Unique SIDs of a catalog and every lookup decoding and serving need (see the module docstring)."""

    def __init__(
        self,
        *,
        codebook_sizes: tuple[int, int, int],
        sid_codes: np.ndarray,
        sid_item_indptr: np.ndarray,
        sid_item_rows: np.ndarray,
        item_ids: list[str],
        item_sid_row: np.ndarray,
        item_category: list[str],
        item_popularity: np.ndarray,
        tables: PrefixTables,
        item_trie: marisa_trie.Trie,
        item_trie_rows: np.ndarray,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.codebook_sizes = codebook_sizes
        self.sid_codes = sid_codes
        self.sid_item_indptr = sid_item_indptr
        self.sid_item_rows = sid_item_rows
        self.item_ids = item_ids
        self.item_sid_row = item_sid_row
        self.item_category = item_category
        self.item_popularity = item_popularity
        self.tables = tables
        self.config: dict[str, Any] = dict(config or {})
        self._item_trie = item_trie
        self._item_trie_rows = item_trie_rows
        self._sid_keys = codes_key(sid_codes, codebook_sizes)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_codes(
        cls,
        item_ids: list[str],
        codes: np.ndarray,
        popularity: np.ndarray,
        categories: list[str] | None,
        codebook_sizes: tuple[int, int, int],
        config: dict[str, Any] | None = None,
    ) -> SidIndex:
        """Group items by their 3 codes ``[n, 3]``: identical codes share one SID; a SID's items are ordered by
        popularity descending, ties by item row. ``categories=None`` means unknown (``""``) for every item."""
        sizes = check_codebook_sizes(codebook_sizes)
        item_ids = list(item_ids)
        n = len(item_ids)
        if n == 0:
            raise ValueError("item_ids must hold at least one item, given 0")
        codes = np.asarray(codes)
        if codes.shape != (n, NUM_LEVELS):
            raise ValueError(f"codes must have shape [{n}, {NUM_LEVELS}] (one row per item), given {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers, given dtype {codes.dtype}")
        for level, size in enumerate(sizes):
            col = codes[:, level]
            bad = np.flatnonzero((col < 0) | (col >= size))
            if bad.size:
                raise ValueError(
                    f"codes[:, {level}] must be in [0, {size}), given {int(col[bad[0]])} at item row {int(bad[0])}"
                )
        pop = np.asarray(popularity, dtype=np.float64)
        if pop.shape != (n,):
            raise ValueError(f"popularity must have shape [{n}], given {pop.shape}")
        bad = np.flatnonzero(~np.isfinite(pop) | (pop < 0))
        if bad.size:
            raise ValueError(f"popularity must be finite and >= 0, given {pop[bad[0]]} at item row {int(bad[0])}")
        if categories is None:
            cats = [""] * n
        else:
            cats = [str(c) for c in categories]
            if len(cats) != n:
                raise ValueError(f"categories must have {n} entries (one per item), given {len(cats)}")

        item_trie, item_trie_rows = _item_trie(item_ids)
        keys = codes_key(codes, sizes)
        uniq_keys, first, item_sid_row = np.unique(keys, return_index=True, return_inverse=True)
        del keys
        item_sid_row = item_sid_row.astype(np.int64).reshape(-1)
        sid_codes = codes[first].astype(np.int64)
        num_sids = int(uniq_keys.shape[0])
        rows = np.arange(n, dtype=np.int64)
        # primary: SID row; then popularity descending; then item row ascending (lexsort: last key is primary)
        sid_item_rows = np.lexsort((rows, -pop, item_sid_row)).astype(np.int64)
        counts = np.bincount(item_sid_row, minlength=num_sids)
        sid_item_indptr = np.zeros(num_sids + 1, dtype=np.int64)
        np.cumsum(counts, out=sid_item_indptr[1:])
        tables = PrefixTables.from_sorted_codes(sid_codes)
        return cls(
            codebook_sizes=sizes, sid_codes=sid_codes, sid_item_indptr=sid_item_indptr, sid_item_rows=sid_item_rows,
            item_ids=item_ids, item_sid_row=item_sid_row, item_category=cats, item_popularity=pop, tables=tables,
            item_trie=item_trie, item_trie_rows=item_trie_rows, config=config,
        )

    # ------------------------------------------------------------------ lookups
    @property
    def num_sids(self) -> int:
        return int(self.sid_codes.shape[0])

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def item_row(self, item_id: str) -> int | None:
        """Catalog row of ``item_id``, ``None`` if it is not in the index."""
        key_id = self._item_trie.get(item_id)
        return None if key_id is None else int(self._item_trie_rows[key_id])

    def sid_rows_of_codes(self, codes: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`sid_row_of_codes`: ``[m, 3]`` codes → int64 ``[m]`` SID rows, ``-1`` where invalid."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1, NUM_LEVELS)
        sizes = np.asarray(self.codebook_sizes, dtype=np.int64)
        in_range = np.all((codes >= 0) & (codes < sizes), axis=1)
        keys = codes_key(np.where(in_range[:, None], codes, 0), self.codebook_sizes)
        pos = np.searchsorted(self._sid_keys, keys)
        pos_c = np.minimum(pos, self.num_sids - 1)
        found = in_range & (self._sid_keys[pos_c] == keys)
        return np.where(found, pos_c, -1).astype(np.int64)

    def sid_row_of_codes(self, codes: Sequence[int] | np.ndarray) -> int:
        """SID row of 3 codes, ``-1`` if they are not a SID of this index."""
        arr = np.asarray(codes, dtype=np.int64)
        if arr.shape != (NUM_LEVELS,):
            raise ValueError(f"codes must be {NUM_LEVELS} integers, given shape {arr.shape}")
        return int(self.sid_rows_of_codes(arr[None, :])[0])

    def sid_str(self, row: int) -> str:
        """The SID string (``<s0_a><s1_b><s2_c>``) of SID row ``row``."""
        if not 0 <= row < self.num_sids:
            raise IndexError(f"SID row must be in [0, {self.num_sids}), given {row}")
        return sid_string(self.sid_codes[row].tolist())

    def sid_row(self, sid_str: str) -> int | None:
        """SID row of a SID string, ``None`` if it is not a SID of this index (or not in canonical form)."""
        m = _CANONICAL_SID.fullmatch(sid_str)  # canonical tokens only: "<s0_03>" is not a token of the vocabulary
        if m is None:
            return None
        c0, c1, c2 = int(m[1]), int(m[2]), int(m[3])
        s1, s2 = self.codebook_sizes[1], self.codebook_sizes[2]
        if c0 >= self.codebook_sizes[0] or c1 >= s1 or c2 >= s2:
            return None
        key = (c0 * s1 + c1) * s2 + c2
        pos = int(np.searchsorted(self._sid_keys, key))
        return pos if pos < self.num_sids and int(self._sid_keys[pos]) == key else None

    def items_of_sid_row(self, row: int) -> list[str]:
        """Item ids of SID row ``row``, most popular first."""
        if not 0 <= row < self.num_sids:
            raise IndexError(f"SID row must be in [0, {self.num_sids}), given {row}")
        lo, hi = int(self.sid_item_indptr[row]), int(self.sid_item_indptr[row + 1])
        return [self.item_ids[i] for i in self.sid_item_rows[lo:hi].tolist()]

    def items_of_sid(self, sid_str: str) -> list[str]:
        """Item ids of a SID string, most popular first; ``[]`` if it is not a SID of this index."""
        row = self.sid_row(sid_str)
        return [] if row is None else self.items_of_sid_row(row)

    def sid_of_item(self, item_id: str) -> str:
        """SID string of ``item_id``; ``KeyError`` naming the id if it is not in the index."""
        row = self.item_row(item_id)
        if row is None:
            raise KeyError(f"item_id {item_id!r} is not in the index")
        return self.sid_str(int(self.item_sid_row[row]))

    def codes_of_item(self, item_id: str) -> tuple[int, int, int]:
        """The 3 codes of ``item_id``; ``KeyError`` naming the id if it is not in the index."""
        return parse_sid_string(self.sid_of_item(item_id))

    # ------------------------------------------------------------------ persistence (sid_index.index_files)
    def save(self, directory: str | os.PathLike[str], extra_json: Mapping[str, Any] | None = None) -> Path:
        """Write the index to ``directory`` atomically (a staging sibling, then rename; replaces an old index).

        ``extra_json`` maps further file names (e.g. ``"stats.json"``) to JSON-ready objects written and checksummed
        with the index; :meth:`load` verifies them but does not need them."""
        parts = IndexParts(
            codebook_sizes=self.codebook_sizes, sid_codes=self.sid_codes, sid_item_indptr=self.sid_item_indptr,
            sid_item_rows=self.sid_item_rows, item_ids=self.item_ids, item_sid_row=self.item_sid_row,
            item_category=self.item_category, item_popularity=self.item_popularity, tables=self.tables,
            item_trie=self._item_trie, item_trie_rows=self._item_trie_rows, config=self.config,
        )
        return write_index_dir(directory, parts, extra_json)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, verify_checksums: bool = True) -> SidIndex:
        """Read an index written by :meth:`save`; :class:`IndexFormatError` names what is wrong."""
        p = read_index_dir(directory, verify_checksums=verify_checksums)
        return cls(
            codebook_sizes=p.codebook_sizes, sid_codes=p.sid_codes, sid_item_indptr=p.sid_item_indptr,
            sid_item_rows=p.sid_item_rows, item_ids=p.item_ids, item_sid_row=p.item_sid_row,
            item_category=p.item_category, item_popularity=p.item_popularity, tables=p.tables,
            item_trie=p.item_trie, item_trie_rows=p.item_trie_rows, config=p.config,
        )

