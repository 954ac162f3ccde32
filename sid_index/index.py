"""The Semantic-ID index: SIDs ↔ items, item → SID, and the decoding prefix tables, saved as safe files.

Contract (``S`` unique SIDs, ``n`` items; all arrays numpy int64 unless noted):

- ``sid_codes [S, 3]``: unique SIDs sorted lexicographically; row ``r`` is SID ``r`` (the same row numbering as
  the leaves of :class:`~sid_index.prefix_tables.PrefixTables`).
- ``sid_item_indptr [S + 1]`` / ``sid_item_rows [n]``: the item rows of SID ``r`` are
  ``sid_item_rows[indptr[r]:indptr[r + 1]]``, by popularity descending, ties by item row ascending.
- ``item_ids`` (catalog order, row ``i``), ``item_sid_row [n]``, ``item_category`` (``""`` when unknown),
  ``item_popularity`` float64 ``[n]``.
- Lookups: item id → row and SID string → row go through marisa-tries (``None`` when unknown).

On disk (:meth:`SidIndex.save`, :meth:`SidIndex.load`) an index is a directory of ``.npy`` files (loaded with
``allow_pickle=False``), JSON and marisa-trie files, plus ``manifest.json`` (format name and version, codebook
sizes, build config, every file's sha256 and every array's shape/dtype). ``save`` writes a temporary sibling
directory and renames it into place; ``load`` raises :class:`IndexFormatError` naming the missing file, the
checksum that does not match, or the array whose shape/content is inconsistent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import marisa_trie
import numpy as np

from sid_index.prefix_tables import PrefixTables
from sid_index.tokens import NUM_LEVELS, parse_sid_string, sid_string

FORMAT_NAME = "radgr-sid-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# array files: name -> (attribute, dtype)
_ARRAY_FILES: dict[str, str] = {
    "sid_codes.npy": "int64",
    "sid_item_indptr.npy": "int64",
    "sid_item_rows.npy": "int64",
    "item_sid_row.npy": "int64",
    "item_popularity.npy": "float64",
    "item_category_index.npy": "int64",
    "item_trie_rows.npy": "int64",
    "sid_trie_rows.npy": "int64",
    "level0.npy": "int64",
    "l1_indptr.npy": "int64",
    "l1_codes.npy": "int64",
    "l2_indptr.npy": "int64",
    "l2_codes.npy": "int64",
}
_JSON_FILES = ("item_ids.json", "categories.json")
_TRIE_FILES = ("item_ids.marisa", "sid_strings.marisa")


class IndexFormatError(ValueError):
    """A saved index directory is missing a file, fails a checksum, or holds inconsistent arrays."""


def _codes_key(codes: np.ndarray, codebook_sizes: Sequence[int]) -> np.ndarray:
    """One int64 per SID whose order is the lexicographic order of the codes (mixed-radix number)."""
    s1, s2 = int(codebook_sizes[1]), int(codebook_sizes[2])
    return (codes[:, 0] * s1 + codes[:, 1]) * s2 + codes[:, 2]


def _check_codebook_sizes(codebook_sizes: Sequence[int]) -> tuple[int, int, int]:
    sizes = tuple(int(s) for s in codebook_sizes)
    if len(sizes) != NUM_LEVELS:
        raise ValueError(f"codebook_sizes must have {NUM_LEVELS} entries, given {len(sizes)}")
    for level, s in enumerate(sizes):
        if s < 1:
            raise ValueError(f"codebook_sizes[{level}] must be >= 1, given {s}")
    if float(sizes[0]) * sizes[1] * sizes[2] >= 2.0**62:
        raise ValueError(f"codebook_sizes product must be < 2**62, given {sizes}")
    return sizes[0], sizes[1], sizes[2]


def _check_item_ids(item_ids: Sequence[str]) -> None:
    seen: dict[str, int] = {}
    for row, iid in enumerate(item_ids):
        if not isinstance(iid, str):
            raise ValueError(f"item_id must be a string, given {type(iid).__name__} at row {row}")
        if iid == "":
            raise ValueError(f"item_id is empty at row {row}")
        if iid in seen:
            raise ValueError(f"item_id {iid!r} is duplicated at rows {seen[iid]} and {row}")
        seen[iid] = row


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        sid_trie: marisa_trie.Trie,
        sid_trie_rows: np.ndarray,
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
        self._sid_trie = sid_trie
        self._sid_trie_rows = sid_trie_rows
        self._sid_keys = _codes_key(sid_codes, codebook_sizes)

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
        sizes = _check_codebook_sizes(codebook_sizes)
        item_ids = list(item_ids)
        n = len(item_ids)
        if n == 0:
            raise ValueError("item_ids must hold at least one item, given 0")
        _check_item_ids(item_ids)
        codes = np.asarray(codes)
        if codes.shape != (n, NUM_LEVELS):
            raise ValueError(f"codes must have shape [{n}, {NUM_LEVELS}] (one row per item), given {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers, given dtype {codes.dtype}")
        codes = codes.astype(np.int64)
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

        keys = _codes_key(codes, sizes)
        uniq_keys, first, item_sid_row = np.unique(keys, return_index=True, return_inverse=True)
        item_sid_row = item_sid_row.astype(np.int64).reshape(-1)
        sid_codes = codes[first]
        num_sids = int(uniq_keys.shape[0])
        rows = np.arange(n, dtype=np.int64)
        # primary: SID row; then popularity descending; then item row ascending (lexsort: last key is primary)
        sid_item_rows = np.lexsort((rows, -pop, item_sid_row)).astype(np.int64)
        counts = np.bincount(item_sid_row, minlength=num_sids)
        sid_item_indptr = np.zeros(num_sids + 1, dtype=np.int64)
        np.cumsum(counts, out=sid_item_indptr[1:])
        tables = PrefixTables.from_sorted_codes(sid_codes)
        item_trie, item_trie_rows = _build_trie(item_ids)
        sid_trie, sid_trie_rows = _build_trie([sid_string(c) for c in sid_codes.tolist()])
        return cls(
            codebook_sizes=sizes, sid_codes=sid_codes, sid_item_indptr=sid_item_indptr, sid_item_rows=sid_item_rows,
            item_ids=item_ids, item_sid_row=item_sid_row, item_category=cats, item_popularity=pop, tables=tables,
            item_trie=item_trie, item_trie_rows=item_trie_rows, sid_trie=sid_trie, sid_trie_rows=sid_trie_rows,
            config=config,
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
        keys = _codes_key(np.where(in_range[:, None], codes, 0), self.codebook_sizes)
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
        """SID row of a SID string, ``None`` if it is not a SID of this index."""
        key_id = self._sid_trie.get(sid_str)
        return None if key_id is None else int(self._sid_trie_rows[key_id])

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

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str], extra_json: Mapping[str, Any] | None = None) -> Path:
        """Write the index to ``directory`` atomically (temporary sibling, then rename; replaces an old index).

        ``extra_json`` maps further file names (e.g. ``"stats.json"``) to JSON-ready objects written and checksummed
        with the index; :meth:`load` verifies them but does not need them."""
        target = Path(directory)
        extra = dict(extra_json or {})
        for name in extra:
            if not name.endswith(".json") or "/" in name or name in (MANIFEST, *_JSON_FILES):
                raise ValueError(f"extra_json file names must be new plain *.json names, given {name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            self._write_files(tmp, extra)
            if target.exists():
                old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old)
            else:
                tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _write_files(self, out: Path, extra: dict[str, Any]) -> None:
        cat_values = sorted(set(self.item_category))
        cat_pos = {c: i for i, c in enumerate(cat_values)}
        arrays = {
            "sid_codes.npy": self.sid_codes,
            "sid_item_indptr.npy": self.sid_item_indptr,
            "sid_item_rows.npy": self.sid_item_rows,
            "item_sid_row.npy": self.item_sid_row,
            "item_popularity.npy": self.item_popularity,
            "item_category_index.npy": np.asarray([cat_pos[c] for c in self.item_category], dtype=np.int64),
            "item_trie_rows.npy": self._item_trie_rows,
            "sid_trie_rows.npy": self._sid_trie_rows,
            "level0.npy": self.tables.level0,
            "l1_indptr.npy": self.tables.l1_indptr,
            "l1_codes.npy": self.tables.l1_codes,
            "l2_indptr.npy": self.tables.l2_indptr,
            "l2_codes.npy": self.tables.l2_codes,
        }
        array_meta: dict[str, dict[str, Any]] = {}
        for name, dtype in _ARRAY_FILES.items():
            arr = np.ascontiguousarray(arrays[name], dtype=dtype)
            np.save(out / name, arr, allow_pickle=False)
            array_meta[name] = {"shape": list(arr.shape), "dtype": dtype}
        (out / "item_ids.json").write_text(json.dumps(self.item_ids, ensure_ascii=False))
        (out / "categories.json").write_text(json.dumps(cat_values, ensure_ascii=False))
        self._item_trie.save(str(out / "item_ids.marisa"))
        self._sid_trie.save(str(out / "sid_strings.marisa"))
        for name, obj in extra.items():
            (out / name).write_text(json.dumps(obj, indent=2, sort_keys=True))
        files = {}
        for name in (*_ARRAY_FILES, *_JSON_FILES, *_TRIE_FILES, *extra):
            p = out / name
            files[name] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "codebook_sizes": list(self.codebook_sizes),
            "num_sids": self.num_sids,
            "num_items": self.num_items,
            "config": self.config,
            "files": files,
            "arrays": array_meta,
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, verify_checksums: bool = True) -> SidIndex:
        """Read an index written by :meth:`save`; :class:`IndexFormatError` names what is wrong."""
        d = Path(directory)
        if not d.is_dir():
            raise IndexFormatError(f"index directory {str(d)!r} does not exist")
        mpath = d / MANIFEST
        if not mpath.is_file():
            raise IndexFormatError(f"index file {MANIFEST!r} is missing in {str(d)!r}")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise IndexFormatError(f"index file {MANIFEST!r} is not valid JSON: {exc}") from exc
        if manifest.get("format") != FORMAT_NAME:
            raise IndexFormatError(f"manifest format must be {FORMAT_NAME!r}, given {manifest.get('format')!r}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"manifest format_version must be {FORMAT_VERSION}, given {manifest.get('format_version')!r}"
            )
        try:
            sizes = _check_codebook_sizes(manifest["codebook_sizes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"manifest codebook_sizes is invalid: {exc}") from exc
        files = manifest.get("files", {})
        if not isinstance(files, dict):
            raise IndexFormatError("manifest files must be an object {name: {sha256, bytes}}")
        for name in dict.fromkeys((*_ARRAY_FILES, *_JSON_FILES, *_TRIE_FILES, *files)):
            if "/" in name or "\\" in name or name.startswith("."):
                raise IndexFormatError(f"manifest names a file outside the index directory: {name!r}")
            p = d / name
            if not p.is_file():
                raise IndexFormatError(f"index file {name!r} is missing in {str(d)!r}")
            if name not in files:
                raise IndexFormatError(f"manifest has no checksum for index file {name!r}")
            if verify_checksums and _sha256(p) != files[name]["sha256"]:
                raise IndexFormatError(f"index file {name!r} fails its sha256 checksum (file changed or corrupt)")
        arrays: dict[str, np.ndarray] = {}
        for name, dtype in _ARRAY_FILES.items():
            try:
                arr = np.load(d / name, allow_pickle=False)
            except ValueError as exc:
                raise IndexFormatError(f"index file {name!r} is not a plain .npy array: {exc}") from exc
            if str(arr.dtype) != dtype:
                raise IndexFormatError(f"index file {name!r} must have dtype {dtype}, given {arr.dtype}")
            arrays[name] = arr
        loaded_json = {}
        for name in _JSON_FILES:
            try:
                loaded_json[name] = json.loads((d / name).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise IndexFormatError(f"index file {name!r} is not valid JSON: {exc}") from exc
        item_ids, cat_values = loaded_json["item_ids.json"], loaded_json["categories.json"]
        tries = {}
        for name in _TRIE_FILES:
            trie = marisa_trie.Trie()
            try:
                trie.load(str(d / name))
            except Exception as exc:  # marisa raises plain RuntimeError/ValueError subclasses on corrupt files
                raise IndexFormatError(f"index file {name!r} is not a marisa-trie: {exc}") from exc
            tries[name] = trie
        item_trie, sid_trie = tries["item_ids.marisa"], tries["sid_strings.marisa"]
        index = _assemble_checked(sizes, arrays, item_ids, cat_values, item_trie, sid_trie, manifest)
        return index


def _build_trie(keys: list[str]) -> tuple[marisa_trie.Trie, np.ndarray]:
    """A marisa-trie over ``keys`` and the array mapping its key ids back to positions in ``keys``."""
    trie = marisa_trie.Trie(keys)
    rows = np.full(len(keys), -1, dtype=np.int64)
    key_ids = np.fromiter((trie.key_id(k) for k in keys), dtype=np.int64, count=len(keys))
    rows[key_ids] = np.arange(len(keys), dtype=np.int64)
    return trie, rows


def _shape_error(name: str, expected: str, arr: np.ndarray) -> IndexFormatError:
    return IndexFormatError(f"index file {name!r} must have shape {expected}, given {list(arr.shape)}")


def _assemble_checked(
    sizes: tuple[int, int, int],
    a: dict[str, np.ndarray],
    item_ids: Any,
    cat_values: Any,
    item_trie: marisa_trie.Trie,
    sid_trie: marisa_trie.Trie,
    manifest: dict[str, Any],
) -> SidIndex:
    """Check every array's shape and the cross-references between them, then build the :class:`SidIndex`."""
    if not isinstance(item_ids, list) or not all(isinstance(x, str) for x in item_ids):
        raise IndexFormatError("index file 'item_ids.json' must be a JSON list of strings")
    if not isinstance(cat_values, list) or not all(isinstance(x, str) for x in cat_values):
        raise IndexFormatError("index file 'categories.json' must be a JSON list of strings")
    n = len(item_ids)
    codes = a["sid_codes.npy"]
    if codes.ndim != 2 or codes.shape[1] != NUM_LEVELS or codes.shape[0] == 0:
        raise _shape_error("sid_codes.npy", f"[S >= 1, {NUM_LEVELS}]", codes)
    s = int(codes.shape[0])
    expected = {
        "sid_item_indptr.npy": (s + 1,), "sid_item_rows.npy": (n,), "item_sid_row.npy": (n,),
        "item_popularity.npy": (n,), "item_category_index.npy": (n,), "item_trie_rows.npy": (n,),
        "sid_trie_rows.npy": (s,), "l2_codes.npy": (s,),
    }
    for name, shape in expected.items():
        if a[name].shape != shape:
            raise _shape_error(name, str(list(shape)), a[name])
    for key, value in (("num_sids", s), ("num_items", n)):
        if manifest.get(key) != value:
            raise IndexFormatError(f"manifest {key} is {manifest.get(key)!r} but the arrays hold {value}")
    for level, size in enumerate(sizes):
        if codes[:, level].min() < 0 or codes[:, level].max() >= size:
            raise IndexFormatError(f"index file 'sid_codes.npy' level {level} codes must be in [0, {size})")
    try:
        tables = PrefixTables.from_sorted_codes(codes)
    except ValueError as exc:
        raise IndexFormatError(f"index file 'sid_codes.npy' is invalid: {exc}") from exc
    for name, field in (("level0.npy", "level0"), ("l1_indptr.npy", "l1_indptr"), ("l1_codes.npy", "l1_codes"),
                        ("l2_indptr.npy", "l2_indptr"), ("l2_codes.npy", "l2_codes")):
        if not np.array_equal(a[name], getattr(tables, field)):
            raise IndexFormatError(f"index file {name!r} does not match the prefix tables of 'sid_codes.npy'")
    indptr, members, sid_row = a["sid_item_indptr.npy"], a["sid_item_rows.npy"], a["item_sid_row.npy"]
    if indptr[0] != 0 or indptr[-1] != n or np.any(np.diff(indptr) < 1):
        raise IndexFormatError("index file 'sid_item_indptr.npy' must rise from 0 to num_items, >= 1 item per SID")
    if not np.array_equal(np.sort(members), np.arange(n)):
        raise IndexFormatError("index file 'sid_item_rows.npy' must be a permutation of the item rows")
    sid_of_member = np.repeat(np.arange(s, dtype=np.int64), np.diff(indptr))
    if not np.array_equal(sid_row[members], sid_of_member):
        raise IndexFormatError("index file 'item_sid_row.npy' disagrees with 'sid_item_rows.npy'")
    cat_idx = a["item_category_index.npy"]
    if n and (cat_idx.min() < 0 or cat_idx.max() >= len(cat_values)):
        raise IndexFormatError(f"index file 'item_category_index.npy' must be in [0, {len(cat_values)})")
    if len(item_trie) != n or len(sid_trie) != s:
        raise IndexFormatError("index marisa files must hold one key per item / per SID")
    for name, trie, rows in (("item_trie_rows.npy", item_trie, a["item_trie_rows.npy"]),
                             ("sid_trie_rows.npy", sid_trie, a["sid_trie_rows.npy"])):
        if not np.array_equal(np.sort(rows), np.arange(len(trie))):
            raise IndexFormatError(f"index file {name!r} must be a permutation of the rows")
    cats = [cat_values[i] for i in cat_idx.tolist()]
    index = SidIndex(
        codebook_sizes=sizes, sid_codes=codes, sid_item_indptr=indptr, sid_item_rows=members, item_ids=item_ids,
        item_sid_row=sid_row, item_category=cats, item_popularity=a["item_popularity.npy"], tables=tables,
        item_trie=item_trie, item_trie_rows=a["item_trie_rows.npy"], sid_trie=sid_trie,
        sid_trie_rows=a["sid_trie_rows.npy"], config=manifest.get("config") or {},
    )
    # spot-check that the tries map to the stored rows (first and last of each)
    for probe in {0, n - 1}:
        if index.item_row(item_ids[probe]) != probe:
            raise IndexFormatError("index file 'item_ids.marisa' does not map item ids to their rows")
    for probe in {0, s - 1}:
        if index.sid_row(index.sid_str(probe)) != probe:
            raise IndexFormatError("index file 'sid_strings.marisa' does not map SID strings to their rows")
    return index
