"""The language models radgr trains: Qwen3-architecture presets, loading, and the model-directory format.

Contract:
- ``PRESETS``: ``tiny`` (≈ 1.3M parameters with a 2k vocabulary; trains on 2 CPU cores in minutes; the demo/test
  default) and ``0.6b`` / ``1.7b`` with the public Qwen3-0.6B / Qwen3-1.7B shapes (for GPU work; the vocabulary
  is radgr's).
- ``build_model(preset, vocab_size, seed)`` -> a freshly initialised ``Qwen3ForCausalLM`` (fp32, seeded).
- ``load_model(dir)`` -> the causal LM saved in a model directory (any local HF causal-LM directory works), after
  :func:`check_model_dir`; a file that does not load raises ``ValueError`` naming the directory (never a traceback
  from deep inside transformers).
- ``save_model_dir(model, tokenizer, out_dir, train_info)`` writes, atomically
  (:func:`sid_index.atomic_files.publish_directory`), a standard HF directory: config.json, model.safetensors,
  tokenizer files, ``generation_config.json`` pinning every decoding parameter (:func:`hf_generation_config`, from
  :func:`decoding.bundle.pinned_generation_config`), and ``radgr_train.json`` (``train_info`` plus ``files``: the
  sha256 of every other file of the directory).
- ``check_model_dir(dir)`` raises ``ValueError`` naming the file when ``config.json`` is missing, or a file listed in
  ``radgr_train.json`` is missing or fails its sha256 (a truncated or corrupted weights or tokenizer file); a
  directory without ``radgr_train.json`` (a base HF model) is checked for ``config.json`` only.
- ``read_train_info(dir)`` reads ``radgr_train.json`` back without ``files`` ({} when absent; ``ValueError`` naming
  it when unreadable).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel, Qwen3Config, Qwen3ForCausalLM

from decoding.bundle import pinned_generation_config
from sid_index.atomic_files import publish_directory, sha256_file

TRAIN_INFO_FILE = "radgr_train.json"
MODEL_FILES_KEY = "files"  # radgr_train.json: {file name: sha256} of the other files


@dataclass(frozen=True)
class ModelPreset:
    """Shape of a Qwen3 model (the vocabulary size comes from the tokenizer)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, given {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")


PRESETS: dict[str, ModelPreset] = {
    # tiny: sized so SFT on the demo data takes minutes on 2 CPU cores and still learns.
    "tiny": ModelPreset(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, tie_word_embeddings=True),
    # small: ~5x tiny's parameters; sized for a 30-minute CPU run on Amazon Industrial (its SFT took 673 s on 2
    # cores and beat tiny on validation loss: README "Amazon Industrial in MiniOneRec's protocol").
    "small": ModelPreset(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True),
    # the public Qwen3-0.6B and Qwen3-1.7B shapes (config.json of Qwen/Qwen3-0.6B, Qwen/Qwen3-1.7B)
    "0.6b": ModelPreset(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True),
    "1.7b": ModelPreset(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True),
}


def preset_config(preset: str, vocab_size: int, *, pad_token_id: int | None = None,
                  eos_token_id: int | None = None) -> Qwen3Config:
    """The ``Qwen3Config`` of a preset with radgr's vocabulary."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, given {preset!r}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, given {vocab_size}")
    p = PRESETS[preset]
    # attn_implementation is a PreTrainedConfig keyword its typed dataclass signature does not list
    return Qwen3Config(  # type: ignore[call-arg]  # untyped kwarg
        vocab_size=int(vocab_size), hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_hidden_layers, num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads, head_dim=p.head_dim,
        max_position_embeddings=p.max_position_embeddings, tie_word_embeddings=p.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta}, rms_norm_eps=p.rms_norm_eps,
        attention_dropout=0.0,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None,
        attn_implementation="sdpa", dtype="float32",
    )


def build_model(preset: str, vocab_size: int, seed: int = 0, *, pad_token_id: int | None = None,
                eos_token_id: int | None = None) -> Qwen3ForCausalLM:
    """A freshly initialised fp32 Qwen3 causal LM of ``preset`` (deterministic for a seed)."""
    cfg = preset_config(preset, vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(cfg)
    model.generation_config = hf_generation_config(eos_token_id, pad_token_id)
    return model


def num_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def check_model_dir(model_dir: str | Path) -> None:
    """Raise ``ValueError`` naming the file unless ``model_dir`` holds config.json and every file its
    ``radgr_train.json`` lists, each with the recorded sha256 (see the module docstring)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(f"model directory {path} has no config.json")
    files = _read_info_file(path).get(MODEL_FILES_KEY)
    if files is None:
        return
    if not isinstance(files, dict):
        raise ValueError(f"model file {path / TRAIN_INFO_FILE}: field {MODEL_FILES_KEY!r} must be an object")
    for name, digest in sorted(files.items()):
        if not (path / name).is_file():
            raise ValueError(f"model file {path / name} is missing (listed in {TRAIN_INFO_FILE})")
        if sha256_file(path / name) != digest:
            raise ValueError(f"model file {path / name} fails its sha256 checksum (truncated or corrupt)")


def load_model(model_dir: str | Path, *, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The causal LM of a local model directory (no download), in ``dtype``, eval mode, sdpa attention."""
    path = Path(model_dir)
    check_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="sdpa",
                                                     local_files_only=True)
    except Exception as exc:  # transformers/safetensors raise OSError, ValueError, SafetensorError, ... on bad files
        raise ValueError(f"model directory {path} does not load: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}") from exc
    model.eval()
    return model


def hf_generation_config(eos_token_id: int | None, pad_token_id: int | None) -> GenerationConfig:
    """:func:`decoding.bundle.pinned_generation_config` as a strictly validated ``GenerationConfig``.

    Callers of ``generate`` must still pass their parameters explicitly; this file only documents the intent
    and stops a base model's own defaults (sampling, temperature, repetition penalty ...) from leaking in.
    """
    cfg = GenerationConfig(**pinned_generation_config(eos_token_id, pad_token_id))
    cfg.validate(strict=True)
    return cfg


def save_model_dir(model: PreTrainedModel, tokenizer: Any, out_dir: str | Path, train_info: dict[str, Any]) -> Path:
    """Write the model directory atomically (see module docstring); an existing ``out_dir`` is replaced."""
    out = Path(out_dir)
    with publish_directory(out) as staging:
        model.generation_config = hf_generation_config(tokenizer.eos_token_id, tokenizer.pad_token_id)
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        files = {f.relative_to(staging).as_posix(): sha256_file(f) for f in sorted(staging.rglob("*")) if f.is_file()}
        with open(staging / TRAIN_INFO_FILE, "w", encoding="utf-8") as fh:
            json.dump({**train_info, MODEL_FILES_KEY: files}, fh, indent=2, sort_keys=True, default=_json_default)
            fh.write("\n")
    return out


def read_train_info(model_dir: str | Path) -> dict[str, Any]:
    """``radgr_train.json`` of a model directory without its file checksums ({} if absent, e.g. a base HF model)."""
    info = _read_info_file(Path(model_dir))
    info.pop(MODEL_FILES_KEY, None)
    return info


def _read_info_file(model_dir: Path) -> dict[str, Any]:
    path = model_dir / TRAIN_INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"model file {path} is unreadable: {exc}") from exc
    if not isinstance(info, dict):
        raise ValueError(f"model file {path} must hold a JSON object, given {type(info).__name__}")
    return info


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
