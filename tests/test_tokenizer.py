"""radgr's BPE tokenizer: specials, contiguous SID tokens per level, exact round trip, save/load; add_sid_tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from transformers import AutoTokenizer

from decoding.prompt import encode_prompt, render_prompt
from decoding.sid_vocab import SidVocab
from sid_index.tokens import sid_string, sid_token
from training.tokenizer import EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, add_sid_tokens, build_tokenizer, strip_sid_tokens

SIZES = (16, 8, 5)
TITLES = ["Cordless drill 18V with two batteries", "Masking tape 2 inch, 60 yards", "Safety glasses, clear lens",
          "Nitrile gloves, box of 100", "Hex key set metric", "Drill bit set titanium 29 pieces"] * 5


def _prompts() -> list[str]:
    return [render_prompt("cordless drill", {"gender": "f", "age": "30-39"}, [sid_string((3, 1, 4)),
                                                                              sid_string((15, 7, 0))]),
            render_prompt("tape", {}, [])]


def test_layout_specials_then_bpe_then_contiguous_sid_levels() -> None:
    tok = build_tokenizer([*TITLES, *_prompts()], SIZES, vocab_size=400)
    assert tok.convert_tokens_to_ids([PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]) == [0, 1, 2]
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.unk_token_id == 2
    vocab = SidVocab.from_tokenizer(tok, SIZES)
    assert vocab.eos_id == 1
    assert vocab.offsets[1] == vocab.offsets[0] + SIZES[0]
    assert vocab.offsets[2] == vocab.offsets[1] + SIZES[1]
    assert vocab.offsets[2] + SIZES[2] == len(tok)  # SID tokens are last
    for level, size in enumerate(SIZES):
        for c in (0, size - 1):
            assert tok.convert_tokens_to_ids(sid_token(level, c)) == vocab.offsets[level] + c
    assert 259 <= vocab.offsets[0] <= 400  # BPE part bounded by vocab_size


def test_prompt_encodes_sid_tokens_whole_and_round_trips() -> None:
    tok = build_tokenizer([*TITLES, *_prompts()], SIZES, vocab_size=400)
    vocab = SidVocab.from_tokenizer(tok, SIZES)
    prompt = _prompts()[0]
    ids = encode_prompt(tok, prompt)
    for codes in ((3, 1, 4), (15, 7, 0)):
        sid_ids = list(vocab.token_ids(codes))
        assert any(ids[i : i + 3] == sid_ids for i in range(len(ids) - 2)), f"{codes} not encoded as 3 whole tokens"
    assert tok.decode(ids) == prompt
    for text in [*TITLES[:6], "ünïcødé 🔧 text unseen in training", "  two  spaces\nand newline"]:
        assert tok.decode(encode_prompt(tok, text)) == text
    assert tok.unk_token_id not in encode_prompt(tok, "ünïcødé 🔧")  # byte-level: nothing is unknown


def test_bpe_never_learns_sid_tokens_even_when_prompts_repeat_them() -> None:
    """History SIDs inside prompts are stripped before BPE training, so every SID token is an added token."""
    prompts = [render_prompt("q", {}, [sid_string((1, 2, 3))] * 20)] * 50
    assert "<s0_1>" not in strip_sid_tokens(prompts[0])
    tok = build_tokenizer(prompts + TITLES, SIZES, vocab_size=300)
    SidVocab.from_tokenizer(tok, SIZES)


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = build_tokenizer(TITLES, SIZES, vocab_size=350)
    tok.save_pretrained(str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file()
    back = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert SidVocab.from_tokenizer(back, SIZES) == SidVocab.from_tokenizer(tok, SIZES)
    prompt = _prompts()[0]
    assert encode_prompt(back, prompt) == encode_prompt(tok, prompt)
    assert back.eos_token == EOS_TOKEN and back.pad_token == PAD_TOKEN


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="codebook_sizes needs 3 levels"):
        build_tokenizer(TITLES, (4, 4))
    with pytest.raises(ValueError, match=r"codebook_sizes\[1\] must be >= 1"):
        build_tokenizer(TITLES, (4, 0, 4))
    with pytest.raises(ValueError, match="vocab_size must be >= 259"):
        build_tokenizer(TITLES, SIZES, vocab_size=100)


def test_add_sid_tokens_to_a_local_model_resizes_embeddings() -> None:
    """A 'foreign' HF tokenizer without SID tokens or pad: tokens added contiguously, embeddings resized."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    base = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="</s>")
    model = make_tiny_model(4)
    emb = model.get_input_embeddings()
    assert isinstance(emb, torch.nn.Embedding)
    old = emb.weight[:4].detach().clone()
    vocab = add_sid_tokens(base, model, SIZES)
    assert len(base) == 4 + sum(SIZES)
    assert vocab.offsets == (4, 4 + SIZES[0], 4 + SIZES[0] + SIZES[1])
    assert vocab.vocab_size == model.get_input_embeddings().num_embeddings == len(base)
    assert base.pad_token_id == base.eos_token_id == 1
    resized = model.get_input_embeddings()
    assert isinstance(resized, torch.nn.Embedding)
    assert torch.equal(resized.weight[:4], old)  # existing rows untouched
    # idempotent: a second call adds nothing
    assert add_sid_tokens(base, model, SIZES) == vocab
    assert len(base) == 4 + sum(SIZES)
