"""Checkpoint folders that a kill can never leave half-written for ``--resume``: completion marker, choice, rotation.

Hugging Face ``Trainer`` writes ``checkpoint-<step>`` in place, file by file; a process killed meanwhile leaves a
folder that looks like a checkpoint but is not one. radgr therefore calls a checkpoint *complete* only when it
holds :data:`COMPLETE_MARKER`, written last (atomically, after every other file of the folder was fsynced), which
lists every file with its size and sha256.

Contract:
- ``mark_complete(ckpt, step)`` fsyncs every file of ``ckpt`` and the folder, then writes the marker atomically.
- ``checkpoint_problem(ckpt)`` is ``None`` for a complete checkpoint, else why it is not one: no marker, an
  unreadable marker, a listed file missing, or of another size or sha256 (a truncated or corrupted file).
- ``newest_complete_checkpoint(ckdir)`` is the complete ``checkpoint-<step>`` of the highest step, or None;
  every newer folder it skips is logged (WARNING) with the reason.
- ``rotate_checkpoints(ckdir, keep)`` keeps the ``keep`` newest complete checkpoints and removes the older complete
  ones and every incomplete folder (left by a killed run). It runs only after a new checkpoint was marked, so the
  newest complete checkpoint is never removed before its successor is complete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from sid_index.atomic_files import sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "radgr_checkpoint_complete.json"
_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")


def _files_of(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(ckpt: str | os.PathLike[str], step: int) -> Path:
    """Fsync every file of ``ckpt`` (and the folder), then write the completion marker atomically; returns it."""
    folder = Path(ckpt)
    files: dict[str, dict[str, Any]] = {}
    for path in _files_of(folder):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    _fsync(folder)
    return write_json_atomic(folder / COMPLETE_MARKER, {"step": int(step), "files": files})


def checkpoint_problem(ckpt: str | os.PathLike[str]) -> str | None:
    """None when ``ckpt`` is a complete checkpoint, else the reason it is not (naming the file)."""
    folder = Path(ckpt)
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return f"no {COMPLETE_MARKER} (the run stopped while writing it)"
    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
        files = doc["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' must be an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        return f"{COMPLETE_MARKER} is unreadable: {exc}"
    for rel, entry in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            return f"file {rel!r} is missing"
        if path.stat().st_size != int(entry["bytes"]):
            return f"file {rel!r} has {path.stat().st_size} bytes, {entry['bytes']} were written (truncated?)"
        if sha256_file(path) != entry["sha256"]:
            return f"file {rel!r} fails its sha256 checksum (changed or corrupt)"
    return None


def _step_dirs(ckdir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-<step>`` folder, newest first."""
    if not ckdir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckdir.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def newest_complete_checkpoint(ckdir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint of the highest step in ``ckdir``, or None (newer incomplete ones are logged)."""
    for _, folder in _step_dirs(Path(ckdir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("skipping checkpoint %s: %s", folder, problem)
    return None


def rotate_checkpoints(ckdir: str | os.PathLike[str], keep: int | None) -> list[Path]:
    """Remove incomplete folders and all but the ``keep`` newest complete checkpoints (None: keep all complete)."""
    removed: list[Path] = []
    complete = 0
    for _, folder in _step_dirs(Path(ckdir)):
        if not (folder / COMPLETE_MARKER).is_file():
            drop = True
        else:
            complete += 1
            drop = keep is not None and complete > keep
        if drop:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
