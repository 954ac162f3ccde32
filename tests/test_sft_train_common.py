"""The shared training engine: accumulation-exact losses, batches, checkpoints with extra state, resume, logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from decoding.sid_vocab import SidVocab
from training.batching import ListDataset, pad_left
from training.sft import SftCollator, SftTrainer, candidate_log_probs, sft_loss_sum
from training.train_config import TrainConfig, training_arguments
from training.trainer import EXTRA_STATE_FILE, LOSS_PLOT_FILE, TRAIN_LOG_FILE, last_checkpoint, run_callbacks

SIZES = (4, 4, 4)


def _examples(n: int, tok: Any, seed: int = 0) -> list[dict[str, Any]]:
    vocab = SidVocab.from_tokenizer(tok, SIZES)
    g = torch.Generator().manual_seed(seed)
    words = ["a", "b", "c", "drill", "tape"]
    rows = []
    for _ in range(n):
        k = int(torch.randint(1, 6, (1,), generator=g))
        prompt = "query: " + " ".join(words[int(i)] for i in torch.randint(0, 5, (k,), generator=g)) + " item:"
        ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
        codes = [int(c) for c in torch.randint(0, 4, (3,), generator=g)]
        target = list(vocab.candidate_ids(codes))
        rows.append({"input_ids": ids + target[:3], "target_ids": target})
    return rows


def _setup(n: int = 8, seed: int = 0) -> tuple[Any, Any, list[dict[str, Any]]]:
    tok = make_tiny_tokenizer(SIZES, words=["a", "b", "c", "drill", "tape"])
    model = make_tiny_model(len(tok), seed=seed).train()
    return tok, model, _examples(n, tok)


def _train(tmp: Path, tok: Any, model: Any, rows: list[dict[str, Any]], cfg: TrainConfig, *, resume: bool = False,
           callbacks: list[TrainerCallback] | None = None) -> SftTrainer:
    trainer = SftTrainer(model=model, args=training_arguments(cfg, tmp, disable_tqdm=True),
                         train_dataset=ListDataset(rows), data_collator=SftCollator(int(tok.pad_token_id)),
                         callbacks=[*run_callbacks(tmp), *(callbacks or [])])
    trainer.train_with_resume(resume)
    return trainer


def _manual_sgd_step(model: Any, tok: Any, rows: list[dict[str, Any]], lr: float) -> dict[str, torch.Tensor]:
    """p - lr * grad(mean over all rows of the per-pair loss): the obviously-correct reference."""
    model.zero_grad()
    batch = SftCollator(int(tok.pad_token_id))(rows)
    loss = sft_loss_sum(candidate_log_probs(model, batch)) / len(rows)
    loss.backward()
    return {n: (p - lr * p.grad).detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(("n_rows", "micro", "accum"), [(8, 4, 2), (7, 4, 2), (6, 2, 3)])
def test_grad_accumulation_equals_full_batch(tmp_path: Path, n_rows: int, micro: int, accum: int) -> None:
    """One SGD step with micro-batches x accumulation == one step on the full batch == manual reference.

    (7, 4, 2) has unequal micro-batches (4 + 3): the per-unit normalisation over the accumulated batch must
    still give the exact full-batch mean (a per-micro-batch mean / accum would weight them 1/8 vs 1/6).
    """
    lr = 0.5
    tok, model_a, rows = _setup(n_rows)
    expected = _manual_sgd_step(make_tiny_model(len(tok), seed=0).train(), tok, rows, lr)
    base: dict[str, Any] = dict(max_steps=1, lr=lr, warmup_ratio=0.0, lr_scheduler="constant", max_grad_norm=1e9,
                                optim="sgd", save_steps=100, logging_steps=1)
    _train(tmp_path / "a", tok, model_a, rows, TrainConfig(batch_size=micro, grad_accum=accum, **base))
    model_b = make_tiny_model(len(tok), seed=0).train()
    _train(tmp_path / "b", tok, model_b, rows, TrainConfig(batch_size=n_rows, grad_accum=1, **base))
    initial = dict(make_tiny_model(len(tok), seed=0).named_parameters())
    for name, p in model_a.named_parameters():
        assert not torch.equal(p, initial[name]), f"{name} did not move"
        torch.testing.assert_close(p, dict(model_b.named_parameters())[name], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(p, expected[name], atol=1e-6, rtol=1e-5)


def test_pad_left_by_hand_and_padded_rows_equal_unpadded() -> None:
    """[[5, 6, 7], [8]] with pad 0 -> ids [[5, 6, 7], [0, 0, 8]], mask [[1, 1, 1], [0, 0, 1]], positions
    [[0, 1, 2], [0, 0, 0]]; and a padded batch gives each row the candidate log-probs it has alone."""
    small = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert small["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert small["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert small["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    _tok, model, rows = _setup(5)
    model.eval()
    b2 = pad_left([r["input_ids"] for r in rows], pad_id=0)
    targets = torch.tensor([r["target_ids"] for r in rows])
    with torch.no_grad():
        lp2 = candidate_log_probs(model, {**b2, "target_ids": targets})
    # each row alone (no padding) gives the same numbers as the padded batch
    for i, r in enumerate(rows):
        one = pad_left([r["input_ids"]], pad_id=0)
        with torch.no_grad():
            lp1 = candidate_log_probs(model, {**one, "target_ids": targets[i : i + 1]})
        torch.testing.assert_close(lp1[0], lp2[i], atol=1e-5, rtol=1e-5)


def test_pad_left_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one sequence"):
        pad_left([], 0)
    with pytest.raises(ValueError, match="length 0"):
        pad_left([[1], []], 0)


def test_train_config_validation_names_field() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="lr_scheduler"):
        TrainConfig(lr_scheduler="weird")


class _Stop(TrainerCallback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl:
        if state.global_step >= self.at:
            control.should_training_stop = True
        return control


class _CountingTrainer(SftTrainer):
    """Extra state = how many micro-batches this trainer has seen (must survive a resume)."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.seen = 0
        self.loaded: dict[str, Any] | None = None

    def compute_loss_sum(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        self.seen += 1
        return super().compute_loss_sum(model, inputs)

    def checkpoint_extra_state(self) -> dict[str, Any]:
        return {"seen": self.seen, "tensor": torch.arange(3.0) * self.seen}

    def load_checkpoint_extra_state(self, state: dict[str, Any]) -> None:
        self.loaded = state
        self.seen = int(state["seen"])


def _counting_train(run: Path, tok: Any, model: Any, rows: list[dict[str, Any]], cfg: TrainConfig, resume: bool,
                    stop_at: int | None) -> _CountingTrainer:
    trainer = _CountingTrainer(model=model, args=training_arguments(cfg, run, disable_tqdm=True),
                               train_dataset=ListDataset(rows), data_collator=SftCollator(int(tok.pad_token_id)),
                               callbacks=[*run_callbacks(run), *([_Stop(stop_at)] if stop_at else [])])
    trainer.train_with_resume(resume)
    return trainer


def test_resume_continues_to_the_same_result(tmp_path: Path) -> None:
    """Interrupted at step 4 (checkpoint) then resumed to step 8 == uninterrupted 8 steps; extra state restored."""
    tok, _, rows = _setup(24)
    cfg = TrainConfig(max_steps=8, batch_size=6, grad_accum=1, lr=3e-3, save_steps=4, logging_steps=1, seed=3)
    full = _counting_train(tmp_path / "full", tok, make_tiny_model(len(tok), seed=1).train(), rows, cfg, False, None)

    run = tmp_path / "interrupted"
    first = _counting_train(run, tok, make_tiny_model(len(tok), seed=1).train(), rows, cfg, False, stop_at=4)
    assert first.state.global_step == 4
    ckpt = last_checkpoint(run)
    assert ckpt is not None and ckpt.endswith("checkpoint-4")
    assert (Path(ckpt) / EXTRA_STATE_FILE).is_file()

    # a fresh model (different init) must be overwritten by the checkpoint's weights
    second = _counting_train(run, tok, make_tiny_model(len(tok), seed=99).train(), rows, cfg, True, None)
    assert second.loaded is not None and second.loaded["seen"] == 4
    torch.testing.assert_close(second.loaded["tensor"], torch.arange(3.0) * 4)
    assert second.state.global_step == 8
    assert second.seen == 8
    assert full.model is not None and second.model is not None
    for (name, p), q in zip(full.model.named_parameters(), second.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=f"{name} differs after resume")

    log = json.loads((run / TRAIN_LOG_FILE).read_text())
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == sorted(steps) and steps[-1] == 8 and 1 in steps and 5 in steps
    assert all("acc/s0" in r for r in log if "loss" in r)
    assert (run / LOSS_PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    tok, model, rows = _setup(8)
    cfg = TrainConfig(max_steps=2, batch_size=4, save_steps=100, logging_steps=1)
    trainer = _train(tmp_path, tok, model, rows, cfg, resume=True)
    assert trainer.state.global_step == 2


def test_missing_num_units_is_a_clear_error(tmp_path: Path) -> None:
    tok, model, rows = _setup(4)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        b = SftCollator(int(tok.pad_token_id))(features)
        del b["num_units"]
        return b

    trainer = SftTrainer(model=model, args=training_arguments(TrainConfig(max_steps=1, batch_size=4), tmp_path,
                                                              disable_tqdm=True),
                         train_dataset=ListDataset(rows), data_collator=collate)
    with pytest.raises(ValueError, match="num_units"):
        trainer.train()
