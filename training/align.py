"""Preference alignment from an SFT checkpoint: DPO, SimPO, ORPO (pairwise) and RAD-DPO (packed).

Command: ``radgr train align --method dpo|simpo|orpo|rad-dpo [--no-tlgd --no-rdrw --no-ml-sft]
--sft RUN_DIR/final --samples DIR --out RUN_DIR [--resume --max-steps N --batch-size B --lr LR --seed S
--save-steps K --rdrw-window M --rdrw-layer L]``

Contract
--------
- Data: ``samples/train.parquet`` (``training.data.sample_format.read_samples``). Sessions with at least one
  positive and one negative are used; prompts are encoded (``training.prompt_ids.PromptIds``) by the SFT run's
  tokenizer; candidates are ``SidVocab.candidate_ids(codes)`` (3 SID tokens + EOS).
- One **unit** of the loss (the engine's accumulation-exact average, ``training.trainer``) is a *pair* for the
  baselines and a *session* for RAD-DPO. ``--batch-size`` counts sessions for every method; a baseline's batch is
  those sessions' pairwise decomposition (``training.align_collators.PairCollator``: every (y⁺, y⁻), each side
  encoded separately as its own row, as the paper's baselines do), so all methods see the same sessions per step.
- DPO loads a second, frozen copy of the SFT checkpoint as the reference (no gradient, eval mode). SimPO, ORPO and
  RAD-DPO are reference-free.
- RAD-DPO packs each session into one row (``training.packing``), computes MLGC (+ TLGD, + RDRW unless switched
  off) with ``training.losses.rad_dpo_loss``; RDRW weights come from ``training.rdrw.RdrwState`` whose window and
  quartiles are saved with every checkpoint (the engine's extra state) and restored on ``--resume``.
- Logged per step (``RUN_DIR/train_log.json``): the loss and its terms, reward margins, the share of pairs whose
  negative shares the first / first two SID tokens with the positive, RDRW quartiles and mean weight, and with
  simulated truth the mean weight (and similarity) of truly relevant negatives (pseudo-negatives) vs irrelevant ones.
- **RDRW as a detector** (with simulated truth, RDRW on): every used negative with a known ``negative_relevant``
  that is weighed after warm-up (the state was warm before its batch) gives a pair (1 − w, relevant). Their ROC AUC
  (``training.detector_auc``) over each logging window is logged as ``rdrw/auc`` (with ``rdrw/auc_pairs``; absent
  while warming up or when the window lacks a class), drawn per logging step in ``RUN_DIR/rdrw_auc.png``; over
  every post-warm-up pair of the run it is ``rdrw_auc`` in ``radgr_train.json`` (with counts and each class's mean
  weight), kept by ``training.rdrw_detector.RdrwDetector``. Memory is bounded (``AucAccumulator``'s cap); both
  accumulators travel in checkpoints. Under data parallel they hold this rank's pairs (rank 0's are logged, like
  the other per-step metrics). Observation only: the weights and the loss are computed exactly as without it.
- Output: ``RUN_DIR/final/`` = HF model dir like SFT's (tokenizer copied) with ``radgr_train.json`` holding the
  method, the ablation switches, every loss config and the SFT checkpoint's own provenance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from decoding.prompt import PROMPT_VERSION
from decoding.sid_vocab import SidVocab
from training.align_collators import PackedSessionCollator, PairCollator, packed_batch_of
from training.batching import ListDataset
from training.losses import (
    DpoConfig,
    OrpoConfig,
    RadDpoConfig,
    SimpoConfig,
    dpo_loss,
    orpo_loss,
    rad_dpo_loss,
    sequence_logps,
    simpo_loss,
)
from training.packing import packed_forward
from training.prompt_ids import PromptIds, check_prompt_version
from training.rdrw import RdrwConfig, RdrwState, pair_similarity
from training.rdrw_detector import RdrwAucPlotCallback, RdrwDetector
from training.train_config import TrainConfig, training_arguments
from training.trainer import RadgrTrainer, last_checkpoint, run_callbacks

logger = logging.getLogger(__name__)

METHODS = ("dpo", "simpo", "orpo", "rad-dpo")


def default_align_train_config() -> TrainConfig:
    """Alignment's optimisation defaults: one epoch, a 10× smaller learning rate than SFT's preset default."""
    return TrainConfig(epochs=1.0, lr=1e-4, batch_size=8, save_steps=200, logging_steps=10, warmup_ratio=0.05)


@dataclass(frozen=True)
class AlignConfig:
    """Everything ``radgr train align`` needs; validated on construction (messages name the field)."""

    method: str
    sft_dir: Path
    samples_dir: Path
    out_dir: Path
    train: TrainConfig = field(default_factory=default_align_train_config)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    simpo: SimpoConfig = field(default_factory=SimpoConfig)
    orpo: OrpoConfig = field(default_factory=OrpoConfig)
    rad: RadDpoConfig = field(default_factory=RadDpoConfig)
    rdrw: RdrwConfig = field(default_factory=RdrwConfig)
    resume: bool = False
    limit: int | None = None  # use only the first N sessions (smoke runs)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, given {self.method!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, given {self.limit}")
        if self.method != "rad-dpo" and (not self.rad.tlgd or not self.rad.rdrw or not self.rad.ml_sft):
            raise ValueError(f"--no-tlgd/--no-rdrw/--no-ml-sft are RAD-DPO ablations; method is {self.method!r}")

    @property
    def variant(self) -> str:
        """A readable name: the method, plus the ablation for RAD-DPO (``rad-dpo-no-tlgd`` ...)."""
        if self.method != "rad-dpo":
            return self.method
        off = [name for name, on in (("tlgd", self.rad.tlgd), ("rdrw", self.rad.rdrw), ("ml-sft", self.rad.ml_sft))
               if not on]
        return "rad-dpo" + "".join(f"-no-{o}" for o in off)


# ---------------------------------------------------------------------------------------------- examples
def encode_sessions(samples: Any, tokenizer: Any, vocab: SidVocab, max_length: int) -> list[dict[str, Any]]:
    """One example dict per usable sample (≥ 1 positive and ≥ 1 negative); each distinct prompt tokenized once.

    ``input_ids`` holds the prompt ids (the key Trainer's length-grouped sampler reads).
    """
    prompt_ids = PromptIds(tokenizer, max_length)
    out: list[dict[str, Any]] = []
    for row, s in enumerate(samples):
        check_prompt_version(s)
        if not s.positive_codes or not s.negative_codes:
            continue
        for codes in (*s.positive_codes, *s.negative_codes):
            for level, c in enumerate(codes):
                if not 0 <= int(c) < vocab.sizes[level]:
                    raise ValueError(f"sample {row}: code {c} at level {level} is outside [0, {vocab.sizes[level]})")
        ids = prompt_ids(s.prompt, f"sample {row}")
        relevant = s.negative_relevant
        out.append({
            "input_ids": ids,
            "pos": [list(vocab.candidate_ids(c)) for c in s.positive_codes],
            "pos_codes": [list(c) for c in s.positive_codes],
            "top_index": int(s.top_index),
            "neg": [list(vocab.candidate_ids(c)) for c in s.negative_codes],
            "neg_codes": [list(c) for c in s.negative_codes],
            "neg_relevant": [-1 if relevant is None else int(bool(r)) for r in
                             (relevant if relevant is not None else [None] * len(s.negative_codes))],
        })
    return out


# ---------------------------------------------------------------------------------------------- trainers
class AlignTrainer(RadgrTrainer):
    """One trainer for the four methods; the loss is a ``match`` on ``cfg.method``."""

    def __init__(self, *args: Any, align_cfg: AlignConfig, ref_model: torch.nn.Module | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.align_cfg = align_cfg
        self.ref_model = ref_model
        if self.ref_model is not None:
            self.ref_model.to(self.args.device)
        self.rdrw = RdrwState(align_cfg.rdrw) if align_cfg.method == "rad-dpo" and align_cfg.rad.rdrw else None
        # RDRW as a pseudo-negative detector: (1 − w, relevant) of post-warm-up pairs, this logging window / the run
        self.rdrw_detector = RdrwDetector()

    # -- RDRW state (and the detector's pairs) travel with checkpoints
    def checkpoint_extra_state(self) -> dict[str, Any] | None:
        if self.rdrw is None:
            return None
        return {"rdrw": self.rdrw.state_dict(),
                "rdrw_auc": self.rdrw_detector.state_dict()}

    def load_checkpoint_extra_state(self, state: dict[str, Any]) -> None:
        if self.rdrw is None or "rdrw" not in state:
            raise ValueError("checkpoint extra state has no 'rdrw' entry, or this run does not use RDRW")
        restored = RdrwState.from_state_dict(state["rdrw"])
        if restored.cfg != self.align_cfg.rdrw:
            raise ValueError(f"checkpoint RDRW config {restored.cfg} differs from this run's {self.align_cfg.rdrw}")
        self.rdrw = restored
        if "rdrw_auc" in state:
            self.rdrw_detector = RdrwDetector.from_state_dict(state["rdrw_auc"])
        else:  # a checkpoint from before the detector's pairs were saved: the weights resume exactly regardless
            logger.warning("checkpoint has no RDRW detector pairs: rdrw_auc counts only pairs after the resume")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the logging window's RDRW detector AUC to a training log line, then start a new window."""
        if "loss" in logs:
            logs.update(self.rdrw_detector.take_window_log())
        super().log(logs, start_time)

    def rdrw_auc_summary(self) -> dict[str, Any] | None:
        """The run's post-warm-up detector statistics for ``radgr_train.json`` (None without RDRW)."""
        return None if self.rdrw is None else self.rdrw_detector.summary()

    def _record(self, values: dict[str, torch.Tensor]) -> None:
        """Record scalar-tensor metrics with one device-to-host copy (no sync per metric); NaN = not observed."""
        if not values:
            return
        numbers = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
        for name, x in zip(values, numbers, strict=True):
            if x == x:  # NaN: the metric had nothing to average this step
                self.record_metric(name, x)

    @staticmethod
    def _prefix_share(prefix_len: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        n = valid.sum().clamp(min=1)
        return {"pairs/shared_first": ((prefix_len >= 1) & valid).sum() / n,
                "pairs/shared_two": ((prefix_len >= 2) & valid).sum() / n}

    @staticmethod
    def _margins(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
        margin = chosen - rejected
        return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(), "rewards/margin": margin.mean(),
                "rewards/accuracy": (margin > 0).float().mean()}

    def compute_loss_sum(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        match self.align_cfg.method:
            case "rad-dpo":
                return self._rad_dpo(model, inputs)
            case "dpo" | "simpo" | "orpo":
                return self._pairwise(model, inputs)
        raise ValueError(f"unknown method {self.align_cfg.method!r}")

    def _pairwise(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        cfg = self.align_cfg
        chosen = packed_forward(model, packed_batch_of(inputs, "c_")).token_logps[:, 0]  # [P, 4]
        rejected = packed_forward(model, packed_batch_of(inputs, "r_")).token_logps[:, 0]
        metrics = self._prefix_share(inputs["prefix_len"], torch.ones_like(inputs["prefix_len"], dtype=torch.bool))
        match cfg.method:
            case "dpo":
                assert self.ref_model is not None
                with torch.no_grad():
                    ref_c = packed_forward(self.ref_model, packed_batch_of(inputs, "c_")).token_logps[:, 0]
                    ref_r = packed_forward(self.ref_model, packed_batch_of(inputs, "r_")).token_logps[:, 0]
                out = dpo_loss(sequence_logps(chosen), sequence_logps(rejected), sequence_logps(ref_c),
                               sequence_logps(ref_r), cfg.dpo)
            case "simpo":
                out = simpo_loss(chosen, rejected, cfg.simpo)
            case _:
                out = orpo_loss(chosen, rejected, cfg.orpo)
                metrics.update({"loss/nll": out.nll.mean(), "loss/odds_ratio": out.odds_ratio_loss.mean()})
        self._record({**metrics, **self._margins(out.chosen_reward, out.rejected_reward)})
        return out.loss.sum()

    def _rad_dpo(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        cfg = self.align_cfg
        scores = packed_forward(model, packed_batch_of(inputs), hidden_layer=cfg.rdrw.hidden_layer)
        bsz = scores.token_logps.shape[0]
        rows = torch.arange(bsz, device=scores.token_logps.device)[:, None]
        pos_tok = scores.token_logps[rows, inputs["pos_idx"]]  # [B, P, 4]
        neg_tok = scores.token_logps[rows, inputs["neg_idx"]]  # [B, N, 4]
        neg_valid = inputs["neg_valid"]
        prefix = inputs["prefix_len"]
        top_slot = inputs["pos_idx"].gather(1, inputs["top_index"][:, None])[:, 0]
        sims = pair_similarity(scores.eos_hidden[rows[:, 0], top_slot], scores.eos_hidden[rows, inputs["neg_idx"]])
        used = neg_valid & (prefix < 3) if cfg.rad.skip_same_sid_negatives else neg_valid
        weights = torch.ones_like(sims)
        warm = self.rdrw is not None and self.rdrw.warm  # before this batch: are its weights the quartile rule's?
        if self.rdrw is not None:
            weights[used] = self.rdrw.weigh(sims[used]).to(weights.device)
        terms = rad_dpo_loss(pos_tok, inputs["pos_valid"], inputs["top_index"], neg_tok, neg_valid, prefix, weights,
                             cfg.rad)
        u = terms.neg_used
        metrics = {"loss/sft": terms.sft.mean(), "loss/pref": terms.pref.mean(),
                   **self._prefix_share(prefix, neg_valid),
                   **self._margins(terms.top_reward[:, None].expand_as(u)[u], terms.neg_rewards[u]),
                   "rdrw/similarity": sims[u].mean()}
        if self.rdrw is not None:
            self.record_metric("rdrw/warm", float(self.rdrw.warm))
            metrics["rdrw/mean_weight"] = weights[u].mean()
            if self.rdrw.quartiles is not None:
                for name, q in zip(("q1", "q2", "q3"), self.rdrw.quartiles, strict=True):
                    self.record_metric(f"rdrw/{name}", q)
        rel = inputs["neg_relevant"]
        for name, which in (("pseudo_neg", (rel == 1) & u), ("irrelevant_neg", (rel == 0) & u)):
            metrics[f"rdrw/weight_{name}"] = weights[which].mean()  # NaN (not recorded) when there is none
            metrics[f"rdrw/similarity_{name}"] = sims[which].mean()
        if warm:
            known = u & (rel >= 0)
            if bool(known.any()):
                score, relevant = (1.0 - weights[known]).cpu(), (rel[known] == 1).cpu()
                self.rdrw_detector.add(score, relevant)
        self._record(metrics)
        return terms.per_session.sum()


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class AlignRun:
    """What :func:`prepare_align` built: the trainer (model, reference, collator and dataset inside) and provenance."""

    trainer: AlignTrainer
    tokenizer: Any
    examples: list[dict[str, Any]]
    sft_info: dict[str, Any]
    codebook_sizes: list[int]
    started: float


def prepare_align(cfg: AlignConfig, callbacks: Sequence[TrainerCallback] = ()) -> AlignRun:
    """Load the SFT checkpoint and the samples, build the trainer; ``callbacks`` are added to the run's own."""
    from transformers import AutoTokenizer

    from training.data.sample_format import read_samples
    from training.model import check_model_dir, load_model, num_parameters, read_train_info

    t0 = time.time()
    check_model_dir(cfg.sft_dir)  # a truncated or corrupt file is named here, before anything reads it
    sft_info = read_train_info(cfg.sft_dir)
    sizes = sft_info.get("codebook_sizes")
    if not sizes:
        raise ValueError(f"{cfg.sft_dir}/radgr_train.json lacks codebook_sizes: is it an SFT checkpoint?")
    train_path = cfg.samples_dir / "train.parquet"
    if not train_path.is_file():
        raise ValueError(f"samples file {train_path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(cfg.sft_dir), local_files_only=True)
    model = load_model(cfg.sft_dir).train()
    layers = int(model.config.num_hidden_layers)
    if not -(layers + 1) <= cfg.rdrw.hidden_layer <= layers:
        raise ValueError(f"RdrwConfig.hidden_layer (--rdrw-layer) must be in [{-(layers + 1)}, {layers}] for this "
                         f"{layers}-layer model (0 = embeddings, -1 = last), given {cfg.rdrw.hidden_layer}")
    vocab = SidVocab.from_tokenizer(tokenizer, sizes, vocab_size=model.get_input_embeddings().num_embeddings)
    samples = read_samples(train_path)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    examples = encode_sessions(samples, tokenizer, vocab, max_length=model.config.max_position_embeddings)
    if not examples:
        raise ValueError(f"{train_path} holds no session with a positive and a negative")
    ref_model = None
    if cfg.method == "dpo":
        ref_model = load_model(cfg.sft_dir).eval()
        ref_model.requires_grad_(False)
    pad_id = int(tokenizer.pad_token_id)
    collator = PackedSessionCollator(pad_id) if cfg.method == "rad-dpo" else PairCollator(pad_id)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("align %s: %d sessions, model %d parameters", cfg.variant, len(examples), num_parameters(model))
    trainer = AlignTrainer(model=model, args=training_arguments(cfg.train, cfg.out_dir),
                           train_dataset=ListDataset(examples), data_collator=collator,
                           callbacks=[*run_callbacks(cfg.out_dir), *callbacks], align_cfg=cfg, ref_model=ref_model)
    if trainer.rdrw is not None:
        trainer.add_callback(RdrwAucPlotCallback(cfg.out_dir, trainer))
    return AlignRun(trainer, tokenizer, examples, sft_info, list(sizes), t0)


def run_align(cfg: AlignConfig, callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Train from the SFT checkpoint, then write ``RUN_DIR/final``; returns that path."""
    from training.model import save_model_dir

    run = prepare_align(cfg, callbacks)
    trainer = run.trainer
    resumed_from = last_checkpoint(cfg.out_dir) if cfg.resume else None
    result = trainer.train_with_resume(cfg.resume)
    final = cfg.out_dir / "final"
    if trainer.is_world_process_zero():
        info = {
            "method": cfg.method,
            "variant": cfg.variant,
            "ablations": {"tlgd": cfg.rad.tlgd, "rdrw": cfg.rad.rdrw, "ml_sft": cfg.rad.ml_sft},
            "steps": int(trainer.state.global_step),
            "train_loss": float(result.training_loss),
            "sessions": len(run.examples),
            "data": {"samples": str(cfg.samples_dir)},
            "loss_config": _loss_config(cfg),
            "config": asdict(cfg.train),
            "codebook_sizes": run.codebook_sizes,
            "prompt_version": PROMPT_VERSION,
            "sft": {"dir": str(cfg.sft_dir), "info": run.sft_info},
            "model": run.sft_info.get("model", {}),
            "resumed_from": resumed_from,
            "rdrw_final": None if trainer.rdrw is None else {"seen": trainer.rdrw.seen,
                                                              "quartiles": trainer.rdrw.quartiles},
            "rdrw_auc": trainer.rdrw_auc_summary(),
            "wall_seconds": time.time() - run.started,
        }
        save_model_dir(trainer.accelerator.unwrap_model(trainer.model), run.tokenizer, final, info)
    trainer.accelerator.wait_for_everyone()
    return final


def _loss_config(cfg: AlignConfig) -> dict[str, Any]:
    match cfg.method:
        case "dpo":
            return asdict(cfg.dpo)
        case "simpo":
            return asdict(cfg.simpo)
        case "orpo":
            return asdict(cfg.orpo)
    return {**asdict(cfg.rad), "rdrw": asdict(cfg.rdrw)}
