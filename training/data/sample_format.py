"""The sample format: the Arrow schema of ``samples/{train,test}.parquet``, the :class:`Sample` row, reader, writer.

Training and evaluation import this module alone (building samples is ``training.data.samples``).

Contract (columns as docs/architecture.md "Samples"):
- :data:`SAMPLE_SCHEMA` — one row per session: ``session_id``, ``day``, ``split`` (one of :data:`SPLITS`),
  ``prompt``, ``prompt_version``, ``positive_items`` with ``positive_codes`` (3 codes each), ``top_index`` (y* in
  the positives), ``negative_items`` with ``negative_codes``, ``negative_relevant`` (truth, null when unknown),
  ``relevant_items`` and ``relevant_grades`` (truth, empty when unknown).
- :func:`iter_sample_batches` / :func:`read_samples` stream a file back as frozen :class:`Sample` rows, checking
  that there is at least one positive, one code triple per positive and per negative, and ``top_index`` in range;
  a broken row raises ``ValueError`` naming the file, the row (0-based, over the whole file) and the field, and so
  does a missing, truncated or corrupted file (:func:`training.data.parquet_writer.open_parquet`).
- :class:`SampleWriter` buffers samples and writes them batch by batch through
  :class:`~training.data.parquet_writer.AtomicParquetWriter`: the file appears only on a successful close.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from training.data.parquet_writer import AtomicParquetWriter, open_parquet, parquet_errors
from training.data.schema import DEFAULT_BATCH_SIZE

SPLITS = ("train", "test")
_CODES = pa.list_(pa.list_(pa.int32()))
SAMPLE_SCHEMA = pa.schema([
    pa.field("session_id", pa.string(), nullable=False),
    pa.field("day", pa.int32(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("positive_items", pa.list_(pa.string()), nullable=False),
    pa.field("positive_codes", _CODES, nullable=False),
    pa.field("top_index", pa.int32(), nullable=False),
    pa.field("negative_items", pa.list_(pa.string()), nullable=False),
    pa.field("negative_codes", _CODES, nullable=False),
    pa.field("negative_relevant", pa.list_(pa.bool_()), nullable=True),
    pa.field("relevant_items", pa.list_(pa.string()), nullable=False),
    pa.field("relevant_grades", pa.list_(pa.int32()), nullable=False),
])


@dataclass(frozen=True)
class Sample:
    """One row of ``samples/{train,test}.parquet`` (docs/architecture.md "Samples")."""

    session_id: str
    day: int
    split: str
    prompt: str
    prompt_version: str
    positive_items: tuple[str, ...]
    positive_codes: tuple[tuple[int, int, int], ...]
    top_index: int
    negative_items: tuple[str, ...]
    negative_codes: tuple[tuple[int, int, int], ...]
    negative_relevant: tuple[bool, ...] | None
    relevant_items: tuple[str, ...]
    relevant_grades: tuple[int, ...]

    @property
    def top_codes(self) -> tuple[int, int, int]:
        return self.positive_codes[self.top_index]


def samples_to_batch(samples: Sequence[Sample]) -> pa.RecordBatch:
    """One record batch of ``samples`` in :data:`SAMPLE_SCHEMA`."""
    arrays = [
        pa.array([s.session_id for s in samples], pa.string()),
        pa.array([s.day for s in samples], pa.int32()),
        pa.array([s.split for s in samples], pa.string()),
        pa.array([s.prompt for s in samples], pa.string()),
        pa.array([s.prompt_version for s in samples], pa.string()),
        pa.array([list(s.positive_items) for s in samples], pa.list_(pa.string())),
        pa.array([[list(c) for c in s.positive_codes] for s in samples], _CODES),
        pa.array([s.top_index for s in samples], pa.int32()),
        pa.array([list(s.negative_items) for s in samples], pa.list_(pa.string())),
        pa.array([[list(c) for c in s.negative_codes] for s in samples], _CODES),
        pa.array([None if s.negative_relevant is None else list(s.negative_relevant) for s in samples],
                 pa.list_(pa.bool_())),
        pa.array([list(s.relevant_items) for s in samples], pa.list_(pa.string())),
        pa.array([list(s.relevant_grades) for s in samples], pa.list_(pa.int32())),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SAMPLE_SCHEMA)


def _codes_tuple(rows: list[list[int]], where: str) -> tuple[tuple[int, int, int], ...]:
    out = []
    for c in rows:
        if c is None or len(c) != 3:
            raise ValueError(f"{where}: every code entry must hold 3 codes, given {c!r}")
        out.append((int(c[0]), int(c[1]), int(c[2])))
    return tuple(out)


def samples_from_batch(batch: pa.RecordBatch, where: str, row_offset: int = 0) -> list[Sample]:
    """Checked :class:`Sample` rows of one record batch; errors name ``where``, the absolute row and the field."""
    missing = [f.name for f in SAMPLE_SCHEMA if f.name not in batch.schema.names]
    if missing:
        raise ValueError(f"{where}: missing sample columns {missing}")
    cols = {f.name: batch.column(f.name).to_pylist() for f in SAMPLE_SCHEMA}
    out = []
    for i in range(batch.num_rows):
        w = f"{where} row {row_offset + i}"
        pos, neg = cols["positive_items"][i], cols["negative_items"][i]
        pos_codes = _codes_tuple(cols["positive_codes"][i], f"{w} field 'positive_codes'")
        neg_codes = _codes_tuple(cols["negative_codes"][i], f"{w} field 'negative_codes'")
        if len(pos_codes) != len(pos) or not pos:
            raise ValueError(f"{w} field 'positive_codes': need one entry per positive ({len(pos)} >= 1)")
        if len(neg_codes) != len(neg):
            raise ValueError(f"{w} field 'negative_codes': need one entry per negative ({len(neg)})")
        top = int(cols["top_index"][i])
        if not 0 <= top < len(pos):
            raise ValueError(f"{w} field 'top_index': must be in [0, {len(pos)}), given {top}")
        nr = cols["negative_relevant"][i]
        out.append(Sample(
            session_id=cols["session_id"][i], day=int(cols["day"][i]), split=cols["split"][i],
            prompt=cols["prompt"][i], prompt_version=cols["prompt_version"][i], positive_items=tuple(pos),
            positive_codes=pos_codes, top_index=top, negative_items=tuple(neg), negative_codes=neg_codes,
            negative_relevant=None if nr is None else tuple(bool(x) for x in nr),
            relevant_items=tuple(cols["relevant_items"][i]), relevant_grades=tuple(cols["relevant_grades"][i]),
        ))
    return out


def iter_sample_batches(path: str | os.PathLike[str], batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[list[Sample]]:
    """Stream samples from ``train.parquet``/``test.parquet``, ``batch_size`` at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, given {batch_size}")
    batches = open_parquet(path, "samples").iter_batches(batch_size=batch_size)
    offset = 0
    while True:
        with parquet_errors(path, "samples"):
            batch = next(batches, None)
        if batch is None:
            return
        yield samples_from_batch(batch, str(path), offset)
        offset += batch.num_rows


def read_samples(path: str | os.PathLike[str]) -> list[Sample]:
    """Every sample of a file, in file order."""
    return [s for batch in iter_sample_batches(path) for s in batch]


class SampleWriter(AtomicParquetWriter):
    """Buffer samples and append them ``flush_at`` at a time; the file appears only on a successful close."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, SAMPLE_SCHEMA)
        self.buf: list[Sample] = []

    def add(self, sample: Sample, flush_at: int) -> None:
        self.buf.append(sample)
        if len(self.buf) >= flush_at:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.write_batch(samples_to_batch(self.buf))
            self.buf = []

    def close(self, ok: bool = True) -> None:
        if ok:
            self.flush()
        super().close(ok)
