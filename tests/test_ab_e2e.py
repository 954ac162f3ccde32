"""``radgr experiment ab`` end to end against real ``radgr serve`` processes on a tiny simulated world.

The module fixture simulates a tiny world (300 items, 3 days), builds a SID index whose codes follow the
taxonomy (category, product type, spread; no embedding model needed), samples, a short SFT of the tiny preset, and
two bundles: the SFT checkpoint (60 steps), and the same files with freshly initialised (untrained) weights. Then:
- A (SFT) vs B (untrained), servers started by the command itself: B shows a significant loss on every metric;
- A/A (the SFT bundle twice, servers started here, the command given their URLs): every interval covers 0.
Servers run the PyTorch engine (``RADGR_ENGINE=torch``, set by conftest) with one thread each. Everything is
seeded (world, sessions, SFT, users, clicks), so both runs repeat exactly on one machine: the A/A check is one
fixed draw (CTR lift −19 %, p = 0.16 when written), not a coin flipped on every CI run.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from cli.main import main
from sid_index.index import SidIndex
from training.ab_test import served_bundles
from training.ab_users import load_world
from training.model import build_model, load_model, read_train_info, save_model_dir

USERS = "300"
RUN = ["--users", USERS, "--sessions-per-user", "2", "--beam-width", "16", "--concurrency", "4", "--seed", "1"]


def _taxonomy_index(world_dir: Path, out: Path) -> Path:
    """SID codes (category, product type within it, item mod 8): items of one type share a 2-token prefix."""
    world, _ = load_world(world_dir)
    types_of_group: dict[int, list[int]] = {}
    codes = []
    for i in range(world.num_items):
        g, t = int(world.item_group[i]), int(world.item_type[i])
        types = types_of_group.setdefault(g, [])
        if t not in types:
            types.append(t)
        codes.append((g, types.index(t), i % 8))
    index = SidIndex.from_codes(world.item_ids, np.array(codes), world.popularity, world.catalog_category, (8, 16, 8))
    return index.save(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ab")
    data, index, samples = root / "data", root / "index", root / "samples"
    assert main(["data", "simulate", "--out", str(data), "--items", "300", "--users", "200",
                 "--sessions-per-day", "500", "--days", "3"]) == 0
    _taxonomy_index(data, index)
    assert main(["data", "samples", "--sessions", str(data / "sessions.parquet"), "--index", str(index),
                 "--catalog", str(data / "catalog.parquet"), "--out", str(samples)]) == 0
    assert main(["train", "sft", "--samples", str(samples), "--index", str(index), "--out", str(root / "sft"),
                 "--preset", "tiny", "--max-steps", "60", "--batch-size", "32", "--lr", "3e-3",
                 "--tokenizer-vocab", "400", "--save-steps", "1000", "--logging-steps", "20"]) == 0
    final, untrained = root / "sft" / "final", root / "untrained" / "final"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(final))
    random_model = build_model("tiny", load_model(final).config.vocab_size, seed=1,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    save_model_dir(random_model, tokenizer, untrained, {**read_train_info(final), "steps": 0})
    bundles = {}
    for name, checkpoint in (("sft", final), ("untrained", untrained)):
        bundles[name] = root / f"bundle-{name}"
        assert main(["export", "--checkpoint", str(checkpoint), "--index", str(index), "--samples", str(samples),
                     "--out", str(bundles[name]), "--name", f"tiny-{name}"]) == 0
    return {"data": data, **bundles}


@pytest.mark.slow
def test_untrained_arm_shows_a_significant_loss(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ab"
    rc = main(["experiment", "ab", "--world", str(tiny["data"]), "--bundle-a", str(tiny["sft"]),
               "--bundle-b", str(tiny["untrained"]), "--out", str(out), "--label-a", "SFT",
               "--label-b", "untrained", "--server-threads", "1", *RUN])
    assert rc == 0
    doc = json.loads((out / "ab_report.json").read_text())
    arms = doc["arms"]
    assert (arms["A"]["served"]["model"], arms["B"]["served"]["model"]) == ("tiny-sft", "tiny-untrained")
    assert arms["A"]["served"]["engine"] == "torch"
    assert arms["A"]["users"] + arms["B"]["users"] == int(USERS)
    assert arms["A"]["failed_requests"] == arms["B"]["failed_requests"] == 0
    for key, lf in doc["lifts"].items():
        assert lf["significant"] and lf["rel_ci"][1] < 0, (key, lf)
    assert doc["lifts"]["ctr"]["rel"] < -0.3
    for name in ("ab_report.md", "ab_lift.png", "server-a.log", "server-b.log"):
        assert (out / name).is_file()
    # both servers were stopped
    for url in (doc["config"]["url_a"], doc["config"]["url_b"]):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/live", timeout=2)


@pytest.mark.slow
def test_aa_run_interval_covers_zero(tiny: dict[str, Path], tmp_path: Path) -> None:
    with served_bundles(tiny["sft"], tiny["sft"], tmp_path / "logs", engine="torch", threads=1) as (a, b):
        rc = main(["experiment", "ab", "--world", str(tiny["data"]), "--url-a", a, "--url-b", b,
                   "--out", str(tmp_path / "aa"), *RUN])
    assert rc == 0
    doc = json.loads((tmp_path / "aa" / "ab_report.json").read_text())
    assert doc["arms"]["A"]["served"] == doc["arms"]["B"]["served"]
    for key, lf in doc["lifts"].items():
        lo, hi = lf["rel_ci"]
        assert lo < 0 < hi and not lf["significant"], (key, lf)
    assert doc["arms"]["A"]["metrics"]["ctr"]["value"] > 0.02  # the trained model earns clicks
