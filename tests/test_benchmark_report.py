"""benchmarks/report.py: the report has every section and every number sits under (or beside) its command.

The byte breakdown shared with ``gpu_bench`` (``PhaseCount.weight_bytes / kv_bytes / logits_bytes``), here's the
maths for the toy shape of ``tests/test_gpu_bench.py`` (1 layer, hidden 2, 1 head and 1 KV head of dim 2,
intermediate 3, vocabulary 5, 2-byte weights), batch 1, prompt 3, beam 2: weights read per forward 44·2 = 88 bytes;
KV per token 8 bytes; prefill KV written and read 2·3·8 = 48, one row of logits 5·2 = 10; step 1 reads the prompt
and its 2 new rows (3 + 2)·8 = 40 and writes 2 rows of logits 20; step 2 (3 + 2 + 2)·8 = 56 and 20. The request:
272 + 240 + 256 = 768 FLOPs, 146 + 148 + 164 = 458 bytes.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "report.py"


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def problems(markdown: str) -> list[str]:
    """Lines breaking the report's rule: a table with a digit must follow a ``Command: `...``` line (blank lines
    between allowed), and a prose line with a digit must name its command in backticks."""
    lines = markdown.splitlines()
    bad = []
    for i, line in enumerate(lines):
        if not re.search(r"\d", line) or line.startswith(("#", "![", "Command: `")):
            continue
        if line.startswith("|"):
            start = i
            while start > 0 and lines[start - 1].startswith("|"):
                start -= 1
            above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            if not above.startswith("Command: `"):
                bad.append(f"line {i + 1}: table without its command: {line[:80]}")
        elif not re.search(r"`[^`]*(benchmarks/|radgr |\.venv/|python)[^`]*`", line):
            bad.append(f"line {i + 1}: a number without its command: {line[:80]}")
    return bad


def test_rule_catches_numbers_without_commands() -> None:
    good = "# T 1\n\nCommand: `python benchmarks/x.py`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nsee `radgr x --n 3`\n"
    assert problems(good) == []
    assert problems("text with 3 numbers\n") != []
    assert problems("| a |\n|---|\n| 1 |\n") != []
    assert problems("Command: `x`\n\nprose in between\n\n| a |\n|---|\n| 1 |\n") != []


def test_byte_parts_by_hand() -> None:
    gb = _load("gpu_bench")
    shape = gb.ModelShape(layers=1, hidden=2, heads=1, kv_heads=1, head_dim=2, intermediate=3, vocab=5,
                          dtype_bytes=2)
    counts = gb.phase_counts(shape, batch=1, prompt_tokens=3, beam=2)
    parts = {k: (c.weight_bytes, c.kv_bytes, c.logits_bytes) for k, c in counts.items()}
    assert parts == {"prefill": (88, 48, 10), "step1": (88, 40, 20), "step2": (88, 56, 20)}
    assert all(c.bytes == sum(p) for c, p in zip(counts.values(), parts.values(), strict=True))
    total = gb.request_count(shape, 3, 2)
    assert (total.flops, total.bytes, total.kv_bytes) == (768, 458, 144)


def test_sizes_are_validated() -> None:
    rep = _load("report")
    full, quick = rep.Sizes.for_mode(False), rep.Sizes.for_mode(True)
    assert max(full.prompt_lens) == 512 and min(full.prompt_lens) == 32
    assert (min(full.beam_widths), max(full.beam_widths)) == (8, 128)
    assert (min(full.catalogs), max(full.catalogs)) == (1_000, 1_000_000)
    assert quick.step_timeout_s < full.step_timeout_s
    with pytest.raises(ValueError, match="beam_widths must be in"):
        rep.Sizes(**{**quick.__dict__, "beam_widths": (256,)})


@pytest.mark.slow
def test_quick_report_has_every_section(tmp_path: Path) -> None:
    """The whole report in ``--quick`` mode into ``tmp_path`` (never ``docs/``). ``bench_decoding.py`` and
    ``bench_align.py`` are skipped to keep the test near a minute (their quick modes alone take about that); their
    sections must then say so under their commands."""
    rep = _load("report")
    docs, out = tmp_path / "docs", tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--skip", "bench_decoding,align", "--out", str(out),
                           "--docs", str(docs)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (docs / "benchmarks.md").read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings == list(rep.SECTIONS)
    assert "FAILED" not in text
    assert text.count("not run (--skip)") == 4  # two steps: in the header's step table and in their sections
    assert problems(text) == []
    for needle in ("load average before", "git commit", "total wall time", "HF generate ms", "PyTorch engine ms",
                   "capacity req/s", "sessions/s", "bytes/SID on disk", "of peak FLOP/s", "1.7B, prompt 200",
                   "fp32 matmul GFLOP/s"):
        assert needle in text, needle
    images = re.findall(r"!\[[^\]]*\]\((img/bench_[\w-]+\.png)\)", text)
    assert {"img/bench_decoding_engines.png", "img/bench_roofline.png", "img/bench_sweep_torch.png"} <= set(images)
    assert all((docs / img).is_file() for img in images)


def test_skip_must_name_a_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rep = _load("report")
    assert rep.main(["--quick", "--skip", "bench_nothing", "--out", str(tmp_path / "run"),
                     "--docs", str(tmp_path / "docs")]) == 2
    assert "--skip names no step: bench_nothing" in capsys.readouterr().err
    assert not (tmp_path / "docs").exists()
