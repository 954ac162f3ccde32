"""A streaming Parquet writer whose file appears only when it closes without error (sessions and samples use it).

Contract:
- :class:`AtomicParquetWriter` writes record batches, one by one, to a uniquely named temporary file beside the
  target (``.<name>.<uuid>.tmp``, so concurrent writers of one path never share a temporary file).
- ``close(ok=True)`` closes the Parquet file, fsyncs it and renames it over the target (``os.replace``): a reader
  sees the old file or the new one, never a partial one. ``close(ok=False)`` removes the temporary file and
  leaves the target as it was. Used as a context manager, it closes with ``ok`` = "the block raised nothing".
- ``rows`` counts the rows written so far. Closing twice is a no-op; writing after close raises ``ValueError``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["AtomicParquetWriter"]


class AtomicParquetWriter:
    """Append record batches of ``schema`` to ``path``; the file is published on a successful close."""

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema) -> None:
        self.path = Path(path)
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp, schema)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            raise ValueError(f"writer for {self.path} is closed")
        if batch.num_rows:
            self._writer.write_batch(batch)
            self.rows += batch.num_rows

    def close(self, ok: bool = True) -> None:
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            writer.close()
            if ok:
                with open(self._tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)  # no-op after the rename

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(ok=exc_type is None)
