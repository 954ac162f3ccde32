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
- ``write_checksum(path)`` writes ``<path>.sha256`` (``sha256sum`` format: ``<hex>  <name>``) atomically, after the
  file; ``verify_checksum(path)`` raises ``ValueError`` naming the file when it differs from its ``.sha256`` (a
  truncated or corrupted file, or a kill between the two renames), returns False when there is no ``.sha256``
  (a file radgr did not write) and True when it matches. Data files whose own format cannot catch every flipped
  byte (Parquet: page headers and footer carry no checksum) use it.

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
    "CHECKSUM_SUFFIX",
    "publish_directory",
    "save_figure_atomic",
    "sha256_file",
    "verify_checksum",
    "write_bytes_atomic",
    "write_checksum",
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


CHECKSUM_SUFFIX = ".sha256"


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path: str | os.PathLike[str]) -> Path:
    """Write ``<path>.sha256`` (``sha256sum`` format) for the file at ``path``, atomically; returns its path."""
    p = Path(path)
    return write_text_atomic(_checksum_path(p), f"{sha256_file(p)}  {p.name}\n")


def verify_checksum(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` matches its ``.sha256``, False when it has none; raises ``ValueError`` naming it if not."""
    p = Path(path)
    side = _checksum_path(p)
    if not side.is_file():
        return False
    try:
        expected = side.read_text(encoding="ascii").split()[0]
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise ValueError(f"checksum file {side} is unreadable: {exc}") from exc
    if sha256_file(p) != expected:
        raise ValueError(f"file {p} fails its sha256 checksum ({side.name}): truncated or corrupt")
    return True
