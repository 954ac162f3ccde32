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
  continues from the newest *complete* one (optimizer, scheduler, RNG, data position and the trainer's extra
  state) and ends with the weights an uninterrupted run of the same seed ends with (bit-identical on CPU; tested
  with SIGKILL in ``tests/test_faults_training.py``). A checkpoint is complete once its extra state is written and
  every file fsynced, when ``training.checkpoints.mark_complete`` writes the completion marker (last, atomically);
  a kill while one is written leaves a folder ``--resume`` skips. Rotation (``save_total_limit``) runs after the
  marker, so the newest complete checkpoint survives until its successor is complete.
- The data order of every epoch is a function of ``(data_seed, epoch)`` alone (the length-grouped sampler draws
  from its own generator, seeded per epoch), so a run resumed in epoch 2 skips exactly the batches the
  uninterrupted run had trained on in that epoch.
- A JSON log of every logged step (``<run_dir>/train_log.json``, rewritten atomically) and a loss-curve PNG
  (``<run_dir>/loss.png``, ``training.loss_plot``); tqdm progress from Trainer.
- Data parallel under ``torchrun``: no module globals, every file write is rank-0 only, the unit count is summed
  over ranks and the loss multiplied by the world size so DDP's gradient *mean* yields the global per-unit mean;
  the length-grouped order is drawn for the global batch, so W ranks of B rows equal one process of W×B rows
  (``tests/test_distributed.py``). FSDP through ``accelerate launch --config_file configs/fsdp.yaml`` (parameters,
  gradients and optimizer state sharded; ``tests/test_fsdp.py``): after ``train_with_resume`` rank 0's
  ``trainer.model`` is a plain model with the full weights (gathered from every rank), ready for the final save.
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
    trainer.train_with_resume(resume=cfg_resume)     # under FSDP, rank 0 ends with the full weights
    if trainer.is_world_process_zero():
        save_model_dir(trainer.accelerator.unwrap_model(trainer.model), tokenizer, run_dir / "final", info)

- The collator must put ``"num_units"`` (``training.batching.UNITS_KEY``, a Python ``int``) in every batch;
  ``training.batching.pad_left`` builds the usual tensors (``input_ids``, ``attention_mask``, ``position_ids``).
- Extra state is written (``torch.save``, atomically) from rank 0 to ``<checkpoint>/radgr_extra_state.pt`` after
  Trainer has written the checkpoint and before the completion marker, and read on every rank before training
  resumes (a complete checkpoint without it, for a trainer that keeps some, is an error, not a silent reset). If
  the state differs per rank, gather it inside ``checkpoint_extra_state`` (it is called on every rank; only rank
  0's return value is written).
- ``compute_loss_sum`` runs under Trainer's autocast context; keep the returned sum in fp32.
"""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sid_index.atomic_files import write_bytes_atomic, write_json_atomic
from training.batching import UNITS_KEY
from training.checkpoints import mark_complete, newest_complete_checkpoint, rotate_checkpoints
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


def run_callbacks(run_dir: str | Path) -> list[TrainerCallback]:
    """The callbacks every radgr run uses (JSON log + loss PNG)."""
    return [RunLogCallback(run_dir)]


def last_checkpoint(run_dir: str | Path) -> str | None:
    """The newest *complete* ``checkpoint-<step>`` folder of a run (``training.checkpoints``), or None."""
    newest = newest_complete_checkpoint(Path(run_dir) / CHECKPOINTS_SUBDIR)
    return None if newest is None else str(newest)


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Trainer's length-grouped order, drawn from a generator seeded with ``seed + epoch`` (not the global RNG).

    The global RNG's state at the start of an epoch is not in any checkpoint, so an order drawn from it cannot be
    replayed by a run resumed mid-epoch; this one can.
    """

    def __init__(self, batch_size: int, dataset: Any, seed: int) -> None:
        super().__init__(batch_size, dataset=dataset)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by accelerate's DataLoaderShard.set_epoch
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices: list[int] = get_length_grouped_indices(
            self.lengths, self.batch_size, generator=generator)
        return iter(indices)


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
    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """The length-grouped sampler seeded per epoch (:class:`EpochSeededLengthGroupedSampler`); else Trainer's.

        Trainer's other choice, the random sampler, is replaced by accelerate's seedable sampler (seed + epoch).
        """
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and dataset is not None:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            # Grouped by the GLOBAL batch of one optimizer step: accelerate hands rank r the micro-batches
            # r, r + W, ... of this order, so W ranks of B rows train on the rows one process of W x B rows
            # would, step by step (the data-parallel equivalence of tests/test_distributed.py).
            global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            return EpochSeededLengthGroupedSampler(global_batch, dataset, seed)
        return super()._get_train_sampler(train_dataset)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Trainer's checkpoint, then the extra state, then the completion marker, then rotation (in that order).

        A folder of the same step left by a killed run is removed first, so no stale file survives in it.
        """
        out = self.args.output_dir
        if out is None:
            raise ValueError("TrainingArguments.output_dir must be set to save checkpoints")
        ckpt = Path(out) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and ckpt.exists():
            logger.warning("removing %s, left by an earlier run, before saving this step", ckpt)
            shutil.rmtree(ckpt)
        self.accelerator.wait_for_everyone()
        keep = self.args.save_total_limit
        self.args.save_total_limit = None  # Trainer must not rotate before the new checkpoint is marked complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = keep
        extra = self.checkpoint_extra_state()  # every rank calls it (it may gather)
        if self.args.should_save:
            if extra is not None:
                buf = io.BytesIO()
                torch.save(extra, buf)
                write_bytes_atomic(ckpt / EXTRA_STATE_FILE, buf.getvalue())
            mark_complete(ckpt, self.state.global_step)
            for gone in rotate_checkpoints(out, keep):
                logger.info("removed checkpoint %s (save_total_limit %s)", gone, keep)
        self.accelerator.wait_for_everyone()

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

    def _gather_full_model(self) -> None:
        """FSDP only, on EVERY rank: gather the full weights to rank 0's CPU (a collective, accelerate's
        ``get_state_dict``) and make ``self.model`` there a plain model holding them; other ranks keep their shards.

        So the usual ``save_model_dir(trainer.accelerator.unwrap_model(trainer.model), ...)`` on rank 0 saves full
        weights (saving a sharded model from rank 0 alone would run a collective on one rank).
        """
        unwrapped: PreTrainedModel = self.accelerator.unwrap_model(self.model)
        full = self.accelerator.get_state_dict(self.model)  # every rank takes part; rank 0 gets the tensors
        if self.is_world_process_zero():
            plain = type(unwrapped)(unwrapped.config)
            plain.load_state_dict(full)
            self.model = self.model_wrapped = plain  # on CPU: it is there to be saved
        self.accelerator.wait_for_everyone()

    # -- entry point
    def train_with_resume(self, resume: bool) -> Any:
        """``train()``, from the newest complete checkpoint of ``args.output_dir`` when ``resume`` (fresh if none).

        Under FSDP it then gathers the full weights into rank 0's ``self.model`` (every rank must call it).

        Raises ``ValueError`` naming the checkpoint when it lacks the extra state this trainer keeps.
        """
        out = self.args.output_dir
        found = newest_complete_checkpoint(out) if resume and out is not None else None
        ckpt = None if found is None else str(found)
        if resume and ckpt is None:
            logger.warning("resume requested but no complete checkpoint in %s: training from scratch", out)
        if ckpt is not None:
            extra_path = Path(ckpt) / EXTRA_STATE_FILE
            if extra_path.is_file():
                self.load_checkpoint_extra_state(torch.load(extra_path, map_location="cpu", weights_only=False))
            elif self.checkpoint_extra_state() is not None:
                raise ValueError(f"checkpoint {ckpt} has no {EXTRA_STATE_FILE}, but {type(self).__name__} keeps "
                                 f"state across checkpoints: it cannot resume exactly from it")
            logger.info("resuming from %s", ckpt)
        result = self.train(resume_from_checkpoint=ckpt)
        if self.is_fsdp_enabled:
            self._gather_full_model()
        return result


def _units_of(batch: Mapping[str, Any]) -> int:
    if UNITS_KEY not in batch:
        raise ValueError(f"a radgr batch must hold {UNITS_KEY!r} (the number of loss units); keys: {sorted(batch)}")
    n = batch[UNITS_KEY]
    n = int(n.item()) if torch.is_tensor(n) else int(n)
    if n < 1:
        raise ValueError(f"{UNITS_KEY} must be >= 1, given {n}")
    return n

