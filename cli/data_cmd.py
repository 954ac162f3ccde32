"""radgr index ... (placeholder until its issue lands)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("simulate")
def simulate_command() -> int:
    """Simulate search logs (not implemented yet)."""
    raise typer.Exit(2)
