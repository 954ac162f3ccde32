"""Builders of tiny bundles shared by the bundle, export and server tests (no tests here).

``make_tiny_inputs(root)`` writes a tiny Qwen3 model directory, a SID index and a query categorizer;
``make_tiny_bundle(root)`` turns them into a bundle with :func:`decoding.bundle.write_bundle`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from conftest import make_tiny_model, make_tiny_tokenizer

CODEBOOK_SIZES = (4, 4, 4)
WORDS = ["a", "b", "c", "drill", "tape", "saw", "glue", "cordless", "roll"]


@dataclass(frozen=True)
class TinyInputs:
    model_dir: Path
    index_dir: Path
    categorizer_json: Path
    item_ids: list[str]


def make_tiny_inputs(root: Path, *, n_items: int = 24, seed: int = 0, hidden: int = 64,
                     codebook_sizes: tuple[int, int, int] = CODEBOOK_SIZES) -> TinyInputs:
    from decoding.hard_search import QueryCategorizer
    from sid_index.index import SidIndex

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    item_ids = [f"item{i:03d}" for i in range(n_items)]
    codes = np.stack([rng.integers(0, s, size=n_items) for s in codebook_sizes], axis=1)
    popularity = rng.random(n_items) * 10
    categories = ["drill" if i % 2 == 0 else "tape" for i in range(n_items)]
    index = SidIndex.from_codes(item_ids, codes, popularity, categories, codebook_sizes)
    index_dir = index.save(root / "index")
    tok = make_tiny_tokenizer(codebook_sizes, words=WORDS)
    model = make_tiny_model(len(tok), seed=seed, hidden=hidden)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cat = QueryCategorizer.fit([("cordless drill", "drill"), ("drill a", "drill"), ("tape roll", "tape"),
                                ("glue tape", "tape")])
    cat_path = cat.save(root / "query_categorizer.json")
    return TinyInputs(model_dir, index_dir, cat_path, item_ids)


def make_tiny_bundle(root: Path, *, seed: int = 0, **inputs: Any) -> Path:
    """``inputs`` go to :func:`make_tiny_inputs` (``n_items``, ``hidden``, ``codebook_sizes``)."""
    from decoding.bundle import write_bundle

    tiny = make_tiny_inputs(root / "inputs", seed=seed, **inputs)
    return write_bundle(root / "bundle", tiny.model_dir, tiny.index_dir, tiny.categorizer_json,
                        {"method": "sft", "data": "synthetic-tiny", "steps": 0, "metrics": {}}, name="tiny-test")
