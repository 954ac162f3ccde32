"""The product catalog: item ids, text fields and popularity; read/write Parquet, JSONL or CSV.

Contract:

- Columns: ``item_id`` (string, unique, non-empty), ``title`` (non-empty after stripping whitespace), optional
  ``brand`` and ``category`` (strings; missing/null → ``""``), optional ``popularity`` (finite float ≥ 0;
  missing column → 0 for every item). Other columns are ignored.
- :class:`Catalog` validates itself on construction; every error is a ``ValueError`` naming the field and the row
  (and the item id when known).
- :func:`read_catalog` / :func:`write_catalog` pick the format from the suffix (``.parquet``, ``.jsonl``, ``.csv``);
  writes are atomic (:mod:`sid_index.atomic_files`). CSV cells are read as text, so ids like ``"007"`` survive.
  Every read error (a missing column, a bad row, a truncated or corrupted file) is a ``ValueError`` naming the file
  (``FileNotFoundError`` for a missing one). A Parquet catalog is written with page checksums and a
  ``catalog.parquet.sha256`` beside it, both verified on read (:func:`sid_index.atomic_files.verify_checksum`).
- :func:`item_texts` is the text that gets embedded: title, then brand and category when present.
- :func:`catalog_from_amazon_items` converts the Amazon-2018 ``items.json`` (``{item_id: {title, description,
  brand, categories}}``) into a catalog; popularity may come from interaction counts
  (:func:`amazon_popularity_from_csv`).
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sid_index.atomic_files import verify_checksum, write_bytes_atomic, write_checksum, write_text_atomic

REQUIRED_COLUMNS = ("item_id", "title")
OPTIONAL_COLUMNS = ("brand", "category", "popularity")
SUFFIXES = (".parquet", ".jsonl", ".csv")


@dataclass(frozen=True)
class Catalog:
    """Items in catalog order (row ``i``); all lists and the popularity array have one entry per item."""

    item_ids: list[str]
    titles: list[str]
    brands: list[str]
    categories: list[str]
    popularity: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if n == 0:
            raise ValueError("catalog must hold at least one item, given 0 rows")
        for name in ("titles", "brands", "categories"):
            if len(getattr(self, name)) != n:
                given = len(getattr(self, name))
                raise ValueError(f"catalog {name} must have {n} entries (one per item_id), given {given}")
        seen: dict[str, int] = {}
        for row, iid in enumerate(self.item_ids):
            if not isinstance(iid, str):
                raise ValueError(f"item_id must be a string, given {type(iid).__name__} {iid!r} at row {row}")
            if iid.strip() == "":
                raise ValueError(f"item_id is empty at row {row}")
            if iid in seen:
                raise ValueError(f"item_id {iid!r} is duplicated at rows {seen[iid]} and {row}")
            seen[iid] = row
        for field, values in (("title", self.titles), ("brand", self.brands), ("category", self.categories)):
            for row, v in enumerate(values):
                if not isinstance(v, str):
                    raise ValueError(f"{field} must be a string, given {type(v).__name__} at row {row} "
                                     f"(item_id {self.item_ids[row]!r})")
                if field == "title" and v.strip() == "":
                    raise ValueError(f"title is empty at row {row} (item_id {self.item_ids[row]!r})")
        pop = np.asarray(self.popularity, dtype=np.float64)
        if pop.shape != (n,):
            raise ValueError(f"popularity must have shape [{n}], given {list(pop.shape)}")
        bad = np.flatnonzero(~np.isfinite(pop) | (pop < 0))
        if bad.size:
            r = int(bad[0])
            raise ValueError(f"popularity must be finite and >= 0, given {pop[r]} at row {r} "
                             f"(item_id {self.item_ids[r]!r})")
        object.__setattr__(self, "popularity", pop)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def item_texts(cat: Catalog) -> list[str]:
    """The text embedded for each item: ``title``, then ``Brand: …`` and ``Category: …`` when present."""
    out = []
    for title, brand, category in zip(cat.titles, cat.brands, cat.categories, strict=True):
        parts = [title.strip()]
        if brand.strip():
            parts.append(f"Brand: {brand.strip()}")
        if category.strip():
            parts.append(f"Category: {category.strip()}")
        out.append(". ".join(parts))
    return out


# ---------------------------------------------------------------------------------------------- reading
def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"catalog path must end in one of {', '.join(SUFFIXES)}, given {str(path)!r}")
    return suffix


def _text(value: Any, field: str, row: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, given {type(value).__name__} {value!r} at row {row}")
    return value


def _number(value: Any, row: int) -> float:
    if value is None or value == "":
        raise ValueError(f"popularity is missing at row {row} (leave the column out to mean 0 for all)")
    if isinstance(value, bool):
        raise ValueError(f"popularity must be a number, given {value!r} at row {row}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"popularity must be a number, given {value!r} at row {row}") from None


def _catalog_from_columns(columns: Mapping[str, Sequence[Any]], source: str) -> Catalog:
    for name in REQUIRED_COLUMNS:
        if name not in columns:
            raise ValueError(f"catalog {source!r} has no column {name!r} (columns: {sorted(columns)})")
    n = len(columns["item_id"])
    item_ids = []
    for row, v in enumerate(columns["item_id"]):
        if v is None:
            raise ValueError(f"item_id is empty at row {row}")
        if not isinstance(v, str):
            raise ValueError(f"item_id must be a string, given {type(v).__name__} {v!r} at row {row}")
        item_ids.append(v)
    titles = [_text(v, "title", r) for r, v in enumerate(columns["title"])]
    brands = [_text(v, "brand", r) for r, v in enumerate(columns["brand"])] if "brand" in columns else [""] * n
    cats = [_text(v, "category", r) for r, v in enumerate(columns["category"])] if "category" in columns else [""] * n
    if "popularity" in columns:
        pop = np.asarray([_number(v, r) for r, v in enumerate(columns["popularity"])], dtype=np.float64)
    else:
        pop = np.zeros(n, dtype=np.float64)
    return Catalog(item_ids=item_ids, titles=titles, brands=brands, categories=cats, popularity=pop)


def read_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Read a catalog from ``.parquet``, ``.jsonl`` or ``.csv`` (see the module docstring for the columns)."""
    p = Path(path)
    suffix = _suffix(p)
    if not p.is_file():
        raise FileNotFoundError(f"catalog file {str(p)!r} does not exist")
    columns: dict[str, list[Any]]
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        verify_checksum(p)  # ValueError naming the file when it differs from its .sha256
        try:
            table = pq.read_table(p, page_checksum_verification=True)
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"catalog {str(p)!r} is not a readable Parquet file (truncated or corrupt?): "
                             f"{' '.join(str(exc).split())}") from exc
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
    elif suffix == ".jsonl":
        records = []
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ValueError(f"catalog {str(p)!r} is not a readable UTF-8 JSONL file: {exc}") from exc
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"catalog {str(p)!r} line {line_no} is not valid JSON: {exc}") from exc
            if not isinstance(rec, dict):
                raise ValueError(f"catalog {str(p)!r} line {line_no} must be a JSON object")
            records.append(rec)
        names = {k for rec in records for k in rec}
        columns = {k: [rec.get(k) for rec in records] for k in names}
        if not records:
            columns = {"item_id": [], "title": []}
    else:
        try:
            with p.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                fieldnames = list(reader.fieldnames or [])
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"catalog {str(p)!r} is not a readable UTF-8 CSV file: {exc}") from exc
        columns = {k: [r.get(k) for r in rows] for k in fieldnames}
    try:
        return _catalog_from_columns(columns, str(p))
    except ValueError as exc:
        if str(p) in str(exc):
            raise
        raise ValueError(f"catalog {str(p)!r}: {exc}") from exc


# ---------------------------------------------------------------------------------------------- writing
def write_catalog(cat: Catalog, path: str | os.PathLike[str]) -> Path:
    """Write ``cat`` to ``path`` (format by suffix) atomically (:mod:`sid_index.atomic_files`)."""
    p = Path(path)
    suffix = _suffix(p)
    cols: dict[str, Sequence[str | float]] = {
        "item_id": cat.item_ids, "title": cat.titles, "brand": cat.brands, "category": cat.categories,
        "popularity": [float(x) for x in cat.popularity],
    }
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "item_id": pa.array(cols["item_id"], pa.string()), "title": pa.array(cols["title"], pa.string()),
            "brand": pa.array(cols["brand"], pa.string()), "category": pa.array(cols["category"], pa.string()),
            "popularity": pa.array(cols["popularity"], pa.float64()),
        })
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, write_page_checksum=True)  # read_catalog verifies them
        write_bytes_atomic(p, sink.getvalue().to_pybytes())
        write_checksum(p)  # Parquet's page checksums miss page headers and the footer
        return p
    buf = io.StringIO(newline="")
    if suffix == ".jsonl":
        for i in range(cat.num_items):
            buf.write(json.dumps({k: v[i] for k, v in cols.items()}, ensure_ascii=False) + "\n")
    else:
        writer = csv.writer(buf)
        writer.writerow(list(cols))
        writer.writerows(zip(*cols.values(), strict=True))
    return write_text_atomic(p, buf.getvalue())


# ---------------------------------------------------------------------------------------------- Amazon 2018
def _amazon_category(value: Any) -> str:
    """``categories`` is a string in this release (often empty); older dumps use nested lists of strings."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        flat: list[str] = []
        stack: list[Any] = list(value)
        while stack:
            v = stack.pop(0)
            if isinstance(v, list):
                stack = list(v) + stack
            elif isinstance(v, str) and v.strip():
                flat.append(v.strip())
        return " > ".join(flat)
    return ""


def catalog_from_amazon_items(
    items_json: str | os.PathLike[str], popularity: Mapping[str, float] | None = None
) -> Catalog:
    """Catalog from an Amazon-2018 ``items.json`` (``{item_id: {title, brand, categories, ...}}``), in the file's
    key order. ``popularity`` (item id → count) defaults to 0 for every item; ids it names that are not in the
    file raise ``ValueError``."""
    p = Path(items_json)
    with p.open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"items.json {str(p)!r} must be a JSON object {{item_id: {{title, ...}}}}")
    item_ids, titles, brands, cats = [], [], [], []
    for row, (iid, rec) in enumerate(data.items()):
        if not isinstance(rec, dict):
            raise ValueError(f"items.json entry at row {row} (item_id {iid!r}) must be an object")
        item_ids.append(str(iid))
        titles.append(_text(rec.get("title"), "title", row).strip())
        brands.append(_text(rec.get("brand"), "brand", row).strip())
        cats.append(_amazon_category(rec.get("categories")))
    pop = np.zeros(len(item_ids), dtype=np.float64)
    if popularity:
        pos = {iid: i for i, iid in enumerate(item_ids)}
        for iid, v in popularity.items():
            if iid not in pos:
                raise ValueError(f"popularity names item_id {iid!r}, which is not in {str(p)!r}")
            pop[pos[iid]] = float(v)
    return Catalog(item_ids=item_ids, titles=titles, brands=brands, categories=cats, popularity=pop)


def amazon_popularity_from_csv(paths: Iterable[str | os.PathLike[str]]) -> dict[str, float]:
    """Count how often each item appears (in ``history_item_id`` lists and as ``item_id``) in MiniOneRec-style
    interaction CSVs. Use only training-side files (e.g. ``valid.csv``) to avoid leaking the test split."""
    counts: Counter[str] = Counter()
    for path in paths:
        with Path(path).open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row_no, rec in enumerate(reader):
                for field in ("history_item_id", "item_id"):
                    if field not in rec:
                        raise ValueError(f"interaction file {str(path)!r} has no column {field!r}")
                try:
                    history = ast.literal_eval(rec["history_item_id"])
                except (ValueError, SyntaxError) as exc:
                    raise ValueError(f"history_item_id is not a list at row {row_no} of {str(path)!r}") from exc
                if not isinstance(history, list):
                    raise ValueError(f"history_item_id is not a list at row {row_no} of {str(path)!r}")
                counts.update(str(x) for x in history)
                counts[str(rec["item_id"]).strip()] += 1
    return {k: float(v) for k, v in counts.items()}
