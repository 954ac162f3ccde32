"""The loss curve of a training run as a PNG (``RUN_DIR/loss.png``, written by ``training.trainer``'s callback).

Contract: ``write_loss_plot(log_history, path)`` plots ``loss`` (and ``eval_loss`` when present) of Trainer's
``state.log_history`` against the optimizer step and writes the PNG atomically (matplotlib's Agg backend, no
display needed).
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
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
