"""A streaming Parquet writer whose file appears only when it closes without error (sessions and samples use it).

Contract:
- :class:`AtomicParquetWriter` writes record batches, one by one, to a uniquely named temporary file beside the
  target (``.<name>.<uuid>.tmp``, so concurrent writers of one path never share a temporary file).
- ``close(ok=True)`` closes the Parquet file, fsyncs it and renames it over the target (``os.replace``): a reader
  sees the old file or the new one, never a partial one. ``close(ok=False)`` removes the temporary file and
  leaves the target as it was. Used as a context manager, it closes with ``ok`` = "the block raised nothing".
- ``rows`` counts the rows written so far. Closing twice is a no-op; writing after close raises ``ValueError``.
- Every data page carries a CRC32 (``write_page_checksum``), and the published file a ``<name>.sha256`` beside it
  (:func:`sid_index.atomic_files.write_checksum`, written after the rename); :func:`open_parquet` verifies both,
  so a flipped byte anywhere in a file radgr wrote is an error naming it, never a wrong value (page headers and
  the footer carry no Parquet checksum: the ``.sha256`` covers them).
- :func:`open_parquet` / :func:`parquet_errors` are the reading side: a missing, truncated or corrupted file (an
  ``OSError`` or any Arrow error, raised when the file is opened or while its batches stream) becomes one
  ``ValueError`` naming the file (``"<what> file <path> is not a readable Parquet file: ..."``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pyarrow as pa
import pyarrow.parquet as pq

from sid_index.atomic_files import verify_checksum, write_checksum

__all__ = ["AtomicParquetWriter", "open_parquet", "parquet_errors"]


@contextlib.contextmanager
def parquet_errors(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn an ``OSError`` or Arrow error raised inside the block into a ``ValueError`` naming ``path``."""
    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, FileNotFoundError) or not Path(path).exists():
            raise ValueError(f"{what} file {path} does not exist") from exc
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{what} file {path} is not a readable Parquet file (truncated or corrupt?): "
                         f"{detail}") from exc


def open_parquet(path: str | os.PathLike[str], what: str) -> pq.ParquetFile:
    """``pq.ParquetFile`` after its ``.sha256`` check (when it has one), with page checksums verified; errors name
    the file (:func:`parquet_errors`)."""
    with parquet_errors(path, what):
        try:
            verify_checksum(path)
        except ValueError as exc:
            raise ValueError(f"{what} {exc}") from exc
        return pq.ParquetFile(path, page_checksum_verification=True)


class AtomicParquetWriter:
    """Append record batches of ``schema`` to ``path``; the file is published on a successful close."""

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema) -> None:
        self.path = Path(path)
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp, schema, write_page_checksum=True)

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
                write_checksum(self.path)
        finally:
            self._tmp.unlink(missing_ok=True)  # no-op after the rename

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(ok=exc_type is None)
