"""The on-disk format of a SID index: one directory, published atomically, checked when read.

Contract:

- A directory holds the ``.npy`` arrays of :data:`ARRAY_FILES` (plain arrays, read with ``allow_pickle=False``),
  ``item_ids.json`` (catalog order) and ``categories.json`` (the sorted category values that
  ``item_category_index.npy`` points into), the marisa-tries ``item_ids.marisa`` and ``sid_strings.marisa``, any
  extra ``*.json`` the writer adds (e.g. ``stats.json``), and ``manifest.json``: format name and version, codebook
  sizes, ``num_sids``, ``num_items``, the build config, every file's sha256 and size, every array's shape/dtype.
- :func:`write_index_dir` builds the directory in a staging sibling and publishes it
  (:func:`sid_index.atomic_files.publish_directory`): the path holds the old index or the complete new one.
- :func:`read_index_dir` returns :class:`IndexParts` (what a :class:`~sid_index.index.SidIndex` is made of) after
  checking, in order: the manifest's format and version; every file present and checksummed (sha256 verified
  unless ``verify_checksums=False``); array dtypes and shapes; the cross-references (prefix tables equal those of
  ``sid_codes``, ``sid_item_rows`` a permutation agreeing with ``item_sid_row``, category indices in range, trie
  row maps permutations, the tries mapping keys to their rows). Any failure raises :class:`IndexFormatError`
  naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import marisa_trie
import numpy as np

from sid_index.atomic_files import publish_directory, sha256_file
from sid_index.manifest import MANIFEST, read_format_manifest
from sid_index.prefix_tables import PrefixTables
from sid_index.tokens import NUM_LEVELS, sid_string

FORMAT_NAME = "radgr-sid-index"
FORMAT_VERSION = 1

# array files: file name -> dtype (the first eight hold the IndexParts field of the same name, the last five the
# PrefixTables field of the same name)
ARRAY_FILES: dict[str, str] = {
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
JSON_FILES = ("item_ids.json", "categories.json")
TRIE_FILES = ("item_ids.marisa", "sid_strings.marisa")
_TABLE_FIELDS = ("level0", "l1_indptr", "l1_codes", "l2_indptr", "l2_codes")


class IndexFormatError(ValueError):
    """A saved index directory is missing a file, fails a checksum, or holds inconsistent arrays."""


@dataclass(frozen=True)
class IndexParts:
    """Everything a SID index is made of (the field meanings are in :mod:`sid_index.index`)."""

    codebook_sizes: tuple[int, int, int]
    sid_codes: np.ndarray
    sid_item_indptr: np.ndarray
    sid_item_rows: np.ndarray
    item_ids: list[str]
    item_sid_row: np.ndarray
    item_category: list[str]
    item_popularity: np.ndarray
    tables: PrefixTables
    item_trie: marisa_trie.Trie
    item_trie_rows: np.ndarray
    sid_trie: marisa_trie.Trie
    sid_trie_rows: np.ndarray
    config: dict[str, Any]


def check_codebook_sizes(codebook_sizes: Sequence[int]) -> tuple[int, int, int]:
    """Three sizes >= 1 whose product fits the int64 SID keys; ``ValueError`` naming the bad entry."""
    sizes = tuple(int(s) for s in codebook_sizes)
    if len(sizes) != NUM_LEVELS:
        raise ValueError(f"codebook_sizes must have {NUM_LEVELS} entries, given {len(sizes)}")
    for level, s in enumerate(sizes):
        if s < 1:
            raise ValueError(f"codebook_sizes[{level}] must be >= 1, given {s}")
    if float(sizes[0]) * sizes[1] * sizes[2] >= 2.0**62:
        raise ValueError(f"codebook_sizes product must be < 2**62, given {sizes}")
    return sizes[0], sizes[1], sizes[2]


# ------------------------------------------------------------------------------------------------------ write
def write_index_dir(directory: str | os.PathLike[str], parts: IndexParts,
                    extra_json: Mapping[str, Any] | None = None) -> Path:
    """Publish ``parts`` as an index directory (module docstring); ``extra_json`` maps further ``*.json`` file
    names to JSON-ready objects written and checksummed with the index."""
    extra = dict(extra_json or {})
    for name in extra:
        if not name.endswith(".json") or "/" in name or name in (MANIFEST, *JSON_FILES):
            raise ValueError(f"extra_json file names must be new plain *.json names, given {name!r}")
    target = Path(directory)
    with publish_directory(target) as staging:
        _write_files(staging, parts, extra)
    return target


def _write_files(out: Path, parts: IndexParts, extra: dict[str, Any]) -> None:
    cat_values = sorted(set(parts.item_category))
    cat_pos = {c: i for i, c in enumerate(cat_values)}
    arrays = {
        "sid_codes.npy": parts.sid_codes,
        "sid_item_indptr.npy": parts.sid_item_indptr,
        "sid_item_rows.npy": parts.sid_item_rows,
        "item_sid_row.npy": parts.item_sid_row,
        "item_popularity.npy": parts.item_popularity,
        "item_category_index.npy": np.asarray([cat_pos[c] for c in parts.item_category], dtype=np.int64),
        "item_trie_rows.npy": parts.item_trie_rows,
        "sid_trie_rows.npy": parts.sid_trie_rows,
        **{f"{field}.npy": getattr(parts.tables, field) for field in _TABLE_FIELDS},
    }
    array_meta: dict[str, dict[str, Any]] = {}
    for name, dtype in ARRAY_FILES.items():
        arr = np.ascontiguousarray(arrays[name], dtype=dtype)
        np.save(out / name, arr, allow_pickle=False)
        array_meta[name] = {"shape": list(arr.shape), "dtype": dtype}
    (out / "item_ids.json").write_text(json.dumps(parts.item_ids, ensure_ascii=False), encoding="utf-8")
    (out / "categories.json").write_text(json.dumps(cat_values, ensure_ascii=False), encoding="utf-8")
    parts.item_trie.save(str(out / "item_ids.marisa"))
    parts.sid_trie.save(str(out / "sid_strings.marisa"))
    for name, obj in extra.items():
        (out / name).write_text(json.dumps(obj, indent=2, sort_keys=True))
    files = {}
    for name in (*ARRAY_FILES, *JSON_FILES, *TRIE_FILES, *extra):
        p = out / name
        files[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "codebook_sizes": list(parts.codebook_sizes),
        "num_sids": int(parts.sid_codes.shape[0]),
        "num_items": len(parts.item_ids),
        "config": parts.config,
        "files": files,
        "arrays": array_meta,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------------------------------- read
def read_index_dir(directory: str | os.PathLike[str], *, verify_checksums: bool = True) -> IndexParts:
    """The checked contents of an index directory (module docstring); :class:`IndexFormatError` names the file."""
    d = Path(directory)
    manifest = read_format_manifest(d, kind="index", format_name=FORMAT_NAME, format_version=FORMAT_VERSION,
                                    error=IndexFormatError)
    try:
        sizes = check_codebook_sizes(manifest["codebook_sizes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"manifest codebook_sizes is invalid: {exc}") from exc
    _check_files(d, manifest.get("files", {}), verify_checksums)
    arrays: dict[str, np.ndarray] = {}
    for name, dtype in ARRAY_FILES.items():
        try:
            arr = np.load(d / name, allow_pickle=False)
        except ValueError as exc:
            raise IndexFormatError(f"index file {name!r} is not a plain .npy array: {exc}") from exc
        if str(arr.dtype) != dtype:
            raise IndexFormatError(f"index file {name!r} must have dtype {dtype}, given {arr.dtype}")
        arrays[name] = arr
    loaded_json = {}
    for name in JSON_FILES:
        try:
            loaded_json[name] = json.loads((d / name).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexFormatError(f"index file {name!r} is not valid JSON: {exc}") from exc
    tries = {}
    for name in TRIE_FILES:
        trie = marisa_trie.Trie()
        try:
            trie.load(str(d / name))
        except Exception as exc:  # marisa raises plain RuntimeError/ValueError subclasses on corrupt files
            raise IndexFormatError(f"index file {name!r} is not a marisa-trie: {exc}") from exc
        tries[name] = trie
    return _checked_parts(sizes, arrays, loaded_json["item_ids.json"], loaded_json["categories.json"],
                          tries["item_ids.marisa"], tries["sid_strings.marisa"], manifest)


def _check_files(d: Path, files: Any, verify_checksums: bool) -> None:
    """Every format file and every listed file exists inside ``d``, is listed, and matches its sha256."""
    if not isinstance(files, dict):
        raise IndexFormatError("manifest files must be an object {name: {sha256, bytes}}")
    for name in dict.fromkeys((*ARRAY_FILES, *JSON_FILES, *TRIE_FILES, *files)):
        if "/" in name or "\\" in name or name.startswith("."):
            raise IndexFormatError(f"manifest names a file outside the index directory: {name!r}")
        p = d / name
        if not p.is_file():
            raise IndexFormatError(f"index file {name!r} is missing in {str(d)!r}")
        if name not in files:
            raise IndexFormatError(f"manifest has no checksum for index file {name!r}")
        if verify_checksums and sha256_file(p) != files[name]["sha256"]:
            raise IndexFormatError(f"index file {name!r} fails its sha256 checksum (file changed or corrupt)")


def _shape_error(name: str, expected: str, arr: np.ndarray) -> IndexFormatError:
    return IndexFormatError(f"index file {name!r} must have shape {expected}, given {list(arr.shape)}")


def _trie_maps(trie: marisa_trie.Trie, rows: np.ndarray, key: str, row: int) -> bool:
    key_id = trie.get(key)
    return key_id is not None and int(rows[key_id]) == row


def _checked_parts(
    sizes: tuple[int, int, int],
    a: dict[str, np.ndarray],
    item_ids: Any,
    cat_values: Any,
    item_trie: marisa_trie.Trie,
    sid_trie: marisa_trie.Trie,
    manifest: dict[str, Any],
) -> IndexParts:
    """Check every array's shape and the cross-references between them, then gather the :class:`IndexParts`."""
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
    for field in _TABLE_FIELDS:
        if not np.array_equal(a[f"{field}.npy"], getattr(tables, field)):
            raise IndexFormatError(f"index file '{field}.npy' does not match the prefix tables of 'sid_codes.npy'")
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
    item_trie_rows, sid_trie_rows = a["item_trie_rows.npy"], a["sid_trie_rows.npy"]
    for name, trie, rows in (("item_trie_rows.npy", item_trie, item_trie_rows),
                             ("sid_trie_rows.npy", sid_trie, sid_trie_rows)):
        if not np.array_equal(np.sort(rows), np.arange(len(trie))):
            raise IndexFormatError(f"index file {name!r} must be a permutation of the rows")
    # spot-check that the tries map to the stored rows (first and last of each)
    if not all(_trie_maps(item_trie, item_trie_rows, item_ids[r], r) for r in {0, n - 1}):
        raise IndexFormatError("index file 'item_ids.marisa' does not map item ids to their rows")
    if not all(_trie_maps(sid_trie, sid_trie_rows, sid_string(codes[r].tolist()), r) for r in {0, s - 1}):
        raise IndexFormatError("index file 'sid_strings.marisa' does not map SID strings to their rows")
    return IndexParts(
        codebook_sizes=sizes, sid_codes=codes, sid_item_indptr=indptr, sid_item_rows=members, item_ids=item_ids,
        item_sid_row=sid_row, item_category=[cat_values[i] for i in cat_idx.tolist()],
        item_popularity=a["item_popularity.npy"], tables=tables, item_trie=item_trie, item_trie_rows=item_trie_rows,
        sid_trie=sid_trie, sid_trie_rows=sid_trie_rows, config=manifest.get("config") or {},
    )
