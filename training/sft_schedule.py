"""How long SFT trains by default: a validation split, a step budget that adapts to the data, early stopping.

Contract (docs/training.md, "How long SFT trains"):
- ``split_validation(samples, schedule, seed)`` holds out whole *sessions* of ``train.parquet`` (a seeded random
  ``val_fraction`` of them, at most ``val_max_sessions``; none when that rounds below ``val_min_sessions``).
  The same seed gives the same split, so ``--resume`` sees the same training rows. SFT and the alignment tune
  group sessions by prompt: sessions sharing a prompt are held out together, so no validation prompt is trained on.
- ``planned_steps(pairs, effective_batch, epochs, schedule)`` is the rule: ``max(⌈epochs × steps per epoch⌉,
  min_steps)``, but at most ``⌈max_epochs × steps per epoch⌉`` (never below the ``epochs`` budget). A small
  dataset therefore gets ``min_steps`` (one epoch of 2,000 sessions is ~30 steps, far from convergence), a large
  one its epochs, a tiny one at most ``max_epochs`` passes. The cosine schedule spans the planned steps.
- ``ValidationCallback`` computes the validation loss (the training loss's definition, mean over held-out pairs)
  every ``eval_every`` optimizer steps (0: ``clamp(planned / 20, 10, 200)``) and at the last step, appends
  ``{"step", "epoch", "eval_loss"}`` to Trainer's ``log_history`` (so ``train_log.json`` and ``loss.png`` show it)
  and stops training when the last ``patience`` evaluations brought no new best (by more than ``min_delta``).
  It keeps no state of its own: the best and the count are recomputed from ``log_history``, which checkpoints
  restore, so a resumed run stops where an uninterrupted one would.
- ``restore_best`` (default on): at each new best, rank 0 writes the weights to ``RUN_DIR/best_model.safetensors``
  (atomically, the step in its metadata; on disk, so ``--resume`` keeps it), and ``training.sft`` rolls the final
  model back to them when the best evaluation came before the last step (:func:`load_best_weights`; not under
  FSDP, whose modules hold shards). Off: the final model is the one at the stopping step.
- ``write_schedule_plot`` draws train and validation loss with the planned, best and stopping steps marked.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from sid_index.atomic_files import save_figure_atomic

EVAL_KEY = "eval_loss"
SCHEDULE_PLOT_FILE = "schedule.png"
BEST_WEIGHTS_FILE = "best_model.safetensors"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SftSchedule:
    """Validation split, step budget and early stopping of SFT (validated; messages name the field and bound)."""

    min_steps: int = 600
    max_epochs: float = 30.0
    val_fraction: float = 0.05
    val_min_sessions: int = 8
    val_max_sessions: int = 500
    eval_every: int = 0  # 0: clamp(planned / 20, 10, 200)
    patience: int = 4  # evaluations without a new best before stopping; 0: never stop early
    min_delta: float = 1e-3
    restore_best: bool = True  # final model = the best validation evaluation's weights

    def __post_init__(self) -> None:
        if self.min_steps < 0:
            raise ValueError(f"min_steps must be >= 0, given {self.min_steps}")
        if not self.max_epochs > 0:
            raise ValueError(f"max_epochs must be > 0, given {self.max_epochs}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), given {self.val_fraction}")
        if self.val_min_sessions < 1:
            raise ValueError(f"val_min_sessions must be >= 1, given {self.val_min_sessions}")
        if self.val_max_sessions < self.val_min_sessions:
            raise ValueError(f"val_max_sessions must be >= val_min_sessions ({self.val_min_sessions}), "
                             f"given {self.val_max_sessions}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, given {self.eval_every}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, given {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, given {self.min_delta}")

    def eval_interval(self, planned: int) -> int:
        return self.eval_every if self.eval_every > 0 else int(min(max(planned // 20, 10), 200))


def split_validation(samples: Sequence[Any], schedule: SftSchedule, seed: int,
                     group: Callable[[Any], Hashable] | None = None) -> tuple[list[Any], list[Any]]:
    """(train, validation) sessions: a seeded random ``val_fraction`` held out (file order kept in both).

    With ``group``, sessions with the same ``group(session)`` land on the same side (whole groups are held out, in
    a seeded order, skipping any that would overshoot the size): SFT and the tune group by prompt, so no held-out
    prompt is ever trained on. Real logs repeat prompts (on the shipped Amazon data with expanded histories, 54 %
    of randomly held-out (history, next item) pairs also occur in training), and a validation set that is half
    memorised rewards memorising. When whole groups cannot make ``val_min_sessions`` (a handful of prompts
    repeated everywhere), it warns and draws sessions one by one instead.
    """
    n = len(samples)
    n_val = min(round(schedule.val_fraction * n), schedule.val_max_sessions)
    if n_val < schedule.val_min_sessions or n - n_val < 1:
        return list(samples), []
    if group is None:
        held = set(random.Random(seed).sample(range(n), n_val))
    else:
        members: dict[Hashable, list[int]] = {}
        for i, s in enumerate(samples):
            members.setdefault(group(s), []).append(i)
        keys = list(members)
        random.Random(seed).shuffle(keys)
        held = set()
        for k in keys:
            if len(held) + len(members[k]) <= n_val:
                held.update(members[k])
            if len(held) == n_val:
                break
        if len(held) < schedule.val_min_sessions:
            logger.warning("prompts repeat too much to hold out whole prompts (%d distinct over %d sessions): "
                           "validation sessions are drawn one by one, so some share a prompt with training",
                           len(keys), n)
            return split_validation(samples, schedule, seed)
    return ([s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held])


def planned_steps(pairs: int, effective_batch: int, epochs: float, schedule: SftSchedule) -> dict[str, Any]:
    """The step budget and why: ``{"steps", "steps_per_epoch", "epoch_steps", "cap_steps", "rule"}``."""
    if pairs < 1 or effective_batch < 1:
        raise ValueError(f"pairs and effective_batch must be >= 1, given {pairs} and {effective_batch}")
    per_epoch = math.ceil(pairs / effective_batch)
    epoch_steps = math.ceil(epochs * per_epoch)
    cap = max(math.ceil(schedule.max_epochs * per_epoch), epoch_steps)
    steps = min(max(epoch_steps, schedule.min_steps), cap)
    if steps == epoch_steps:
        rule = f"epochs: {epochs:g} x {per_epoch} steps/epoch"
    elif steps == cap:
        rule = f"max_epochs: {schedule.max_epochs:g} x {per_epoch} steps/epoch (below min_steps {schedule.min_steps})"
    else:
        rule = f"min_steps {schedule.min_steps} (epochs give only {epoch_steps})"
    return {"steps": steps, "steps_per_epoch": per_epoch, "epoch_steps": epoch_steps, "cap_steps": cap,
            "rule": rule}


def early_stop_status(log_history: Sequence[Mapping[str, Any]], patience: int, min_delta: float) -> dict[str, Any]:
    """Best validation loss so far, its step, and evaluations since a new best (``stop`` when >= patience > 0).

    A new best must beat the previous best by more than ``min_delta``.
    """
    best, best_step, since = math.inf, None, 0
    for r in log_history:
        if EVAL_KEY not in r:
            continue
        v = float(r[EVAL_KEY])
        if v < best - min_delta:
            best, best_step, since = v, int(r["step"]), 0
        else:
            since += 1
    return {"best": best if best_step is not None else None, "best_step": best_step, "since_best": since,
            "stop": patience > 0 and since >= patience}


class ValidationCallback(TrainerCallback):
    """Validation loss every ``interval`` steps and at the end; early stopping (see the module docstring).

    ``batches`` are collated validation batches; ``loss_sum(model, batch)`` returns the summed per-pair loss of a
    batch (a scalar tensor) and each batch's pair count is its ``num_units``.
    """

    def __init__(self, batches: Sequence[dict[str, Any]], loss_sum: Callable[[torch.nn.Module, dict[str, Any]],
                 torch.Tensor], interval: int, schedule: SftSchedule, best_path: Path | None = None) -> None:
        self.batches = list(batches)
        self.loss_sum = loss_sum
        self.interval = int(interval)
        self.schedule = schedule
        self.best_path = best_path  # where a new best's weights go (rank 0; None: not kept)
        self.stopped_early = False

    def validation_loss(self, model: torch.nn.Module) -> float:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total, units = 0.0, 0
        with torch.no_grad():
            for b in self.batches:
                moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
                total += float(self.loss_sum(model, moved))
                units += int(b["num_units"])
        if was_training:
            model.train()
        return total / max(units, 1)

    def _evaluate(self, state: TrainerState, model: torch.nn.Module) -> None:
        if any(EVAL_KEY in r and int(r["step"]) == state.global_step for r in state.log_history):
            return
        state.log_history.append({"step": state.global_step, "epoch": state.epoch,
                                  EVAL_KEY: self.validation_loss(model)})

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if not self.batches:
            return
        last = state.global_step >= state.max_steps
        if state.global_step % self.interval != 0 and not last:
            return
        self._evaluate(state, kwargs["model"])
        status = early_stop_status(state.log_history, self.schedule.patience, self.schedule.min_delta)
        if self.best_path is not None and status["best_step"] == state.global_step and state.is_world_process_zero:
            save_best_weights(kwargs["model"], state.global_step, self.best_path)
        if status["stop"] and not last:
            self.stopped_early = True
            control.should_training_stop = True


def save_best_weights(model: torch.nn.Module, step: int, path: Path) -> None:
    """``model``'s weights at ``step`` as safetensors (tied tensors once), written to a temporary file and renamed."""
    import os

    from safetensors.torch import save_model

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_model(model, str(tmp), metadata={"step": str(int(step))})
    os.replace(tmp, path)


def load_best_weights(model: torch.nn.Module, path: Path, best_step: int | None) -> int | None:
    """Load ``path`` into ``model`` when it holds ``best_step``'s weights; returns the step loaded (None: kept)."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    if best_step is None or not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        step = int((f.metadata() or {}).get("step", -1))
    if step != best_step:
        return None
    load_model(model, str(path))
    return step


def write_schedule_plot(log_history: Sequence[Mapping[str, Any]], schedule_info: Mapping[str, Any],
                        path: str | Path) -> None:
    """Train and validation loss against the step; the planned budget, best and final steps as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    tr = [(int(r["step"]), float(r["loss"])) for r in log_history if "loss" in r]
    ev = [(int(r["step"]), float(r[EVAL_KEY])) for r in log_history if EVAL_KEY in r]
    if tr:
        ax.plot([s for s, _ in tr], [v for _, v in tr], label="train loss", alpha=0.8)
    if ev:
        ax.plot([s for s, _ in ev], [v for _, v in ev], marker="o", label="validation loss")
    marks = (("planned_steps", "planned", "gray"), ("best_step", "best validation", "green"),
             ("steps", "stopped" if schedule_info.get("stopped_early") else "final", "red"))
    for key, label, color in marks:
        if schedule_info.get(key) is not None:
            ax.axvline(int(schedule_info[key]), color=color, linestyle="--", alpha=0.7,
                       label=f"{label} ({int(schedule_info[key])})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean token NLL)")
    ax.set_title(f"SFT schedule: {schedule_info.get('rule', '')}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
