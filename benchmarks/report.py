"""The performance report: one command runs every benchmark and regenerates ``docs/benchmarks.md``.

    .venv/bin/python benchmarks/report.py [--quick] [--out runs/report] [--docs docs]

Every benchmark runs as its own subprocess (thread count set by its command line, output under ``--out``, its
log in ``OUT/logs/``); the report reads back their JSON and writes ``DOCS/benchmarks.md`` with the exact command
above every table, and ``DOCS/img/bench_*.png``. Steps, in order:

0. **Header**: date (UTC), git commit (and whether the tree had local changes), ``lscpu``'s CPU model and thread
   count, the load average and the busiest other processes just before starting (was anything else running?),
   and at the end the load average again and the report's total wall time.
1. **Peak** of this machine with torch, on 1 and on 2 threads (``--worker peak``): a large fp32 matrix product
   (GFLOP/s) and STREAM-like triad ``a = b + s·c`` and copy over arrays far larger than the caches (GB/s,
   bytes = arrays read + written), best of several repetitions.
2. **Bundle** (``--worker prepare``): :func:`gpu_bench.build_bundle` at CPU scale: the ``tiny`` preset with random
   weights (speed does not depend on weights), radgr's tokenizer with all SID tokens, a synthetic index; plus
   synthetic indexes of each catalog size for the catalog sweep (the 1M point is synthetic too).
3. **Decoding engines** (``--worker engines --engine torch|vllm|hf``, one process each, one thread): on that
   bundle's model, the PyTorch engine, the vLLM engine (where installed) and Hugging Face constrained
   ``generate(num_beams=W, prefix_allowed_tokens_fn=...)`` (the first thing a user would try); median seconds per
   request (one request per call) as the prompt length, the beam width and (engines only) the catalog grow; the
   top-10 SIDs of every engine compared with the PyTorch engine's.
4. ``benchmarks/bench_decoding.py`` (the PyTorch engine vs HF, side by side, on its own 4x256 model).
5. **Serving on CPU**: ``radgr loadtest --bundle B --sweep`` for the PyTorch engine and the vLLM engine (short
   steps), the table of every step and ``sweep.png``.
6. ``benchmarks/bench_align.py`` (packed RAD-DPO vs pairwise DPO), 7. ``benchmarks/bench_sid_index.py``,
   8. ``benchmarks/bench_data.py``.
9. **Roofline**: FLOPs and bytes per request (:func:`gpu_bench.phase_counts`, the counting model documented
   there) for the Qwen3-1.7B shape at beam 128, and for every measured decoding and serving run those of its own
   model shape and the fraction of this machine's measured peak (at the run's thread count) it reached.

A step that fails or times out is reported as such in its section (with its log) and the report exits 1; the
other steps still run. ``--quick`` shrinks every step (tiny sizes, the vLLM engine skipped) so CI can check in
about a minute that the report is produced with every section (``tests/test_benchmark_report.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_bench  # noqa: E402  # a sibling script (benchmarks/ is not a package): its counting model is shared

BEAM = 128
SECTIONS = ("Machine and peak", "Decoding", "Serving on CPU", "Training: packed vs pairwise", "SID index",
            "Data pipeline", "Roofline")


# ------------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Sizes:
    """What each step measures; :meth:`for_mode` gives the full report's and ``--quick``'s."""

    prompt_lens: tuple[int, ...]
    beam_widths: tuple[int, ...]
    catalogs: tuple[int, ...]
    main_sids: int
    engine_reps: int
    hf_reps: int
    with_vllm: bool
    sweep_args: tuple[str, ...]
    align_args: tuple[str, ...]
    sid_index_args: tuple[str, ...]
    data_args: tuple[str, ...]
    decoding_args: tuple[str, ...]
    peak_matmul_n: int
    peak_stream_floats: int
    step_timeout_s: float

    def __post_init__(self) -> None:
        if not self.prompt_lens or min(self.prompt_lens) < 1 or max(self.prompt_lens) > 1000:
            raise ValueError(f"prompt_lens must be in [1, 1000] (the vLLM context is 1024), given {self.prompt_lens}")
        if not self.beam_widths or not all(1 <= w <= BEAM for w in self.beam_widths):
            raise ValueError(f"beam_widths must be in [1, {BEAM}], given {self.beam_widths}")
        if not self.catalogs or not all(BEAM <= n <= 256 ** 3 for n in self.catalogs):
            raise ValueError(f"catalogs must be in [{BEAM}, {256 ** 3}] SIDs, given {self.catalogs}")
        if self.engine_reps < 1 or self.hf_reps < 1:
            raise ValueError(f"engine_reps and hf_reps must be >= 1, given {self.engine_reps}, {self.hf_reps}")
        if self.peak_matmul_n < 64 or self.peak_stream_floats < 1 << 20:
            raise ValueError(f"peak_matmul_n must be >= 64 and peak_stream_floats >= 2**20, given "
                             f"{self.peak_matmul_n}, {self.peak_stream_floats}")
        if not self.step_timeout_s > 0:
            raise ValueError(f"step_timeout_s must be > 0, given {self.step_timeout_s}")

    @staticmethod
    def for_mode(quick: bool) -> Sizes:
        if quick:
            return Sizes(prompt_lens=(32, 64), beam_widths=(8, 128), catalogs=(1_000, 10_000), main_sids=2_000,
                         engine_reps=1, hf_reps=1, with_vllm=False,
                         sweep_args=("--sweep-step-s", "3", "--sweep-settle-s", "1", "--sweep-max-steps", "2",
                                     "--sweep-overload", "1"),
                         align_args=("--steps", "1", "--batch-size", "2", "--repeats", "1", "--prompt-tokens", "40"),
                         sid_index_args=("--sizes", "2000", "--codebooks", "16,16,16"),
                         data_args=("--sessions", "800"), decoding_args=("--quick",),
                         peak_matmul_n=512, peak_stream_floats=1 << 22, step_timeout_s=420.0)
        return Sizes(prompt_lens=(32, 64, 128, 256, 512), beam_widths=(8, 16, 32, 64, 128),
                     catalogs=(1_000, 10_000, 100_000, 1_000_000), main_sids=20_000, engine_reps=5, hf_reps=2,
                     with_vllm=True,
                     sweep_args=("--sweep-step-s", "10", "--sweep-settle-s", "3"),
                     align_args=("--steps", "5", "--batch-size", "8", "--repeats", "1", "--prompt-tokens", "200"),
                     sid_index_args=("--sizes", "100000,1000000"), data_args=("--sessions", "100000"),
                     decoding_args=(), peak_matmul_n=2048, peak_stream_floats=1 << 25, step_timeout_s=900.0)


# ----------------------------------------------------------------------------------------------------- commands
def rel(path: Path | str) -> str:
    """``path`` relative to the repository root where it lies under it (commands read as run from the root);
    symbolic links are kept (``.venv/bin/python`` stays itself)."""
    p = Path(os.path.abspath(path))
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def python_exe() -> str:
    return rel(sys.executable)


@dataclass(frozen=True)
class Command:
    """A subprocess: its argv and the environment variables it sets (shown before it, as one would type it)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def shell(self) -> str:
        return " ".join([*(f"{k}={v}" for k, v in self.env), shlex.join(self.argv)])


def py(script: str, *args: str, threads: int = 1) -> Command:
    return Command((python_exe(), script, *args), (("OMP_NUM_THREADS", str(threads)),))


@dataclass
class StepResult:
    command: str
    returncode: int
    wall_s: float
    log: str
    error: str | None = None
    skipped: bool = False


def run_step(name: str, cmd: Command, out: Path, timeout_s: float, t0: float) -> StepResult:
    """Runs ``cmd`` from the repository root in its own process group, stdout and stderr to ``OUT/logs/<name>.log``;
    on timeout the whole group (the step's own children too) is killed. Never raises."""
    log_path = out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **dict(cmd.env), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"[{time.perf_counter() - t0:7.1f} s] {name}: {cmd.shell()}", flush=True)
    start = time.perf_counter()
    error = None
    with log_path.open("w") as log:
        proc = subprocess.Popen(list(cmd.argv), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
            if rc != 0:
                error = f"exited {rc}"
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            rc, error = -1, f"timed out after {timeout_s:.0f} s"
    wall = time.perf_counter() - start
    print(f"[{time.perf_counter() - t0:7.1f} s] {name}: {error or 'done'} in {wall:.1f} s", flush=True)
    return StepResult(cmd.shell(), rc, wall, rel(log_path), error)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------------------------ workers
def peak_worker(threads: Sequence[int], matmul_n: int, stream_floats: int, result: Path) -> None:
    """This machine's fp32 peaks at each thread count: best of 5 (GFLOP/s of ``n×n @ n×n``; GB/s of triad, copy)."""
    import torch

    peaks = []
    for t in threads:
        torch.set_num_threads(t)
        a, b = torch.randn(matmul_n, matmul_n), torch.randn(matmul_n, matmul_n)
        c = torch.empty(matmul_n, matmul_n)
        best_mm = _best(functools.partial(torch.mm, a, b, out=c))
        x, y, z = torch.rand(stream_floats), torch.rand(stream_floats), torch.empty(stream_floats)
        best_triad = _best(functools.partial(torch.add, x, y, alpha=3.0, out=z))
        best_copy = _best(functools.partial(z.copy_, x))
        nbytes = 4 * stream_floats
        peaks.append({"threads": t, "torch_threads": torch.get_num_threads(), "matmul_n": matmul_n,
                      "matmul_gflops": 2.0 * matmul_n ** 3 / best_mm / 1e9, "stream_floats": stream_floats,
                      "triad_gbps": 3 * nbytes / best_triad / 1e9, "copy_gbps": 2 * nbytes / best_copy / 1e9})
        print(peaks[-1], flush=True)
    result.write_text(json.dumps(peaks))


def _best(fn: Callable[[], object], reps: int = 5) -> float:
    """The fastest of ``reps`` timed calls, after one untimed (first touch of the memory)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def prepare_worker(work: Path, sizes: Sizes) -> None:
    """The tiny random bundle at ``WORK/bundle`` and a synthetic index per catalog size at ``WORK/catalog_<n>``."""
    import numpy as np

    cfg = gpu_bench.config_from_args(gpu_bench.parse_args(
        ["--device", "cpu", "--small", "--num-sids", str(sizes.main_sids), "--engines", "torch",
         "--server-engine", "none"]))
    gpu_bench.build_bundle(cfg, work)
    rng = np.random.default_rng(1)
    for n in sizes.catalogs:
        t0 = time.perf_counter()
        gpu_bench.synthetic_index(n, rng).save(work / f"catalog_{n}")
        print(f"catalog {n:,} SIDs: {time.perf_counter() - t0:.1f} s", flush=True)


class HfSearch:
    """Hugging Face constrained beam search: ``generate`` with a per-beam ``prefix_allowed_tokens_fn`` (a dict of
    SID prefix → allowed next tokens), returning the SID rows of the beams best first."""

    def __init__(self, model: Any, vocab: Any, index: Any) -> None:
        import numpy as np

        self.model, self.vocab, self.index = model, vocab, index
        tokens = np.asarray(index.sid_codes) + np.asarray(vocab.offsets)
        allowed: dict[tuple[int, ...], set[int]] = {}
        for row in tokens.tolist():
            for level in range(3):
                allowed.setdefault(tuple(row[:level]), set()).add(row[level])
        self.allowed = {k: sorted(v) for k, v in allowed.items()}

    def sid_rows(self, prompt: Sequence[int], width: int) -> list[int]:
        import numpy as np
        import torch
        from transformers import GenerationConfig

        plen = len(prompt)
        cfg = GenerationConfig(
            num_beams=width, num_return_sequences=width, do_sample=False, length_penalty=0.0, max_new_tokens=3,
            min_new_tokens=0, early_stopping=True, eos_token_id=self.vocab.eos_id, pad_token_id=self.vocab.eos_id,
            bos_token_id=None, temperature=None, top_k=None, top_p=None, use_cache=True)

        def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
            return self.allowed.get(tuple(ids[plen:].tolist()), [self.vocab.eos_id])

        with torch.inference_mode():
            out = self.model.generate(torch.tensor([list(prompt)]),
                                      attention_mask=torch.ones(1, plen, dtype=torch.long),
                                      generation_config=cfg, prefix_allowed_tokens_fn=allowed)
        codes = out[:, plen:].numpy() - np.asarray(self.vocab.offsets)
        return [int(r) for r in self.index.sid_rows_of_codes(codes)]


def engines_worker(kinds: Sequence[str], work: Path, sizes: Sizes, out: Path) -> None:
    """Each engine kind over the grid in turn (see the module docstring, step 3); ``OUT/engines_<kind>.json``."""
    for kind in kinds:
        engine_grid(kind, work, sizes, out / f"engines_{kind}.json")


def engine_grid(kind: str, work: Path, sizes: Sizes, result: Path) -> None:
    import numpy as np
    import torch

    from decoding.bundle import INDEX_DIR, load_bundle
    from decoding.engine import RetrievalRequest
    from sid_index.index import SidIndex

    torch.set_num_threads(1)
    bundle = load_bundle(work / "bundle", with_model=False)
    vocab = bundle.vocab
    rng = np.random.default_rng(7)
    longest = max(sizes.prompt_lens)
    prompts = [[int(t) for t in rng.integers(3, int(vocab.offsets[0]), size=longest)]
               for _ in range(max(sizes.engine_reps, sizes.hf_reps))]
    model = None
    if kind in ("torch", "hf"):
        from training.model import load_model

        model = load_model(bundle.model_dir)
    engines: list[Any] = []

    def searcher(index: Any, index_dir: Path) -> Callable[[Sequence[int], int], list[int]]:
        if kind == "hf":
            return HfSearch(model, vocab, index).sid_rows
        if kind == "torch":
            from decoding.torch_engine import TorchBeamEngine

            engine: Any = TorchBeamEngine(model, vocab, index)
        else:
            from decoding.vllm_config import VllmEngineConfig
            from decoding.vllm_engine import VllmBeamEngine

            engine = VllmBeamEngine(bundle.model_dir, vocab, index, index_dir, VllmEngineConfig())
        engines.append(engine)

        def rows(prompt: Sequence[int], width: int) -> list[int]:
            res = engine.retrieve_batch([RetrievalRequest(tuple(prompt), beam_width=width, top_k_items=10)])[0]
            return [h.sid_row for h in res.sids]

        return rows

    reps = sizes.hf_reps if kind == "hf" else sizes.engine_reps
    points: list[dict[str, Any]] = []

    def measure(grid: str, fn: Callable[[Sequence[int], int], list[int]], plen: int, width: int, n: int) -> None:
        fn(prompts[0][:plen], width)  # warm-up at this shape
        wall, cpu, top = [], [], []
        for p in prompts[:reps]:
            t0, c0 = time.perf_counter(), time.process_time()
            rows = fn(p[:plen], width)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            top.append(rows[:10])
        points.append({"grid": grid, "prompt_len": plen, "beam": width, "num_sids": n,
                       "seconds": statistics.median(wall), "cpu_seconds": statistics.median(cpu), "runs": wall,
                       "top10": top})
        print(f"{kind} {grid}: prompt {plen}, beam {width}, {n:,} SIDs: {1e3 * points[-1]['seconds']:.1f} ms",
              flush=True)

    t0 = time.perf_counter()
    main = searcher(bundle.index, bundle.path / INDEX_DIR)
    start_s = time.perf_counter() - t0
    n_main = int(bundle.index.num_sids)
    for plen in sizes.prompt_lens:
        measure("prompt", main, plen, BEAM, n_main)
    for width in sizes.beam_widths:
        measure("beam", main, 64, width, n_main)
    if kind != "hf":  # HF's cost does not depend on the catalog (the dict lookups are per beam either way)
        for n in sizes.catalogs:
            while engines:  # one engine at a time (vLLM's engine core holds process-global state)
                _close(engines.pop())
            directory = work / f"catalog_{n}"
            measure("catalog", searcher(SidIndex.load(directory), directory), 64, BEAM, n)
    while engines:
        _close(engines.pop())
    result.write_text(json.dumps({"engine": kind, "start_s": start_s, "num_sids": n_main, "points": points}))


def _close(engine: Any) -> None:
    close = getattr(engine, "close", None)
    if close is not None:
        close()


# ------------------------------------------------------------------------------------------------------ machine
def machine_info() -> dict[str, Any]:
    """lscpu's model, CPUs and threads per core; the load average; the busiest processes other than this one."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L3 cache"):
            info[key.strip()] = value.strip()
        if key.strip() == "Flags":
            info["avx512_bf16"] = "avx512_bf16" in value.split()
            info["amx"] = "amx_tile" in value.split()
    info["load_average"] = list(os.getloadavg())
    info["busy_processes"] = busy_processes()
    return info


def busy_processes(sample_s: float = 1.0, threshold: float = 5.0) -> list[str]:
    """Other processes using at least ``threshold`` % of a core over a ``sample_s`` sample (not ``ps``'s lifetime
    average: a paused or long-idle process is not busy), busiest first, at most 5."""
    import psutil

    me = os.getpid()
    procs = [p for p in psutil.process_iter(["pid", "name"]) if p.pid != me]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(sample_s)
    busy: list[tuple[float, str]] = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            pcpu = p.cpu_percent(None)
            if pcpu >= threshold:
                busy.append((pcpu, f"{p.info['name']} ({pcpu:.0f} %)"))
    return [text for _, text in sorted(busy, reverse=True)[:5]]


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (with local changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


# ------------------------------------------------------------------------------------------------------ markdown
@dataclass
class Doc:
    """The markdown being written: every table comes with the command that produced its numbers."""

    lines: list[str] = field(default_factory=list)
    images: dict[str, Path] = field(default_factory=dict)

    def heading(self, text: str, level: int = 2) -> None:
        self.lines += ["#" * level + " " + text, ""]

    def text(self, *paragraph: str) -> None:
        self.lines += [" ".join(paragraph), ""]

    def table(self, command: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.lines += [f"Command: `{command}`", "", "| " + " | ".join(header) + " |",
                       "|" + "---|" * len(header)]
        self.lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        self.lines.append("")

    def image(self, name: str, source: Path, alt: str) -> None:
        """Copies ``source`` to ``img/bench_<name>.png`` at write time and links it."""
        if source.is_file():
            self.images[f"bench_{name}.png"] = source
            self.lines += [f"![{alt}](img/bench_{name}.png)", ""]

    def failed(self, name: str, step: StepResult) -> None:
        """The step's outcome in place of its results: skipped (``--skip``) or FAILED with the reason and log."""
        if step.skipped:
            self.table(step.command, ("step", "result"), [(name, "not run (--skip)")])
        else:
            self.table(step.command, ("step", "result", "log"),
                       [(name, f"FAILED: {step.error or 'no result file'}", f"`{step.log}`")])

    def write(self, docs: Path) -> Path:
        (docs / "img").mkdir(parents=True, exist_ok=True)
        for name, source in self.images.items():
            shutil.copyfile(source, docs / "img" / name)
        path = docs / "benchmarks.md"
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text("\n".join(self.lines).rstrip() + "\n")
        os.replace(tmp, path)
        return path


def ms(seconds: float | None) -> str:
    """Milliseconds: one decimal below a second, whole above."""
    return "–" if seconds is None else f"{1e3 * seconds:.1f}" if seconds < 1 else f"{seconds * 1e3:,.0f}"


def num(value: Any, fmt: str = ",.1f") -> str:
    return "–" if value is None else format(value, fmt) if isinstance(value, int | float) else str(value)


def generic_rows(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every scalar of a JSON document as (path, value): the fallback when a benchmark's JSON changed shape."""
    if isinstance(data, dict):
        return [r for k, v in data.items() for r in generic_rows(v, f"{prefix}{k}.")]
    if isinstance(data, list) and data and all(isinstance(v, dict | list) for v in data):
        return [r for i, v in enumerate(data) for r in generic_rows(v, f"{prefix}{i}.")]
    if isinstance(data, list):
        return [(prefix.rstrip("."), ", ".join(num(v, ".4g") for v in data[:8]))]
    return [(prefix.rstrip("."), num(data, ".4g"))]


def render(doc: Doc, command: str, data: Any, renderer: Callable[[Doc, str, Any], None]) -> None:
    """``renderer`` on the benchmark's JSON, or every scalar of it when its shape is not the one expected."""
    mark = len(doc.lines)
    try:
        renderer(doc, command, data)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        del doc.lines[mark:]
        doc.text(f"(The JSON's layout changed ({type(exc).__name__}: {exc}); every value as written:)")
        doc.table(command, ("field", "value"), generic_rows(data)[:80])


# ------------------------------------------------------------------------------------------------------ the plan
@dataclass
class Context:
    """What the sections share: options, sizes, the steps' results, the machine's peaks, roofline points."""

    quick: bool
    out: Path
    work: Path
    sizes: Sizes
    t0: float
    skip: frozenset[str] = frozenset()
    render_only: bool = False
    note: str = ""
    steps: dict[str, StepResult] = field(default_factory=dict)
    peaks: dict[int, dict[str, float]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)  # measured runs for the roofline

    def add_run(self, name: str, shape: gpu_bench.ModelShape, shape_name: str, prompt_len: float, beam: int,
                seconds: float, threads: int, command: str) -> None:
        """A measured run for the roofline: one request of ``shape`` (prompt, beam) took ``seconds``."""
        count = gpu_bench.request_count(shape, max(1, round(prompt_len)), beam)
        self.runs.append({"run": name, "model": shape_name, "prompt_len": prompt_len, "beam": beam,
                          "seconds": seconds, "threads": threads, "flops": count.flops, "bytes": count.bytes,
                          "command": command})


@dataclass(frozen=True)
class Planned:
    """A step of the plan: ``needs_bundle`` steps wait for ``prepare``; ``ok_codes`` are exit codes that still
    produced results (a sweep exits 1 when no step met its targets)."""

    name: str
    cmd: Command
    needs_bundle: bool = False
    ok_codes: tuple[int, ...] = (0,)


def with_vllm(sizes: Sizes) -> bool:
    import importlib.util

    return sizes.with_vllm and importlib.util.find_spec("vllm") is not None


def plan(ctx: Context) -> list[Planned]:
    """Every subprocess of the report, in the order a full run takes them."""
    sizes, out, me = ctx.sizes, ctx.out, rel(__file__)
    quick = ("--quick",) if ctx.quick else ()
    kinds = ["torch", "hf"] + (["vllm"] if with_vllm(sizes) else [])
    steps = [Planned("peak", py(me, "--worker", "peak", "--threads", "1,2", "--matmul-n", str(sizes.peak_matmul_n),
                                "--stream-floats", str(sizes.peak_stream_floats), "--result",
                                rel(out / "peak.json"), threads=2)),
             Planned("prepare", py(me, "--worker", "prepare", "--work", rel(ctx.work), *quick))]
    steps += [Planned(f"engines_{k}", py(me, "--worker", "engines", "--engine", k, "--work", rel(ctx.work),
                                         "--result-dir", rel(out), *quick), needs_bundle=True) for k in kinds]
    steps.append(Planned("bench_decoding", py("benchmarks/bench_decoding.py", *sizes.decoding_args, "--out",
                                              rel(out / "bench_decoding"))))
    radgr = rel(Path(sys.executable).parent / "radgr")
    for engine in ["torch"] + (["vllm"] if with_vllm(sizes) else []):
        start = ("--sweep-start-qps", "2" if engine == "vllm" else "4")  # vLLM's capacity here is ~5x lower
        steps.append(Planned(f"sweep_{engine}", Command(
            (radgr, "loadtest", "--bundle", rel(ctx.work / "bundle"), "--engine", engine, "--sweep",
             *start, *sizes.sweep_args, "--client-cpus", "1", "--out", rel(out / f"sweep-{engine}")),
            (("OMP_NUM_THREADS", "1"),)), needs_bundle=True, ok_codes=(0, 1)))
    # align on one thread: with two, its many small parallel regions collapse (40x) whenever anything else takes a
    # turn on a core, which made the 2026-12-03 report read 1.58x for a 16x ratio (docs/benchmarks.md)
    for name, script, args, threads in (("align", "bench_align.py", sizes.align_args, 1),
                                        ("sid_index", "bench_sid_index.py", sizes.sid_index_args, 2),
                                        ("data", "bench_data.py", sizes.data_args, 1)):
        steps.append(Planned(name, py(f"benchmarks/{script}", *args, "--out", rel(out / name), threads=threads)))
    return steps


def run_plan(ctx: Context, steps: Sequence[Planned]) -> None:
    """Full mode: one step at a time, in order (each has the machine to itself). ``--quick``: three at a time
    (its times mean nothing), the bundle's users after ``prepare``."""
    import concurrent.futures as cf

    def run(step: Planned) -> None:
        if step.name in ctx.skip:
            ctx.steps[step.name] = StepResult(step.cmd.shell(), 0, 0.0, "", skipped=True)
            return
        if ctx.render_only:
            ctx.steps[step.name] = StepResult(step.cmd.shell(), 0, 0.0, rel(ctx.out / "logs" / f"{step.name}.log"))
            return
        res = run_step(step.name, step.cmd, ctx.out, ctx.sizes.step_timeout_s, ctx.t0)
        if res.returncode in step.ok_codes and res.error and res.error.startswith("exited"):
            res.error = None
        ctx.steps[step.name] = res

    if not ctx.quick or ctx.render_only:
        for step in steps:
            run(step)
        return
    with cf.ThreadPoolExecutor(max_workers=3) as pool:
        first = {s.name: pool.submit(run, s) for s in steps if not s.needs_bundle and s.name in ("peak", "prepare")}
        first["prepare"].result()
        rest = [pool.submit(run, s) for s in steps if s.name not in first]
        for f in [*first.values(), *rest]:
            f.result()
    ordered = {s.name: ctx.steps[s.name] for s in steps}
    ctx.steps.clear()
    ctx.steps.update(ordered)


# ------------------------------------------------------------------------------------------------------ sections
def section_machine(ctx: Context, doc: Doc) -> None:
    doc.heading(SECTIONS[0])
    step = ctx.steps["peak"]
    data = read_json(ctx.out / "peak.json")
    if step.error or data is None:
        doc.failed("peak", step)
        return
    ctx.peaks = {int(p["threads"]): p for p in data}
    doc.text("This machine's peak, measured with torch: the best of five fp32 matrix products",
             f"(n = {ctx.sizes.peak_matmul_n}), and of five STREAM-like triads `a = b + s·c` and copies over",
             f"arrays of {ctx.sizes.peak_stream_floats:,} floats (bytes = arrays read + written). These are the",
             "peaks the roofline section divides by, at each run's thread count. Command:",
             f"`{step.command}`.")
    doc.table(step.command, ("threads", "fp32 matmul GFLOP/s", "triad GB/s", "copy GB/s", "ridge FLOP/byte"),
              [(t, num(p["matmul_gflops"]), num(p["triad_gbps"]), num(p["copy_gbps"]),
                num(p["matmul_gflops"] / p["triad_gbps"], ".1f")) for t, p in sorted(ctx.peaks.items())])


def section_decoding(ctx: Context, doc: Doc) -> None:
    doc.heading(SECTIONS[1])
    prep = ctx.steps["prepare"]
    kinds = [k for k in ("torch", "hf", "vllm") if f"engines_{k}" in ctx.steps]
    results: dict[str, dict[str, Any]] = {}
    doc.heading("Engines vs Hugging Face constrained `generate`", 3)
    if prep.error:
        doc.failed("bundle", prep)
    for kind in kinds:
        step = ctx.steps[f"engines_{kind}"]
        data = read_json(ctx.out / f"engines_{kind}.json")
        if step.error or data is None:
            doc.failed(f"engine {kind}", step)
        else:
            results[kind] = data
    if "torch" in results:
        decoding_tables(ctx, doc, results, kinds)
    if "vllm" not in kinds:
        doc.text("The vLLM engine was not measured:",
                 "`--quick` skips it." if ctx.quick else "vLLM is not installed here.")

    doc.heading("`bench_decoding.py`: the PyTorch engine vs HF side by side", 3)
    out = ctx.out / "bench_decoding"
    step = ctx.steps["bench_decoding"]
    data = read_json(out / "decoding.json")
    if step.error or data is None:
        doc.failed("bench_decoding", step)
        return
    render(doc, step.command, data, lambda d, c, j: bench_decoding_tables(ctx, d, c, j))
    for png in sorted(out.glob("*.png")):
        doc.image(f"decoding_{png.stem}", png, f"bench_decoding {png.stem}")


ENGINE_NAMES = {"torch": "PyTorch engine", "vllm": "vLLM engine", "hf": "HF generate"}


def decoding_tables(ctx: Context, doc: Doc, results: dict[str, dict[str, Any]], kinds: Sequence[str]) -> None:
    config = json.loads((ctx.work / "bundle" / "model" / "config.json").read_text())
    shape = gpu_bench.ModelShape.from_config(config, 4)
    doc.text(f"The `tiny` preset with random weights ({shape.layers} layers, hidden {shape.hidden},",
             f"vocabulary {shape.vocab:,}), fp32, one thread per process, {results['torch']['num_sids']:,} SIDs",
             "(catalog sweep: synthetic indexes of each size), one request per call, median over requests of",
             "different random prompts; `top-10 = PyTorch's` counts the prompts on which an engine's ten best SIDs",
             f"are the PyTorch engine's, in the same order. The bundle: `{ctx.steps['prepare'].command}`.")

    def point(kind: str, grid: str, key: str, value: int) -> dict[str, Any] | None:
        return next((p for p in results.get(kind, {}).get("points", [])
                     if p["grid"] == grid and p[key] == value), None)

    def same(kind: str, grid: str, key: str, value: int) -> str:
        mine, ref = point(kind, grid, key, value), point("torch", grid, key, value)
        if mine is None or ref is None:
            return "–"
        pairs = list(zip(mine["top10"], ref["top10"], strict=False))
        return f"{sum(a == b for a, b in pairs)}/{len(pairs)}"

    present = [k for k in kinds if k in results]
    cmd = " ; ".join(ctx.steps[f"engines_{k}"].command for k in present)
    for grid, key, values, title in (
            ("prompt", "prompt_len", ctx.sizes.prompt_lens, f"prompt tokens (beam {BEAM})"),
            ("beam", "beam", ctx.sizes.beam_widths, "beam width (prompt 64)"),
            ("catalog", "num_sids", ctx.sizes.catalogs, f"SIDs (beam {BEAM}, prompt 64)")):
        here = [k for k in present if grid != "catalog" or k != "hf"]  # HF's cost does not depend on the catalog
        engines = [k for k in here if k != "hf"]
        with_hf = "hf" in here
        header = [title] + [f"{ENGINE_NAMES[k]} ms" for k in here]
        header += [f"HF / {ENGINE_NAMES[k]}" for k in engines if with_hf]
        header += [f"{ENGINE_NAMES[k]}: top-10 = PyTorch's (prompts)" for k in here if k != "torch"]
        rows = []
        for v in values:
            pts = {k: point(k, grid, key, v) for k in here}
            row: list[object] = [f"{v:,}", *(ms(p["seconds"]) if p else "–" for p in pts.values())]
            hf = pts.get("hf")
            for k in engines:
                p = pts[k]
                if with_hf:
                    row.append(f"{hf['seconds'] / p['seconds']:.1f}×" if hf and p else "–")
            row += [same(k, grid, key, v) for k in here if k != "torch"]
            rows.append(row)
            for k, p in pts.items():
                if p is not None:
                    ctx.add_run(f"{ENGINE_NAMES[k]}, {grid} {v:,}", shape, "tiny (fp32)", p["prompt_len"], p["beam"],
                                p["seconds"], 1, ctx.steps[f"engines_{k}"].command)
        doc.table(cmd, header, rows)
    plot_engines(ctx, results, present, ctx.out / "engines.png")
    doc.image("decoding_engines", ctx.out / "engines.png", "ms per request against prompt length, beam, catalog")


def plot_engines(ctx: Context, results: dict[str, dict[str, Any]], kinds: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (grid, key, label) in zip(axes, (("prompt", "prompt_len", f"prompt tokens (beam {BEAM})"),
                                             ("beam", "beam", "beam width (64-token prompt)"),
                                             ("catalog", "num_sids", f"SIDs in the catalog (beam {BEAM})")),
                                      strict=True):
        for kind in kinds:
            pts = [p for p in results[kind]["points"] if p["grid"] == grid]
            if pts:
                ax.plot([p[key] for p in pts], [1e3 * p["seconds"] for p in pts], "o-", label=ENGINE_NAMES[kind])
        ax.set_xscale("log", base=2 if grid != "catalog" else 10)
        if grid == "catalog":  # flat is the expected shape: a linear axis from 0 shows it as it is
            ax.set_ylim(bottom=0)
        else:
            ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("ms per request")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("tiny preset, random weights, one thread" + (" (--quick)" if ctx.quick else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# bench_decoding.py's model (its build_model): Qwen3, 4 layers x 256, 4 heads, 2 KV heads of 64, MLP 768
BENCH_DECODING_SHAPE = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 768}


def bench_decoding_tables(ctx: Context, doc: Doc, command: str, data: dict[str, Any]) -> None:
    """Its three parts, each where the run had it (``vs_hf``, ``beam_width``, ``catalog``)."""
    shape = None
    if data.get("model") == "Qwen3 4x256":
        shape = gpu_bench.ModelShape.from_config({**BENCH_DECODING_SHAPE, "vocab_size": data["vocab_size"]}, 4)
    if not any(k in data for k in ("vs_hf", "beam_width", "catalog")):
        raise KeyError("vs_hf, beam_width, catalog")
    rows = []
    for r in data.get("vs_hf", []):
        rows.append((r["prompt_len"], f"{r['num_sids']:,}", ms(r["hf_vec_s"]), ms(r.get("hf_prefix_fn_s")),
                     ms(r["ours_s"]), ms(r.get("ours_batched8_s")),
                     f"{r['batch8_speedup']:.2f}×" if "batch8_speedup" in r else "–", f"{r['ratio']:.1f}×",
                     f"{r['cpu_ratio']:.1f}×", r["same_sids_and_order"], f"{100 * r['masking_share']:.1f} %"))
        if shape is not None:
            ctx.add_run(f"bench_decoding, prompt {r['prompt_len']}", shape, "4x256 (fp32)", r["prompt_len"], BEAM,
                        r["ours_s"], 1, command)
    if rows:
        doc.table(command, ("prompt (beam 128)", "SIDs", "HF vectorised ms", "HF prefix fn ms", "ours ms",
                            "ours batched ×8 ms", "×8 vs 8 singles", "ratio", "CPU-time ratio", "same SIDs & order",
                            "masking"), rows)
    if data.get("beam_width"):
        doc.table(command, ("beam (prompt 64)", "HF ms", "ours ms", "ratio", "same"),
                  [(r["beam"], ms(r["hf_vec_s"]), ms(r["ours_s"]), f"{r['ratio']:.1f}×", r["same_sids_and_order"])
                   for r in data["beam_width"]])
    if data.get("catalog"):
        doc.table(command, ("SIDs (beam 128)", "ours ms", "masking ms", "masking share", "all valid"),
                  [(f"{r['num_sids']:,}", ms(r["ours_s"]), f"{r['masking_ms']:.2f}",
                    f"{100 * r['masking_share']:.1f} %", r["all_valid"]) for r in data["catalog"]])


def section_serving(ctx: Context, doc: Doc) -> None:
    doc.heading(SECTIONS[2])
    doc.text("`radgr loadtest --sweep` against `radgr serve` on the bundle of the decoding section (tiny preset,",
             "random weights), the request mix synthetic from the bundle, Locust pinned to one CPU, steps shorter",
             "than the default (see the command); table and plot as in `docs/serving.md`.")
    bundle = ctx.work / "bundle"
    if not (bundle / "manifest.json").is_file():
        doc.failed("serving", ctx.steps["prepare"])
        return
    shape = gpu_bench.ModelShape.from_config(json.loads((bundle / "model" / "config.json").read_text()), 4)
    for engine in ("torch", "vllm"):
        if f"sweep_{engine}" not in ctx.steps:
            continue
        out = ctx.out / f"sweep-{engine}"
        step = ctx.steps[f"sweep_{engine}"]
        data = read_json(out / "sweep.json")
        doc.heading(ENGINE_NAMES[engine], 3)
        if step.error or data is None:
            doc.failed(f"sweep {engine}", step)
            continue
        render(doc, step.command, data, lambda d, c, j: sweep_table(d, c, j))
        doc.image(f"sweep_{engine}", out / "sweep.png", f"capacity sweep, {ENGINE_NAMES[engine]}")
        plen, beam = mix_prompt_tokens(bundle, out / "mix.json")
        if data.get("capacity_qps") and plen:
            ctx.add_run(f"server at capacity, {ENGINE_NAMES[engine]}", shape, "tiny (fp32)", plen, beam,
                        1.0 / float(data["capacity_qps"]), 2, step.command)
    if "sweep_vllm" not in ctx.steps:
        doc.text("The vLLM engine's sweep was not run:",
                 "`--quick` skips it." if ctx.quick else "vLLM is not installed here.")


def sweep_table(doc: Doc, command: str, data: dict[str, Any]) -> None:
    doc.table(command, ("capacity req/s", "offered there", "p99 there ms", "first broke at offered", "because",
                        "Locust CPU %", "server CPU %"),
              [(num(data["capacity_qps"]), num(data["capacity_offered_qps"]), num(data["capacity_p99_ms"], ".0f"),
                num(data.get("broke_at_offered_qps")), data.get("broke_because") or "–",
                num(data["cpu"]["client"]["cpu_percent"]), num(data["cpu"]["server"]["cpu_percent"]))])
    doc.table(command, ("offered/s", "users", "goodput/s", "answered/s", "p50 ms", "p99 ms", "failed", "503", "504",
                        "CPU % client / server"),
              [(num(s["offered_qps"], ".3g"), s["users"], num(s["qps"]), num(s["answered_qps"]),
                num(s["p50_ms"], ".0f"), num(s["p99_ms"], ".0f"), num(s["failure_ratio"], ".3f"), s["shed"],
                s["timed_out"], f"{num(s['client_cpu_percent'])} / {num(s['server_cpu_percent'])}")
               for s in data["steps"]])


def mix_prompt_tokens(bundle: Path, mix: Path) -> tuple[float, int]:
    """Mean prompt tokens of a load test's mix under the bundle's prompt builder, and its largest beam width."""
    try:
        from decoding.bundle import load_bundle
        from decoding.prompt import encode_prompt
        from decoding.request_prompt import PromptBuilder

        b = load_bundle(bundle, with_model=False)
        data = json.loads(mix.read_text())
        builder = PromptBuilder(b.index, b.categorizer, b.prompt_config)
        lens = [len(encode_prompt(b.tokenizer, builder.build(r.get("query", ""), r.get("profile", {}),
                                                              r.get("history", [])).text))
                for r in data["requests"]]
        return statistics.mean(lens), max(int(w) for w in data.get("beam_widths", [BEAM]))
    except (OSError, KeyError, ValueError) as exc:
        print(f"mix prompt lengths: {exc}", flush=True)
        return 0.0, BEAM


def section_script(ctx: Context, doc: Doc, title: str, name: str, json_name: str,
                   renderer: Callable[[Doc, str, Any], None], intro: str) -> None:
    """A benchmark script's section: its JSON (in ``OUT/<name>``) rendered, its PNGs linked."""
    doc.heading(title)
    out = ctx.out / name
    step = ctx.steps[name]
    data = read_json(out / json_name)
    if step.error or data is None:
        doc.failed(name, step)
        return
    doc.text(intro)
    render(doc, step.command, data, renderer)
    for png in sorted(out.glob("*.png")):
        doc.image(f"{name}_{png.stem}", png, f"{name} {png.stem}")


def align_table(doc: Doc, command: str, data: dict[str, Any]) -> None:
    med, ratios = data["median"], data["ratios"]
    names = {"rad-dpo": "RAD-DPO (packed, no reference)", "dpo": "DPO (pairwise + reference)"}
    rows: list[Sequence[object]] = [
        (names.get(m, m), num(r["sessions_per_s"], ".2f"), num(r.get("sessions_per_s_end_to_end"), ".2f"),
         num(r["peak_rss_mb"], ",.0f"), num(r["peak_above_start_mb"], ",.0f")) for m, r in med.items()]
    rows.append(("ratio RAD-DPO / DPO", f"{ratios['throughput']:.2f}×", "", f"{ratios['peak_rss']:.2f}×",
                 f"{ratios['peak_above_start']:.2f}×"))
    doc.table(command, (f"method ({data.get('world', '')}; {data.get('throughput_basis', 'end to end')})",
                        "sessions/s", "sessions/s end to end", "peak RSS MB", "peak above start MB"), rows)


def sid_index_table(doc: Doc, command: str, data: list[dict[str, Any]]) -> None:
    doc.table(command, ("items", "SIDs", "build s", "peak RSS MiB", "peak heap MiB", "bytes/SID on disk", "load s",
                        "depth-1 prefixes M/s", "depth-2 prefixes M/s", "SID → items /s"),
              [(f"{r['items']:,}", f"{r['unique_sids']:,}", num(r["build_s"]), num(r["peak_rss_mib"], ",.0f"),
                num(r["peak_anon_mib"], ",.0f"), num(r["disk_bytes_per_sid"], ",.0f"), num(r["load_s"], ".2f"),
                num(r["prefix_depth1_per_s"] / 1e6, ".2f"), num(r["prefix_depth2_per_s"] / 1e6, ".2f"),
                num(r["sid_string_to_items_per_s"], ",.0f")) for r in data])


def data_table(doc: Doc, command: str, data: dict[str, Any]) -> None:
    doc.table(command, ("phase", "sessions", "seconds", "sessions/s", "peak RSS MiB"),
              [(r["phase"], f"{r['rows']:,}", num(r["seconds"]), num(r["per_second"], ",.0f"),
                num(r["peak_rss_mib"], ",.0f")) for r in data["phases"]])


def section_roofline(ctx: Context, doc: Doc) -> None:
    doc.heading(SECTIONS[6])
    cmd = f"{python_exe()} benchmarks/report.py" + (" --quick" if ctx.quick else "")
    shape = gpu_bench.preset_shape("1.7b", gpu_bench.QWEN3_VOCAB, 2)
    here = ({"matmul_gflops": max(p["matmul_gflops"] for p in ctx.peaks.values()),
             "triad_gbps": max(p["triad_gbps"] for p in ctx.peaks.values())} if ctx.peaks else None)
    doc.text("FLOPs and ideal bytes per request by `gpu_bench.phase_counts` (its docstring has the counting model):",
             "a retrieval is three forwards, the prefill (whose last logits choose the first SID token) and two",
             "decode steps of one row per beam over the shared prompt cache; bytes are the weights read once per",
             "forward, the KV cache written and read, and the logits written. The Qwen3-1.7B shape in bf16, the",
             "vocabulary padded to Qwen3's. Floors: max(FLOPs / peak FLOP/s, bytes / peak bytes/s) with this",
             "machine's best measured fp32 peaks (either thread count) and the RTX 4090's published ones. Command:",
             f"`{cmd}`.")
    peak_4090 = gpu_bench.RTX_4090
    here_peak = (gpu_bench.DevicePeak("this machine", here["matmul_gflops"] / 1e3, here["triad_gbps"], "measured")
                 if here else None)
    counts = gpu_bench.phase_counts(shape, 1, 200, BEAM)
    rows: list[Sequence[object]] = []
    for name, c in [*counts.items(), ("total", gpu_bench.request_count(shape, 200, BEAM))]:
        rows.append((name, num(c.flops / 1e9, ",.0f"), num(c.weight_bytes / 1e9, ".2f"), num(c.kv_bytes / 1e9, ".3f"),
                     num(c.logits_bytes / 1e9, ".3f"), num(c.bytes / 1e9, ".2f"), num(c.flops / c.bytes, ",.0f"),
                     ms(gpu_bench.roofline_seconds(c, here_peak)) if here_peak else "–",
                     ms(gpu_bench.roofline_seconds(c, peak_4090)), gpu_bench.bound_of(c, peak_4090)))
    doc.table(cmd, ("1.7B, prompt 200, beam 128", "GFLOP", "weights GB", "KV GB", "logits GB", "bytes GB",
                    "FLOP/byte", "floor here ms", "floor RTX 4090 ms", "bound on 4090"), rows)
    rows = []
    for plen in (32, 64, 128, 200, 256, 512):
        c = gpu_bench.request_count(shape, plen, BEAM)
        floor = gpu_bench.roofline_seconds(c, peak_4090)
        rows.append((plen, num(c.flops / 1e9, ",.0f"), num(c.bytes / 1e9, ".2f"), num(c.flops / c.bytes, ",.0f"),
                     ms(gpu_bench.roofline_seconds(c, here_peak)) if here_peak else "–", ms(floor),
                     num(peak_4090.tflops * 1e12 / c.flops, ",.0f")))
    doc.table(cmd, ("prompt tokens (1.7B, beam 128)", "GFLOP / request", "GB / request", "FLOP/byte",
                    "floor here ms", "floor RTX 4090 ms", "RTX 4090 req/s at 100 % of peak FLOP/s (batched)"), rows)
    if not ctx.runs or not ctx.peaks:
        return
    doc.text("Every measured run against this machine's peak at its thread count: the FLOPs and bytes its own model",
             "shape needs per request (same counting), divided by its measured time. Decoding engines and HF count",
             "the same useful work, so HF's copies of the prompt per beam show as a lower fraction; a server run",
             "is one request at its capacity (two cores) with the mix's mean prompt length.")
    rows = []
    for r in ctx.runs:
        peak = ctx.peaks.get(r["threads"]) or next(iter(ctx.peaks.values()))
        gflops, gbps = r["flops"] / r["seconds"] / 1e9, r["bytes"] / r["seconds"] / 1e9
        r.update(gflops=gflops, gbps=gbps, flops_fraction=gflops / peak["matmul_gflops"],
                 bytes_fraction=gbps / peak["triad_gbps"])
        rows.append((r["run"], r["model"], num(r["prompt_len"], ".0f"), r["beam"], r["threads"],
                     num(r["flops"] / 1e9, ".3f"), num(r["bytes"] / 1e6, ",.1f"), ms(r["seconds"]), num(gflops, ".2f"),
                     f"{100 * r['flops_fraction']:.2f} %", num(gbps, ".2f"), f"{100 * r['bytes_fraction']:.2f} %"))
    commands = sorted({r["command"] for r in ctx.runs})
    doc.table(" ; ".join(commands), ("run", "model", "prompt", "beam", "threads", "GFLOP / request", "MB / request",
                                     "ms", "GFLOP/s", "of peak FLOP/s", "GB/s", "of peak GB/s"), rows)
    plot_roofline(ctx, ctx.out / "roofline.png")
    doc.image("roofline", ctx.out / "roofline.png", "roofline of this machine with every measured run")


def plot_roofline(ctx: Context, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    x = np.logspace(-1, 3, 200)
    for threads, p in sorted(ctx.peaks.items()):
        ax.plot(x, np.minimum(p["matmul_gflops"], x * p["triad_gbps"]), "--", label=f"peak, {threads} thread(s)")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in ctx.runs:
        if "gflops" in r:
            groups.setdefault(f"{r['run'].split(',')[0]} ({r['model']})", []).append(r)
    for label, pts in groups.items():
        ax.scatter([r["flops"] / r["bytes"] for r in pts], [r["gflops"] for r in pts], label=label, alpha=0.7,
                   marker="s" if "4x256" in label else "o")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, counted)")
    ax.set_ylabel("GFLOP/s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("this machine's roofline and the measured runs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def header(ctx: Context, before: dict[str, Any], after: dict[str, Any], started: str, wall_s: float,
           command: str) -> list[str]:
    """The header lines (inserted at the top once the run is over)."""
    load = before["load_average"]
    loaded = bool(before["busy_processes"])
    head = Doc()
    head.heading("Benchmarks", 1)
    head.text("Generated by `benchmarks/report.py`: every number below sits under the exact command that produced",
              "it (run from the repository root); outputs and logs under the report's `--out`. Absolute CPU times",
              "depend on the machine and its load; ratios are measured side by side in one run. Regenerate with:",
              f"`{command}`.")
    head.table(command, ("field", "value"), [
        ("date (UTC, start)", started), ("git commit", git_commit()),
        ("machine", f"{before.get('Model name', 'unknown CPU')}"),
        ("CPUs / threads per core", f"{before.get('CPU(s)', before['cpu_count'])} / "
                                    f"{before.get('Thread(s) per core', '?')}"),
        ("L3 cache", before.get("L3 cache", "?")),
        ("AVX-512 BF16 / AMX", f"{before.get('avx512_bf16', '?')} / {before.get('amx', '?')}"),
        ("load average before (1, 5, 15 min)", ", ".join(f"{v:.2f}" for v in load)),
        ("busy processes before (≥ 5 % of a core over 1 s)", "; ".join(before["busy_processes"]) or "none"),
        ("anything else running?", "yes: the machine was loaded, times are pessimistic" if loaded else
         "no (no other process used 5 % of a core)"),
        ("load average after (1, 5, 15 min)", ", ".join(f"{v:.2f}" for v in after["load_average"])),
        ("mode", ("--quick (tiny sizes: a check that the report runs, not a measurement)" if ctx.quick else "full")
         + (", markdown rebuilt with --render-only from earlier results" if ctx.render_only else "")),
        ("total wall time", f"{wall_s / 60:.1f} min"),
        ("failed steps", ", ".join(n for n, s in ctx.steps.items() if s.error) or "none"),
        ("skipped steps (--skip)", ", ".join(n for n, s in ctx.steps.items() if s.skipped) or "none"),
        *((("note", ctx.note),) if ctx.note else ()),
    ])
    step_rows = [(n, "–" if ctx.render_only or s.skipped else f"{s.wall_s:.1f}",
                  "not run (--skip)" if s.skipped else s.error or "ok", f"`{s.log}`") for n, s in ctx.steps.items()]
    head.heading("Steps", 3)
    head.table(command, ("step", "wall s", "result", "log"), step_rows)
    return head.lines


# --------------------------------------------------------------------------------------------------------- main
def run_report(quick: bool, out: Path, docs: Path, skip: frozenset[str] = frozenset(),
               render_only: bool = False, note: str = "") -> int:
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    before = machine_info()
    print(f"load average before: {before['load_average']}; busy: {before['busy_processes']}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick, out, out / "work", Sizes.for_mode(quick), t0, skip, render_only, note)
    steps = plan(ctx)
    unknown = skip - {s.name for s in steps}
    if unknown:
        print(f"report: --skip names no step: {', '.join(sorted(unknown))} (steps: "
              f"{', '.join(s.name for s in steps)})", file=sys.stderr)
        return 2
    run_plan(ctx, steps)
    doc = Doc()
    section_machine(ctx, doc)
    section_decoding(ctx, doc)
    section_serving(ctx, doc)
    section_script(ctx, doc, SECTIONS[3], "align", "bench_align.json", align_table,
                   "Packed, reference-free RAD-DPO against pairwise DPO with its reference model, through the same "
                   "training engine on a synthetic tiny-preset world, each run in its own process (see the script's "
                   "docstring).")
    section_script(ctx, doc, SECTIONS[4], "sid_index", "results.json", sid_index_table,
                   "Index build from synthetic text-like embeddings, memory, size on disk, load and lookups.")
    section_script(ctx, doc, SECTIONS[5], "data", "bench_data.json", data_table,
                   "Simulated sessions per second and samples built per second, each phase in its own process.")
    section_roofline(ctx, doc)
    wall = time.perf_counter() - t0
    command = f"{python_exe()} benchmarks/report.py" + (" --quick" if quick else "")
    doc.lines[:0] = header(ctx, before, machine_info(), started, wall, command)
    path = doc.write(docs)
    (out / "report.json").write_text(json.dumps({
        "started": started, "wall_s": wall, "quick": quick, "machine_before": before,
        "peaks": ctx.peaks, "runs": ctx.runs,
        "steps": {n: {"command": s.command, "wall_s": s.wall_s, "error": s.error, "log": s.log}
                  for n, s in ctx.steps.items()}}, indent=1))
    failed = [n for n, s in ctx.steps.items() if s.error]
    print(f"wrote {path} and {len(doc.images)} PNGs in {wall / 60:.1f} min; failed steps: {failed or 'none'}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, no vLLM: checks the report runs (~1 min)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "report", help="outputs and logs of every step")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="benchmarks.md and img/bench_*.png go here")
    ap.add_argument("--skip", default="", help="comma-separated steps not to run, e.g. bench_decoding,sweep_vllm "
                    "(their sections say so)")
    ap.add_argument("--render-only", action="store_true", help="rewrite the markdown from OUT's results without "
                    "running anything (steps' wall times are then not known)")
    ap.add_argument("--note", default="", help="a line for the header (how this run differed, e.g. what else ran)")
    ap.add_argument("--worker", choices=("peak", "prepare", "engines"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="1", help=argparse.SUPPRESS)
    ap.add_argument("--matmul-n", type=int, default=2048, help=argparse.SUPPRESS)
    ap.add_argument("--stream-floats", type=int, default=1 << 25, help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)  # comma-separated: torch, vllm, hf
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker == "peak":
        peak_worker([int(t) for t in args.threads.split(",")], args.matmul_n, args.stream_floats, args.result)
    elif args.worker == "prepare":
        prepare_worker(args.work, Sizes.for_mode(args.quick))
    elif args.worker == "engines":
        engines_worker(args.engine.split(","), args.work, Sizes.for_mode(args.quick), args.result_dir)
    else:
        skip = frozenset(n for n in args.skip.split(",") if n)
        return run_report(args.quick, Path(os.path.abspath(args.out)), Path(os.path.abspath(args.docs)), skip,
                          args.render_only, args.note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
