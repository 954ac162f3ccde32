"""radgr export, radgr bundle verify (placeholder until its issue lands)."""

from __future__ import annotations

import typer


def export_command() -> int:
    """Not implemented yet."""
    raise typer.Exit(2)


def verify_command() -> int:
    """Not implemented yet."""
    raise typer.Exit(2)
