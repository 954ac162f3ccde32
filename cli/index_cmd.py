"""radgr index ... (placeholder until its issue lands)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("build")
def build_command() -> int:
    """Build a SID index (not implemented yet)."""
    raise typer.Exit(2)
