"""Canonical search sessions: the Arrow schema, validation, and streaming Parquet reading/writing.

Contract (one row per session; see docs/architecture.md "Sessions"):

- Columns ``session_id: str`` (non-empty, unique within a file is the producer's job), ``day: int32`` (>= 0),
  ``user_id: str``, ``query: str`` (may be empty), ``profile: map<str,str>``, ``history: list<str>`` (oldest
  first), ``exposed: list<str>`` (display order), ``clicked: list<str>``, ``ordered: list<str>``. Simulated data
  adds the truth ``relevant: list<str>`` and ``relevant_grades: list<int32>`` (same length, grades >= 1).
- Rules checked on read and on write: no null in any column or list element, no empty item id, ``day >= 0``,
  ``ordered ⊆ clicked``, ``clicked ⊆ exposed`` whenever ``exposed`` is non-empty (imported logs carry no
  exposures), ``len(relevant) == len(relevant_grades)``. A broken row raises ``ValueError`` naming the file,
  the row number (0-based, counted over the whole file) and the field.
- :func:`iter_session_batches` streams a file in batches of ``batch_size`` rows (Parquet record batches), so a
  day of logs larger than memory is processed batch by batch. :class:`SessionWriter` writes batch by batch through
  :class:`~training.data.parquet_writer.AtomicParquetWriter` (the file appears only on success). A missing,
  truncated or corrupted file raises ``ValueError`` naming it (:func:`~training.data.parquet_writer.open_parquet`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training.data.parquet_writer import AtomicParquetWriter, open_parquet, parquet_errors

_LIST_STR = pa.list_(pa.string())

BASE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("session_id", pa.string(), nullable=False),
    pa.field("day", pa.int32(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("query", pa.string(), nullable=False),
    pa.field("profile", pa.map_(pa.string(), pa.string()), nullable=False),
    pa.field("history", _LIST_STR, nullable=False),
    pa.field("exposed", _LIST_STR, nullable=False),
    pa.field("clicked", _LIST_STR, nullable=False),
    pa.field("ordered", _LIST_STR, nullable=False),
)
TRUTH_FIELDS: tuple[pa.Field, ...] = (
    pa.field("relevant", _LIST_STR, nullable=False),
    pa.field("relevant_grades", pa.list_(pa.int32()), nullable=False),
)
SESSION_SCHEMA = pa.schema(list(BASE_FIELDS))
SESSION_TRUTH_SCHEMA = pa.schema([*BASE_FIELDS, *TRUTH_FIELDS])

DEFAULT_BATCH_SIZE = 8192


@dataclass(frozen=True)
class Session:
    """One search session. ``relevant``/``relevant_grades`` are ``None`` when the data carries no truth."""

    session_id: str
    day: int
    user_id: str
    query: str
    profile: dict[str, str] = field(default_factory=dict)
    history: tuple[str, ...] = ()
    exposed: tuple[str, ...] = ()
    clicked: tuple[str, ...] = ()
    ordered: tuple[str, ...] = ()
    relevant: tuple[str, ...] | None = None
    relevant_grades: tuple[int, ...] | None = None

    @property
    def has_truth(self) -> bool:
        return self.relevant is not None


def _check_items(items: Iterable[object] | None, where: str, name: str) -> None:
    """Raise ``ValueError`` naming ``where`` and the field unless ``items`` is a list of non-empty item ids."""
    if items is None:
        raise ValueError(f"{where} field {name!r}: must be a list, given null")
    for k, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise ValueError(f"{where} field {name!r}: element {k} must be a non-empty item id, given {item!r}")


def validate_session(s: Session, where: str, check_elements: bool = True) -> None:
    """Check the rules of one session; ``where`` (e.g. ``"sessions.parquet row 7"``) prefixes errors.
    ``check_elements=False`` skips the per-element item-id checks (done column-wise by :func:`sessions_from_batch`)."""
    if not isinstance(s.session_id, str) or not s.session_id:
        raise ValueError(f"{where} field 'session_id': must be a non-empty string, given {s.session_id!r}")
    if not isinstance(s.day, int) or s.day < 0:
        raise ValueError(f"{where} field 'day': must be an integer >= 0, given {s.day!r}")
    if not isinstance(s.user_id, str):
        raise ValueError(f"{where} field 'user_id': must be a string, given {s.user_id!r}")
    if not isinstance(s.query, str):
        raise ValueError(f"{where} field 'query': must be a string (may be empty), given {s.query!r}")
    for key, value in s.profile.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"{where} field 'profile': keys and values must be strings, given {key!r}: {value!r}")
    if check_elements:
        for name in ("history", "exposed", "clicked", "ordered"):
            _check_items(getattr(s, name), where, name)
    clicked = set(s.clicked)
    for item in s.ordered:
        if item not in clicked:
            raise ValueError(f"{where} field 'ordered': item {item!r} is not in 'clicked' (orders ⊆ clicks)")
    if s.exposed:
        exposed = set(s.exposed)
        for item in s.clicked:
            if item not in exposed:
                raise ValueError(f"{where} field 'clicked': item {item!r} is not in 'exposed' (clicks ⊆ exposures)")
    if (s.relevant is None) != (s.relevant_grades is None):
        raise ValueError(f"{where} field 'relevant_grades': 'relevant' and 'relevant_grades' come together")
    if s.relevant is not None and s.relevant_grades is not None:
        if check_elements:
            _check_items(s.relevant, where, "relevant")
        if len(s.relevant) != len(s.relevant_grades):
            raise ValueError(
                f"{where} field 'relevant_grades': length {len(s.relevant_grades)} != length of 'relevant' "
                f"{len(s.relevant)}"
            )
        for k, g in enumerate(s.relevant_grades):
            if g is None or int(g) < 1:
                raise ValueError(f"{where} field 'relevant_grades': element {k} must be an integer >= 1, given {g!r}")


def _compatible(got: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column type reads as ``want`` (any integer width, large strings/lists accepted)."""
    if got == want:
        return True
    if pa.types.is_integer(want):
        return bool(pa.types.is_integer(got))
    if pa.types.is_string(want):
        return bool(pa.types.is_string(got) or pa.types.is_large_string(got))
    if pa.types.is_list(want):
        return bool(pa.types.is_list(got) or pa.types.is_large_list(got))
    return bool(pa.types.is_map(want) and pa.types.is_map(got))


def _check_columns(schema: pa.Schema, where: str) -> bool:
    """Check column presence and types; returns whether the truth columns are present."""
    for f in BASE_FIELDS:
        if f.name not in schema.names:
            raise ValueError(f"{where}: missing column {f.name!r} (required: {[x.name for x in BASE_FIELDS]})")
    present = [f.name in schema.names for f in TRUTH_FIELDS]
    if any(present) and not all(present):
        raise ValueError(f"{where}: columns 'relevant' and 'relevant_grades' must both be present or both absent")
    for f in (*BASE_FIELDS, *(TRUTH_FIELDS if all(present) else ())):
        got = schema.field(f.name).type
        if not _compatible(got, f.type):
            raise ValueError(f"{where}: column {f.name!r} must be {f.type}, given {got}")
    return all(present)


def _first_bad_item_row(col: pa.Array) -> int | None:
    """Row of the first null list or null/empty element in a list-of-strings column, ``None`` if all are fine."""
    if col.null_count:
        return int(pc.index(pc.is_null(col), True).as_py())
    flat = col.flatten()
    if len(flat) == 0:
        return None
    bad = pc.fill_null(pc.or_kleene(pc.is_null(flat), pc.equal(pc.utf8_length(flat), 0)), True)
    if not pc.any(bad).as_py():
        return None
    k = int(pc.index(bad, True).as_py())
    return int(pc.list_parent_indices(col)[k].as_py())


def sessions_from_batch(batch: pa.RecordBatch, where: str, row_offset: int = 0) -> list[Session]:
    """Validated :class:`Session` objects of one record batch; errors name ``where`` and the absolute row."""
    truth = _check_columns(batch.schema, where)
    item_columns = ("history", "exposed", "clicked", "ordered", *(("relevant",) if truth else ()))
    for name in item_columns:
        bad_row = _first_bad_item_row(batch.column(name))
        if bad_row is not None:  # let the row-wise check phrase the error
            _check_items(batch.column(name)[bad_row].as_py(), f"{where} row {row_offset + bad_row}", name)
    cols = {name: batch.column(name).to_pylist() for name in batch.schema.names}
    out: list[Session] = []
    for i in range(batch.num_rows):
        row_where = f"{where} row {row_offset + i}"
        for f in (*BASE_FIELDS, *(TRUTH_FIELDS if truth else ())):
            if cols[f.name][i] is None:
                raise ValueError(f"{row_where} field {f.name!r}: must not be null")
        profile_raw = cols["profile"][i]
        profile = dict(profile_raw) if not isinstance(profile_raw, dict) else profile_raw
        s = Session(
            session_id=cols["session_id"][i],
            day=cols["day"][i],
            user_id=cols["user_id"][i],
            query=cols["query"][i],
            profile=profile,
            history=tuple(cols["history"][i]),
            exposed=tuple(cols["exposed"][i]),
            clicked=tuple(cols["clicked"][i]),
            ordered=tuple(cols["ordered"][i]),
            relevant=tuple(cols["relevant"][i]) if truth else None,
            relevant_grades=tuple(cols["relevant_grades"][i]) if truth else None,
        )
        validate_session(s, row_where, check_elements=False)
        out.append(s)
    return out


def sessions_to_batch(sessions: Sequence[Session], with_truth: bool) -> pa.RecordBatch:
    """One record batch of ``sessions`` (validated first) in :data:`SESSION_SCHEMA` or the truth schema."""
    for k, s in enumerate(sessions):
        validate_session(s, f"session {k} ({s.session_id!r})")
        if with_truth and not s.has_truth:
            raise ValueError(f"session {k} field 'relevant': writer expects ground truth, given None")
    schema = SESSION_TRUTH_SCHEMA if with_truth else SESSION_SCHEMA
    arrays = [
        pa.array([s.session_id for s in sessions], pa.string()),
        pa.array([s.day for s in sessions], pa.int32()),
        pa.array([s.user_id for s in sessions], pa.string()),
        pa.array([s.query for s in sessions], pa.string()),
        pa.array([sorted(s.profile.items()) for s in sessions], pa.map_(pa.string(), pa.string())),
        pa.array([list(s.history) for s in sessions], _LIST_STR),
        pa.array([list(s.exposed) for s in sessions], _LIST_STR),
        pa.array([list(s.clicked) for s in sessions], _LIST_STR),
        pa.array([list(s.ordered) for s in sessions], _LIST_STR),
    ]
    if with_truth:
        arrays.append(pa.array([list(s.relevant or ()) for s in sessions], _LIST_STR))
        arrays.append(pa.array([list(s.relevant_grades or ()) for s in sessions], pa.list_(pa.int32())))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def sessions_have_truth(path: str | os.PathLike[str]) -> bool:
    """Whether a sessions file carries the simulator's truth columns (checks the schema only)."""
    return _check_columns(open_parquet(path, "sessions").schema_arrow, str(path))


def iter_session_batches(path: str | os.PathLike[str], batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[list[Session]]:
    """Stream validated sessions from a Parquet file, ``batch_size`` rows at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, given {batch_size}")
    where = str(path)
    pf = open_parquet(path, "sessions")
    _check_columns(pf.schema_arrow, where)
    offset = 0
    batches = pf.iter_batches(batch_size=batch_size)
    while True:
        with parquet_errors(path, "sessions"):
            batch = next(batches, None)
        if batch is None:
            return
        sessions = sessions_from_batch(batch, where, offset)
        offset += batch.num_rows
        yield sessions


def read_sessions(path: str | os.PathLike[str]) -> list[Session]:
    """All sessions of a file (small files and tests; large files: :func:`iter_session_batches`)."""
    return [s for batch in iter_session_batches(path) for s in batch]


def read_days(path: str | os.PathLike[str]) -> list[int]:
    """The ``day`` column alone (one column is read; for large files prefer :func:`last_day`)."""
    with parquet_errors(path, "sessions"):
        table = open_parquet(path, "sessions").read(columns=["day"])
    return [int(d) for d in table.column("day").to_pylist()]


def count_sessions(path: str | os.PathLike[str]) -> int:
    """Rows in a sessions file, from the Parquet footer (nothing else is read)."""
    return int(open_parquet(path, "sessions").metadata.num_rows)


def last_day(path: str | os.PathLike[str], batch_size: int = 1 << 20) -> int | None:
    """The largest ``day`` (streamed over the one column); ``None`` for an empty file."""
    best: int | None = None
    batches = open_parquet(path, "sessions").iter_batches(batch_size=batch_size, columns=["day"])
    while True:
        with parquet_errors(path, "sessions"):
            batch = next(batches, None)
        if batch is None:
            return best
        if batch.num_rows:
            m = pc.max(batch.column(0)).as_py()
            if m is not None and (best is None or m > best):
                best = int(m)


class SessionWriter(AtomicParquetWriter):
    """Append sessions batch by batch; the file appears at ``path`` only when the writer closes without error."""

    def __init__(self, path: str | os.PathLike[str], with_truth: bool) -> None:
        super().__init__(path, SESSION_TRUTH_SCHEMA if with_truth else SESSION_SCHEMA)
        self.with_truth = with_truth

    def write(self, sessions: Sequence[Session]) -> None:
        """Validate and append ``sessions`` (nothing is written for an empty list)."""
        if sessions:
            self.write_batch(sessions_to_batch(sessions, self.with_truth))


def write_sessions(sessions: Sequence[Session], path: str | os.PathLike[str], with_truth: bool | None = None) -> None:
    """Write a list of sessions at once (atomic). ``with_truth`` defaults to whether the first session has it."""
    truth = bool(sessions and sessions[0].has_truth) if with_truth is None else with_truth
    with SessionWriter(path, truth) as w:
        w.write(sessions)
