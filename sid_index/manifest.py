"""The ``manifest.json`` header that radgr's directory formats share (SID index, servable bundle).

Contract: :func:`read_format_manifest` reads ``DIR/manifest.json`` and checks that it is a JSON object whose
``format`` and ``format_version`` are the expected ones. Every failure raises the caller's error class (a ``ValueError``
subclass) with a message naming the directory or file and, for a wrong field, the expected and the given value (a
wrong ``format_version`` names the manifest's path and both versions).
The rest of a manifest (file lists, checksums, summaries) belongs to each format's own module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def read_format_manifest(directory: str | os.PathLike[str], *, kind: str, format_name: str,
                         format_version: int, error: type[ValueError]) -> dict[str, Any]:
    """``directory``'s manifest as a dict, after the format checks; ``kind`` ("index", "bundle") starts messages."""
    d = Path(directory)
    if not d.is_dir():
        raise error(f"{kind} directory {str(d)!r} does not exist")
    path = d / MANIFEST
    if not path.is_file():
        raise error(f"{kind} file {MANIFEST!r} is missing in {str(d)!r}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{kind} file {MANIFEST!r} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise error(f"{kind} file {MANIFEST!r} must hold a JSON object, given {type(manifest).__name__}")
    if manifest.get("format") != format_name:
        raise error(f"manifest format must be {format_name!r}, given {manifest.get('format')!r}")
    if manifest.get("format_version") != format_version:
        raise error(f"{kind} file {str(path)!r}: format_version must be {format_version}, given "
                    f"{manifest.get('format_version')!r} (this radgr reads only {format_name} version "
                    f"{format_version}; write the {kind} again with this radgr)")
    return manifest
