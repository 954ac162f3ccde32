"""benchmarks/bench_decoding.py: the FLOP count by hand, the CLI's section check, and the profile section's JSON
(what benchmarks/report.py reads) from a short real run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_decoding as bd  # a script beside the package, importable once its folder is on the path


def test_model_flops_by_hand() -> None:
    """hidden 4, 2 query heads and 1 KV head of size 2 (q 4 wide, k/v 2 wide), MLP 8, 1 layer, vocab 10.
    Per token: q + o = 2·4·4 = 32, k + v = 2·4·2 = 16, MLP 3·4·8 = 96 → 144 MACs. 3 tokens over 5 keys:
    attention 3·5·4 (QKᵀ) + 3·5·4 (PV) = 120; one logits row 4·10 = 40. (3·144 + 120 + 40) · 2 = 1,184 FLOPs."""
    cfg = SimpleNamespace(num_attention_heads=2, num_key_value_heads=1, head_dim=2, hidden_size=4, intermediate_size=8,
                          num_hidden_layers=1, vocab_size=10)
    assert bd.model_flops(SimpleNamespace(config=cfg), rows=3, keys=5, logits_rows=1) == 1184.0


def test_unknown_section_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bd.main(["--sections", "profile,nope"])
    assert exc.value.code == 2
    assert "--sections must name sections of vs_hf,beam_width,catalog,profile, given nope" in capsys.readouterr().err


@pytest.mark.slow
def test_profile_section_writes_its_json(tmp_path: Path) -> None:
    bd.run(True, tmp_path / "out", ("profile",), tmp_path / "p.json", repeats=1)
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["sections"] == ["profile"] and report["quick"]
    rows = report["profile"]["rows"]
    assert [(r["prompt_len"], r["requests_per_call"]) for r in rows] == [(64, 1), (64, 8), (200, 1), (200, 8)]
    for r in rows:
        phases = sum(r["ms"][k] for k in bd.PHASES)
        assert phases <= r["ms"]["call"] * 1.001 and r["ms"]["other"] == pytest.approx(r["ms"]["call"] - phases)
        assert 0 < r["trie_mask_share_of_steps"] < 1 and 0 < r["masking_share"] < 1
        assert all(v > 0 for v in r["gflops_reached_cpu"].values())
    assert report["profile"]["ops"]["groups_ms"]["matmul"] > 0
