"""Server settings (pydantic-settings): every bound the server enforces, read from ``RADGR_*`` environment
variables or given explicitly.

Contract:
- ``ServerSettings()`` reads ``RADGR_BUNDLE``, ``RADGR_HOST``, ``RADGR_PORT``, ... (field name upper-cased with the
  ``RADGR_`` prefix); the API key comes only from the environment (``RADGR_API_KEY``), never from argv.
- Validation names the field and the bound (``max_batch_rows must be >= 128 (the largest beam), given 64``).
- ``load_settings()`` is the cached default read (one per process); the app keeps its own instance and routes
  reach it through a dependency, never a module global.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from decoding.engine import MAX_BEAM_WIDTH
from decoding.engine_factory import EngineOptions
from decoding.vllm_config import VllmEngineConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class ServerSettings(BaseSettings):
    """How one ``radgr serve`` process runs; defaults suit a CPU box with the tiny model."""

    model_config = SettingsConfigDict(env_prefix="RADGR_", frozen=True, extra="ignore")

    bundle: Path = Field(Path("bundle"), description="Bundle directory written by `radgr export`.")
    host: str = Field(DEFAULT_HOST, description="Bind address; 127.0.0.1 unless told otherwise.")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="TCP port (0 = any free port).")
    api_key: SecretStr | None = Field(None, description="Bearer key for /retrieve (env RADGR_API_KEY only).")

    max_wait_ms: float = Field(5.0, ge=0.0, le=10000.0,
                               description="Longest wait after the first queued request before its batch runs.")
    max_batch_requests: int = Field(16, ge=1, le=1024, description="Requests per engine batch.")
    max_batch_rows: int = Field(1024, ge=1, le=65536, description="Beam-row budget per batch (sum of beam widths).")
    max_queue_requests: int = Field(64, ge=1, le=100000, description="Queued requests before 503.")
    max_queue_rows: int = Field(8192, ge=1, le=10_000_000, description="Queued beam rows before 503.")
    max_queue_wait_s: float = Field(
        0.5, ge=0.01, le=600.0, description="Shed (503) a request whose estimated queue wait plus service, from the "
        "measured service rate, exceeds this (or its deadline).")
    queue_wait_batches: float = Field(
        3.0, ge=1.0, le=1000.0, description="... or exceeds this many full batches (max_batch_rows rows each) at the "
        "measured rate, whichever is shorter: queueing more adds latency, not throughput.")
    request_timeout_s: float = Field(10.0, gt=0.0, le=600.0, description="Per-request deadline (504 past it).")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="Largest request body (413 above).")
    request_read_timeout_s: float = Field(10.0, ge=0.05, le=600.0,
                                          description="A request's line, headers and body must arrive within this "
                                                      "(from connect, or its first byte when kept alive): else 408 "
                                                      "and the connection closed (slow clients).")
    max_header_bytes: int = Field(16384, ge=1024, le=1 << 20,
                                  description="Largest request line + header block (431 above).")
    timeout_keep_alive_s: int = Field(5, ge=1, le=600, description="An idle kept-alive connection is closed after.")
    max_connections: int = Field(1024, ge=1, le=100000,
                                 description="Open connections (and running requests) beyond which uvicorn answers "
                                             "503 at once.")
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After value sent with every 503.")
    drain_grace_s: float = Field(10.0, ge=0.0, le=600.0,
                                 description="After SIGTERM: how long in-flight requests get to finish.")
    engine_stall_s: float = Field(60.0, ge=0.05, le=3600.0,
                                  description="An engine batch running longer than this makes /live answer 503 "
                                              "until it returns (a hung engine).")
    engine_probe_interval_s: float = Field(5.0, ge=0.05, le=3600.0,
                                           description="While the engine is dead and idle, retry the warm-up "
                                                       "request this often, so /live recovers without traffic.")
    warmup_beam_width: int = Field(MAX_BEAM_WIDTH, ge=1, le=MAX_BEAM_WIDTH,
                                   description="Beam width of the start-up warm-up retrieval.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="Engine device: auto (cuda when available), cpu, cuda or cuda:N.")
    torch_threads: int = Field(0, ge=0, le=1024, description="torch intra-op threads for the engine (0 = leave).")
    log_level: str = Field("info", description="uvicorn log level.")

    engine_process: bool = Field(
        False, description="Run the PyTorch engine in its own process (its Python then never holds the server's "
                           "GIL: cheap answers stay fast under overload); the vLLM engine has its own already.")
    engine_nice: int = Field(10, ge=0, le=19, description="CPU priority the engine process gives up (os.nice): the "
                                                         "server's own answers preempt it where cores are short.")
    engine: Literal["auto", "torch", "vllm"] = Field(
        "auto", description="Engine: auto (vLLM where installed, else PyTorch), torch or vllm.")
    vllm_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="vLLM weights dtype (float32 keeps near-ties in the PyTorch engine's order).")
    vllm_max_model_len: int = Field(1024, ge=16, le=131072, description="vLLM context length (prompt + 3 tokens).")
    vllm_kv_cache_gib: float = Field(1.0, ge=0.0625, le=1024.0, description="vLLM KV cache on CPU, GiB.")
    vllm_gpu_memory_utilization: float = Field(0.85, ge=0.05, le=0.99,
                                               description="Share of GPU memory vLLM may take (GPU only).")
    vllm_block_size: int = Field(32, ge=16, le=256, description="vLLM KV block size (short prompts are cached "
                                                               "only in whole blocks).")
    vllm_max_num_seqs: int = Field(256, ge=1, le=65536, description="vLLM concurrent one-token sequences.")
    vllm_scoring: Literal["processor", "token_ids"] = Field(
        "processor", description="How vLLM scores SID children: trie logits processor or logprob_token_ids.")
    vllm_driver: Literal["core", "llm"] = Field(
        "core", description="How radgr drives vLLM: its engine core directly, or the public LLM.generate.")

    @model_validator(mode="after")
    def _check_budgets(self) -> ServerSettings:
        if self.max_batch_rows < MAX_BEAM_WIDTH:
            raise ValueError(f"max_batch_rows must be >= {MAX_BEAM_WIDTH} (the largest beam), "
                             f"given {self.max_batch_rows}")
        if self.max_queue_rows < MAX_BEAM_WIDTH:
            raise ValueError(f"max_queue_rows must be >= {MAX_BEAM_WIDTH} (the largest beam), "
                             f"given {self.max_queue_rows}")
        if self.log_level not in {"critical", "error", "warning", "info", "debug", "trace"}:
            raise ValueError(f"log_level must be one of critical/error/warning/info/debug/trace, "
                             f"given {self.log_level!r}")
        return self


    def engine_options(self) -> EngineOptions:
        """The engine these settings ask for, as :func:`decoding.engine_factory.build_engine` takes it."""
        return EngineOptions(
            kind=self.engine, device=self.device, max_batch_rows=self.max_batch_rows,
            torch_threads=self.torch_threads,
            vllm=VllmEngineConfig(dtype=self.vllm_dtype, max_model_len=self.vllm_max_model_len,
                                  kv_cache_gib=self.vllm_kv_cache_gib,
                                  gpu_memory_utilization=self.vllm_gpu_memory_utilization,
                                  block_size=self.vllm_block_size, max_num_seqs=self.vllm_max_num_seqs,
                                  scoring=self.vllm_scoring, driver=self.vllm_driver),
        )


@lru_cache(maxsize=1)
def load_settings() -> ServerSettings:
    """The process's settings from the environment, read once."""
    return ServerSettings()
