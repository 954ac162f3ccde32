"""Tokenizers: radgr's own byte-level BPE for the presets, and SID tokens for any local HF model.

Contract:
- ``build_tokenizer(texts, codebook_sizes, vocab_size=2048)`` trains a byte-level BPE (``tokenizers`` library,
  nothing downloaded) on ``texts`` (catalog titles, queries, prompts; SID strings inside them are removed first
  so BPE never learns a SID token), then adds the special tokens and every SID token of every level
  (``sid_index.tokens.all_sid_tokens``), level by level, so level ``l`` code ``c`` has id ``offsets[l] + c``
  (``decoding.sid_vocab.SidVocab.from_tokenizer`` accepts it). Ids: ``<|pad|>`` 0, ``<|endoftext|>`` (EOS) 1,
  ``<|unk|>`` 2, then the BPE vocabulary, then the SID tokens. Returned as a ``PreTrainedTokenizerFast``
  (``save_pretrained`` writes a standard ``tokenizer.json``). Encoding then decoding a text round-trips exactly.
- ``add_sid_tokens(tokenizer, model, codebook_sizes)`` adds the SID tokens to a local HF model's tokenizer
  (contiguous per level; error if some already exist out of place), sets a pad token if there is none (EOS),
  and resizes the model's embeddings to the new vocabulary size. Returns the ``SidVocab``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from decoding.sid_vocab import SidVocab
from sid_index.tokens import NUM_LEVELS, all_sid_tokens

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)

_SID_TOKEN_RE = re.compile(r"<s\d+_\d+>")


def _validate_sizes(codebook_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in codebook_sizes)
    if len(sizes) != NUM_LEVELS:
        raise ValueError(f"codebook_sizes needs {NUM_LEVELS} levels, given {len(sizes)}")
    for level, s in enumerate(sizes):
        if s < 1:
            raise ValueError(f"codebook_sizes[{level}] must be >= 1, given {s}")
    return sizes


def strip_sid_tokens(text: str) -> str:
    """``text`` with every ``<s{l}_{c}>`` token replaced by a space (BPE training text)."""
    return _SID_TOKEN_RE.sub(" ", text)


def build_tokenizer(texts: Iterable[str], codebook_sizes: Sequence[int], vocab_size: int = 2048,
                    min_frequency: int = 2) -> Any:
    """Train radgr's BPE tokenizer on ``texts`` and add specials + SID tokens (see module docstring).

    ``vocab_size`` bounds the BPE part (specials and the 256 byte symbols included; SID tokens come on top).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sizes = _validate_sizes(codebook_sizes)
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + 256} (specials + 256 bytes), "
                         f"given {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, given {min_frequency}")
    tk = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator((strip_sid_tokens(t) for t in texts), trainer=trainer)
    for i, special in enumerate(SPECIAL_TOKENS):
        if tk.token_to_id(special) != i:
            raise RuntimeError(f"special token {special} got id {tk.token_to_id(special)}, expected {i}")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN,
                                  model_max_length=2048, clean_up_tokenization_spaces=False)
    added = tok.add_tokens(all_sid_tokens(sizes), special_tokens=False)
    if added != sum(sizes):
        raise RuntimeError(f"added {added} SID tokens, expected {sum(sizes)}: some were already in the BPE vocab")
    SidVocab.from_tokenizer(tok, sizes)  # raises if not contiguous
    return tok


def add_sid_tokens(tokenizer: Any, model: Any, codebook_sizes: Sequence[int]) -> SidVocab:
    """Add the SID tokens to a local HF model's tokenizer and resize the model's embeddings (in place)."""
    sizes = _validate_sizes(codebook_sizes)
    tokens = all_sid_tokens(sizes)
    vocab = tokenizer.get_vocab()
    present = [t for t in tokens if t in vocab]
    if present and len(present) != len(tokens):
        raise ValueError(f"tokenizer already holds {len(present)} of {len(tokens)} SID tokens (first: {present[0]}); "
                         "it must hold all of them contiguously or none")
    if not present:
        tokenizer.add_tokens(tokens, special_tokens=False)
    if tokenizer.eos_token_id is None:
        raise ValueError("the model's tokenizer has no eos_token; set one before adding SID tokens")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    sid_vocab = SidVocab.from_tokenizer(tokenizer, sizes)
    needed = len(tokenizer)
    if model.get_input_embeddings().num_embeddings < needed:
        model.resize_token_embeddings(needed)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return SidVocab(sid_vocab.offsets, sid_vocab.sizes, sid_vocab.eos_id,
                    int(model.get_input_embeddings().num_embeddings))
