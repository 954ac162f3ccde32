"""radgr train align, radgr experiment paper-table (placeholder until its issue lands)."""

from __future__ import annotations

import typer


def align_command() -> int:
    """Not implemented yet."""
    raise typer.Exit(2)


def paper_table_command() -> int:
    """Not implemented yet."""
    raise typer.Exit(2)
