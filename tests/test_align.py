"""radgr train align: every method trains from a tiny SFT checkpoint on the shared engine, logs its metrics,
writes a model dir with provenance; RDRW state travels with checkpoints and --resume continues exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from decoding.prompt import PROMPT_VERSION
from training.align import AlignConfig, run_align
from training.data.sample_format import Sample
from training.losses import RadDpoConfig
from training.rdrw import RdrwConfig
from training.train_config import TrainConfig

SIZES = (4, 4, 4)
SftRun = tuple[Path, Path]  # the fixture: the SFT model dir, the samples dir


def _make_sample(i: int, rng: random.Random) -> Sample:
    def codes() -> tuple[int, int, int]:
        return (rng.randrange(4), rng.randrange(4), rng.randrange(4))

    npos = rng.randint(1, 3)
    pos = tuple(codes() for _ in range(npos))
    top = pos[0]
    neg = ((top[0], top[1], (top[2] + 1) % 4), (top[0], (top[1] + 1) % 4, 0), ((top[0] + 1) % 4, 0, 0))
    words = " ".join(rng.choice(["a", "b", "c", "drill", "tape"]) for _ in range(rng.randint(1, 4)))
    return Sample(
        session_id=f"s{i}", day=1, split="train", prompt=f"query: {words} item:", prompt_version=PROMPT_VERSION,
        positive_items=tuple(f"p{i}_{k}" for k in range(npos)), positive_codes=pos, top_index=0,
        negative_items=tuple(f"n{i}_{k}" for k in range(3)), negative_codes=neg,
        negative_relevant=(i % 2 == 0, False, False), relevant_items=(), relevant_grades=(),
    )


@pytest.fixture
def sft_checkpoint(tmp_path: Path, tiny_lm_factory: Any) -> SftRun:
    """A tiny 'SFT' model dir (random weights, radgr_train.json with codebook sizes) and 24 training samples."""
    from training.data.sample_format import samples_to_batch
    from training.model import save_model_dir

    model, tok = tiny_lm_factory(SIZES, seed=3)
    sft = save_model_dir(model, tok, tmp_path / "sft" / "final",
                         {"method": "sft", "codebook_sizes": list(SIZES), "model": {"preset": "test"}})
    rng = random.Random(0)
    samples_dir = tmp_path / "samples"
    samples_dir.mkdir()
    batch = samples_to_batch([_make_sample(i, rng) for i in range(24)])
    pq.write_table(pa.Table.from_batches([batch]), samples_dir / "train.parquet")
    return sft, samples_dir


def _cfg(method: str, sft: Path, samples: Path, out: Path, *, max_steps: int = 3, save_steps: int = 100,
         rad: RadDpoConfig | None = None, resume: bool = False, scheduler: str = "cosine") -> AlignConfig:
    return AlignConfig(method=method, sft_dir=sft, samples_dir=samples, out_dir=out,
                       train=TrainConfig(max_steps=max_steps, batch_size=4, lr=1e-3, save_steps=save_steps,
                                         logging_steps=1, warmup_ratio=0.0, seed=0, lr_scheduler=scheduler),
                       rad=rad or RadDpoConfig(), rdrw=RdrwConfig(window=16), resume=resume)


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("method", ["dpo", "simpo", "orpo", "rad-dpo"])
def test_each_method_trains_and_writes_final(method: str, sft_checkpoint: SftRun, tmp_path: Path) -> None:
    sft, samples = sft_checkpoint
    final = run_align(_cfg(method, sft, samples, tmp_path / method))
    before, after = _state(sft), _state(final)
    assert any(not torch.equal(before[k], after[k]) for k in before), "parameters did not change"
    info = json.loads((final / "radgr_train.json").read_text())
    assert info["method"] == method and info["steps"] == 3 and info["sft"]["dir"] == str(sft)
    assert info["sft"]["info"]["method"] == "sft" and info["codebook_sizes"] == list(SIZES)
    assert (final / "tokenizer.json").is_file() and (final / "config.json").is_file()
    log = json.loads((tmp_path / method / "train_log.json").read_text())
    keys = set().union(*(set(r) for r in log))
    assert {"loss", "rewards/margin", "pairs/shared_first", "pairs/shared_two"} <= keys
    if method == "rad-dpo":
        assert {"loss/sft", "loss/pref", "rdrw/mean_weight", "rdrw/q2", "rdrw/weight_pseudo_neg",
                "rdrw/weight_irrelevant_neg"} <= keys
        # every negative shares a prefix with y* by construction (2, 1, 0 tokens): 2/3 share the first token
        first = [r["pairs/shared_first"] for r in log if "pairs/shared_first" in r]
        assert first[0] == pytest.approx(2 / 3)
    if method == "orpo":
        assert {"loss/nll", "loss/odds_ratio"} <= keys
    assert (tmp_path / method / "loss.png").is_file()


def test_rdrw_warms_up_then_weighs(sft_checkpoint: SftRun, tmp_path: Path) -> None:
    """Window 16 pairs, 12 pairs per step (4 sessions × 3): steps 1–2 weigh 1 (warm-up), step 3 uses quartiles."""
    sft, samples = sft_checkpoint
    run_align(_cfg("rad-dpo", sft, samples, tmp_path / "r"))
    log = [r for r in json.loads((tmp_path / "r" / "train_log.json").read_text()) if "rdrw/mean_weight" in r]
    assert [r["rdrw/mean_weight"] for r in log[:2]] == [1.0, 1.0]
    assert log[2]["rdrw/mean_weight"] < 1.0 and log[2]["rdrw/warm"] == 1.0
    info = json.loads((tmp_path / "r" / "final" / "radgr_train.json").read_text())
    assert info["rdrw_final"]["seen"] == 36


def test_rdrw_detector_auc_logged_after_warm_up_and_over_the_run(sft_checkpoint: SftRun, tmp_path: Path) -> None:
    """Window 16, 12 pairs per step: steps 1–2 warm up (no rdrw/auc), steps 3–6 weigh 4 × 12 = 48 pairs, every one
    with truth (sample i's first negative is relevant for even i). Each step is a logging window, so a logged
    rdrw/auc is the AUC of that step's 12 pairs, in [0, 1]; the run's AUC covers all 48 and is drawn in the PNG."""
    sft, samples = sft_checkpoint
    run_align(_cfg("rad-dpo", sft, samples, tmp_path / "r", max_steps=6))
    log = [r for r in json.loads((tmp_path / "r" / "train_log.json").read_text()) if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert not any("rdrw/auc" in r for r in log[:2])
    aucs = [r["rdrw/auc"] for r in log[2:] if "rdrw/auc" in r]
    assert aucs, "no rdrw/auc logged after warm-up"
    assert all(0.0 <= a <= 1.0 for a in aucs)
    assert all(r["rdrw/auc_pairs"] == 12 for r in log[2:] if "rdrw/auc" in r)
    info = json.loads((tmp_path / "r" / "final" / "radgr_train.json").read_text())
    whole = info["rdrw_auc"]
    assert whole["pairs"] == 48 and whole["kept"] == 48
    assert whole["relevant"] + whole["irrelevant"] == 48 and 0 < whole["relevant"] < 48
    assert 0.0 <= whole["auc"] <= 1.0
    assert 0.5 < whole["mean_weight_relevant"] < 1.0 and 0.5 < whole["mean_weight_irrelevant"] < 1.0
    assert (tmp_path / "r" / "rdrw_auc.png").is_file()
    # without RDRW there is no detector: nothing logged, None in the info, no plot
    run_align(_cfg("rad-dpo", sft, samples, tmp_path / "n", max_steps=3, rad=RadDpoConfig(rdrw=False)))
    log = json.loads((tmp_path / "n" / "train_log.json").read_text())
    assert not any("rdrw/auc" in r for r in log)
    assert json.loads((tmp_path / "n" / "final" / "radgr_train.json").read_text())["rdrw_auc"] is None
    assert not (tmp_path / "n" / "rdrw_auc.png").exists()


def test_resume_restores_rdrw_state_and_matches_uninterrupted(sft_checkpoint: SftRun, tmp_path: Path) -> None:
    """4 steps straight vs 2 steps (checkpoint at 2, with RDRW state), then --resume to 4: same RDRW window
    count and quartiles, same final parameters (float tolerance). A constant learning rate, so the 2-step run's
    schedule is the 4-step run's."""
    sft, samples = sft_checkpoint
    straight = run_align(_cfg("rad-dpo", sft, samples, tmp_path / "straight", max_steps=4, save_steps=2,
                                    scheduler="constant"))
    part = tmp_path / "part"
    run_align(_cfg("rad-dpo", sft, samples, part, max_steps=2, save_steps=2, scheduler="constant"))
    ckpt = part / "checkpoints" / "checkpoint-2" / "radgr_extra_state.pt"
    saved = torch.load(ckpt, weights_only=False)["rdrw"]
    assert saved["seen"] == 24 and saved["quartiles"] is not None
    resumed = run_align(_cfg("rad-dpo", sft, samples, part, max_steps=4, save_steps=2, resume=True,
                             scheduler="constant"))
    a = json.loads((straight / "radgr_train.json").read_text())
    b = json.loads((resumed / "radgr_train.json").read_text())
    assert b["resumed_from"].endswith("checkpoint-2")
    assert a["rdrw_final"] == b["rdrw_final"]
    # the detector's pairs travel in the checkpoint too: the resumed run's AUC covers steps 3–4 like the straight one
    assert a["rdrw_auc"]["pairs"] == b["rdrw_auc"]["pairs"] == 24
    assert a["rdrw_auc"]["relevant"] == b["rdrw_auc"]["relevant"]
    assert b["rdrw_auc"]["auc"] == pytest.approx(a["rdrw_auc"]["auc"], abs=1e-6)
    sa, sb = _state(straight), _state(resumed)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-5, rtol=1e-4)


def test_ablation_switches_only_for_rad_dpo(sft_checkpoint: SftRun, tmp_path: Path) -> None:
    sft, samples = sft_checkpoint
    with pytest.raises(ValueError, match="ablations"):
        _cfg("simpo", sft, samples, tmp_path / "x", rad=RadDpoConfig(tlgd=False))
    with pytest.raises(ValueError, match="method"):
        _cfg("ppo", sft, samples, tmp_path / "x")
    cfg = _cfg("rad-dpo", sft, samples, tmp_path / "x", rad=RadDpoConfig(tlgd=False, ml_sft=False))
    assert cfg.variant == "rad-dpo-no-tlgd-no-ml-sft"


def test_cli_train_align(sft_checkpoint: SftRun, tmp_path: Path) -> None:
    from cli.main import main

    sft, samples = sft_checkpoint
    out = tmp_path / "cli"
    base = ["train", "align", "--sft", str(sft), "--samples", str(samples), "--out", str(out)]
    assert main([*base, "--method", "rad-dpo", "--no-tlgd", "--max-steps", "2", "--batch-size", "4",
                 "--rdrw-window", "8", "--logging-steps", "1"]) == 0
    info = json.loads((out / "final" / "radgr_train.json").read_text())
    assert info["variant"] == "rad-dpo-no-tlgd" and info["ablations"]["tlgd"] is False
    assert info["loss_config"]["rdrw"]["window"] == 8 and info["loss_config"]["rdrw"]["hidden_layer"] == -1
    assert info["rdrw_auc"]["pairs"] == 12  # step 1 (12 pairs) warms the 8-pair window up; step 2 is weighed
    assert main([*base, "--method", "ppo"]) == 2
    # the tiny model has 2 layers: hidden states 0..2 (or -3..-1)
    assert main([*base, "--method", "rad-dpo", "--rdrw-layer", "3", "--max-steps", "1"]) == 2
    assert main([*base[:-1], str(tmp_path / "layer1"), "--method", "rad-dpo", "--rdrw-layer", "1", "--max-steps",
                 "2", "--batch-size", "4", "--rdrw-window", "8"]) == 0
    info = json.loads((tmp_path / "layer1" / "final" / "radgr_train.json").read_text())
    assert info["loss_config"]["rdrw"]["hidden_layer"] == 1 and info["rdrw_auc"]["pairs"] == 12
    assert main([*base, "--method", "dpo", "--no-rdrw"]) == 2
    # the loss knobs the tune chooses (radgr experiment tune) can be given on the command line
    assert main([*base[:-1], str(tmp_path / "gamma"), "--method", "rad-dpo", "--gamma", "0.3", "--beta", "2.5",
                 "--max-steps", "1", "--batch-size", "4", "--rdrw-window", "8"]) == 0
    info = json.loads((tmp_path / "gamma" / "final" / "radgr_train.json").read_text())
    assert (info["loss_config"]["beta"], info["loss_config"]["gamma"]) == (2.5, 0.3)
    assert main([*base, "--method", "dpo", "--gamma", "0.3"]) == 2
