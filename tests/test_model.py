"""Model presets, the model-directory format and its pinned generation config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_tokenizer
from transformers import PreTrainedModel

from training.model import (
    PRESETS,
    build_model,
    hf_generation_config,
    load_model,
    num_parameters,
    preset_config,
    read_train_info,
    save_model_dir,
)


def _input_weight(model: PreTrainedModel) -> torch.Tensor:
    emb = model.get_input_embeddings()
    assert isinstance(emb, torch.nn.Embedding)
    return emb.weight


def test_tiny_preset_is_a_few_million_parameters_and_seeded() -> None:
    model = build_model("tiny", vocab_size=3000, seed=1)
    assert model.config.model_type == "qwen3"
    assert 1_000_000 <= num_parameters(model) <= 6_000_000
    same = build_model("tiny", vocab_size=3000, seed=1)
    other = build_model("tiny", vocab_size=3000, seed=2)
    w = _input_weight(model)
    assert torch.equal(w, _input_weight(same))
    assert not torch.equal(w, _input_weight(other))
    out = model(input_ids=torch.tensor([[5, 6, 7]]))
    assert out.logits.shape == (1, 3, 3000)


def test_small_preset_is_between_tiny_and_the_gpu_presets() -> None:
    """small: the CPU preset for real data (README, Amazon in MiniOneRec's protocol): about 5x tiny's parameters."""
    tiny, small = build_model("tiny", vocab_size=3000), build_model("small", vocab_size=3000, seed=3)
    assert 4 * num_parameters(tiny) <= num_parameters(small) <= 10_000_000
    assert (small.config.hidden_size, small.config.num_hidden_layers) == (256, 6)
    out = small(input_ids=torch.tensor([[5, 6, 7]]))
    assert out.logits.shape == (1, 3, 3000)


@pytest.mark.parametrize(("preset", "hidden", "inter", "layers"), [("0.6b", 1024, 3072, 28), ("1.7b", 2048, 6144, 28)])
def test_qwen3_public_shapes(preset: str, hidden: int, inter: int, layers: int) -> None:
    """The GPU presets match the public Qwen3-0.6B / Qwen3-1.7B config.json shapes (config only, no weights)."""
    cfg = preset_config(preset, vocab_size=151_936)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (hidden, inter, layers)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (16, 8, 128)
    assert cfg.rope_parameters is not None
    assert cfg.tie_word_embeddings and cfg.rope_parameters["rope_theta"] == 1_000_000.0 and cfg.rms_norm_eps == 1e-6


def test_bad_preset_and_vocab() -> None:
    with pytest.raises(ValueError, match="preset must be one of"):
        build_model("huge", 100)
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        preset_config("tiny", 0)
    assert set(PRESETS) == {"tiny", "small", "0.6b", "1.7b"}


def test_generation_config_pins_every_decoding_parameter() -> None:
    g = hf_generation_config(eos_token_id=1, pad_token_id=0)
    assert (g.num_beams, g.num_return_sequences, g.max_new_tokens, g.min_new_tokens) == (128, 128, 3, 3)
    assert g.do_sample is False and g.length_penalty == 0.0 and g.early_stopping is True
    assert g.repetition_penalty == 1.0 and g.no_repeat_ngram_size == 0
    assert g.temperature is None and g.top_k is None and g.top_p is None
    assert (g.eos_token_id, g.pad_token_id) == (1, 0)
    assert hf_generation_config(eos_token_id=1, pad_token_id=None).pad_token_id == 1  # padding defaults to eos


def test_save_and_load_model_dir(tmp_path: Path) -> None:
    tok = make_tiny_tokenizer((4, 4, 4))
    model = build_model("tiny", len(tok), seed=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    out = save_model_dir(model, tok, tmp_path / "final", {"method": "sft", "steps": 3})
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "radgr_train.json"):
        assert (out / name).is_file(), name
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["num_beams"] == 128 and gen["do_sample"] is False and gen["length_penalty"] == 0.0
    assert gen["eos_token_id"] == tok.eos_token_id
    assert read_train_info(out) == {"method": "sft", "steps": 3}
    back = load_model(out)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    # replacing an existing directory works and leaves no temp folders behind
    save_model_dir(model, tok, out, {"method": "sft", "steps": 4})
    assert read_train_info(out)["steps"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_load_model_names_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_model(tmp_path)
