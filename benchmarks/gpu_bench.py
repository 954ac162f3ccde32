"""GPU benchmark: a random Qwen3-1.7B-shaped model with SID tokens over a synthetic 1M-SID index, both engines.

Usage::

    .venv/bin/python benchmarks/gpu_bench.py --out runs/gpu_bench              # one CUDA GPU, under 10 minutes
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/gpu_bench.py --device cpu --small --out runs/gpu_bench_small

Self-contained: nothing is downloaded and no trained weights are needed (speed does not depend on the weights'
values). Steps, in order, each printed with the seconds elapsed:

1. **Bundle**: radgr's BPE tokenizer with every SID token (codebooks 256³), a randomly initialised model of the
   ``1.7b`` preset (Qwen3-1.7B's shape, vocabulary padded to Qwen3's 151,936 rows; bf16 on CUDA), a synthetic index
   of ``--num-sids`` random unique SIDs (one item each), a query categorizer; written with
   :func:`decoding.bundle.write_bundle` into ``--workdir`` (a temporary directory unless given).
2. **Engines**, each in its own process (GPU memory and peaks per engine): the PyTorch engine always, the vLLM
   engine where vLLM is installed (``--engines`` to choose). In each: a calibration (a large matrix product and a
   large copy: the achievable FLOP/s and bytes/s), then at beam ``--beam`` (128) for every batch in ``--batches``
   (1, 2, 4, 8, 16, 32 requests of ``--prompt-tokens`` (200) random text tokens): **end-to-end** latency of one
   ``retrieve_batch`` (median of ``--reps``) and requests/s; **phases**: PyTorch: the three model forwards of the
   search timed apart with device synchronisation (prefill, decode step 1, decode step 2: the exact inputs
   :func:`decoding.beam_search.beam_search` builds); vLLM: the engine's own per-level wall times (level 0 =
   prefill, levels 1-2 = the decode steps, vLLM's host work included). Peak memory:
   ``torch.cuda.max_memory_allocated`` (vLLM preallocates its KV cache: ``--gpu-memory-utilization``), RSS on CPU.
3. **Server**: ``radgr serve --bundle B --engine vllm|torch`` (``--server-engine auto``: vLLM where its engine
   process above worked, else PyTorch) in a subprocess: ready time,
   sequential and concurrent beam-``--beam`` requests over HTTP; then, when ``radgr loadtest`` exists
   (``cli/loadtest_cmd.py``), Locust's ``gpu-4090`` profile against it (on ``--small`` only with
   ``--with-loadtest``, profile ``cpu-smoke``). Skipped steps say why.
4. **Report**: a table on stdout, ``OUT/gpu_bench.json`` and ``OUT/gpu_bench.png`` (latency and requests/s against
   batch size, measured and predicted for an RTX 4090).

Counting (model FLOPs and ideal bytes, the same for both engines; :func:`phase_counts`): per token,
2 × (non-embedding parameters) FLOPs, plus 2 × hidden × vocab for each position whose logits are computed (the
prompt's last token; every beam token), plus attention 4 × layers × heads × head_dim × keys seen (causal prompt;
a beam token sees its prompt, its ancestors and itself). Bytes: every linear weight once per forward (embedding
rows gathered are negligible), the KV cache read once per request and written once, and the logits written once.
Achieved FLOP/s and bytes/s = counts / measured seconds, as a fraction of the
device's peak: published spec for known GPUs (:data:`KNOWN_GPUS`, by ``torch.cuda.get_device_name``),
``--peak-tflops`` / ``--peak-gbps``, or else the calibration's measured figures (CPU).

RTX 4090 prediction (roofline ratio): the 4090's published spec, 165.2 TFLOP/s dense bf16 tensor with FP32
accumulate and 1,008 GB/s (:data:`RTX_4090`). A phase's roofline time on a device is max(F / peak FLOP/s,
B / peak bytes/s); each measured phase is scaled by roofline(4090) / roofline(this device), i.e. by the ratio of
this device's peak to the 4090's on whichever axis bounds the phase (it assumes the same fraction of peak on both
devices); the rest of the end-to-end time (the full-vocabulary log-softmax, trie selection, host work, results →
items) is kept as measured. From a CPU run the prediction only exercises the code: a CPU says nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

    from sid_index.index import SidIndex

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CODEBOOKS = (256, 256, 256)
QWEN3_VOCAB = 151_936  # vocab_size of Qwen/Qwen3-1.7B's config.json (the LM head's rows)
TARGET_QPS = 15.0  # the service's target on one RTX 4090: 1.7B model, beam 128
FITS_4090_BYTES = 22 * 2**30  # the 4090's 24 GiB less room for the CUDA context and allocator slack
ENGINE_KINDS = ("torch", "vllm")
SERVER_ENGINES = ("auto", "torch", "vllm", "none")
T0_ENV = "GPU_BENCH_T0"  # the run's start (epoch seconds): one clock for the run and its engine processes


def elapsed() -> float:
    return time.time() - float(os.environ.setdefault(T0_ENV, repr(time.time())))


def log(msg: str) -> None:
    print(f"[{elapsed():7.1f} s] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------- device peaks
@dataclass(frozen=True)
class DevicePeak:
    """Peak dense bf16 tensor FLOP/s (FP32 accumulate) and memory bandwidth of a device, with their source."""

    name: str
    tflops: float
    gbps: float
    source: str

    def __post_init__(self) -> None:
        if not self.tflops > 0:
            raise ValueError(f"tflops must be > 0, given {self.tflops}")
        if not self.gbps > 0:
            raise ValueError(f"gbps must be > 0, given {self.gbps}")


_SPEC = "published spec (NVIDIA datasheet/whitepaper; dense bf16 tensor, FP32 accumulate, no sparsity)"
RTX_4090 = DevicePeak("NVIDIA GeForce RTX 4090", 165.2, 1008.0,
                      "published spec: NVIDIA Ada Lovelace architecture whitepaper, RTX 4090: 165.2 TFLOP/s FP16/BF16 "
                      "tensor with FP32 accumulate, dense (330.3 with FP16 accumulate; 82.6 is FP32 non-tensor), "
                      "1,008 GB/s GDDR6X (21 Gbps x 384 bit)")
# (pattern on torch.cuda.get_device_name, peak); the first match wins, so specific names come first
KNOWN_GPUS: tuple[tuple[str, DevicePeak], ...] = (
    (r"H200 NVL", DevicePeak("H200 NVL", 835.5, 4800.0, _SPEC)),
    (r"H200", DevicePeak("H200 SXM", 989.5, 4800.0, _SPEC)),
    (r"H100 NVL", DevicePeak("H100 NVL", 835.5, 3900.0, _SPEC)),
    (r"H100.*PCIe", DevicePeak("H100 PCIe", 756.5, 2000.0, _SPEC)),
    (r"H100", DevicePeak("H100 SXM", 989.5, 3350.0, _SPEC)),
    (r"A100.*80GB.*PCIe", DevicePeak("A100 80GB PCIe", 312.0, 1935.0, _SPEC)),
    (r"A100.*80GB", DevicePeak("A100 80GB SXM", 312.0, 2039.0, _SPEC)),
    (r"A100", DevicePeak("A100 40GB", 312.0, 1555.0, _SPEC)),
    (r"L40S", DevicePeak("L40S", 362.05, 864.0, _SPEC)),
    (r"L40\b", DevicePeak("L40", 181.05, 864.0, _SPEC)),
    (r"\bL4\b", DevicePeak("L4", 121.0, 300.0, _SPEC)),
    (r"RTX 4090", RTX_4090),
    (r"RTX 5090", DevicePeak("GeForce RTX 5090", 209.5, 1792.0, _SPEC)),
    (r"RTX 3090", DevicePeak("GeForce RTX 3090", 71.0, 936.0, _SPEC)),
    (r"\bA10\b", DevicePeak("A10", 125.0, 600.0, _SPEC)),
)


def known_peak(device_name: str) -> DevicePeak | None:
    """The published peak of a GPU by its ``torch.cuda.get_device_name``, or ``None`` when not in the table."""
    for pattern, peak in KNOWN_GPUS:
        if re.search(pattern, device_name):
            return peak
    return None


def resolve_peak(device_name: str, cuda: bool, calibration: dict[str, float], peak_tflops: float | None,
                 peak_gbps: float | None) -> DevicePeak:
    """Per axis: the option if given, else the published figure of a known GPU, else the calibration's measurement."""
    table = known_peak(device_name) if cuda else None
    measured = "measured here (calibration: large matrix product / large copy)"
    tflops, t_src = ((peak_tflops, "--peak-tflops") if peak_tflops else
                     (table.tflops, table.source) if table else (calibration["matmul_tflops"], measured))
    gbps, g_src = ((peak_gbps, "--peak-gbps") if peak_gbps else
                   (table.gbps, table.source) if table else (calibration["copy_gbps"], measured))
    source = t_src if t_src == g_src else f"FLOP/s: {t_src}; bytes/s: {g_src}"
    return DevicePeak(device_name, float(tflops), float(gbps), source)


# ------------------------------------------------------------------------------------------------- counting model
@dataclass(frozen=True)
class ModelShape:
    """What the FLOP and byte counts need of a Qwen3 config; ``dtype_bytes`` for weights, KV and logits."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    dtype_bytes: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, given {value}")

    @staticmethod
    def from_config(config: dict[str, Any], dtype_bytes: int) -> ModelShape:
        return ModelShape(int(config["num_hidden_layers"]), int(config["hidden_size"]),
                          int(config["num_attention_heads"]), int(config["num_key_value_heads"]),
                          int(config["head_dim"]), int(config["intermediate_size"]), int(config["vocab_size"]),
                          dtype_bytes)

    @property
    def body_params(self) -> int:
        """Linear weights of the transformer layers (q, k, v, o, gate, up, down; norms are negligible)."""
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return self.layers * (attn + 3 * self.hidden * self.intermediate)

    @property
    def head_params(self) -> int:
        return self.hidden * self.vocab

    @property
    def weight_bytes_per_forward(self) -> int:
        """Every linear weight once (the LM head included; the embedding rows a forward gathers are negligible)."""
        return (self.body_params + self.head_params) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def attention_flops(self, queries: int, keys_each: float) -> float:
        """QKᵀ and PV for ``queries`` tokens that each see ``keys_each`` keys."""
        return 4.0 * self.layers * self.heads * self.head_dim * queries * keys_each


@dataclass(frozen=True)
class PhaseCount:
    """Model FLOPs and ideal bytes of one forward; ``bytes`` is the total, the other three its parts (weights read,
    KV cache written and read, logits written), 0 where a caller gives only the total."""

    flops: float
    bytes: float
    weight_bytes: float = 0.0
    kv_bytes: float = 0.0
    logits_bytes: float = 0.0


def preset_shape(preset: str, vocab_size: int, dtype_bytes: int) -> ModelShape:
    """The counting shape of a :data:`training.model.PRESETS` model with ``vocab_size`` rows (shared with
    ``benchmarks/report.py``'s roofline)."""
    from training.model import preset_config

    return ModelShape.from_config(preset_config(preset, vocab_size).to_dict(), dtype_bytes)


def request_count(shape: ModelShape, prompt_tokens: int, beam: int, batch: int = 1) -> PhaseCount:
    """The three forwards of :func:`phase_counts` summed: one beam search over ``batch`` requests."""
    parts = phase_counts(shape, batch, prompt_tokens, beam).values()
    return PhaseCount(*(sum(getattr(c, f) for c in parts) for f in
                        ("flops", "bytes", "weight_bytes", "kv_bytes", "logits_bytes")))


def phase_counts(shape: ModelShape, batch: int, prompt_tokens: int, beam: int) -> dict[str, PhaseCount]:
    """Model FLOPs and ideal bytes of the three forwards of one beam search over ``batch`` requests.

    ``prefill``: ``batch × P`` tokens, logits at the last token only, causal attention (token ``i`` sees ``i + 1``
    keys). ``step1`` / ``step2``: ``batch × beam`` tokens, logits at every one, each sees ``P + s`` keys (prompt,
    ancestors, itself); the prompt's KV is read once per request (shared by its beams), then the previous levels'.
    """
    p, w = prompt_tokens, shape.weight_bytes_per_forward
    kv = 2.0 * batch * p * shape.kv_bytes_per_token
    logits = batch * shape.vocab * shape.dtype_bytes
    prefill = PhaseCount(
        flops=2.0 * shape.body_params * batch * p + 2.0 * shape.head_params * batch
        + shape.attention_flops(batch * p, (p + 1) / 2),
        bytes=w + kv + logits, weight_bytes=w, kv_bytes=kv, logits_bytes=logits,
    )
    counts = {"prefill": prefill}
    for step in (1, 2):
        rows = batch * beam
        kv = batch * (p + (step - 1) * beam + beam) * shape.kv_bytes_per_token
        logits = rows * shape.vocab * shape.dtype_bytes
        counts[f"step{step}"] = PhaseCount(
            flops=2.0 * (shape.body_params + shape.head_params) * rows + shape.attention_flops(rows, p + step),
            bytes=w + kv + logits, weight_bytes=w, kv_bytes=kv, logits_bytes=logits,
        )
    return counts


def roofline_seconds(count: PhaseCount, peak: DevicePeak) -> float:
    """The faster-is-impossible time of a phase on a device: max(FLOPs / peak FLOP/s, bytes / peak bytes/s)."""
    return max(count.flops / (peak.tflops * 1e12), count.bytes / (peak.gbps * 1e9))


def bound_of(count: PhaseCount, peak: DevicePeak) -> str:
    return "compute" if count.flops / (peak.tflops * 1e12) >= count.bytes / (peak.gbps * 1e9) else "memory"


def predict_seconds(measured_s: float, count: PhaseCount, here: DevicePeak, target: DevicePeak) -> float:
    """``measured_s`` × roofline(target) / roofline(here): the ratio of the bounding axis's peaks (see module doc)."""
    return measured_s * roofline_seconds(count, target) / roofline_seconds(count, here)


# ------------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BenchConfig:
    """Everything a run measures with; the children read it back from JSON. Bounds are checked here."""

    small: bool
    device: str
    preset: str
    vocab_size: int  # the model's rows; 0 = the tokenizer's size
    num_sids: int
    prompt_tokens: int
    beam: int
    batches: tuple[int, ...]
    reps: int
    engines: tuple[str, ...]
    server_engine: str
    with_loadtest: bool
    loadtest_profile: str
    loadtest_args: tuple[str, ...]
    peak_tflops: float | None
    peak_gbps: float | None
    gpu_memory_utilization: float
    vllm_max_num_seqs: int
    child_timeout_s: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device):
            raise ValueError(f"device must be cpu, cuda or cuda:N, given {self.device!r}")
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size must be >= 0 (0 = the tokenizer's size), given {self.vocab_size}")
        if not 1 <= self.num_sids <= CODEBOOKS[0] * CODEBOOKS[1] * CODEBOOKS[2]:
            raise ValueError(f"num_sids must be in [1, {CODEBOOKS[0] * CODEBOOKS[1] * CODEBOOKS[2]}], "
                             f"given {self.num_sids}")
        if not 1 <= self.prompt_tokens <= 1000:
            raise ValueError(f"prompt_tokens must be in [1, 1000] (the vLLM context is 1024), "
                             f"given {self.prompt_tokens}")
        if not 1 <= self.beam <= 128:
            raise ValueError(f"beam must be in [1, 128], given {self.beam}")
        if not self.batches or min(self.batches) < 1 or list(self.batches) != sorted(set(self.batches)):
            raise ValueError(f"batches must be distinct sizes >= 1 in ascending order, given {self.batches}")
        if self.reps < 1:
            raise ValueError(f"reps must be >= 1, given {self.reps}")
        if not self.engines or any(e not in ENGINE_KINDS for e in self.engines):
            raise ValueError(f"engines must name some of {', '.join(ENGINE_KINDS)}, given {self.engines}")
        if self.server_engine not in SERVER_ENGINES:
            raise ValueError(f"server_engine must be one of {', '.join(SERVER_ENGINES)}, given {self.server_engine!r}")
        for name in ("peak_tflops", "peak_gbps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, given {value}")
        if not 0.05 <= self.gpu_memory_utilization <= 0.99:
            raise ValueError(f"gpu_memory_utilization must be in [0.05, 0.99], given {self.gpu_memory_utilization}")
        if self.vllm_max_num_seqs < 1:
            raise ValueError(f"vllm_max_num_seqs must be >= 1, given {self.vllm_max_num_seqs}")
        if not self.child_timeout_s > 0:
            raise ValueError(f"child_timeout_s must be > 0, given {self.child_timeout_s}")

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def dtype_name(self) -> Literal["bfloat16", "float32"]:
        """bf16 on CUDA (vLLM dtype bfloat16); float32 on CPU (bf16 reorders near-ties there, see vllm_config)."""
        return "bfloat16" if self.cuda else "float32"

    @property
    def dtype_bytes(self) -> int:
        return 2 if self.cuda else 4

    @staticmethod
    def from_json(data: dict[str, Any]) -> BenchConfig:
        fields = dict(data)
        for key in ("batches", "engines", "loadtest_args"):
            fields[key] = tuple(fields[key])
        return BenchConfig(**fields)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The mode's defaults (full: the CUDA run; ``--small``: the CPU check), then whatever the options set."""
    small = bool(args.small)

    def pick(value: Any, full: Any, tiny: Any) -> Any:
        return value if value is not None else (tiny if small else full)

    from decoding.engine_factory import vllm_installed

    engines = tuple(args.engines.split(",")) if args.engines else (
        ("torch", "vllm") if vllm_installed() else ("torch",))
    batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else (
        (1, 2) if small else (1, 2, 4, 8, 16, 32))
    return BenchConfig(
        small=small, device=args.device, preset=pick(args.preset, "1.7b", "tiny"),
        vocab_size=pick(args.vocab_size, QWEN3_VOCAB, 0), num_sids=pick(args.num_sids, 1_000_000, 5_000),
        prompt_tokens=pick(args.prompt_tokens, 200, 32), beam=args.beam, batches=batches,
        reps=args.reps, engines=engines,
        server_engine=pick(args.server_engine, "auto", "torch"), with_loadtest=bool(args.with_loadtest),
        loadtest_profile=pick(args.loadtest_profile, "gpu-4090", "cpu-smoke"),
        loadtest_args=tuple(shlex.split(args.loadtest_args or "")), peak_tflops=args.peak_tflops,
        peak_gbps=args.peak_gbps, gpu_memory_utilization=args.gpu_memory_utilization,
        vllm_max_num_seqs=pick(args.vllm_max_num_seqs, 1024, 256),
        child_timeout_s=pick(args.child_timeout_s, 600.0, 300.0), seed=args.seed,
    )


# --------------------------------------------------------------------------------------------------------- bundle
WORDS = ("cordless", "drill", "battery", "tape", "roll", "glue", "saw", "blade", "safety", "gloves", "led", "light",
         "screws", "steel", "wood", "hammer", "wrench", "set", "pack", "heavy", "duty", "black", "red", "inch")


def build_bundle(cfg: BenchConfig, work: Path) -> tuple[Path, dict[str, Any]]:
    """Tokenizer + random model + synthetic index + categorizer → a bundle under ``work`` (see module docstring)."""
    import numpy as np
    import torch
    from transformers import Qwen3ForCausalLM

    from decoding.bundle import write_bundle
    from decoding.hard_search import QueryCategorizer
    from training.model import num_parameters, preset_config, save_model_dir
    from training.tokenizer import build_tokenizer

    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(400)]
    tok = build_tokenizer(texts, CODEBOOKS, vocab_size=2048)
    vocab_size = max(len(tok), cfg.vocab_size)
    mcfg = preset_config(cfg.preset, vocab_size, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(cfg.seed)
    with torch.device(cfg.device):  # initialised where it runs: seconds on a GPU for 1.7B parameters
        model = Qwen3ForCausalLM(mcfg)
    model.to(getattr(torch, cfg.dtype_name)).eval()
    params = num_parameters(model)
    save_model_dir(model, tok, work / "model", {"method": "random-init", "preset": cfg.preset,
                                                "note": "random weights: for speed measurements only"})
    del model
    if cfg.cuda:
        torch.cuda.empty_cache()
    log(f"model: {cfg.preset} preset, {params / 1e6:.1f}M parameters, vocab {vocab_size}, {cfg.dtype_name} "
        f"({time.perf_counter() - t0:.1f} s)")
    t1 = time.perf_counter()
    index_dir = synthetic_index(cfg.num_sids, rng).save(work / "index")
    log(f"index: {cfg.num_sids:,} SIDs over codebooks {CODEBOOKS}, one item each ({time.perf_counter() - t1:.1f} s)")
    t2 = time.perf_counter()
    cat = QueryCategorizer.fit([("cordless drill", "drill"), ("drill battery", "drill"), ("tape roll", "tape"),
                                ("glue tape", "tape")])
    bundle = write_bundle(work / "bundle", work / "model", index_dir, cat.save(work / "query_categorizer.json"),
                          {"method": "random-init", "data": "synthetic", "steps": 0, "metrics": {}},
                          name=f"gpu-bench-{cfg.preset}", overwrite=True)
    shutil.rmtree(work / "model")
    shutil.rmtree(index_dir)
    log(f"bundle written to {bundle} ({time.perf_counter() - t2:.1f} s)")
    return bundle, {"path": str(bundle), "parameters": params, "vocab_size": vocab_size, "tokenizer_size": len(tok),
                    "build_s": time.perf_counter() - t0}


def item_ids(n: int) -> list[str]:
    return [f"item{r:07d}" for r in range(n)]


def synthetic_index(num_sids: int, rng: np.random.Generator) -> SidIndex:
    """A :class:`sid_index.index.SidIndex` of ``num_sids`` random unique SIDs over :data:`CODEBOOKS`, one item each
    (categories drill/tape alternating, random popularity)."""
    import numpy as np

    from sid_index.index import SidIndex

    space = CODEBOOKS[0] * CODEBOOKS[1] * CODEBOOKS[2]
    keys = np.sort(rng.choice(space, size=num_sids, replace=False))
    codes = np.stack([keys // (CODEBOOKS[1] * CODEBOOKS[2]), (keys // CODEBOOKS[2]) % CODEBOOKS[1],
                      keys % CODEBOOKS[2]], axis=1)
    categories = ["drill" if r % 2 == 0 else "tape" for r in range(num_sids)]
    return SidIndex.from_codes(item_ids(num_sids), codes, rng.random(num_sids) * 10, categories, CODEBOOKS)


# ---------------------------------------------------------------------------------------------- engine processes
def device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(torch.device(device)))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def calibrate(cfg: BenchConfig) -> dict[str, float]:
    """Achievable FLOP/s (square matrix products in the run's dtype) and bytes/s (a large copy: read + write)."""
    import torch

    n, nbytes, iters = (8192, 2 << 30, 10) if cfg.cuda else (1024, 256 << 20, 4)
    dtype = getattr(torch, cfg.dtype_name)
    a = torch.randn(n, n, device=cfg.device, dtype=dtype)
    b = torch.randn(n, n, device=cfg.device, dtype=dtype)
    a @ b
    _sync(cfg.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(cfg.device)
    tflops = 2.0 * n ** 3 * iters / (time.perf_counter() - t0) / 1e12
    del a, b
    x = torch.empty(nbytes, dtype=torch.uint8, device=cfg.device)
    x.fill_(1)
    y = torch.empty_like(x)
    y.copy_(x)
    _sync(cfg.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        y.copy_(x)
    _sync(cfg.device)
    gbps = 2.0 * nbytes * iters / (time.perf_counter() - t0) / 1e9
    del x, y
    if cfg.cuda:
        torch.cuda.empty_cache()
    return {"matmul_tflops": tflops, "copy_gbps": gbps, "matmul_n": float(n), "copy_bytes": float(nbytes)}


def make_requests(vocab: Any, n: int, cfg: BenchConfig) -> list[Any]:
    """``n`` requests of ``prompt_tokens`` random text tokens (ids between the specials and the SID tokens)."""
    import numpy as np

    from decoding.engine import RetrievalRequest

    rng = np.random.default_rng(cfg.seed + 1)
    first_text, end_text = 3, int(vocab.offsets[0])  # radgr's tokenizer: pad 0, eos 1, unk 2, then BPE
    return [RetrievalRequest(tuple(int(t) for t in rng.integers(first_text, end_text, size=cfg.prompt_tokens)),
                             beam_width=cfg.beam, top_k_items=100) for _ in range(n)]


def measure_phases(model: Any, vocab: Any, prompts: Sequence[Sequence[int]], cfg: BenchConfig) -> list[dict[str, Any]]:
    """The search's three forwards (prefill, step 1, step 2) timed apart, synchronised, per batch size.

    Inputs are those :func:`decoding.beam_search.beam_search` builds (left padding, the prefill mask, tree masks,
    one row of ``beam`` tokens per request, the growing cache); masks are built before the clock starts (the engine
    counts them as masking), beam tokens are random SID tokens of their level (the selection is not timed here).
    """
    import torch

    from decoding.beam_search import left_pad, prefill_mask, tree_step_mask

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(cfg.seed)
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        for batch in cfg.batches:
            ids, pad, lengths = left_pad(prompts[:batch], vocab.eos_id, device)
            plen = ids.shape[1]
            mask = prefill_mask(pad, plen, dtype)
            positions = (torch.arange(plen, device=device)[None, :] - pad[:, None]).clamp_min(0)
            anc0 = torch.zeros((batch, cfg.beam, 0), dtype=torch.long, device=device)
            anc1 = torch.arange(cfg.beam, device=device)[None, :, None].expand(batch, cfg.beam, 1)
            masks = (tree_step_mask(pad, plen, anc0, dtype), tree_step_mask(pad, plen, anc1, dtype))
            feeds = tuple((vocab.offsets[lv] + torch.randint(vocab.sizes[lv], (batch, cfg.beam), generator=gen)
                           ).to(device) for lv in (0, 1))
            samples: list[tuple[float, float, float]] = []
            for rep in range(cfg.reps + 1):  # the first run warms up
                _sync(cfg.device)
                t0 = time.perf_counter()
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                            logits_to_keep=1)
                _sync(cfg.device)
                times = [time.perf_counter() - t0]
                for step in (0, 1):
                    t0 = time.perf_counter()
                    pos = (lengths + step)[:, None].expand(batch, cfg.beam)
                    out = model(input_ids=feeds[step], attention_mask=masks[step], position_ids=pos,
                                past_key_values=out.past_key_values, use_cache=True)
                    _sync(cfg.device)
                    times.append(time.perf_counter() - t0)
                del out
                if rep:
                    samples.append((times[0], times[1], times[2]))
            rows.append({"batch": batch, "prefill_s": statistics.median(s[0] for s in samples),
                         "step_s": [statistics.median(s[1] for s in samples),
                                    statistics.median(s[2] for s in samples)]})
            log(f"  torch phases batch {batch:3d}: prefill {1e3 * rows[-1]['prefill_s']:8.2f} ms, steps "
                f"{1e3 * rows[-1]['step_s'][0]:8.2f} / {1e3 * rows[-1]['step_s'][1]:8.2f} ms")
    return rows


def measure_e2e(engine: Any, requests: Sequence[Any], cfg: BenchConfig) -> list[dict[str, Any]]:
    """Median wall time of ``retrieve_batch`` per batch size (after one warm-up of that size), requests/s, and
    the median of the engine's own per-phase timings."""
    rows = []
    engine.retrieve_batch(list(requests[:max(cfg.batches)]))  # first touch of every buffer at the largest shape
    for batch in cfg.batches:
        reqs = list(requests[:batch])
        engine.retrieve_batch(reqs)
        lat: list[float] = []
        timings: list[dict[str, float]] = []
        for _ in range(cfg.reps):
            t0 = time.perf_counter()
            res = engine.retrieve_batch(reqs)
            lat.append(time.perf_counter() - t0)
            timings.append(res[0].timings)
        med = statistics.median(lat)
        rows.append({"batch": batch, "latency_s": med, "latencies_s": lat, "rps": batch / med,
                     "engine_timings": {k: statistics.median(t[k] for t in timings) for k in timings[0]},
                     "sids_per_request": min(len(r.sids) for r in res)})
        log(f"  {engine.name} batch {batch:3d}: {1e3 * med:9.2f} ms per batch, {batch / med:8.2f} req/s")
    return rows


def peak_memory(cfg: BenchConfig) -> dict[str, Any]:
    import torch

    if cfg.cuda:
        dev = torch.device(cfg.device)
        free, total = torch.cuda.mem_get_info(dev)
        return {"kind": "torch.cuda.max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated(dev)),
                "device_used_bytes": int(total - free), "device_total_bytes": int(total)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"kind": "peak RSS of the engine process", "bytes": rss}


def child_main(kind: str, cfg: BenchConfig, bundle_dir: Path, result_path: Path) -> int:
    """One engine in this process: calibration, engine start, phases (torch), end-to-end; result as JSON."""
    import torch

    from decoding.bundle import INDEX_DIR, load_bundle
    from decoding.engine_factory import EngineOptions, build_engine
    from decoding.vllm_config import VllmEngineConfig
    from decoding.vllm_engine import VllmBeamEngine
    from sid_index.atomic_files import write_json_atomic

    result: dict[str, Any] = {"engine": kind, "device_name": device_name(cfg.device)}
    result["calibration"] = calibrate(cfg)
    log(f"  {kind}: calibration {result['calibration']['matmul_tflops']:.2f} TFLOP/s matmul, "
        f"{result['calibration']['copy_gbps']:.1f} GB/s copy on {result['device_name']}")
    if cfg.cuda:
        torch.cuda.reset_peak_memory_stats(torch.device(cfg.device))
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_dir, with_model=False)
    rows = cfg.beam * max(cfg.batches)
    model = None
    if kind == "torch":
        from training.model import load_model

        model = load_model(bundle.model_dir, dtype=getattr(torch, cfg.dtype_name))
    vllm_cfg = VllmEngineConfig(dtype=cfg.dtype_name, gpu_memory_utilization=cfg.gpu_memory_utilization,
                                max_num_seqs=cfg.vllm_max_num_seqs)
    engine_kind: Literal["torch", "vllm"] = "vllm" if kind == "vllm" else "torch"
    engine = build_engine(EngineOptions(kind=engine_kind, device=cfg.device, max_batch_rows=rows, vllm=vllm_cfg),
                          bundle.model_dir, bundle.index, bundle_dir / INDEX_DIR, bundle.vocab, model=model)
    result["start_s"] = time.perf_counter() - t0
    log(f"  {kind}: engine ready in {result['start_s']:.1f} s")
    requests = make_requests(bundle.vocab, max(cfg.batches), cfg)
    if model is not None:
        result["phases"] = measure_phases(model, bundle.vocab, [r.prompt_ids for r in requests], cfg)
    result["e2e"] = measure_e2e(engine, requests, cfg)
    if kind == "vllm":  # the engine's per-level wall times are its phases (vLLM's host work included)
        result["phases"] = [{"batch": r["batch"], "prefill_s": r["engine_timings"]["prefill"],
                             "step_s": [r["engine_timings"]["decode"] / 2] * 2} for r in result["e2e"]]
    first = engine.retrieve_batch(requests[:1])[0]
    result["top10_sid_rows"] = [h.sid_row for h in first.sids[:10]]
    result["peak_memory"] = peak_memory(cfg)
    if isinstance(engine, VllmBeamEngine):
        engine.close()
    write_json_atomic(result_path, result)
    return 0


def run_engine_child(kind: str, cfg: BenchConfig, config_path: Path, bundle: Path, work: Path) -> dict[str, Any]:
    """:func:`child_main` in a fresh process; its result, or ``{"error": ...}`` when it fails or times out."""
    result_path = work / f"result_{kind}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-config", str(config_path),
           "--bundle", str(bundle), "--result", str(result_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=cfg.child_timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"engine": kind, "error": f"timed out after {cfg.child_timeout_s:.0f} s"}
    if proc.returncode != 0 or not result_path.is_file():
        return {"engine": kind, "error": f"engine process exited {proc.returncode} (its output is above)"}
    result: dict[str, Any] = json.loads(result_path.read_text())
    result["process_s"] = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------------------------------- analysis
def analyse(result: dict[str, Any], shape: ModelShape, cfg: BenchConfig, here: DevicePeak) -> list[dict[str, Any]]:
    """Per batch: counts, achieved rates and fractions of peak per phase and end to end, the 4090 prediction."""
    phases = {p["batch"]: p for p in result.get("phases", [])}
    rows = []
    for e2e in result.get("e2e", []):
        batch = e2e["batch"]
        counts = phase_counts(shape, batch, cfg.prompt_tokens, cfg.beam)
        measured = phases[batch]
        times = {"prefill": measured["prefill_s"], "step1": measured["step_s"][0], "step2": measured["step_s"][1]}
        per_phase = {}
        for name, count in counts.items():
            t = times[name]
            per_phase[name] = {
                "seconds": t, "flops": count.flops, "bytes": count.bytes,
                "tflops": count.flops / t / 1e12, "gbps": count.bytes / t / 1e9,
                "flops_fraction": count.flops / t / (here.tflops * 1e12),
                "bandwidth_fraction": count.bytes / t / (here.gbps * 1e9),
                "bound_here": bound_of(count, here), "bound_4090": bound_of(count, RTX_4090),
                "roofline_s_here": roofline_seconds(count, here), "roofline_s_4090": roofline_seconds(count, RTX_4090),
                "predicted_s_4090": predict_seconds(t, count, here, RTX_4090),
            }
        latency = e2e["latency_s"]
        model_s = sum(times.values())
        rest_s = max(0.0, latency - model_s)
        predicted = sum(p["predicted_s_4090"] for p in per_phase.values()) + rest_s
        flops = sum(c.flops for c in counts.values())
        nbytes = sum(c.bytes for c in counts.values())
        rows.append({
            "batch": batch, "latency_s": latency, "rps": e2e["rps"], "phases": per_phase,
            "phases_s": model_s, "rest_s": rest_s, "flops": flops, "bytes": nbytes,
            "tflops": flops / latency / 1e12, "gbps": nbytes / latency / 1e9,
            "flops_fraction": flops / latency / (here.tflops * 1e12),
            "bandwidth_fraction": nbytes / latency / (here.gbps * 1e9),
            "roofline_floor_s_here": sum(p["roofline_s_here"] for p in per_phase.values()),
            "roofline_floor_s_4090": sum(p["roofline_s_4090"] for p in per_phase.values()),
            "predicted_latency_s_4090": predicted, "predicted_rps_4090": batch / predicted,
        })
    return rows


def prediction_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    best = max(rows, key=lambda r: r["predicted_rps_4090"])
    return {"best_rps": best["predicted_rps_4090"], "at_batch": best["batch"],
            "latency_s_at_best": best["predicted_latency_s_4090"],
            "single_request_latency_s": rows[0]["predicted_latency_s_4090"],
            "meets_target": bool(best["predicted_rps_4090"] >= TARGET_QPS), "target_rps": TARGET_QPS}


# --------------------------------------------------------------------------------------------------------- server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_step(cfg: BenchConfig, kind: str, bundle: Path, out: Path) -> dict[str, Any]:
    """``radgr serve --engine kind`` in a subprocess: ready time, HTTP latency and requests/s, then Locust."""
    import concurrent.futures

    import httpx
    import numpy as np

    if kind == "none":
        return {"skipped": "--server-engine none"}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    most = max(cfg.batches)
    cmd = [sys.executable, "-m", "cli.main", "serve", "--bundle", str(bundle), "--port", str(port),
           "--engine", kind, "--device", cfg.device, "--log-level", "warning",
           "--max-batch-requests", str(most), "--max-batch-rows", str(cfg.beam * most),
           "--max-queue-requests", str(4 * most), "--max-queue-rows", str(4 * cfg.beam * most),
           "--request-timeout-s", "60", "--vllm-dtype", cfg.dtype_name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RADGR_VLLM_GPU_MEMORY_UTILIZATION": str(cfg.gpu_memory_utilization),
           "RADGR_VLLM_MAX_NUM_SEQS": str(cfg.vllm_max_num_seqs)}
    result: dict[str, Any] = {"engine": kind, "url": url, "command": " ".join(cmd[1:]), "log": str(out / "server.log")}
    log(f"server: radgr serve --engine {kind} on {url}")
    t0 = time.perf_counter()
    with open(out / "server.log", "wb") as server_log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + cfg.child_timeout_s
            while True:
                if proc.poll() is not None:
                    return {**result, "error": f"server exited {proc.returncode} before ready (see server.log)"}
                if time.monotonic() > deadline:
                    return {**result, "error": f"server not ready after {cfg.child_timeout_s:.0f} s"}
                try:
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            result["ready_s"] = time.perf_counter() - t0
            log(f"server: ready in {result['ready_s']:.1f} s")
            rng = np.random.default_rng(cfg.seed)
            ids = item_ids(cfg.num_sids)
            payloads = [{"query": " ".join(rng.choice(WORDS, size=3)), "top_k": 10, "beam_width": cfg.beam,
                         "history": [ids[int(j)] for j in rng.integers(0, cfg.num_sids, size=20)]}
                        for _ in range(2 * most)]
            with httpx.Client(timeout=120) as client:
                first = client.post(f"{url}/retrieve", json={**payloads[0], "debug": True})
                first.raise_for_status()
                result["prompt_tokens"] = len(first.json()["debug"]["prompt_token_ids"])

                def one(payload: dict[str, Any]) -> float:
                    ts = time.perf_counter()
                    client.post(f"{url}/retrieve", json=payload).raise_for_status()
                    return time.perf_counter() - ts

                sequential = [one(p) for p in payloads[:5]]
                ts = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(most) as pool:
                    concurrent_lat = list(pool.map(one, payloads))
                wall = time.perf_counter() - ts
            result.update({"sequential_p50_s": statistics.median(sequential), "concurrency": most,
                           "concurrent_p50_s": statistics.median(concurrent_lat),
                           "concurrent_rps": len(payloads) / wall})
            log(f"server: 1 client p50 {1e3 * result['sequential_p50_s']:.1f} ms; {most} clients p50 "
                f"{1e3 * result['concurrent_p50_s']:.1f} ms, {result['concurrent_rps']:.2f} req/s "
                f"(prompts of {result['prompt_tokens']} tokens)")
            result["loadtest"] = loadtest_step(cfg, url, bundle, out)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return result


def loadtest_step(cfg: BenchConfig, url: str, bundle: Path, out: Path) -> dict[str, Any]:
    """``radgr loadtest --host URL --profile P --bundle B`` (the bundle is the request mix's source) when ``radgr
    loadtest`` exists; otherwise a note. Its CSV, HTML, JSON and PNG go to ``OUT/loadtest``."""
    if cfg.small and not cfg.with_loadtest:
        log("loadtest: skipped (--small runs Locust only with --with-loadtest)")
        return {"skipped": "--small without --with-loadtest"}
    if not (REPO / "cli" / "loadtest_cmd.py").is_file():
        log("loadtest: skipped: `radgr loadtest` does not exist in this checkout")
        return {"skipped": "radgr loadtest does not exist in this checkout"}
    cmd = [sys.executable, "-m", "cli.main", "loadtest", "--host", url, "--profile", cfg.loadtest_profile,
           "--bundle", str(bundle), "--out", str(out / "loadtest"), *cfg.loadtest_args]
    log(f"loadtest: {' '.join(cmd[2:])}")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=cfg.child_timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(cmd[2:]), "error": f"timed out after {cfg.child_timeout_s:.0f} s"}
    (out / "loadtest.log").write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    for line in tail:
        print(f"    {line}")
    log(f"loadtest: exit {proc.returncode} ({'gates passed' if proc.returncode == 0 else 'a gate missed or failed'})")
    summary = out / "loadtest" / "summary.json"
    return {"command": " ".join(cmd[2:]), "exit_code": proc.returncode, "seconds": time.perf_counter() - t0,
            "log": str(out / "loadtest.log"), "tail": tail,
            "summary": json.loads(summary.read_text()) if summary.is_file() else None}


# --------------------------------------------------------------------------------------------------------- report
def print_report(report: dict[str, Any]) -> None:
    here, target = report["device_peak"], report["rtx4090"]
    print(f"\ndevice: {report['device_name']}; peak {here['tflops']:.1f} TFLOP/s, {here['gbps']:.0f} GB/s "
          f"({here['source']})")
    print(f"model: {report['config']['preset']} shape, {report['bundle']['parameters'] / 1e9:.3f}B parameters, "
          f"{report['config']['dtype']}; {report['config']['num_sids']:,} SIDs; prompts of "
          f"{report['config']['prompt_tokens']} tokens; beam {report['config']['beam']}")
    head = (f"{'engine':6s} {'batch':>5s} {'latency ms':>11s} {'req/s':>8s} {'prefill ms':>10s} {'step ms':>15s} "
            f"{'TFLOP/s':>8s} {'%peak':>6s} {'GB/s':>8s} {'%peak':>6s} {'4090 ms':>9s} {'4090 req/s':>10s}")
    print("\n" + head + "\n" + "-" * len(head))
    for kind, eng in report["engines"].items():
        if "rows" not in eng:
            print(f"{kind:6s} {eng.get('skipped') or eng.get('error')}")
            continue
        for r in eng["rows"]:
            ph = r["phases"]
            steps = f"{1e3 * ph['step1']['seconds']:.2f}/{1e3 * ph['step2']['seconds']:.2f}"
            print(f"{kind:6s} {r['batch']:5d} {1e3 * r['latency_s']:11.2f} {r['rps']:8.2f} "
                  f"{1e3 * ph['prefill']['seconds']:10.2f} {steps:>15s} {r['tflops']:8.2f} "
                  f"{100 * r['flops_fraction']:6.1f} {r['gbps']:8.1f} {100 * r['bandwidth_fraction']:6.1f} "
                  f"{1e3 * r['predicted_latency_s_4090']:9.2f} {r['predicted_rps_4090']:10.2f}")
        mem = eng["peak_memory"]
        print(f"{'':6s} peak memory {mem['bytes'] / 2**30:.2f} GiB ({mem['kind']}); "
              f"engine start {eng['start_s']:.1f} s")
    print("\nphases (largest batch): seconds, achieved FLOP/s and bytes/s as % of peak, bound here and on a 4090:")
    for kind, eng in report["engines"].items():
        for name, p in eng.get("rows", [{}])[-1].get("phases", {}).items():
            print(f"  {kind:6s} {name:8s} {1e3 * p['seconds']:9.2f} ms  {100 * p['flops_fraction']:5.1f} % FLOP/s  "
                  f"{100 * p['bandwidth_fraction']:5.1f} % bytes/s  bound {p['bound_here']:7s} / {p['bound_4090']:7s}"
                  f"  -> 4090 {1e3 * p['predicted_s_4090']:9.2f} ms")
    print(f"\nRTX 4090 prediction: {report['prediction_method']}")
    print(f"  4090 figures used: {target['tflops']} TFLOP/s, {target['gbps']:.0f} GB/s ({target['source']})")
    for kind, eng in report["engines"].items():
        if "prediction_4090" in eng:
            p = eng["prediction_4090"]
            print(f"  {kind}: best {p['best_rps']:.1f} req/s at batch {p['at_batch']} "
                  f"({1e3 * p['latency_s_at_best']:.0f} ms per batch); one request "
                  f"{1e3 * p['single_request_latency_s']:.1f} ms; target {TARGET_QPS:.0f} req/s "
                  f"{'met' if p['meets_target'] else 'NOT met'}")
    if not report["config"]["device"].startswith("cuda"):
        print("  (measured on a CPU: these predictions only exercise the code; a CPU says nothing about a GPU)")
    server = report["server"]
    if "sequential_p50_s" in server:
        print(f"\nserver ({server['engine']}): ready {server['ready_s']:.1f} s; 1 client p50 "
              f"{1e3 * server['sequential_p50_s']:.1f} ms; {server['concurrency']} clients p50 "
              f"{1e3 * server['concurrent_p50_s']:.1f} ms, {server['concurrent_rps']:.2f} req/s")
        lt = server["loadtest"]
        print(f"loadtest: {lt.get('skipped') or lt.get('error') or 'exit ' + str(lt['exit_code'])}")
    else:
        print(f"\nserver: {server.get('skipped') or server.get('error')}")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sid_index.atomic_files import save_figure_atomic

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (kind, eng), color in zip(report["engines"].items(), ("tab:blue", "tab:orange"), strict=False):
        rows = eng.get("rows", [])
        if not rows:
            continue
        batch = [r["batch"] for r in rows]
        axes[0].plot(batch, [1e3 * r["latency_s"] for r in rows], "-o", color=color, label=f"{kind}, measured")
        axes[0].plot(batch, [1e3 * r["predicted_latency_s_4090"] for r in rows], "--s", color=color,
                     label=f"{kind}, RTX 4090 predicted")
        axes[1].plot(batch, [r["rps"] for r in rows], "-o", color=color, label=f"{kind}, measured")
        axes[1].plot(batch, [r["predicted_rps_4090"] for r in rows], "--s", color=color,
                     label=f"{kind}, RTX 4090 predicted")
    axes[1].axhline(TARGET_QPS, color="gray", linestyle=":", label=f"target {TARGET_QPS:.0f} req/s")
    axes[0].set(xlabel="requests per batch", ylabel="latency per batch (ms)", xscale="log", yscale="log")
    axes[1].set(xlabel="requests per batch", ylabel="requests/s", xscale="log", yscale="log")
    batches = report["config"]["batches"]
    for ax in axes:
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    cfg = report["config"]
    fig.suptitle(f"{report['device_name']}: {cfg['preset']} shape, {cfg['dtype']}, {cfg['num_sids']:,} SIDs, "
                 f"beam {cfg['beam']}, {cfg['prompt_tokens']}-token prompts", fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------- main
def run(cfg: BenchConfig, out: Path, work: Path) -> dict[str, Any]:
    from decoding.engine_factory import vllm_installed
    from sid_index.atomic_files import write_json_atomic

    log(f"gpu_bench: device {cfg.device}, {'small (CPU check)' if cfg.small else 'full'}; work in {work}")
    bundle, bundle_info = build_bundle(cfg, work)
    config_path = work / "bench_config.json"
    write_json_atomic(config_path, asdict(cfg))
    results: dict[str, dict[str, Any]] = {}
    for kind in cfg.engines:
        if kind == "vllm" and not vllm_installed():
            results[kind] = {"engine": kind, "skipped": "vLLM is not installed (RADGR_VLLM=cuda bash scripts/setup.sh)"}
            log("engine vllm: skipped, vLLM is not installed")
            continue
        log(f"engine {kind}: own process")
        results[kind] = run_engine_child(kind, cfg, config_path, bundle, work)
        if "error" in results[kind]:
            log(f"engine {kind}: {results[kind]['error']}")
    server_kind = cfg.server_engine
    if server_kind == "auto":  # vLLM where it is installed and its engine process worked, else PyTorch
        server_kind = "vllm" if "e2e" in results.get("vllm", {}) else "torch"
    server = server_step(cfg, server_kind, bundle, out)
    measured = [r for r in results.values() if "calibration" in r]
    name = measured[0]["device_name"] if measured else cfg.device
    calibration = measured[0]["calibration"] if measured else {"matmul_tflops": 1.0, "copy_gbps": 1.0}
    here = resolve_peak(name, cfg.cuda, calibration, cfg.peak_tflops, cfg.peak_gbps)
    model_config = json.loads((bundle / "model" / "config.json").read_text())
    shape = ModelShape.from_config(model_config, cfg.dtype_bytes)
    engines: dict[str, Any] = {}
    for kind, res in results.items():
        engines[kind] = dict(res)
        if "e2e" in res:
            engines[kind]["rows"] = analyse(res, shape, cfg, here)
            engines[kind]["prediction_4090"] = prediction_summary(engines[kind]["rows"])
            if kind == "torch":  # vLLM takes its share of memory up front (--gpu-memory-utilization)
                engines[kind]["prediction_4090"]["memory_fits_24gb"] = res["peak_memory"]["bytes"] <= FITS_4090_BYTES
    if all("top10_sid_rows" in engines.get(k, {}) for k in ENGINE_KINDS):
        a, b = (engines[k]["top10_sid_rows"] for k in ENGINE_KINDS)
        engines["top10_overlap_torch_vllm"] = len(set(a) & set(b)) / max(1, len(a))
    report = {
        "config": {**asdict(cfg), "dtype": cfg.dtype_name}, "device_name": name, "device_peak": asdict(here),
        "calibration": calibration, "rtx4090": asdict(RTX_4090),
        "model": {**asdict(shape), "body_params": shape.body_params, "head_params": shape.head_params},
        "bundle": bundle_info, "engines": {k: v for k, v in engines.items() if isinstance(v, dict)},
        "top10_overlap_torch_vllm": engines.get("top10_overlap_torch_vllm"),
        "server": server,
        "prediction_method": (
            "each measured model phase (prefill, decode step 1, decode step 2) is multiplied by "
            "roofline(4090) / roofline(this device), roofline = max(FLOPs / peak FLOP/s, bytes / peak bytes/s): "
            "the ratio of this device's peak to the 4090's on the axis that bounds the phase (same fraction of peak "
            "assumed on both); the rest of the end-to-end time (log-softmax, selection, host, finalize) is kept as "
            "measured. vLLM's phases are its per-level wall times, host work included, so its prediction scales "
            "host time too (pessimistic when the 4090 is the slower device)"),
        "wall_s": elapsed(),
    }
    write_json_atomic(out / "gpu_bench.json", report)
    plot(report, out / "gpu_bench.png")
    print_report(report)
    log(f"wrote {out / 'gpu_bench.json'} and {out / 'gpu_bench.png'}")
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_bench", help="gpu_bench.json/.png go here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the bundle here (default: a temporary directory)")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--small", action="store_true", help="tiny model, 5k SIDs, batches 1,2: a CPU check in ~1 min")
    ap.add_argument("--preset", default=None, help="training.model preset (full: 1.7b; small: tiny)")
    ap.add_argument("--vocab-size", type=int, default=None, help=f"model rows (full: {QWEN3_VOCAB}; 0 = tokenizer)")
    ap.add_argument("--num-sids", type=int, default=None, help="synthetic index size (full: 1,000,000; small: 5,000)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="tokens per prompt (full: 200; small: 32)")
    ap.add_argument("--beam", type=int, default=128)
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (full: 1,2,4,8,16,32; small: 1,2)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per measurement (the median is reported)")
    ap.add_argument("--engines", default=None, help="comma-separated: torch,vllm (default: both where installed)")
    ap.add_argument("--server-engine", default=None, choices=SERVER_ENGINES,
                    help="engine of the radgr serve step (full: auto = vLLM where it worked above; small: torch)")
    ap.add_argument("--with-loadtest", action="store_true", help="with --small: run the Locust step too")
    ap.add_argument("--loadtest-profile", default=None, help="radgr loadtest profile "
                    "(full: gpu-4090; small: cpu-smoke)")
    ap.add_argument("--loadtest-args", default=None, help="extra radgr loadtest options, one shell-quoted string")
    ap.add_argument("--peak-tflops", type=float, default=None, help="this device's peak bf16 TFLOP/s (overrides table)")
    ap.add_argument("--peak-gbps", type=float, default=None, help="this device's peak GB/s (overrides the table)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.8, help="vLLM's share of GPU memory")
    ap.add_argument("--vllm-max-num-seqs", type=int, default=None, help="vLLM one-token sequences per step "
                    "(full: 1024; small: 256)")
    ap.add_argument("--child-timeout-s", type=float, default=None, help="limit per engine process / server start")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=ENGINE_KINDS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-config", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    if args.child:
        cfg = BenchConfig.from_json(json.loads(args.child_config.read_text()))
        return child_main(args.child, cfg, args.bundle, args.result)
    os.environ[T0_ENV] = repr(time.time())
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"gpu_bench: {exc}", file=sys.stderr)
        return 2
    import torch

    if cfg.cuda and not torch.cuda.is_available():
        print("gpu_bench: --device cuda needs a CUDA device (torch.cuda.is_available() is False); "
              "on a CPU run `--device cpu --small`", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(cfg, args.out, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
            run(cfg, args.out, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
