"""Import an Amazon-2018 category in the MiniOneRec layout into the canonical catalog and sessions.

Contract (layout: ``items.json``, ``valid.csv``, ``test.csv``, optionally ``train.csv``; see the dataset README):
- Catalog: :func:`sid_index.catalog.catalog_from_amazon_items` on ``items.json``; popularity = how often each item
  appears in the training-side interaction files (``train.csv`` if present, and ``valid.csv``), never ``test.csv``.
- Sessions, one per CSV row: ``query=""``, ``profile={}``, ``history`` = ``history_item_id`` (oldest first),
  ``exposed=[]``, ``clicked = ordered = [item_id]``. No truth columns.
- The split is carried by ``day``: training-side rows (``train.csv``, ``valid.csv``) get ``day = 1``, ``test.csv``
  rows ``day = 2``; ``radgr data samples`` (split by day) then trains on valid and tests on test.
- ``expand_histories``: a training-side row with history ``h_1..h_m`` and target ``t`` also yields the next-item
  sessions (``h_1..h_{k}`` → ``h_{k+1}``) for ``k = min_history..m-1``; test rows are never expanded.
- Any category exported in the same layout works (file names are fixed, the category is not): ``items.json`` is
  ``{item_id: {title, brand?, description?, categories?}}`` with any string ids, and each CSV needs only the columns
  ``user_id``, ``history_item_id`` (a Python-literal list, oldest first) and ``item_id``; other columns are ignored.
  A missing column raises ``ValueError`` naming the file and column; rows naming items missing from ``items.json``
  raise ``ValueError`` with the file, row and field.
"""

from __future__ import annotations

import ast
import csv
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sid_index.catalog import Catalog, amazon_popularity_from_csv, catalog_from_amazon_items, write_catalog
from training.data.schema import Session, SessionWriter

logger = logging.getLogger(__name__)

TRAIN_FILES = ("train.csv", "valid.csv")
TEST_FILES = ("test.csv",)
TRAIN_DAY = 1
TEST_DAY = 2


@dataclass(frozen=True)
class AmazonImportConfig:
    expand_histories: bool = False
    min_history: int = 1  # shortest history prefix an expanded session gets

    def __post_init__(self) -> None:
        if self.min_history < 0:
            raise ValueError(f"AmazonImportConfig.min_history must be >= 0, given {self.min_history}")


@dataclass(frozen=True)
class AmazonImportStats:
    items: int
    train_sessions: int
    test_sessions: int
    expanded_sessions: int
    files: tuple[str, ...]


def _parse_history(text: str, where: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"{where} field 'history_item_id': not a list literal: {text[:60]!r}") from exc
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where} field 'history_item_id': must be a list, given {type(value).__name__}")
    return [str(v).strip() for v in value]


def iter_amazon_sessions(
    csv_path: Path, day: int, known: set[str], cfg: AmazonImportConfig, expand: bool
) -> Iterator[tuple[Session, bool]]:
    """(session, is_expanded) per CSV row, streaming."""
    stem = csv_path.stem
    with csv_path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for col in ("user_id", "history_item_id", "item_id"):
            if reader.fieldnames is None or col not in reader.fieldnames:
                raise ValueError(f"{csv_path}: missing column {col!r}")
        for row_no, rec in enumerate(reader):
            where = f"{csv_path} row {row_no}"
            history = _parse_history(rec["history_item_id"], where)
            target = str(rec["item_id"]).strip()
            for name, ids in (("item_id", [target]), ("history_item_id", history)):
                for item in ids:
                    if item not in known:
                        raise ValueError(f"{where} field {name!r}: item {item!r} is not in items.json")
            user = str(rec["user_id"])
            if expand:
                for k in range(max(cfg.min_history, 0), len(history)):
                    yield Session(session_id=f"{stem}-{row_no}-x{k}", day=day, user_id=user, query="",
                                  history=tuple(history[:k]), clicked=(history[k],), ordered=(history[k],)), True
            yield Session(session_id=f"{stem}-{row_no}", day=day, user_id=user, query="", history=tuple(history),
                          clicked=(target,), ordered=(target,)), False


def import_amazon(
    dataset_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], cfg: AmazonImportConfig,
    chunk: int = 4096, progress: Callable[[int], None] | None = None,
) -> tuple[Catalog, AmazonImportStats]:
    """Write ``out_dir/catalog.parquet`` and ``out_dir/sessions.parquet`` (module docstring)."""
    src = Path(dataset_dir)
    items = src / "items.json"
    if not items.is_file():
        raise ValueError(f"dataset directory {str(src)!r} has no items.json")
    train_files = [src / n for n in TRAIN_FILES if (src / n).is_file()]
    test_files = [src / n for n in TEST_FILES if (src / n).is_file()]
    if not train_files and not test_files:
        raise ValueError(f"dataset directory {str(src)!r} has none of {TRAIN_FILES + TEST_FILES}")
    popularity = amazon_popularity_from_csv(train_files) if train_files else None
    catalog = catalog_from_amazon_items(items, popularity)
    out = Path(out_dir)
    write_catalog(catalog, out / "catalog.parquet")
    known = set(catalog.item_ids)
    counts = {"train": 0, "test": 0, "expanded": 0}
    with SessionWriter(out / "sessions.parquet", with_truth=False) as writer:
        buf: list[Session] = []
        for path, day, split in [*((p, TRAIN_DAY, "train") for p in train_files),
                                 *((p, TEST_DAY, "test") for p in test_files)]:
            for session, expanded in iter_amazon_sessions(path, day, known, cfg,
                                                          cfg.expand_histories and split == "train"):
                buf.append(session)
                counts[split] += 1
                counts["expanded"] += int(expanded)
                if len(buf) >= chunk:
                    writer.write(buf)
                    if progress is not None:
                        progress(len(buf))
                    buf = []
        writer.write(buf)
    stats = AmazonImportStats(items=catalog.num_items, train_sessions=counts["train"], test_sessions=counts["test"],
                              expanded_sessions=counts["expanded"],
                              files=tuple(p.name for p in [*train_files, *test_files]))
    logger.info("imported %s", stats)
    return catalog, stats
