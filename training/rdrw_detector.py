"""RDRW as a pseudo-negative detector: the ROC AUC of (1 − w) for truly relevant vs irrelevant negatives.

Contract
--------
- :class:`RdrwDetector` holds two :class:`training.detector_auc.AucAccumulator` s of (score = 1 − w, relevant)
  pairs: the current logging window's and the whole run's. The trainer ``add`` s the pairs of negatives weighed
  after RDRW's warm-up whose truth (the simulator's ``negative_relevant``) is known; it only observes.
- ``take_window_log()`` → ``{"rdrw/auc", "rdrw/auc_pairs"}`` for a training log line (empty while the window has no
  pair or only one class), then starts a new window.
- ``summary()`` → the run's statistics for ``radgr_train.json`` (AUC, counts per class, each class's mean weight).
- ``state_dict()`` / ``from_state_dict()`` round-trip both accumulators (they travel in checkpoints, so a resumed
  run reports the uninterrupted run's AUC).
- :class:`RdrwAucPlotCallback` (rank 0) redraws ``RUN_DIR/rdrw_auc.png`` — ``rdrw/auc`` per logging step, the 0.5
  chance line and the run's AUC so far — on every checkpoint save and at the end, once the log holds a value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from training.detector_auc import AucAccumulator
from training.loss_plot import write_metric_plot

RDRW_AUC_PLOT_FILE = "rdrw_auc.png"


class RdrwDetector:
    """The logging window's and the run's (1 − w, relevant) pairs."""

    def __init__(self, window: AucAccumulator | None = None, run: AucAccumulator | None = None) -> None:
        self.window = window if window is not None else AucAccumulator()
        self.run = run if run is not None else AucAccumulator()

    def add(self, score: torch.Tensor, relevant: torch.Tensor) -> None:
        self.window.add(score, relevant)
        self.run.add(score, relevant)

    def take_window_log(self) -> dict[str, float]:
        """The window's AUC as log entries (none when undefined), and a fresh window."""
        if not self.window.pairs:
            return {}
        auc, pairs = self.window.auc(), float(self.window.pairs)
        self.window = AucAccumulator(self.window.cap)
        return {} if math.isnan(auc) else {"rdrw/auc": auc, "rdrw/auc_pairs": pairs}

    def summary(self) -> dict[str, Any]:
        s = self.run.summary()

        def weight(score: float | None) -> float | None:
            return None if score is None else 1.0 - score

        return {"auc": s["auc"], "pairs": s["pairs"], "relevant": s["positives"], "irrelevant": s["negatives"],
                "kept": s["kept"], "mean_weight_relevant": weight(s["mean_score_positive"]),
                "mean_weight_irrelevant": weight(s["mean_score_negative"]),
                "score": "1 - w; relevant = the simulator's negative_relevant; pairs weighed after warm-up"}

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window.state_dict(), "run": self.run.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RdrwDetector:
        return cls(AucAccumulator.from_state_dict(state["window"]), AucAccumulator.from_state_dict(state["run"]))


class RdrwAucPlotCallback(TrainerCallback):
    """Rank 0 redraws ``RUN_DIR/rdrw_auc.png`` on every checkpoint save and at the end (see the module doc)."""

    def __init__(self, run_dir: str | Path, trainer: Any) -> None:
        self.run_dir = Path(run_dir)
        self.trainer = trainer  # reads trainer.rdrw_detector when drawing (a resume replaces the detector)

    def _draw(self, state: TrainerState) -> None:
        if not state.is_world_process_zero or not any("rdrw/auc" in r for r in state.log_history):
            return
        hlines = {"chance (0.5)": 0.5}
        run_auc = self.trainer.rdrw_detector.run.auc()
        if not math.isnan(run_auc):
            hlines[f"all post-warm-up pairs ({run_auc:.3f})"] = run_auc
        write_metric_plot(state.log_history, "rdrw/auc", self.run_dir / RDRW_AUC_PLOT_FILE,
                          ylabel="ROC AUC of 1 − w (relevant vs irrelevant negatives)",
                          title="RDRW as a pseudo-negative detector, per logging window", hlines=hlines,
                          ylim=(0.0, 1.0))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._draw(state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._draw(state)
