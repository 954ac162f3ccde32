"""benchmarks/gpu_bench.py stays runnable: its counting model by hand, and the whole script on CPU (``--small``).

The counting model, here's the maths for the toy shape (1 layer, hidden 2, 1 head and 1 KV head of dim 2,
intermediate 3, vocabulary 5, 2-byte weights), batch 1, prompt 3, beam 2:

- body parameters = q, k, v, o (2·2·(2·1 + 2·1) = 16) + gate, up, down (3·2·3 = 18) = 34; LM head 2·5 = 10;
  weights read per forward = (34 + 10)·2 = 88 bytes; KV per token = 2 (K and V)·1 layer·1 head·2 dims·2 B = 8.
- prefill: 2·34·3 = 204 (body) + 2·10·1 = 20 (logits at the last token) + 4·1·1·2·3 tokens·(3 + 1)/2 keys = 48
  → 272 FLOPs; bytes 88 + 2·3·8 (KV written and read) + 5·2 (one row of logits written) = 146.
- step 1: 2 rows: 2·44·2 = 176 + attention 4·2·2·(3 + 1) = 64 → 240; bytes 88 + (3 prompt + 2 new)·8 + 2·5·2 = 148.
- step 2: 176 + 4·2·2·(3 + 2) = 80 → 256; bytes 88 + (3 + 2 previous level + 2 new)·8 + 20 = 164.

The 1.7B shape against ``../shared/notes/performance.md``'s roofline (200-token prompt, beam 128): prefill
≈ 0.57 TFLOP, a 128-row decode step ≈ 0.37-0.45 TFLOP, weights 3.4 GB in bf16.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_bench.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


gb = _load()


def test_phase_counts_by_hand() -> None:
    shape = gb.ModelShape(layers=1, hidden=2, heads=1, kv_heads=1, head_dim=2, intermediate=3, vocab=5,
                          dtype_bytes=2)
    assert (shape.body_params, shape.head_params, shape.weight_bytes_per_forward, shape.kv_bytes_per_token) == (
        34, 10, 88, 8)
    counts = gb.phase_counts(shape, batch=1, prompt_tokens=3, beam=2)
    assert {k: (c.flops, c.bytes) for k, c in counts.items()} == {
        "prefill": (272, 146), "step1": (240, 148), "step2": (256, 164)}
    doubled = gb.phase_counts(shape, batch=2, prompt_tokens=3, beam=2)
    assert doubled["step1"].flops == 2 * 240 and doubled["step1"].bytes == 88 + 2 * (148 - 88)  # weights read once


def test_qwen3_1_7b_shape_matches_the_notes_roofline() -> None:
    shape = gb.ModelShape(layers=28, hidden=2048, heads=16, kv_heads=8, head_dim=128, intermediate=6144,
                          vocab=gb.QWEN3_VOCAB, dtype_bytes=2)
    assert shape.body_params + shape.head_params == pytest.approx(1.72e9, rel=0.01)  # Qwen3-1.7B, tied embeddings
    assert shape.weight_bytes_per_forward == pytest.approx(3.44e9, rel=0.01)
    counts = gb.phase_counts(shape, batch=1, prompt_tokens=200, beam=128)
    assert counts["prefill"].flops == pytest.approx(0.57e12, rel=0.02)
    assert 0.37e12 <= counts["step1"].flops <= 0.45e12
    assert 0.37e12 <= counts["step2"].flops <= 0.45e12


def test_roofline_prediction_uses_the_bounding_axis() -> None:
    fast = gb.DevicePeak("fast", tflops=100.0, gbps=2000.0, source="test")
    slow = gb.DevicePeak("slow", tflops=100.0, gbps=500.0, source="test")
    # 1 TFLOP, 10 GB: on `fast` 10 ms of compute vs 5 ms of traffic; on `slow` 10 ms vs 20 ms
    count = gb.PhaseCount(flops=1e12, bytes=1e10)
    assert gb.roofline_seconds(count, fast) == pytest.approx(0.01)
    assert gb.roofline_seconds(count, slow) == pytest.approx(0.02)
    assert (gb.bound_of(count, fast), gb.bound_of(count, slow)) == ("compute", "memory")
    assert gb.predict_seconds(0.05, count, fast, slow) == pytest.approx(0.1)
    # both compute-bound: the ratio of peak FLOP/s (989.5 / 165.2 for an H200 against a 4090)
    h200 = gb.known_peak("NVIDIA H200")
    big = gb.PhaseCount(flops=1e15, bytes=1e9)
    assert gb.predict_seconds(1.0, big, h200, gb.RTX_4090) == pytest.approx(989.5 / 165.2)


def test_known_gpus_by_device_name() -> None:
    names = {"NVIDIA H200": "H200 SXM", "NVIDIA H100 80GB HBM3": "H100 SXM", "NVIDIA H100 PCIe": "H100 PCIe",
             "NVIDIA A100-SXM4-80GB": "A100 80GB SXM", "NVIDIA A100 80GB PCIe": "A100 80GB PCIe",
             "NVIDIA A100-SXM4-40GB": "A100 40GB", "NVIDIA L40S": "L40S", "NVIDIA L40": "L40", "NVIDIA L4": "L4",
             "NVIDIA GeForce RTX 4090": "NVIDIA GeForce RTX 4090", "NVIDIA A10": "A10"}
    assert {n: gb.known_peak(n).name for n in names} == names
    assert gb.known_peak("NVIDIA A10G") is None and gb.known_peak("Some Future GPU") is None
    calib = {"matmul_tflops": 2.0, "copy_gbps": 30.0}
    assert gb.resolve_peak("NVIDIA H200", True, calib, None, None).tflops == 989.5
    cpu = gb.resolve_peak("CPU: x", False, calib, None, 50.0)
    assert (cpu.tflops, cpu.gbps) == (2.0, 50.0) and "--peak-gbps" in cpu.source


def _config(**changes: Any) -> Any:
    fields: dict[str, Any] = dict(
        small=True, device="cpu", preset="tiny", vocab_size=0, num_sids=100, prompt_tokens=8, beam=4, batches=(1, 2),
        reps=1, engines=("torch",), server_engine="none", with_loadtest=False, loadtest_profile="cpu-smoke",
        loadtest_args=(), peak_tflops=None, peak_gbps=None, gpu_memory_utilization=0.8, vllm_max_num_seqs=256,
        child_timeout_s=60.0)
    fields.update(changes)
    return gb.BenchConfig(**fields)


@pytest.mark.parametrize(("change", "message"), [
    ({"beam": 129}, "beam must be in [1, 128], given 129"),
    ({"batches": (2, 1)}, "batches must be distinct sizes >= 1 in ascending order"),
    ({"engines": ("tensorrt",)}, "engines must name some of torch, vllm"),
    ({"device": "gpu"}, "device must be cpu, cuda or cuda:N, given 'gpu'"),
    ({"prompt_tokens": 2000}, "prompt_tokens must be in [1, 1000]"),
    ({"peak_tflops": 0.0}, "peak_tflops must be > 0, given 0.0"),
])
def test_config_bounds_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _config(**change)
    config = _config()
    assert gb.BenchConfig.from_json(json.loads(json.dumps(gb.asdict(config)))) == config


@pytest.mark.slow
def test_small_run_on_cpu_completes_and_writes_its_report(tmp_path: Path) -> None:
    """The CI check that keeps the GPU script from rotting: the whole path at CPU scale, both engines."""
    env = {k: v for k, v in os.environ.items() if k != gb.T0_ENV}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RTX 4090 prediction" in proc.stdout
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert (tmp_path / "gpu_bench.png").stat().st_size > 0
    assert report["config"]["small"] and report["config"]["batches"] == [1, 2]
    assert report["rtx4090"]["tflops"] == 165.2 and report["rtx4090"]["gbps"] == 1008.0
    assert report["device_peak"]["tflops"] > 0 and report["device_peak"]["gbps"] > 0
    expected = ["torch", "vllm"] if importlib.util.find_spec("vllm") is not None else ["torch"]
    for kind in expected:
        engine = report["engines"][kind]
        assert "error" not in engine, engine.get("error")
        assert [r["batch"] for r in engine["rows"]] == [1, 2]
        for row in engine["rows"]:
            assert row["latency_s"] > 0 and row["rps"] > 0 and row["predicted_rps_4090"] > 0
            assert set(row["phases"]) == {"prefill", "step1", "step2"}
            assert all(p["flops"] > 0 and p["bytes"] > 0 and p["seconds"] > 0 for p in row["phases"].values())
            assert row["flops_fraction"] > 0 and row["bandwidth_fraction"] > 0
        assert engine["e2e"][0]["sids_per_request"] == report["config"]["beam"]
        assert engine["peak_memory"]["bytes"] > 0
        assert engine["prediction_4090"]["target_rps"] == 15.0
    if len(expected) == 2:
        assert report["top10_overlap_torch_vllm"] >= 0.8  # same search, float32 on CPU
    server = report["server"]
    assert "error" not in server, server.get("error")
    assert server["sequential_p50_s"] > 0 and server["concurrent_rps"] > 0
    assert "skipped" in server["loadtest"]
