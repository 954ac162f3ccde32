"""Session schema: round trip, streaming in tiny batches, and validation errors that name the row and field."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.data.schema import (
    Session,
    SessionWriter,
    iter_session_batches,
    read_sessions,
    sessions_to_batch,
    write_sessions,
)


def _sessions(n: int, truth: bool = True) -> list[Session]:
    return [
        Session(session_id=f"s{i}", day=1 + i % 3, user_id=f"u{i % 2}", query="cordless drill" if i % 4 else "",
                profile={"price_level": "mid"}, history=("a", "b"), exposed=("x", "y", "z"), clicked=("y",),
                ordered=("y",) if i % 2 else (), relevant=("y", "z") if truth else None,
                relevant_grades=(3, 1) if truth else None)
        for i in range(n)
    ]


def test_round_trip_and_streaming_in_tiny_batches(tmp_path: Path) -> None:
    ss = _sessions(11)
    path = tmp_path / "sessions.parquet"
    write_sessions(ss, path)
    assert read_sessions(path) == ss
    batches = list(iter_session_batches(path, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 3, 2]
    assert [s for b in batches for s in b] == ss


def test_without_truth_columns(tmp_path: Path) -> None:
    ss = _sessions(4, truth=False)
    write_sessions(ss, tmp_path / "s.parquet")
    assert "relevant" not in pq.read_schema(tmp_path / "s.parquet").names
    assert all(s.relevant is None for s in read_sessions(tmp_path / "s.parquet"))


def _write_table_with(tmp_path: Path, row: int, column: str, value: object) -> Path:
    table = pa.Table.from_batches([sessions_to_batch(_sessions(6), with_truth=True)])
    values = table.column(column).to_pylist()
    values[row] = value
    table = table.set_column(table.schema.get_field_index(column), column,
                             pa.array(values, table.schema.field(column).type))
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (4, "ordered", ["q"], "row 4 field 'ordered'"),
        (4, "clicked", ["nope"], "row 4 field 'clicked'"),
        (2, "session_id", "", "row 2 field 'session_id'"),
        (3, "day", -1, "row 3 field 'day'"),
        (1, "history", ["a", ""], "row 1 field 'history'"),
        (0, "relevant_grades", [3], "row 0 field 'relevant_grades'"),
        (5, "query", None, "row 5 field 'query'"),
    ],
)
def test_validation_names_row_and_field(tmp_path: Path, row: int, column: str, value: object, message: str) -> None:
    path = _write_table_with(tmp_path, row, column, value)
    with pytest.raises(ValueError, match=message):
        read_sessions(path)
    # the row number counts over the whole file, also when it is read in small batches
    with pytest.raises(ValueError, match=message):
        for _ in iter_session_batches(path, batch_size=2):
            pass


def test_missing_column_is_named(tmp_path: Path) -> None:
    table = pa.Table.from_batches([sessions_to_batch(_sessions(2), with_truth=False)]).drop_columns(["exposed"])
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="missing column 'exposed'"):
        read_sessions(tmp_path / "t.parquet")


def test_writer_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    with pytest.raises(RuntimeError), SessionWriter(path, with_truth=True) as w:
        w.write(_sessions(3))
        raise RuntimeError("boom")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_invalid_session(tmp_path: Path) -> None:
    bad = Session(session_id="s", day=1, user_id="u", query="", exposed=("a",), clicked=("b",))
    with pytest.raises(ValueError, match="field 'clicked'"):
        write_sessions([bad], tmp_path / "s.parquet")


def test_last_day_and_count_stream(tmp_path: Path) -> None:
    from training.data.schema import count_sessions, last_day

    write_sessions(_sessions(10), tmp_path / "s.parquet")
    assert count_sessions(tmp_path / "s.parquet") == 10
    assert last_day(tmp_path / "s.parquet", batch_size=3) == 3
    write_sessions([], tmp_path / "e.parquet", with_truth=False)
    assert last_day(tmp_path / "e.parquet") is None
