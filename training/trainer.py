"""The shared training engine of SFT (``training/sft.py``) and preference alignment (``training/align.py``).

``RadgrTrainer`` is a thin layer over Hugging Face ``transformers.Trainer`` that gets the traps of custom-loss
training right once, for every radgr trainer (docs/training.md, "The shared training engine"):

- **Gradient accumulation is exact for custom losses.** A trainer returns the *sum* of its per-unit losses over
  a micro-batch (a unit is whatever the loss averages over: a (prompt, positive) pair for SFT, a session for
  RAD-DPO); the base divides by the number of units in the *whole accumulated batch* (all micro-batches of one
  optimizer step, all data-parallel ranks), and tells Trainer the loss is already scaled
  (``loss_is_scaled_for_ga = True``). So 2 micro-batches of 4 give the same gradients as 1 batch of 8, even when
  micro-batches hold different numbers of units (tested in ``tests/test_sft_train_common.py``).
- Checkpoints every ``save_steps`` to ``<run_dir>/checkpoints/checkpoint-<step>``; ``train_with_resume(True)``
  continues from the newest one (optimizer, scheduler, RNG, data position and the trainer's extra state).
- A JSON log of every logged step (``<run_dir>/train_log.json``, rewritten atomically) and a loss-curve PNG
  (``<run_dir>/loss.png``, ``training.loss_plot``); tqdm progress from Trainer.
- Data parallel under ``torchrun``: no module globals, every file write is rank-0 only, the unit count is summed
  over ranks and the loss multiplied by the world size so DDP's gradient *mean* yields the global per-unit mean.
  ``TrainingArguments`` (precision, checkpoint folder, label names) come from ``training.train_config``.

How a trainer subclasses it (SFT is the worked example)::

    class MyTrainer(RadgrTrainer):
        def compute_loss_sum(self, model, inputs):
            # inputs: the collator's batch, moved to the device; it holds "num_units" (int).
            per_unit = ...                       # [num_units] loss of each unit
            self.record_metric("my/thing", float(x))   # optional: averaged into the next log line
            return per_unit.sum()

        # optional: extra state saved in every checkpoint and restored on --resume
        def checkpoint_extra_state(self) -> dict[str, Any] | None:
            return {"window": self.window.tensor(), "seen": self.seen}
        def load_checkpoint_extra_state(self, state: dict[str, Any]) -> None:
            self.window.load(state["window"]); self.seen = state["seen"]

    trainer = MyTrainer(model=model, args=training_arguments(cfg, run_dir), train_dataset=ListDataset(rows),
                        data_collator=collate, callbacks=run_callbacks(run_dir))
    trainer.train_with_resume(resume=cfg_resume)
    save_model_dir(trainer.accelerator.unwrap_model(trainer.model), tokenizer, run_dir / "final", info)

- The collator must put ``"num_units"`` (``training.batching.UNITS_KEY``, a Python ``int``) in every batch;
  ``training.batching.pad_left`` builds the usual tensors (``input_ids``, ``attention_mask``, ``position_ids``).
- Extra state is written (``torch.save``, atomically) from rank 0 to ``<checkpoint>/radgr_extra_state.pt`` after
  Trainer has written the checkpoint, and read on every rank before training resumes. If the state differs per
  rank, gather it inside ``checkpoint_extra_state`` (it is called on every rank; only rank 0's return value is
  written).
- ``compute_loss_sum`` runs under Trainer's autocast context; keep the returned sum in fp32.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from sid_index.atomic_files import write_bytes_atomic, write_json_atomic
from training.batching import UNITS_KEY
from training.loss_plot import write_loss_plot
from training.train_config import CHECKPOINTS_SUBDIR

logger = logging.getLogger(__name__)

EXTRA_STATE_FILE = "radgr_extra_state.pt"
TRAIN_LOG_FILE = "train_log.json"
LOSS_PLOT_FILE = "loss.png"


class RunLogCallback(TrainerCallback):
    """Rank 0 rewrites ``train_log.json`` (every logged step) on each log and ``loss.png`` on save and at the end."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            write_json_atomic(self.run_dir / TRAIN_LOG_FILE, state.log_history, indent=1, sort_keys=False)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            write_loss_plot(state.log_history, self.run_dir / LOSS_PLOT_FILE)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if state.is_world_process_zero:
            write_json_atomic(self.run_dir / TRAIN_LOG_FILE, state.log_history, indent=1, sort_keys=False)
            write_loss_plot(state.log_history, self.run_dir / LOSS_PLOT_FILE)


class _ExtraStateCallback(TrainerCallback):
    """Writes the trainer's ``checkpoint_extra_state()`` into each checkpoint right after Trainer saved it."""

    def __init__(self, trainer: RadgrTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        extra = self.trainer.checkpoint_extra_state()  # every rank calls it (it may gather)
        if extra is None or not state.is_world_process_zero:
            return
        if args.output_dir is None:
            raise ValueError("TrainingArguments.output_dir must be set to save checkpoints")
        ckpt = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        buf = io.BytesIO()
        torch.save(extra, buf)
        write_bytes_atomic(ckpt / EXTRA_STATE_FILE, buf.getvalue())


def run_callbacks(run_dir: str | Path) -> list[TrainerCallback]:
    """The callbacks every radgr run uses (JSON log + loss PNG)."""
    return [RunLogCallback(run_dir)]


def last_checkpoint(run_dir: str | Path) -> str | None:
    """The newest ``checkpoint-<step>`` folder of a run, or None."""
    ckdir = Path(run_dir) / CHECKPOINTS_SUBDIR
    if not ckdir.is_dir():
        return None
    newest: str | None = get_last_checkpoint(str(ckdir))  # transformers leaves it unannotated
    return newest


# ---------------------------------------------------------------- the trainer


class RadgrTrainer(Trainer):
    """``Trainer`` with accumulation-exact custom losses, extra checkpoint state and metric logging.

    Subclasses implement :meth:`compute_loss_sum`; see the module docstring.
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the units of the whole accumulated batch itself

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metric_sums: dict[str, float] = {}
        self._metric_counts: dict[str, int] = {}
        self.add_callback(_ExtraStateCallback(self))

    # -- hooks for subclasses
    def compute_loss_sum(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """The SUM over this micro-batch's ``inputs["num_units"]`` units of each unit's loss (a scalar)."""
        raise NotImplementedError("a RadgrTrainer subclass must implement compute_loss_sum")

    def checkpoint_extra_state(self) -> dict[str, Any] | None:
        """State saved with every checkpoint (``torch.save``-able), or None for nothing."""
        return None

    def load_checkpoint_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_extra_state` returned; called before training resumes."""
        raise NotImplementedError(f"{type(self).__name__} saved extra state but cannot load it")

    def record_metric(self, name: str, value: float) -> None:
        """Add one observation of ``name``; the mean since the last log line is logged with the loss."""
        self._metric_sums[name] = self._metric_sums.get(name, 0.0) + float(value)
        self._metric_counts[name] = self._metric_counts.get(name, 0) + 1

    # -- Trainer overrides
    def get_batch_samples(self, epoch_iterator: Iterator[Any], num_batches: int, device: torch.device
                          ) -> tuple[list[Any], torch.Tensor | int | None]:
        """Collect one optimizer step's micro-batches; count their units (summed over data-parallel ranks)."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        units = torch.tensor(float(sum(_units_of(b) for b in batch_samples)), device=device)
        if self.args.world_size > 1:
            units = self.accelerator.gather(units.reshape(1)).sum()
        return batch_samples, units

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """loss = sum of unit losses / units of the accumulated batch (x world size so DDP's mean is exact).

        Outside training (evaluation) the denominator is this batch's own unit count.
        """
        local_units = _units_of(inputs)
        loss_sum = self.compute_loss_sum(model, inputs)
        if model.training and num_items_in_batch is not None:
            denom = torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=loss_sum.device)
            scale = float(self.args.world_size)
        else:
            denom = torch.tensor(float(local_units), dtype=torch.float32, device=loss_sum.device)
            scale = 1.0
        loss = loss_sum.float() * scale / denom
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metric_counts:
            for name, total in self._metric_sums.items():
                logs[name] = total / max(self._metric_counts[name], 1)
            self._metric_sums.clear()
            self._metric_counts.clear()
        super().log(logs, start_time)

    # -- entry point
    def train_with_resume(self, resume: bool) -> Any:
        """``train()``, from the newest checkpoint of ``args.output_dir`` when ``resume`` (fresh if none)."""
        out = self.args.output_dir
        ckpt = get_last_checkpoint(out) if resume and out is not None and os.path.isdir(out) else None
        if resume and ckpt is None:
            logger.warning("resume requested but no checkpoint in %s: training from scratch", self.args.output_dir)
        if ckpt is not None:
            extra_path = Path(ckpt) / EXTRA_STATE_FILE
            if extra_path.is_file():
                self.load_checkpoint_extra_state(torch.load(extra_path, map_location="cpu", weights_only=False))
            logger.info("resuming from %s", ckpt)
        return self.train(resume_from_checkpoint=ckpt)


def _units_of(batch: Mapping[str, Any]) -> int:
    if UNITS_KEY not in batch:
        raise ValueError(f"a radgr batch must hold {UNITS_KEY!r} (the number of loss units); keys: {sorted(batch)}")
    n = batch[UNITS_KEY]
    n = int(n.item()) if torch.is_tensor(n) else int(n)
    if n < 1:
        raise ValueError(f"{UNITS_KEY} must be >= 1, given {n}")
    return n

