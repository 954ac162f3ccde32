"""The on-disk format of a SID index (version 2, compact): one directory, published atomically, checked when read.

Contract (``S`` SIDs, ``n`` items):

- A directory holds ``manifest.json`` (format name and version, codebook sizes, ``num_sids``, ``num_items``, the build
  config, every file's sha256 and size, every array's shape and stored width/dtype) and:

  - the packed integer arrays of :data:`PACKED_FILES` (uint8 ``[..., w]``, :mod:`sid_index.narrow_arrays`, read with
    ``allow_pickle=False``): ``sid_codes`` ``[S, 3]`` (sorted lexicographically, unique), ``sid_item_counts``
    ``[S]`` (items per SID, each ≥ 1), ``sid_item_rows`` ``[n]`` (the items of SID 0, then SID 1, … each by
    popularity descending, ties by row), ``item_key_rows`` ``[n]`` (marisa key id → item row) and
    ``item_category_index`` ``[n]`` (into ``categories.json``, the sorted category values);
  - ``item_popularity.npy`` in the narrowest exact dtype (uint8/16/32, float32 or float64);
  - ``item_ids.zlib``: the item ids in catalog order, UTF-8, joined by NUL, zlib-compressed (written in chunks);
  - ``item_ids.marisa``: the marisa-trie of the item ids (item id → key id → row);
  - any extra ``*.json`` the writer adds (e.g. ``stats.json``).

  What can be derived quickly is not stored: the prefix tables (from ``sid_codes``), ``sid_item_indptr`` (cumulative
  counts), ``item_sid_row`` (inverse of the grouping), the SID-string lookup (parse + binary search on the codes).
  Version 1 (int64 arrays, both tries, JSON ids; 229 B per SID at 1M items) is refused with a message naming the
  manifest and both versions.
- :func:`write_index_dir` builds the directory in a staging sibling and publishes it
  (:func:`sid_index.atomic_files.publish_directory`): the path holds the old index or the complete new one.
- :func:`read_index_dir` returns :class:`IndexParts` (what a :class:`~sid_index.index.SidIndex` is made of, with the
  derived arrays rebuilt) after checking, in order: the manifest's format and version; every file present and
  checksummed (sha256 verified unless ``verify_checksums=False``); array dtypes and shapes; the cross-references
  (codes sorted, unique and within the codebooks; counts summing to ``n``; ``sid_item_rows`` and ``item_key_rows``
  permutations; a SID's items in popularity order; category indices in range; the trie mapping ids to their rows).
  Any failure raises :class:`IndexFormatError` naming the file.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import marisa_trie
import numpy as np

from sid_index.atomic_files import publish_directory, sha256_file
from sid_index.manifest import MANIFEST, read_format_manifest
from sid_index.narrow_arrays import narrow_popularity, pack_uint, unpack_uint, widen_popularity
from sid_index.prefix_tables import PrefixTables
from sid_index.tokens import NUM_LEVELS

FORMAT_NAME = "radgr-sid-index"
FORMAT_VERSION = 2  # 2: compact (packed integers, derived arrays and the SID trie dropped, zlib ids); 1: int64 arrays

PACKED_FILES = ("sid_codes.npy", "sid_item_counts.npy", "sid_item_rows.npy", "item_key_rows.npy",
                "item_category_index.npy")
POPULARITY_FILE = "item_popularity.npy"
IDS_FILE = "item_ids.zlib"
TRIE_FILE = "item_ids.marisa"
CATEGORIES_FILE = "categories.json"
FORMAT_FILES = (*PACKED_FILES, POPULARITY_FILE, IDS_FILE, TRIE_FILE, CATEGORIES_FILE)
_IDS_CHUNK = 1 << 20  # item ids compressed per chunk when writing


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


def codes_key(codes: np.ndarray, codebook_sizes: Sequence[int]) -> np.ndarray:
    """One int64 per SID whose order is the lexicographic order of the codes (mixed-radix number)."""
    s1, s2 = int(codebook_sizes[1]), int(codebook_sizes[2])
    c = np.asarray(codes)
    key: np.ndarray = (c[:, 0].astype(np.int64) * s1 + c[:, 1]) * s2 + c[:, 2]
    return key


def category_index(categories: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The sorted distinct categories and each item's position in them (int64 ``[n]``)."""
    values = sorted(set(categories))
    if len(values) == 1:
        return values, np.zeros(len(categories), dtype=np.int64)
    pos = {c: i for i, c in enumerate(values)}
    return values, np.fromiter(map(pos.__getitem__, categories), dtype=np.int64, count=len(categories))


# ------------------------------------------------------------------------------------------------------ write
def write_index_dir(directory: str | os.PathLike[str], parts: IndexParts,
                    extra_json: Mapping[str, Any] | None = None) -> Path:
    """Publish ``parts`` as an index directory (module docstring); ``extra_json`` maps further ``*.json`` file
    names to JSON-ready objects written and checksummed with the index."""
    extra = dict(extra_json or {})
    for name in extra:
        if not name.endswith(".json") or "/" in name or name in (MANIFEST, CATEGORIES_FILE):
            raise ValueError(f"extra_json file names must be new plain *.json names, given {name!r}")
    target = Path(directory)
    with publish_directory(target) as staging:
        _write_files(staging, parts, extra)
    return target


def write_item_ids(path: Path, item_ids: Sequence[str]) -> None:
    """``item_ids`` as zlib-compressed UTF-8 joined by NUL, compressed and written a chunk of ids at a time."""
    comp = zlib.compressobj(6)
    with open(path, "wb") as f:
        for lo in range(0, len(item_ids), _IDS_CHUNK):
            text = "\x00".join(item_ids[lo : lo + _IDS_CHUNK])
            f.write(comp.compress((text if lo == 0 else "\x00" + text).encode("utf-8")))
        f.write(comp.flush())


def _write_files(out: Path, parts: IndexParts, extra: dict[str, Any]) -> None:
    cat_values, cat_idx = category_index(parts.item_category)
    arrays = {
        "sid_codes.npy": parts.sid_codes,
        "sid_item_counts.npy": np.diff(parts.sid_item_indptr),
        "sid_item_rows.npy": parts.sid_item_rows,
        "item_key_rows.npy": parts.item_trie_rows,
        "item_category_index.npy": cat_idx,
    }
    array_meta: dict[str, dict[str, Any]] = {}
    for name in PACKED_FILES:
        packed = pack_uint(arrays[name])
        np.save(out / name, packed, allow_pickle=False)
        array_meta[name] = {"shape": list(arrays[name].shape), "bytes_per_value": int(packed.shape[-1])}
    pop = narrow_popularity(parts.item_popularity)
    np.save(out / POPULARITY_FILE, pop, allow_pickle=False)
    array_meta[POPULARITY_FILE] = {"shape": list(pop.shape), "dtype": str(pop.dtype)}
    write_item_ids(out / IDS_FILE, parts.item_ids)
    parts.item_trie.save(str(out / TRIE_FILE))
    (out / CATEGORIES_FILE).write_text(json.dumps(cat_values, ensure_ascii=False), encoding="utf-8")
    for name, obj in extra.items():
        (out / name).write_text(json.dumps(obj, indent=2, sort_keys=True))
    files = {}
    for name in (*FORMAT_FILES, *extra):
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
    for name in PACKED_FILES:
        try:
            arrays[name] = unpack_uint(np.load(d / name, allow_pickle=False))
        except ValueError as exc:
            raise IndexFormatError(f"index file {name!r} is not a packed integer .npy array: {exc}") from exc
    try:
        pop = widen_popularity(np.load(d / POPULARITY_FILE, allow_pickle=False))
    except ValueError as exc:
        raise IndexFormatError(f"index file {POPULARITY_FILE!r} is invalid: {exc}") from exc
    try:
        text = zlib.decompress((d / IDS_FILE).read_bytes()).decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"index file {IDS_FILE!r} is not zlib-compressed UTF-8: {exc}") from exc
    if text == "" or text.startswith("\x00") or text.endswith("\x00") or "\x00\x00" in text:
        raise IndexFormatError(f"index file {IDS_FILE!r} holds an empty item id")
    ids = text.split("\x00")
    del text
    try:
        cat_values = json.loads((d / CATEGORIES_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"index file {CATEGORIES_FILE!r} is not valid JSON: {exc}") from exc
    trie = marisa_trie.Trie()
    try:
        trie.load(str(d / TRIE_FILE))
    except Exception as exc:  # marisa raises plain RuntimeError/ValueError subclasses on corrupt files
        raise IndexFormatError(f"index file {TRIE_FILE!r} is not a marisa-trie: {exc}") from exc
    return _checked_parts(sizes, arrays, pop, ids, cat_values, trie, manifest)


def _check_files(d: Path, files: Any, verify_checksums: bool) -> None:
    """Every format file and every listed file exists inside ``d``, is listed, and matches its sha256."""
    if not isinstance(files, dict):
        raise IndexFormatError("manifest files must be an object {name: {sha256, bytes}}")
    for name in dict.fromkeys((*FORMAT_FILES, *files)):
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


def _is_permutation(a: np.ndarray, n: int) -> bool:
    return bool(a.shape == (n,) and (n == 0 or (int(a.max()) < n and np.all(np.bincount(a, minlength=n) == 1))))


def _checked_parts(sizes: tuple[int, int, int], a: dict[str, np.ndarray], pop: np.ndarray, item_ids: list[str],
                   cat_values: Any, trie: marisa_trie.Trie, manifest: dict[str, Any]) -> IndexParts:
    """Check every array's shape and the cross-references between them, rebuild the derived arrays, gather parts."""
    if not isinstance(cat_values, list) or not all(isinstance(x, str) for x in cat_values):
        raise IndexFormatError(f"index file {CATEGORIES_FILE!r} must be a JSON list of strings")
    n = len(item_ids)  # non-empty ids: checked on the text before splitting
    codes = a["sid_codes.npy"]
    if codes.ndim != 2 or codes.shape[1] != NUM_LEVELS or codes.shape[0] == 0:
        raise _shape_error("sid_codes.npy", f"[S >= 1, {NUM_LEVELS}]", codes)
    s = int(codes.shape[0])
    expected = {"sid_item_counts.npy": (s,), "sid_item_rows.npy": (n,), "item_key_rows.npy": (n,),
                "item_category_index.npy": (n,)}
    for name, shape in expected.items():
        if a[name].shape != shape:
            raise _shape_error(name, str(list(shape)), a[name])
    if pop.shape != (n,):
        raise _shape_error(POPULARITY_FILE, f"[{n}]", pop)
    for key, value in (("num_sids", s), ("num_items", n)):
        if manifest.get(key) != value:
            raise IndexFormatError(f"manifest {key} is {manifest.get(key)!r} but the files hold {value}")
    for level, size in enumerate(sizes):
        if codes[:, level].max() >= size:
            raise IndexFormatError(f"index file 'sid_codes.npy' level {level} codes must be in [0, {size})")
    if np.any(np.diff(codes_key(codes, sizes)) <= 0):
        raise IndexFormatError("index file 'sid_codes.npy' must hold unique SIDs sorted lexicographically")
    counts = a["sid_item_counts.npy"]
    if counts.min() < 1 or int(counts.sum()) != n:
        raise IndexFormatError(f"index file 'sid_item_counts.npy' must be >= 1 per SID and sum to {n} items")
    members = a["sid_item_rows.npy"]
    if not _is_permutation(members, n):
        raise IndexFormatError("index file 'sid_item_rows.npy' must be a permutation of the item rows")
    indptr = np.zeros(s + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    sid_of_member = np.repeat(np.arange(s, dtype=np.int64), counts)
    sid_row = np.empty(n, dtype=np.int64)
    sid_row[members] = sid_of_member
    p = pop[members]
    in_order = (p[1:] < p[:-1]) | ((p[1:] == p[:-1]) & (members[1:] > members[:-1]))
    if np.any((sid_of_member[1:] == sid_of_member[:-1]) & ~in_order):
        raise IndexFormatError("index file 'sid_item_rows.npy' does not list a SID's items by popularity "
                               "descending, ties by row")
    cat_idx = a["item_category_index.npy"]
    if cat_idx.max() >= len(cat_values):
        raise IndexFormatError(f"index file 'item_category_index.npy' must be in [0, {len(cat_values)})")
    key_rows = a["item_key_rows.npy"]
    if len(trie) != n or not _is_permutation(key_rows, n):
        raise IndexFormatError(f"index file {TRIE_FILE!r} must hold one key per item and 'item_key_rows.npy' "
                               "must be a permutation of the item rows")
    for r in {0, n - 1}:  # spot-check that the trie maps ids to their rows (first and last)
        key_id = trie.get(item_ids[r])
        if key_id is None or int(key_rows[key_id]) != r:
            raise IndexFormatError(f"index file {TRIE_FILE!r} does not map item ids to their rows")
    tables = PrefixTables.from_sorted_codes(codes)
    one = len(cat_values) == 1  # the common case: a list of one repeated value, no gather
    categories = [cat_values[0]] * n if one else np.asarray(cat_values, dtype=object)[cat_idx].tolist()
    return IndexParts(
        codebook_sizes=sizes, sid_codes=codes, sid_item_indptr=indptr, sid_item_rows=members, item_ids=item_ids,
        item_sid_row=sid_row, item_category=categories, item_popularity=pop, tables=tables, item_trie=trie,
        item_trie_rows=key_rows, config=manifest.get("config") or {},
    )
