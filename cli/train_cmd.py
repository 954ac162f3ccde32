"""radgr train sft, radgr eval (placeholder until its issue lands)."""

from __future__ import annotations

import typer


def sft_command() -> int:
    """Not implemented yet."""
    raise typer.Exit(2)


def eval_command() -> int:
    """Not implemented yet."""
    raise typer.Exit(2)
