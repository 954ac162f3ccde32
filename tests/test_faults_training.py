"""Training under faults: a run killed with SIGKILL, then ``--resume``, ends with the very weights (bit for bit, on
CPU) of an uninterrupted run of the same seed; a checkpoint the kill left half-written is never resumed from.

- SFT and RAD-DPO (whose RDRW window travels in the checkpoint's extra state) run as ``radgr train ...``
  processes, are killed with SIGKILL once a complete checkpoint exists and training has gone past it (mid-epoch,
  after the first epoch, so the data order of a later epoch must be replayed), then resumed by another process.
- DPO, SimPO and ORPO are interrupted in-process at a checkpoint boundary: a run of all the steps, whose later
  checkpoints and ``final/`` are then removed (or damaged as a kill mid-write would leave them). That is what a
  SIGKILL right after a checkpoint leaves on disk (a kill loses only memory; ``--resume`` reads nothing but the
  run directory), so it is equivalent, and it needs no second process per method.
Every reference run is in this process with the thread count the killed and resumed processes get
(``OMP_NUM_THREADS``), since CPU float sums depend on how threads split them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from cli.main import main
from decoding.prompt import PROMPT_VERSION
from training.checkpoints import COMPLETE_MARKER, checkpoint_problem, mark_complete, newest_complete_checkpoint
from training.checkpoints import rotate_checkpoints as rotate
from training.data.sample_format import Sample, samples_to_batch
from training.model import read_train_info

REPO = Path(__file__).resolve().parents[1]
SIZES = (4, 4, 4)
KILL_TIMEOUT_S = 180.0


# ---------------------------------------------------------------- helpers
def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _assert_bit_identical(a: Path, b: Path) -> None:
    sa, sb = _weights(a), _weights(b)
    assert sa.keys() == sb.keys()
    differ = {k: float((sa[k] - sb[k]).abs().max()) for k in sa if not torch.equal(sa[k], sb[k])}
    assert not differ, f"tensors differ after resume (max abs difference): {differ}"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _radgr(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT)


def _complete_steps(run: Path) -> list[int]:
    ckdir = run / "checkpoints"
    if not ckdir.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in ckdir.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file())


def _logged_step(run: Path) -> int:
    try:
        log = json.loads((run / "train_log.json").read_text())
    except (OSError, ValueError):
        return 0
    return max((int(r["step"]) for r in log if "loss" in r), default=0)


def _kill_mid_run(proc: subprocess.Popen[bytes], run: Path, min_checkpoint: int, log: Path) -> tuple[int, int]:
    """SIGKILL ``proc`` once a complete checkpoint >= ``min_checkpoint`` exists and a later step was logged."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before it could be killed:\n"
                                 f"{log.read_text()[-3000:]}")
        steps = _complete_steps(run)
        if steps and steps[-1] >= min_checkpoint and (logged := _logged_step(run)) > steps[-1]:
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            return steps[-1], logged
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no checkpoint >= {min_checkpoint} within {KILL_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _resume(args: list[str], log: Path) -> None:
    proc = _radgr([*args, "--resume"], log)
    assert proc.wait(timeout=KILL_TIMEOUT_S) == 0, log.read_text()[-3000:]


def _only_complete_checkpoints_left(run: Path, keep: int) -> None:
    folders = sorted((run / "checkpoints").glob("checkpoint-*"))
    assert folders and len(folders) <= keep, folders
    assert all(checkpoint_problem(f) is None for f in folders)


# ---------------------------------------------------------------- the marker, choice and rotation (fast)
def _fake_checkpoint(ckdir: Path, step: int, complete: bool = True) -> Path:
    folder = ckdir / f"checkpoint-{step}"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (folder / "sub" / "state.json").write_text(json.dumps({"step": step}))
    if complete:
        mark_complete(folder, step)
    return folder


def test_marker_lists_every_file_and_catches_missing_truncated_and_flipped_files(tmp_path: Path) -> None:
    folder = _fake_checkpoint(tmp_path, 4)
    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    assert marker["step"] == 4 and sorted(marker["files"]) == ["model.safetensors", "sub/state.json"]
    assert marker["files"]["model.safetensors"]["bytes"] == 1024
    assert checkpoint_problem(folder) is None

    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:500])
    assert "'model.safetensors' has 500 bytes, 1024 were written" in str(checkpoint_problem(folder))
    weights.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])
    assert "'model.safetensors' fails its sha256" in str(checkpoint_problem(folder))
    weights.unlink()
    assert "'model.safetensors' is missing" in str(checkpoint_problem(folder))
    (folder / COMPLETE_MARKER).write_text("{trunc")
    assert "unreadable" in str(checkpoint_problem(folder))
    (folder / COMPLETE_MARKER).unlink()
    assert "no radgr_checkpoint_complete.json" in str(checkpoint_problem(folder))


def test_newest_complete_checkpoint_skips_half_written_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert newest_complete_checkpoint(tmp_path / "none") is None
    _fake_checkpoint(tmp_path, 4)
    _fake_checkpoint(tmp_path, 8)
    _fake_checkpoint(tmp_path, 12, complete=False)  # killed while Trainer wrote it
    truncated = _fake_checkpoint(tmp_path, 16)  # complete, then a file lost its tail
    with (truncated / "model.safetensors").open("r+b") as f:
        f.truncate(10)
    (tmp_path / "checkpoint-99-tmp").mkdir()  # not a checkpoint folder name
    with caplog.at_level("WARNING"):
        assert newest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
    assert "checkpoint-16" in caplog.text and "checkpoint-12" in caplog.text


def test_rotation_keeps_the_newest_complete_ones_and_drops_leftovers(tmp_path: Path) -> None:
    for step in (4, 8, 12):
        _fake_checkpoint(tmp_path, step)
    _fake_checkpoint(tmp_path, 16, complete=False)
    _fake_checkpoint(tmp_path, 2, complete=False)
    removed = rotate(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["checkpoint-16", "checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-12", "checkpoint-8"]
    assert rotate(tmp_path, None) == []


# ---------------------------------------------------------------- SFT: SIGKILL, then --resume
@pytest.mark.slow
def test_sft_killed_with_sigkill_then_resumed_ends_bit_identical(tmp_path: Path) -> None:
    """64 pairs, batch 8: 8 steps an epoch, 24 steps. Killed after a checkpoint >= 12 (mid-epoch 2)."""
    from test_sft_cli import make_world

    world = make_world(tmp_path, train_sessions=64, test_sessions=4)

    def args(run: Path) -> list[str]:
        return ["train", "sft", "--samples", str(world["samples"]), "--index", str(world["index"]), "--out", str(run),
                "--max-steps", "24", "--save-steps", "4", "--batch-size", "8", "--logging-steps", "1",
                "--tokenizer-vocab", "300", "--seed", "3"]

    assert main(args(tmp_path / "straight")) == 0
    run, log = tmp_path / "killed", tmp_path / "killed.log"
    checkpoint, logged = _kill_mid_run(_radgr(args(run), log), run, 12, log)
    assert not (run / "final").exists() and logged > checkpoint
    _resume(args(run), log)
    info = read_train_info(run / "final")
    assert info["steps"] == 24 and info["resumed_from"].endswith(f"checkpoint-{checkpoint}")
    _assert_bit_identical(tmp_path / "straight" / "final", run / "final")
    steps = [r["step"] for r in json.loads((run / "train_log.json").read_text()) if "loss" in r]
    assert steps == list(range(1, 25))
    _only_complete_checkpoints_left(run, keep=2)


# ---------------------------------------------------------------- alignment
def _sample(i: int, rng: random.Random) -> Sample:
    def codes() -> tuple[int, int, int]:
        return (rng.randrange(4), rng.randrange(4), rng.randrange(4))

    pos = tuple(codes() for _ in range(rng.randint(1, 3)))
    top = pos[0]
    neg = ((top[0], top[1], (top[2] + 1) % 4), (top[0], (top[1] + 1) % 4, 0), ((top[0] + 1) % 4, 0, 0))
    words = " ".join(rng.choice(["a", "b", "c", "drill", "tape"]) for _ in range(rng.randint(1, 4)))
    return Sample(session_id=f"s{i}", day=1, split="train", prompt=f"query: {words} item:",
                  prompt_version=PROMPT_VERSION, positive_items=tuple(f"p{i}_{k}" for k in range(len(pos))),
                  positive_codes=pos, top_index=0, negative_items=tuple(f"n{i}_{k}" for k in range(3)),
                  negative_codes=neg, negative_relevant=(i % 2 == 0, False, False), relevant_items=(),
                  relevant_grades=())


def _align_inputs(root: Path, factory: Any, sessions: int) -> tuple[Path, Path]:
    from training.model import save_model_dir

    model, tok = factory(SIZES, seed=3)
    sft = save_model_dir(model, tok, root / "sft" / "final",
                         {"method": "sft", "codebook_sizes": list(SIZES), "model": {"preset": "test"}})
    samples = root / "samples"
    samples.mkdir()
    rng = random.Random(0)
    batch = samples_to_batch([_sample(i, rng) for i in range(sessions)])
    pq.write_table(pa.Table.from_batches([batch]), samples / "train.parquet")
    return sft, samples


@pytest.mark.slow
def test_rad_dpo_killed_with_sigkill_then_resumed_ends_bit_identical(tmp_path: Path, tiny_lm_factory: Any) -> None:
    """48 sessions, batch 4: 12 steps an epoch, 36 steps; RDRW window 16 pairs (warm from step 2), so the resumed
    run weighs every pair with the window it restored. Killed after a checkpoint >= 15 (mid-epoch 2)."""
    sft, samples = _align_inputs(tmp_path, tiny_lm_factory, 48)

    def args(run: Path) -> list[str]:
        return ["train", "align", "--method", "rad-dpo", "--sft", str(sft), "--samples", str(samples),
                "--out", str(run), "--max-steps", "36", "--save-steps", "3", "--batch-size", "4", "--lr", "1e-3",
                "--logging-steps", "1", "--rdrw-window", "16", "--seed", "1"]

    assert main(args(tmp_path / "straight")) == 0
    run, log = tmp_path / "killed", tmp_path / "killed.log"
    checkpoint, _ = _kill_mid_run(_radgr(args(run), log), run, 15, log)
    extra = torch.load(run / "checkpoints" / f"checkpoint-{checkpoint}" / "radgr_extra_state.pt",
                       weights_only=False)
    assert extra["rdrw"]["seen"] > 16 and extra["rdrw"]["quartiles"] is not None
    _resume(args(run), log)
    a = read_train_info(tmp_path / "straight" / "final")
    b = read_train_info(run / "final")
    assert b["resumed_from"].endswith(f"checkpoint-{checkpoint}")
    assert a["rdrw_final"] == b["rdrw_final"]  # the same window and quartiles, to the last bit
    _assert_bit_identical(tmp_path / "straight" / "final", run / "final")
    _only_complete_checkpoints_left(run, keep=2)


def _damage(ckpt: Path, how: str) -> None:
    """What a kill while ``ckpt`` was being written can leave (or a later fault in one of its files)."""
    match how:
        case "no-marker":  # killed before the marker: Trainer's files may all be there
            (ckpt / COMPLETE_MARKER).unlink()
            with (ckpt / "optimizer.pt").open("r+b") as f:
                f.truncate(100)
        case "truncated":
            with (ckpt / "model.safetensors").open("r+b") as f:
                f.truncate((ckpt / "model.safetensors").stat().st_size // 2)
        case "flipped":
            data = bytearray((ckpt / "optimizer.pt").read_bytes())
            data[len(data) // 2] ^= 0x01
            (ckpt / "optimizer.pt").write_bytes(bytes(data))
        case "missing":
            (ckpt / "scheduler.pt").unlink()


@pytest.mark.slow
@pytest.mark.parametrize(("method", "damage"), [("dpo", "no-marker"), ("simpo", "truncated"), ("orpo", "flipped"),
                                                ("rad-dpo", "missing")])
def test_alignment_resumes_past_a_half_written_checkpoint_bit_identical(method: str, damage: str, tmp_path: Path,
                                                                        tiny_lm_factory: Any) -> None:
    """24 sessions, batch 4: 6 steps an epoch, 12 steps, checkpoints at 4, 8, 12. The interrupted run keeps
    checkpoints 4 and 8, with 8 damaged as a kill mid-write leaves it: --resume takes 4 and ends bit-identical."""
    from training.align import AlignConfig, run_align
    from training.rdrw import RdrwConfig
    from training.train_config import TrainConfig

    sft, samples = _align_inputs(tmp_path, tiny_lm_factory, 24)

    def cfg(out: Path, resume: bool = False) -> AlignConfig:
        return AlignConfig(method=method, sft_dir=sft, samples_dir=samples, out_dir=out, resume=resume,
                           train=TrainConfig(max_steps=12, save_steps=4, batch_size=4, lr=1e-3, logging_steps=1,
                                             seed=2, save_total_limit=5),
                           rdrw=RdrwConfig(window=16))

    straight = run_align(cfg(tmp_path / "straight"))
    run = tmp_path / "interrupted"
    run_align(cfg(run))
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "checkpoint-12")
    _damage(run / "checkpoints" / "checkpoint-8", damage)
    resumed = run_align(cfg(run, resume=True))
    assert read_train_info(resumed)["resumed_from"].endswith("checkpoint-4")
    _assert_bit_identical(straight, resumed)
    assert checkpoint_problem(run / "checkpoints" / "checkpoint-8") is None  # written again, whole


@pytest.mark.slow
def test_rad_dpo_refuses_a_checkpoint_without_its_rdrw_state(tmp_path: Path, tiny_lm_factory: Any,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A complete checkpoint without the RDRW window cannot resume exactly: exit 2 naming the checkpoint."""
    sft, samples = _align_inputs(tmp_path, tiny_lm_factory, 8)
    run = tmp_path / "run"
    args = ["train", "align", "--method", "rad-dpo", "--sft", str(sft), "--samples", str(samples), "--out", str(run),
            "--max-steps", "2", "--save-steps", "1", "--batch-size", "4", "--rdrw-window", "8"]
    assert main(args) == 0
    ckpt = run / "checkpoints" / "checkpoint-2"
    (ckpt / "radgr_extra_state.pt").unlink()
    mark_complete(ckpt, 2)  # as a checkpoint of an older radgr would look
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"{run}/checkpoints/checkpoint-2 has no radgr_extra_state.pt" in lines[0]
