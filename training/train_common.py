"""The shared training engine of SFT (``training/sft.py``) and preference alignment (``training/align.py``).

It is a thin layer over Hugging Face ``transformers.Trainer`` that fixes the traps listed in
``notes/stack.md`` once, so every radgr trainer gets them right:

- ``remove_unused_columns=False`` (our raw fields reach the collator) and ``label_names`` set to our own key.
- **Gradient accumulation is exact for custom losses.** A trainer returns the *sum* of its per-unit losses over
  a micro-batch (a unit is whatever the loss averages over: a (prompt, positive) pair for SFT, a session for
  RAD-DPO); the base divides by the number of units in the *whole accumulated batch* (all micro-batches of one
  optimizer step, all data-parallel ranks), and tells Trainer the loss is already scaled
  (``loss_is_scaled_for_ga = True``). So 2 micro-batches of 4 give the same gradients as 1 batch of 8, even when
  micro-batches hold different numbers of units (tested in ``tests/test_sft_train_common.py``).
- Checkpoints every ``save_steps`` to ``<run_dir>/checkpoints/checkpoint-<step>``, ``resume=True`` continues from
  the newest one (optimizer, scheduler, RNG, data position and the trainer's extra state).
- A JSON log of every logged step (``<run_dir>/train_log.json``, rewritten atomically) and a loss-curve PNG
  (``<run_dir>/loss.png``); tqdm progress from Trainer.
- bf16 mixed precision on CUDA when supported, fp32 (``use_cpu=True``) on CPU.
- Data parallel under ``torchrun``: no module globals, every file write is rank-0 only, the unit count is summed
  over ranks and the loss multiplied by the world size so DDP's gradient *mean* yields the global per-unit mean.

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

    trainer = MyTrainer(model=model, args=training_arguments(cfg, run_dir), train_dataset=ds,
                        data_collator=collate, callbacks=run_callbacks(run_dir))
    trainer.train_with_resume(resume=cfg_resume)
    save_final(trainer, tokenizer, run_dir / "final", info={...})

- The collator must put ``"num_units"`` (a Python ``int``) in every batch; :func:`pad_left` builds the usual
  tensors (``input_ids``, ``attention_mask`` 2D or additive 4D, ``position_ids``) from token-id lists.
- Extra state is written (``torch.save``) from rank 0 to ``<checkpoint>/radgr_extra_state.pt`` after Trainer has
  written the checkpoint, and read on every rank before training resumes. If the state differs per rank, gather
  it inside ``checkpoint_extra_state`` (it is called on every rank; only rank 0's return value is written).
- ``compute_loss_sum`` runs under Trainer's autocast context; keep the returned sum in fp32.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from sid_index.atomic_files import save_figure_atomic, write_bytes_atomic, write_json_atomic

logger = logging.getLogger(__name__)

CHECKPOINTS_SUBDIR = "checkpoints"
EXTRA_STATE_FILE = "radgr_extra_state.pt"
TRAIN_LOG_FILE = "train_log.json"
LOSS_PLOT_FILE = "loss.png"
UNITS_KEY = "num_units"
LABEL_KEY = "target_ids"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every radgr trainer (validated; messages name the field and bound)."""

    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    lr: float = 1e-3
    batch_size: int = 32  # per device, per micro-batch
    grad_accum: int = 1
    save_steps: int = 200
    logging_steps: int = 10
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    save_total_limit: int = 2
    optim: str = "adamw_torch"
    group_by_length: bool = True  # batches of similar length: less padding (Trainer's LengthGroupedSampler)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, given {self.epochs}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (use epochs) or >= 1, given {self.max_steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, given {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, given {self.batch_size}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, given {self.grad_accum}")
        if self.save_steps < 1:
            raise ValueError(f"save_steps must be >= 1, given {self.save_steps}")
        if self.logging_steps < 1:
            raise ValueError(f"logging_steps must be >= 1, given {self.logging_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), given {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, given {self.weight_decay}")
        if self.lr_scheduler not in ("cosine", "linear", "constant", "constant_with_warmup"):
            raise ValueError(f"lr_scheduler must be cosine, linear, constant or constant_with_warmup, "
                             f"given {self.lr_scheduler!r}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, given {self.max_grad_norm}")
        if self.optim not in ("adamw_torch", "sgd"):
            raise ValueError(f"optim must be adamw_torch or sgd, given {self.optim!r}")
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1, given {self.save_total_limit}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_precision() -> dict[str, bool]:
    """``TrainingArguments`` precision flags for this machine: bf16 on CUDA when supported, else fp32 on CPU."""
    if torch.cuda.is_available():
        return {"use_cpu": False, "bf16": bool(torch.cuda.is_bf16_supported())}
    return {"use_cpu": True, "bf16": False}


def training_arguments(cfg: TrainConfig, run_dir: str | Path, *, disable_tqdm: bool | None = None) -> TrainingArguments:
    """``TrainingArguments`` for a radgr run in ``run_dir`` (checkpoints under ``run_dir/checkpoints``)."""
    kwargs: dict[str, Any] = {}
    if disable_tqdm is not None:
        kwargs["disable_tqdm"] = disable_tqdm
    return TrainingArguments(
        output_dir=str(Path(run_dir) / CHECKPOINTS_SUBDIR),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        label_names=[LABEL_KEY],
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        **device_precision(),
        **kwargs,
    )


# ---------------------------------------------------------------- batches


def pad_left(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    *,
    block_masks: Sequence[torch.Tensor] | None = None,
    position_ids: Sequence[Sequence[int]] | None = None,
    mask_dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Left-pad token-id lists into a batch.

    Returns ``input_ids`` [B, T] (long), ``position_ids`` [B, T] and ``attention_mask``:
    - without ``block_masks``: 2D [B, T] long (1 = real token); positions count real tokens from 0;
    - with ``block_masks`` (one bool [L_i, L_i] per sequence, True = query may attend key, e.g. a packed
      block-diagonal mask): an additive 4D float mask [B, 1, T, T] (0 = attend, ``finfo.min`` = blocked) that works
      with both ``sdpa`` and ``eager``; padded query rows attend to themselves so sdpa never sees an empty row.
    ``position_ids`` overrides the default positions (needed for packing's aligned positions).
    Left padding puts every sequence's last token at column ``T - 1``, so ``logits_to_keep=k`` selects the same
    final ``k`` positions for every row.
    """
    if len(sequences) == 0:
        raise ValueError("sequences must hold at least one sequence, given 0")
    lengths = [len(s) for s in sequences]
    if min(lengths) < 1:
        raise ValueError(f"every sequence needs >= 1 token, given a sequence of length {min(lengths)}")
    bsz, width = len(sequences), max(lengths)
    ids = torch.full((bsz, width), int(pad_id), dtype=torch.long)
    pos = torch.zeros((bsz, width), dtype=torch.long)
    mask2d = torch.zeros((bsz, width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        n = lengths[i]
        ids[i, width - n:] = torch.as_tensor(list(seq), dtype=torch.long)
        mask2d[i, width - n:] = 1
        if position_ids is not None:
            if len(position_ids[i]) != n:
                raise ValueError(f"position_ids[{i}] has length {len(position_ids[i])}, sequence has {n}")
            pos[i, width - n:] = torch.as_tensor(list(position_ids[i]), dtype=torch.long)
        else:
            pos[i, width - n:] = torch.arange(n)
    if block_masks is None:
        return {"input_ids": ids, "attention_mask": mask2d, "position_ids": pos}
    if len(block_masks) != bsz:
        raise ValueError(f"block_masks needs one mask per sequence ({bsz}), given {len(block_masks)}")
    allowed = torch.zeros((bsz, width, width), dtype=torch.bool)
    for i, bm in enumerate(block_masks):
        n = lengths[i]
        if tuple(bm.shape) != (n, n):
            raise ValueError(f"block_masks[{i}] must be [{n}, {n}], given {list(bm.shape)}")
        allowed[i, width - n:, width - n:] = bm.to(torch.bool)
    diag = torch.arange(width)
    allowed[:, diag, diag] |= mask2d == 0  # padded rows attend to themselves only
    additive = torch.zeros((bsz, 1, width, width), dtype=mask_dtype)
    additive.masked_fill_(~allowed[:, None], torch.finfo(mask_dtype).min)
    return {"input_ids": ids, "attention_mask": additive, "position_ids": pos}


def causal_block_mask(length: int) -> torch.Tensor:
    """bool [L, L] lower-triangular mask (True = attend): a plain causal sequence as a block mask."""
    return torch.tril(torch.ones((length, length), dtype=torch.bool))


def target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs ``log softmax(logits)[target]`` over the full vocabulary, in fp32.

    logits: [B, K, V]; targets: [B, K] long -> [B, K] float32.
    """
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {list(logits.shape)} and targets {list(targets.shape)} disagree on [B, K]")
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------- files


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


class RunLogCallback(TrainerCallback):
    """Rank 0 rewrites ``train_log.json`` (every logged step) on each log and ``loss.png`` on save and at the end."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if state.is_world_process_zero:
            write_json_atomic(self.run_dir / TRAIN_LOG_FILE, state.log_history, indent=1, sort_keys=False)

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.is_world_process_zero:
            write_loss_plot(state.log_history, self.run_dir / LOSS_PLOT_FILE)

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.is_world_process_zero:
            write_json_atomic(self.run_dir / TRAIN_LOG_FILE, state.log_history, indent=1, sort_keys=False)
            write_loss_plot(state.log_history, self.run_dir / LOSS_PLOT_FILE)


class _ExtraStateCallback(TrainerCallback):
    """Writes the trainer's ``checkpoint_extra_state()`` into each checkpoint right after Trainer saved it."""

    def __init__(self, trainer: RadgrTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        extra = self.trainer.checkpoint_extra_state()  # every rank calls it (it may gather)
        if extra is None or not state.is_world_process_zero:
            return
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
    return get_last_checkpoint(str(ckdir))


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
    def get_batch_samples(self, epoch_iterator, num_batches, device):  # type: ignore[no-untyped-def,override]
        """Collect one optimizer step's micro-batches; count their units (summed over data-parallel ranks)."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        units = torch.tensor(float(sum(_units_of(b) for b in batch_samples)), device=device)
        if self.args.world_size > 1:
            units = self.accelerator.gather(units.reshape(1)).sum()
        return batch_samples, units

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def,override]
        """loss = sum of unit losses / units of the accumulated batch (x world size so DDP's mean is exact).

        Outside training (evaluation) the denominator is this batch's own unit count.
        """
        local_units = _units_of(inputs)
        loss_sum = self.compute_loss_sum(model, inputs)
        if model.training and num_items_in_batch is not None:
            denom = num_items_in_batch
            scale = float(self.args.world_size)
        else:
            denom = torch.tensor(float(local_units), device=loss_sum.device)
            scale = 1.0
        loss = loss_sum.float() * scale / denom.to(loss_sum.device, torch.float32)
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
        ckpt = get_last_checkpoint(self.args.output_dir) if resume and os.path.isdir(self.args.output_dir) else None
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

