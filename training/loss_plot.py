"""Curves of a training run as PNGs: the loss (``RUN_DIR/loss.png``, written by ``training.trainer``'s callback)
and any other logged metric (RAD-DPO's ``RUN_DIR/rdrw_auc.png``, written by ``training.align``).

Contract: ``write_loss_plot(log_history, path)`` plots ``loss`` (and ``eval_loss`` when present) of Trainer's
``state.log_history`` against the optimizer step; ``write_metric_plot(log_history, key, path, ...)`` plots the
records holding ``key`` the same way, with optional labelled horizontal lines (a chance level, a whole-run
value). Both write the PNG atomically (matplotlib's Agg backend, no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sid_index.atomic_files import save_figure_atomic


def write_loss_plot(log_history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "training loss") -> None:
    """A PNG of ``loss`` (and ``eval_loss`` when present) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in log_history if "loss" in r]
    losses = [float(r["loss"]) for r in log_history if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(steps, losses, marker="." if len(steps) < 50 else None, label="train loss")
    ev = [(int(r["step"]), float(r["eval_loss"])) for r in log_history if "eval_loss" in r]
    if ev:
        ax.plot([s for s, _ in ev], [v for _, v in ev], marker="o", label="eval loss")
    _finish(fig, ax, "loss", title, path)


def write_metric_plot(log_history: Sequence[Mapping[str, Any]], key: str, path: str | Path, *, ylabel: str,
                      title: str, hlines: Mapping[str, float] | None = None,
                      ylim: tuple[float, float] | None = None) -> None:
    """A PNG of ``key`` against the optimizer step (records without ``key`` skipped); ``hlines``: label → y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(int(r["step"]), float(r[key])) for r in log_history if key in r]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 50 else None, label=key)
    for i, (label, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, color=f"C{i + 1}", linestyle=("--", ":", "-.")[i % 3], label=label)
    if ylim is not None:
        ax.set_ylim(*ylim)
    _finish(fig, ax, ylabel, title, path)


def _finish(fig: Any, ax: Any, ylabel: str, title: str, path: str | Path) -> None:
    """Axis labels, grid and legend of a per-step curve; the PNG written atomically; the figure closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
