"""SFT: next-SID prediction on every (prompt, positive) pair of ``samples/train.parquet``.

Command: ``radgr train sft --samples DIR --index DIR --out RUN_DIR [--preset tiny | --model PATH] ...``

Contract:
- One training example per (session, positive item): input = prompt ids (``decoding.prompt.encode_prompt``) then
  the positive's 3 SID tokens; targets = ``SidVocab.candidate_ids(codes)`` (3 SID tokens + EOS), predicted from
  the last prompt position and the 3 SID positions. The loss is the mean over pairs of the mean token NLL of the
  4 targets (log-softmax over the full vocabulary); prompt tokens carry no loss.
- Batches are left-padded (:func:`training.batching.pad_left`), so the 4 predicting positions are the last 4
  columns of every row and the model computes logits for those only (``logits_to_keep=4``).
- A seeded share of the training *sessions* is held out for validation, and unless ``max_steps`` is given the
  step budget and early stopping on the validation loss come from :mod:`training.sft_schedule` (the chosen
  steps, the rule and the validation losses go to ``radgr_train.json``'s ``schedule``, ``train_log.json`` and
  ``RUN_DIR/schedule.png``).
- ``run_sft(cfg)`` trains with :class:`training.trainer.RadgrTrainer` and writes ``RUN_DIR/final/``
  (model dir + tokenizer + generation_config + ``radgr_train.json`` with method "sft"), ``RUN_DIR/train_log.json``,
  ``RUN_DIR/loss.png`` and checkpoints under ``RUN_DIR/checkpoints``.
- Without ``--model``, the tokenizer is built by ``training.tokenizer.build_tokenizer`` from the catalog's titles
  (``--catalog``, optional) and the samples' prompts, and the model is a fresh preset; with ``--model PATH`` the
  local HF model's tokenizer gets the SID tokens (``add_sid_tokens``) and its embeddings are resized.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from decoding.prompt import PROMPT_VERSION
from decoding.sid_vocab import SidVocab
from sid_index.atomic_files import publish_directory
from sid_index.tokens import NUM_LEVELS
from training.batching import LABEL_KEY, UNITS_KEY, ListDataset, pad_left
from training.logprobs import target_log_probs
from training.packing import CANDIDATE_LEN
from training.prompt_ids import PromptIds, check_prompt_version
from training.sft_schedule import (
    BEST_WEIGHTS_FILE,
    SCHEDULE_PLOT_FILE,
    SftSchedule,
    ValidationCallback,
    early_stop_status,
    load_best_weights,
    planned_steps,
    split_validation,
    write_schedule_plot,
)
from training.train_config import TrainConfig, training_arguments
from training.trainer import RadgrTrainer, last_checkpoint, run_callbacks

logger = logging.getLogger(__name__)

# Tuned for the tiny preset on the demo data (docs/training.md). ``epochs`` is a lower bound of the budget: the
# step count comes from training.sft_schedule (min_steps, max_epochs, early stopping on validation loss) unless
# max_steps is given.
SFT_TRAIN_DEFAULTS = TrainConfig(epochs=1.0, lr=3e-3, batch_size=64, save_steps=200, logging_steps=10)
SFT_SCHEDULE_DEFAULTS = SftSchedule()


# ---------------------------------------------------------------- examples


@dataclass(frozen=True)
class SftPairs:
    """(prompt text, positive SID codes) pairs read from a samples file."""

    prompts: list[str]
    codes: list[tuple[int, int, int]]
    num_sessions: int


def sft_pairs(samples: Sequence[Any]) -> SftPairs:
    """Every (prompt, positive) pair of ``training.data.sample_format.Sample`` rows, in file order."""
    prompts: list[str] = []
    codes: list[tuple[int, int, int]] = []
    for s in samples:
        check_prompt_version(s)
        for c in s.positive_codes:
            prompts.append(s.prompt)
            codes.append((int(c[0]), int(c[1]), int(c[2])))
    return SftPairs(prompts, codes, num_sessions=len(samples))


def read_sft_pairs(path: str | Path) -> SftPairs:
    """Every (prompt, positive) pair of a samples Parquet file (``training.data.sample_format.read_samples``)."""
    from training.data.sample_format import read_samples

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"samples file {path} does not exist")
    return sft_pairs(read_samples(path))


def encode_sft_examples(pairs: SftPairs, tokenizer: Any, vocab: SidVocab, max_length: int) -> list[dict[str, Any]]:
    """Token ids of every pair: ``{"input_ids": prompt + 3 SID ids, "target_ids": 3 SID ids + EOS}``.

    Each distinct prompt is tokenized once (:class:`training.prompt_ids.PromptIds`). Raises if a sequence exceeds
    ``max_length`` or a code is out of range.
    """
    prompt_ids = PromptIds(tokenizer, max_length)
    out: list[dict[str, Any]] = []
    for k, (prompt, codes) in enumerate(zip(pairs.prompts, pairs.codes, strict=True)):
        for level, c in enumerate(codes):
            if not 0 <= c < vocab.sizes[level]:
                raise ValueError(f"positive code {c} at level {level} is outside the codebook "
                                 f"[0, {vocab.sizes[level]})")
        target = list(vocab.candidate_ids(codes))
        out.append({"input_ids": prompt_ids(prompt, f"pair {k}") + target[:NUM_LEVELS], LABEL_KEY: target})
    return out


@dataclass(frozen=True)
class SftCollator:
    """Left-pads examples; every batch holds input_ids, attention_mask, position_ids, target_ids [B, 4], num_units."""

    pad_id: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = pad_left([f["input_ids"] for f in features], self.pad_id)
        batch[LABEL_KEY] = torch.tensor([f[LABEL_KEY] for f in features], dtype=torch.long)
        batch[UNITS_KEY] = len(features)
        return batch


def candidate_log_probs(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """[B, 4] log-probs of each row's 3 SID tokens and EOS (the last 4 positions of a left-padded batch).

    The plain, Trainer-free computation of what :class:`SftTrainer` optimises: the reference of
    ``tests/test_sft_train_common.py`` (the hand-written SGD step that accumulation must equal, and padded vs
    unpadded rows); not used in production.
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=CANDIDATE_LEN, use_cache=False)
    return target_log_probs(out.logits, batch[LABEL_KEY])


def sft_loss_sum(token_log_probs: torch.Tensor) -> torch.Tensor:
    """Sum over pairs of the mean NLL of a pair's 4 target tokens. token_log_probs: [B, 4] -> scalar."""
    return -(token_log_probs.mean(dim=-1)).sum()


class SftTrainer(RadgrTrainer):
    """Next-SID cross-entropy; logs the per-level top-1 accuracy of the targets as ``acc/s0..s2, acc/eos``."""

    def compute_loss_sum(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    position_ids=inputs["position_ids"], logits_to_keep=CANDIDATE_LEN, use_cache=False)
        targets = inputs[LABEL_KEY]
        with torch.no_grad():
            hits = (out.logits.argmax(dim=-1) == targets).float().mean(dim=0)
            for k, name in enumerate(("s0", "s1", "s2", "eos")):
                self.record_metric(f"acc/{name}", float(hits[k]))
        return sft_loss_sum(target_log_probs(out.logits, targets))


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class SftConfig:
    """Everything ``radgr train sft`` needs (paths and options); validated on construction."""

    samples_dir: Path
    index_dir: Path
    out_dir: Path
    preset: str = "tiny"
    model_path: Path | None = None
    catalog_path: Path | None = None  # titles for the tokenizer (presets)
    train: TrainConfig = SFT_TRAIN_DEFAULTS
    resume: bool = False
    tokenizer_vocab_size: int = 2048
    limit: int | None = None  # use only the first N pairs (smoke runs)
    schedule: SftSchedule = SFT_SCHEDULE_DEFAULTS

    def __post_init__(self) -> None:
        from training.model import PRESETS

        if self.model_path is None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, given {self.preset!r}")
        if self.tokenizer_vocab_size < 300:
            raise ValueError(f"tokenizer_vocab_size must be >= 300, given {self.tokenizer_vocab_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, given {self.limit}")


def prepare_model_and_tokenizer(cfg: SftConfig, index: Any, prompts: Sequence[str]) -> tuple[Any, Any]:
    """(model, tokenizer) for a run: fresh preset + radgr BPE tokenizer, or a local HF model + SID tokens.

    On ``--resume`` with an existing run, the run's own tokenizer (``RUN_DIR/tokenizer``) is reused so token ids
    match the checkpoint.
    """
    from transformers import AutoTokenizer

    from training.model import build_model, load_model
    from training.tokenizer import add_sid_tokens, build_tokenizer

    sizes = tuple(int(s) for s in index.codebook_sizes)
    tok_dir = cfg.out_dir / "tokenizer"
    if cfg.model_path is not None:
        model = load_model(cfg.model_path)
        tokenizer = AutoTokenizer.from_pretrained(str(cfg.model_path), local_files_only=True)
        add_sid_tokens(tokenizer, model, sizes)
        return model.train(), tokenizer
    if tok_dir.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    else:
        # every rank trains the same (deterministic) BPE in memory; only rank 0 writes it
        titles = _catalog_titles(cfg.catalog_path)
        tokenizer = build_tokenizer([*titles, *prompts], sizes, vocab_size=cfg.tokenizer_vocab_size)
        if int(os.environ.get("RANK", "0")) == 0:
            with publish_directory(tok_dir) as staging:
                tokenizer.save_pretrained(str(staging))
    model = build_model(cfg.preset, len(tokenizer), seed=cfg.train.seed, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    return model.train(), tokenizer


def _catalog_titles(catalog_path: Path | None) -> list[str]:
    """Item titles for the tokenizer (none without a catalog: the prompts alone then train it)."""
    if catalog_path is None:
        logger.info("no --catalog: the tokenizer trains on the prompts only")
        return []
    from sid_index.catalog import read_catalog

    return list(read_catalog(catalog_path).titles)


def _plan(cfg: SftConfig, pairs: int) -> dict[str, Any]:
    """The step budget: ``--max-steps`` when given, else :func:`training.sft_schedule.planned_steps`."""
    if cfg.train.max_steps > 0:
        return {"steps": cfg.train.max_steps, "steps_per_epoch": None, "epoch_steps": None, "cap_steps": None,
                "rule": f"max_steps {cfg.train.max_steps} (given)"}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return planned_steps(pairs, cfg.train.batch_size * cfg.train.grad_accum * world, cfg.train.epochs, cfg.schedule)


def run_sft(cfg: SftConfig) -> Path:
    """Train, then write ``RUN_DIR/final``; returns that path."""
    from sid_index.index import SidIndex
    from training.data.sample_format import read_samples
    from training.model import num_parameters, save_model_dir

    t0 = time.time()
    index = SidIndex.load(cfg.index_dir)
    train_path = cfg.samples_dir / "train.parquet"
    if not train_path.is_file():
        raise ValueError(f"samples file {train_path} does not exist")
    train_rows, val_rows = split_validation(read_samples(train_path), cfg.schedule, cfg.train.seed,
                                           group=lambda s: s.prompt)
    pairs, val_pairs = sft_pairs(train_rows), sft_pairs(val_rows)
    if cfg.limit is not None:
        pairs = SftPairs(pairs.prompts[: cfg.limit], pairs.codes[: cfg.limit], pairs.num_sessions)
    if not pairs.prompts:
        raise ValueError(f"{train_path} holds no (prompt, positive) pairs")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = prepare_model_and_tokenizer(cfg, index, sorted(set(pairs.prompts) | set(val_pairs.prompts)))
    vocab = SidVocab.from_tokenizer(tokenizer, index.codebook_sizes,
                                    vocab_size=model.get_input_embeddings().num_embeddings)
    max_len = model.config.max_position_embeddings
    examples = encode_sft_examples(pairs, tokenizer, vocab, max_length=max_len)
    collator = SftCollator(pad_id=int(tokenizer.pad_token_id))
    plan = _plan(cfg, len(examples))
    train_cfg = replace(cfg.train, max_steps=plan["steps"])
    logger.info("SFT: %d pairs from %d sessions (validation: %d pairs from %d sessions), model %d parameters; "
                "%d steps (%s)", len(examples), pairs.num_sessions, len(val_pairs.prompts), val_pairs.num_sessions,
                num_parameters(model), plan["steps"], plan["rule"])
    val_examples = encode_sft_examples(val_pairs, tokenizer, vocab, max_length=max_len)
    val_batches = [collator(val_examples[i : i + cfg.train.batch_size])
                   for i in range(0, len(val_examples), cfg.train.batch_size)]
    keep_best = cfg.schedule.restore_best and os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("1", "true")
    best_path = cfg.out_dir / BEST_WEIGHTS_FILE
    validation = ValidationCallback(val_batches, lambda m, b: sft_loss_sum(candidate_log_probs(m, b)),
                                    cfg.schedule.eval_interval(plan["steps"]), cfg.schedule,
                                    best_path=best_path if keep_best else None)
    trainer = SftTrainer(
        model=model, args=training_arguments(train_cfg, cfg.out_dir), train_dataset=ListDataset(examples),
        data_collator=collator, callbacks=[*run_callbacks(cfg.out_dir), validation],
    )
    resumed_from = last_checkpoint(cfg.out_dir) if cfg.resume else None
    result = trainer.train_with_resume(cfg.resume)
    final = cfg.out_dir / "final"
    if trainer.is_world_process_zero():
        history = trainer.state.log_history
        status = early_stop_status(history, cfg.schedule.patience, cfg.schedule.min_delta)
        evals = [(int(r["step"]), float(r["eval_loss"])) for r in history if "eval_loss" in r]
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        restored = (load_best_weights(unwrapped, best_path, status["best_step"])
                    if keep_best and status["best_step"] != int(trainer.state.global_step) else None)
        final_val = (status["best"] if restored is not None else evals[-1][1]) if evals else None
        if restored is not None:
            logger.info("final model: the best validation evaluation's weights (step %d, loss %.4f), not step %d's",
                        restored, status["best"], trainer.state.global_step)
        schedule = {**plan, "planned_steps": plan["steps"], "steps": int(trainer.state.global_step),
                    "stopped_early": validation.stopped_early, "eval_every": validation.interval,
                    "best_val_loss": status["best"], "best_step": status["best_step"],
                    "restored_best_step": restored, "last_val_loss": evals[-1][1] if evals else None,
                    "final_val_loss": final_val,
                    "val_sessions": val_pairs.num_sessions, "val_pairs": len(val_examples),
                    "settings": asdict(cfg.schedule)}
        write_schedule_plot(history, schedule, cfg.out_dir / SCHEDULE_PLOT_FILE)
        info = {
            "method": "sft",
            "steps": int(trainer.state.global_step),
            "train_loss": float(result.training_loss),
            "val_loss": schedule["final_val_loss"],
            "schedule": schedule,
            "pairs": len(examples),
            "sessions": pairs.num_sessions,
            "data": {"samples": str(cfg.samples_dir), "index": str(cfg.index_dir)},
            "model": {"preset": None if cfg.model_path else cfg.preset,
                      "base_model": str(cfg.model_path) if cfg.model_path else None,
                      "parameters": num_parameters(model)},
            "codebook_sizes": list(index.codebook_sizes),
            "prompt_version": PROMPT_VERSION,
            "config": {**asdict(train_cfg), "tokenizer_vocab_size": cfg.tokenizer_vocab_size, "limit": cfg.limit},
            "resumed_from": resumed_from,
            "wall_seconds": time.time() - t0,
        }
        save_model_dir(unwrapped, tokenizer, final, info)
    trainer.accelerator.wait_for_everyone()
    return final
