"""Optimisation settings shared by every radgr trainer, and the ``TrainingArguments`` built from them.

Contract:
- ``TrainConfig`` is frozen and validated on construction (messages name the field and bound); SFT and alignment
  hold one each, with their own defaults (``training.sft.SFT_TRAIN_DEFAULTS``,
  ``training.align.default_align_train_config``).
- ``training_arguments(cfg, run_dir)`` is the only place ``TrainingArguments`` are built: checkpoints under
  ``run_dir/checkpoints`` (``CHECKPOINTS_SUBDIR``), ``remove_unused_columns=False`` (our raw fields reach the
  collator), ``label_names=[LABEL_KEY]``, no external reporting, ``ddp_find_unused_parameters=False``, and the
  precision of :func:`device_precision`: bf16 on CUDA when supported, fp32 (``use_cpu=True``) on CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from training.batching import LABEL_KEY

CHECKPOINTS_SUBDIR = "checkpoints"


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
    kwargs: dict[str, Any] = dict(device_precision())
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
        **kwargs,
    )
