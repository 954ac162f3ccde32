"""Data-parallel training (2 processes, gloo on CPU) equals one process with the same global batch.

- SFT and RAD-DPO: ``torchrun --nproc-per-node 2 -m cli.main train ...`` with ``--batch-size B`` against the same
  command in one process with ``--batch-size 2B``: the logged loss of every step agrees to 1e-5 (relative) and
  every final weight to 1e-5 (absolute). Why not bitwise: each rank pads its own micro-batch (different matmul
  shapes) and DDP sums gradients in another order, so float32 sums differ in the last bits (measured after 4
  steps: weights within 3.7e-7 for SFT and 1.2e-7 for RAD-DPO, losses within 1e-7 relative).
- FSDP2 on CPU (``accelerate launch --config_file configs/fsdp_cpu.yaml``, the path of ``configs/fsdp.yaml``):
  the same SFT and RAD-DPO losses and final weights (gathered to rank 0) as one process, to the same tolerance,
  and for RAD-DPO the same RDRW window in the step-2 checkpoint (measured: weights within 1.1e-8, losses 1e-7).
- RDRW's window is global: two ranks fed different similarity batches hold the same quartiles at every step and
  weigh a pair exactly as one process fed both batches does; with a per-rank window (the old behaviour) they
  would differ, which the same worker shows. The RAD-DPO run checks it end to end: its checkpoint's RDRW window
  (saved by rank 0) equals the single process's.

Run as a script under torchrun, this file is the worker (one launch for all three: the ``runs`` fixture):
``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/test_distributed.py SPEC.json``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RDRW_STEPS = 6


def _batch_sizes(step: int) -> list[int]:
    """Similarities per rank at a step: unequal, and rank 1 empty at step 2."""
    return [3 + step, 0 if step == 2 else 5]


def _similarities(step: int) -> list[torch.Tensor]:
    """Every rank's batch at ``step`` (the same on every process: a generator seeded by the step)."""
    g = torch.Generator().manual_seed(100 + step)
    return [torch.rand(n, generator=g) * 2 - 1 for n in _batch_sizes(step)]


def _rdrw_worker(out_dir: Path) -> None:
    """Each rank weighs its own batch with a global and with a local window; writes what it saw as JSON."""
    import torch.distributed as dist

    from training.rdrw import RdrwConfig, RdrwState

    if not dist.is_initialized():  # the trainings before it initialised it through accelerate
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    cfg = RdrwConfig(window=8)
    global_state = RdrwState(cfg)
    local_state = RdrwState(cfg, gather=lambda t: t.reshape(-1))
    record: dict[str, Any] = {"weights": [], "quartiles": [], "local_quartiles": []}
    for step in range(RDRW_STEPS):
        mine = _similarities(step)[rank]
        record["weights"].append(global_state.weigh(mine).tolist())
        local_state.weigh(mine)
        record["quartiles"].append(global_state.quartiles)
        record["local_quartiles"].append(local_state.quartiles)
    record["state"] = global_state.state_dict()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))


def _launch(args: list[str], tmp: Path, launcher: tuple[str, ...] = ("torch.distributed.run", "--standalone",
                                                                       "--nproc-per-node", "2")) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", *launcher, *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(spec_path: Path) -> None:
    """Under torchrun: every ``radgr`` command of the spec (on both ranks), then the RDRW worker."""
    from cli.main import main

    spec = json.loads(spec_path.read_text())
    for argv in spec["commands"]:
        rc = main(argv)
        if rc != 0:
            raise SystemExit(f"radgr {' '.join(argv)} exited {rc}")
    _rdrw_worker(Path(spec["rdrw_out"]))
    from cli.main import end_distributed

    end_distributed()  # without it a rank could abort at exit while the other tears gloo down (seen in CI runs)


def _sft_command(world: dict[str, Path]) -> list[str]:
    return ["train", "sft", "--samples", str(world["samples"]), "--index", str(world["index"]), "--preset", "tiny",
            "--max-steps", "4", "--lr", "3e-3", "--logging-steps", "1", "--save-steps", "1000",
            "--tokenizer-vocab", "300", "--seed", "0"]


def _make_align_world(root: Path) -> None:
    """A tiny 'SFT' checkpoint (random weights) and 32 sessions under ``root``: :func:`_align_command`'s inputs."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import make_tiny_model, make_tiny_tokenizer
    from test_align import _make_sample

    from training.data.sample_format import samples_to_batch
    from training.model import save_model_dir

    tok = make_tiny_tokenizer((4, 4, 4), words=["a", "b", "c", "drill", "tape"])
    save_model_dir(make_tiny_model(len(tok), seed=3), tok, root / "sft" / "final",
                   {"method": "sft", "codebook_sizes": [4, 4, 4], "model": {"preset": "test"}})
    rng = random.Random(0)
    samples = root / "samples"
    samples.mkdir(parents=True)
    pq.write_table(pa.Table.from_batches([samples_to_batch([_make_sample(i, rng) for i in range(32)])]),
                   samples / "train.parquet")


def _align_command(root: Path) -> list[str]:
    """The RAD-DPO command on the world :func:`_make_align_world` made under ``root``."""
    return ["train", "align", "--method", "rad-dpo", "--sft", str(root / "sft" / "final"), "--samples",
            str(root / "samples"), "--max-steps", "4", "--lr", "1e-3", "--logging-steps", "1", "--save-steps", "2",
            "--rdrw-window", "8", "--seed", "0"]


@pytest.fixture(scope="module")
def sft_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from test_sft_cli import make_world

    return make_world(tmp_path_factory.mktemp("sft-world"), train_sessions=64, test_sessions=4)


@pytest.fixture(scope="module")
def runs(sft_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torchrun launch (2 ranks) runs SFT with --batch-size 8, RAD-DPO with 4, then the RDRW worker; this
    process runs the same SFT with 16 and RAD-DPO with 8. Layout: {sft,align}-{one,two}/, rdrw/rank{0,1}.json."""
    from cli.main import main

    root = tmp_path_factory.mktemp("ddp")
    sft = _sft_command(sft_world)
    _make_align_world(root / "align-world")
    align = _align_command(root / "align-world")
    (root / "rdrw").mkdir()
    spec = {"commands": [[*sft, "--out", str(root / "sft-two"), "--batch-size", "8"],
                         [*align, "--out", str(root / "align-two"), "--batch-size", "4"]],
            "rdrw_out": str(root / "rdrw")}
    (root / "spec.json").write_text(json.dumps(spec))
    _launch([str(Path(__file__)), str(root / "spec.json")], root)
    assert main([*sft, "--out", str(root / "sft-one"), "--batch-size", "16"]) == 0
    assert main([*align, "--out", str(root / "align-one"), "--batch-size", "8"]) == 0
    return root


def test_all_gather_concat_is_the_identity_in_one_process() -> None:
    from training.distributed import all_gather_concat, rank, world_size

    t = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(all_gather_concat(t), t.reshape(-1)) and rank() == 0 and world_size() == 1


@pytest.mark.slow
def test_rdrw_window_is_global_across_two_ranks(runs: Path) -> None:
    from training.rdrw import RdrwConfig, RdrwState

    ranks = [json.loads((runs / "rdrw" / f"rank{r}.json").read_text()) for r in (0, 1)]
    one = RdrwState(RdrwConfig(window=8))  # one process fed rank 0's batch then rank 1's, as one batch
    for step in range(RDRW_STEPS):
        parts = _similarities(step)
        w = one.weigh(torch.cat(parts)).tolist()
        assert ranks[0]["weights"][step] == w[: len(parts[0])]
        assert ranks[1]["weights"][step] == w[len(parts[0]):]
        assert ranks[0]["quartiles"][step] == ranks[1]["quartiles"][step] == (
            None if one.quartiles is None else list(one.quartiles))
    assert ranks[0]["state"] == ranks[1]["state"] == json.loads(json.dumps(one.state_dict()))
    assert any(r < 1.0 for step in ranks[1]["weights"] for r in step)  # warm: the weights did act
    # per-rank windows (the old behaviour) disagree: this test would catch a gather that does nothing
    assert ranks[0]["local_quartiles"][-1] != ranks[1]["local_quartiles"][-1]


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _assert_same_run(single: Path, ddp: Path) -> list[float]:
    """Same steps, losses within 1e-5 relative, final weights within 1e-5 absolute; returns the losses."""
    log_1 = [r for r in json.loads((single / "train_log.json").read_text()) if "loss" in r]
    log_2 = [r for r in json.loads((ddp / "train_log.json").read_text()) if "loss" in r]
    assert [r["step"] for r in log_1] == [r["step"] for r in log_2] and len(log_1) >= 3
    losses_1 = [float(r["loss"]) for r in log_1]
    np.testing.assert_allclose([float(r["loss"]) for r in log_2], losses_1, rtol=1e-5)
    a, b = _load(single / "final"), _load(ddp / "final")
    assert a.keys() == b.keys()
    gaps = {name: float((a[name] - b[name]).abs().max()) for name in a}
    worst = max(gaps, key=lambda n: gaps[n])
    assert gaps[worst] <= 1e-5, f"{worst} differs by {gaps[worst]:.3g}"
    return losses_1


@pytest.mark.slow
def test_ddp_sft_matches_one_process(runs: Path) -> None:
    losses = _assert_same_run(runs / "sft-one", runs / "sft-two")
    assert losses[-1] < losses[0]  # it trained


def _fsdp_launcher() -> tuple[str, ...]:
    """``accelerate launch`` with configs/fsdp_cpu.yaml (full shard per decoder layer, gloo, 2 processes)."""
    return ("accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "fsdp_cpu.yaml"),
            "--main_process_port", str(_free_port()), "-m")


@pytest.mark.slow
def test_fsdp_sft_matches_one_process(runs: Path, sft_world: dict[str, Path], tmp_path: Path) -> None:
    """FSDP2 through ``accelerate launch``: the same losses and, gathered into rank 0's final model directory, the
    same weights as one process."""
    _launch(["cli.main", *_sft_command(sft_world), "--out", str(tmp_path / "fsdp"), "--batch-size", "8"], tmp_path,
            _fsdp_launcher())
    _assert_same_run(runs / "sft-one", tmp_path / "fsdp")


def _assert_same_rdrw(single: Path, parallel: Path) -> None:
    """RDRW acted (warm after step 1) and the step-2 checkpoint (rank 0's file) holds the global window: the single
    run's; the final quartiles agree too."""
    extra = [torch.load(run / "checkpoints" / "checkpoint-2" / "radgr_extra_state.pt", weights_only=False)
             for run in (single, parallel)]
    assert extra[0]["rdrw"]["seen"] == extra[1]["rdrw"]["seen"] > 8
    np.testing.assert_allclose(extra[1]["rdrw"]["window"], extra[0]["rdrw"]["window"], rtol=0, atol=1e-5)
    info = [json.loads((run / "final" / "radgr_train.json").read_text()) for run in (single, parallel)]
    assert info[0]["rdrw_final"]["seen"] == info[1]["rdrw_final"]["seen"]
    np.testing.assert_allclose(info[1]["rdrw_final"]["quartiles"], info[0]["rdrw_final"]["quartiles"], atol=1e-5)


@pytest.mark.slow
def test_ddp_rad_dpo_matches_one_process(runs: Path) -> None:
    _assert_same_run(runs / "align-one", runs / "align-two")
    _assert_same_rdrw(runs / "align-one", runs / "align-two")


@pytest.mark.slow
def test_fsdp_rad_dpo_matches_one_process(runs: Path, tmp_path: Path) -> None:
    """RAD-DPO under FSDP2 (batch 4 × 2 ranks) equals one process with batch 8, like DDP: the packed forward runs
    through the sharded model, RDRW's window is gathered across the FSDP process group."""
    _launch(["cli.main", *_align_command(runs / "align-world"), "--out", str(tmp_path / "fsdp"), "--batch-size", "4"],
            tmp_path, _fsdp_launcher())
    _assert_same_run(runs / "align-one", tmp_path / "fsdp")
    _assert_same_rdrw(runs / "align-one", tmp_path / "fsdp")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
