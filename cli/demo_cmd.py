"""radgr demo (placeholder until its issue lands)."""

from __future__ import annotations

import typer


def demo_command() -> int:
    """Not implemented yet."""
    raise typer.Exit(2)
