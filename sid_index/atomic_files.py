"""Atomic file and directory writes, and file checksums: the one home for radgr's write-safety.

Contract:
- ``write_bytes_atomic`` / ``write_text_atomic`` / ``write_json_atomic`` / ``save_figure_atomic`` write to a
  uniquely named temporary file in the target's directory, flush and fsync it, then ``os.replace`` it over the
  target. A reader sees the old file or the new one, never a partial one; a failed write leaves no temporary file.
- ``publish_directory`` is a context manager that yields an empty staging directory beside the target; when the
  block succeeds the staging directory is renamed into place (an existing target is moved aside first and removed
  after), when it raises the staging directory is removed. The target path holds the old directory or the new
  one at every moment, apart from the instant between the two renames (when it holds nothing).
- ``sha256_file`` hashes a file in 1 MiB blocks.

This module sits at the bottom layer (``sid_index``) so that every part of radgr can import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "publish_directory",
    "save_figure_atomic",
    "sha256_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


class _SavesFigure(Protocol):
    """What ``save_figure_atomic`` needs of a matplotlib ``Figure`` (keeps matplotlib out of this module)."""

    def savefig(self, fname: Any, **kwargs: Any) -> None: ...


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = True) -> Path:
    """Write ``obj`` as JSON (UTF-8, non-ASCII kept, trailing newline) to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


def save_figure_atomic(fig: _SavesFigure, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Render a matplotlib figure as PNG in memory, then write it to ``path`` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return write_bytes_atomic(path, buf.getvalue())


@contextlib.contextmanager
def publish_directory(target: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty staging directory; on success rename it to ``target`` (see the module docstring).

    Raises ``FileExistsError`` naming the target when it exists and ``overwrite`` is false.
    """
    dest = Path(target)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{str(dest)!r} already exists (overwrite not allowed)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        yield staging
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex}"
            dest.rename(old)
            staging.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
