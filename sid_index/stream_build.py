"""Build a SID index whose embeddings do not fit in memory: streamed from a ``.npy`` file in chunks.

Contract:

- :class:`NpyRows` reads rows of a 2-D C-order float ``.npy`` file (float32, or float16: half the bytes to read,
  11 significant bits, more than the bf16 encoder computes with) with positioned reads (``os.pread``) into fresh
  float32 arrays: :meth:`NpyRows.read` a contiguous block, :meth:`NpyRows.take` sorted scattered rows. Unlike a
  memory map, the pages read never count towards the process' resident memory (they stay in the page cache).
- :func:`build_index_streamed` ``(embeddings_path, item_ids, popularity, categories, cfg, out_dir)``: reads the
  training sample (the same seeded rows :func:`~sid_index.rqkmeans.train_codebooks` uses), fits the codebooks on
  it, then reads the file ``chunk_rows`` rows at a time, checks them (NaN/inf names the row and item id) and assigns
  their codes (int32 ``[n, 3]`` kept in memory; the next chunk is read on a thread while this one is assigned),
  groups the codes into a :class:`~sid_index.index.SidIndex` and writes it to ``out_dir`` unless that is ``None``
  (``save``: atomic; item ids compressed in chunks), with a progress bar. Same SIDs as
  :func:`~sid_index.build.build_index` on the same embeddings, config and seed (a test checks it).
- Memory: the sample, two chunks (the one assigned and the one read ahead), the codes and the per-item metadata
  the index holds (ids, popularity, categories, grouping arrays: about 100 bytes per item at 10M items), never the
  ``[n, d]`` embeddings. ``cfg.unique_sids`` (collision resolution over all embeddings) is not available here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sid_index.build import IndexConfig
from sid_index.index import SidIndex
from sid_index.rqkmeans import assign_codes, fit_codebooks, train_sample_rows

log = logging.getLogger(__name__)


class NpyRows:
    """Positioned row reads from a 2-D C-order float ``.npy`` file (module docstring); use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # the header only: a memory map touches no data page until indexed, and is dropped at once
        try:
            header = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:  # also a file shorter than its header says
            raise ValueError(f"embeddings file {str(self.path)!r} is not a complete .npy array: {exc}") from exc
        shape, dtype = header.shape, header.dtype
        fortran = header.ndim == 2 and not header.flags.c_contiguous
        self._offset = int(header.offset) if isinstance(header, np.memmap) else 0
        del header
        if len(shape) != 2 or fortran or not np.issubdtype(dtype, np.floating):
            raise ValueError(f"embeddings file {str(self.path)!r} must hold a 2-D C-order float array, given shape "
                             f"{list(shape)}, dtype {dtype}{', Fortran order' if fortran else ''}")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self._row_bytes = self.shape[1] * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _pread(self, row: int, count: int) -> np.ndarray:
        nbytes = count * self._row_bytes
        buf = os.pread(self._fd, nbytes, self._offset + row * self._row_bytes)
        if len(buf) != nbytes:
            raise ValueError(f"embeddings file {str(self.path)!r} is truncated at row {row}")
        return np.frombuffer(buf, dtype=self.dtype).reshape(count, self.shape[1])

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` as float32 ``[hi - lo, d]``."""
        if not 0 <= lo <= hi <= self.shape[0]:
            raise IndexError(f"rows must satisfy 0 <= lo <= hi <= {self.shape[0]}, given [{lo}, {hi})")
        return np.array(self._pread(lo, hi - lo), dtype=np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted) as float32 ``[len(rows), d]``; runs of consecutive rows are read at once."""
        out = np.empty((rows.shape[0], self.shape[1]), dtype=np.float32)
        if rows.shape[0] == 0:
            return out
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.r_[0, breaks]
        ends = np.r_[breaks, rows.shape[0]]
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            out[s:e] = self._pread(int(rows[s]), e - s)
        return out


def _check_rows(block: np.ndarray, rows: np.ndarray, item_ids: list[str]) -> None:
    """``ValueError`` naming the first file row (and item id) of ``block`` holding NaN or inf."""
    bad = np.flatnonzero(~np.all(np.isfinite(block), axis=1))
    if bad.size:
        row = int(rows[bad[0]])
        raise ValueError(f"embeddings hold NaN or inf at row {row} (item_id {item_ids[row]!r})")


def build_index_streamed(
    embeddings_path: str | os.PathLike[str],
    item_ids: list[str],
    popularity: np.ndarray,
    categories: list[str] | None,
    cfg: IndexConfig,
    out_dir: str | os.PathLike[str] | None,
    *,
    chunk_rows: int = 262_144,
    provenance: Mapping[str, Any] | None = None,
    extra_json: Mapping[str, Any] | None = None,
    show_progress: bool = True,
) -> SidIndex:
    """Stream ``embeddings_path`` (rows in ``item_ids`` order) into an index written to ``out_dir`` (module
    docstring); returns the index."""
    from rich.progress import Progress

    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, given {chunk_rows}")
    if cfg.unique_sids:
        raise ValueError("unique_sids resolves collisions over all embeddings in memory: use build_index")
    with NpyRows(embeddings_path) as src:
        n, d = src.shape
        if n != len(item_ids):
            raise ValueError(f"embeddings rows must equal the catalog's {len(item_ids)} items, given {n} in "
                             f"{str(src.path)!r}")
        if d < 1:
            raise ValueError(f"embeddings dim must be >= 1, given {d}")
        rows = train_sample_rows(n, cfg.rq)
        sample = src.take(rows) if rows is not None else src.read(0, n)
        _check_rows(sample, rows if rows is not None else np.arange(n), item_ids)
        codebooks = fit_codebooks(sample, cfg.rq, total_rows=n)
        del sample
        codes = np.empty((n, 3), dtype=np.int32)
        starts = list(range(0, n, chunk_rows))
        # read-ahead: the next chunk is read (os.pread, without the GIL) while this one is assigned (faiss, without
        # the GIL), so a disk-bound build costs max(read, assign) per chunk instead of their sum; two chunks in memory
        with Progress(disable=not show_progress, transient=True) as progress, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="radgr-read-ahead") as reader:
            task = progress.add_task("assigning SID codes", total=n)
            pending = reader.submit(src.read, 0, min(n, chunk_rows)) if starts else None
            for k, lo in enumerate(starts):
                hi = min(n, lo + chunk_rows)
                assert pending is not None
                block = pending.result()
                if k + 1 < len(starts):
                    nxt = starts[k + 1]
                    pending = reader.submit(src.read, nxt, min(n, nxt + chunk_rows))
                _check_rows(block, np.arange(lo, hi), item_ids)
                codes[lo:hi] = assign_codes(block, codebooks, batch_size=cfg.rq.assign_batch_size)
                del block
                progress.advance(task, hi - lo)
    config = {"index": cfg.to_dict(), "embedding_dim": d, "streamed": True, **(provenance or {})}
    index = SidIndex.from_codes(item_ids, codes, popularity, categories, cfg.codebook_sizes, config=config)
    del codes
    if out_dir is not None:
        index.save(out_dir, extra_json=extra_json)
    log.info("streamed index: %d items, %d SIDs -> %s", n, index.num_sids, out_dir)
    return index
