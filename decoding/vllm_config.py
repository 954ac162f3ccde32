"""Options of the vLLM engine (bounded, validated) and the process environment it runs in; no vLLM import here.

Contract: :class:`VllmEngineConfig` holds every engine option with its default and bound (errors name the field);
:func:`vllm_environment` sets (without overriding what the user set) the variables that make an in-process, eager
vLLM engine start in seconds and stay quiet, and must run before ``import vllm``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from decoding.engine import MAX_BEAM_WIDTH

Scoring = Literal["processor", "token_ids"]
Driver = Literal["core", "llm"]


@dataclass(frozen=True)
class VllmEngineConfig:
    """Engine options with their bounds; float32 by default (bf16 reorders near-ties on CPU)."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_model_len: int = 1024
    kv_cache_gib: float = 1.0  # CPU: VLLM_CPU_KVCACHE_SPACE; ignored on GPU (see gpu_memory_utilization)
    gpu_memory_utilization: float = 0.85
    block_size: int = 32
    max_num_seqs: int = 256
    max_logprobs: int = MAX_BEAM_WIDTH
    scoring: Scoring = "processor"
    driver: Driver = "core"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be one of float32, bfloat16, float16, given {self.dtype!r}")
        if not 16 <= self.max_model_len <= 131072:
            raise ValueError(f"max_model_len must be in [16, 131072], given {self.max_model_len}")
        if not 0.0625 <= self.kv_cache_gib <= 1024:
            raise ValueError(f"kv_cache_gib must be in [0.0625, 1024], given {self.kv_cache_gib}")
        if not 0.05 <= self.gpu_memory_utilization <= 0.99:
            raise ValueError(f"gpu_memory_utilization must be in [0.05, 0.99], given {self.gpu_memory_utilization}")
        if self.block_size < 16 or self.block_size % 16:
            raise ValueError(f"block_size must be a multiple of 16 and >= 16, given {self.block_size}")
        if not 1 <= self.max_num_seqs <= 65536:
            raise ValueError(f"max_num_seqs must be in [1, 65536], given {self.max_num_seqs}")
        if not MAX_BEAM_WIDTH <= self.max_logprobs <= 4096:
            raise ValueError(f"max_logprobs must be in [{MAX_BEAM_WIDTH}, 4096] (at least the beam width), "
                             f"given {self.max_logprobs}")
        if self.scoring not in ("processor", "token_ids"):
            raise ValueError(f"scoring must be 'processor' or 'token_ids', given {self.scoring!r}")
        if self.driver not in ("core", "llm"):
            raise ValueError(f"driver must be 'core' or 'llm', given {self.driver!r}")


def vllm_environment(config: VllmEngineConfig) -> dict[str, str]:
    """Environment for an in-process, eager vLLM engine (set before ``import vllm``; existing values are kept).

    Without ``TORCH_COMPILE_DISABLE`` the first request with log-probs spends ~14 s compiling the sampler on CPU.
    """
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(config.kv_cache_gib))),
        "TORCH_COMPILE_DISABLE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_LOGGING_LEVEL": "ERROR",  # its CPU worker warns on every generate call; set the variable to see more
        "DO_NOT_TRACK": "1",
    }
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if os.environ["TORCH_COMPILE_DISABLE"] == "1":  # torch read the variable at import; say it again
        import torch._dynamo

        torch._dynamo.config.disable = True
    return env


def context_length(model_dir: Path, wanted: int) -> int:
    """``wanted``, capped by the model's ``max_position_embeddings`` (vLLM refuses a longer context)."""
    try:
        limit = int(json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings", wanted))
    except (OSError, ValueError) as exc:
        raise ValueError(f"model directory {str(model_dir)!r} has no readable config.json: {exc}") from exc
    return min(wanted, limit)
