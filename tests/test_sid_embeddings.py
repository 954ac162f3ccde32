"""Text embeddings: bf16 where the CPU has it, and bf16 SIDs equal to fp32 SIDs on most items."""

from __future__ import annotations

import numpy as np
import pytest

from sid_index.embeddings import bf16_supported, encode_texts, resolve_dtype
from sid_index.rqkmeans import RQKMeansConfig, assign_codes, train_codebooks

WORDS = ["cordless", "drill", "steel", "hammer", "blue", "pack", "inch", "set", "LED", "lamp", "cable", "USB",
         "glove", "nitrile", "large", "filament", "PLA", "black", "kit", "tool", "saw", "blade", "brass", "hose"]


def test_bf16_support_comes_from_the_cpu_flags() -> None:
    assert bf16_supported("processor : 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    assert bf16_supported("flags : fpu amx_bf16\n")
    assert not bf16_supported("flags : fpu sse2 avx2 avx512f\nbugs : avx512_bf16\n")  # only the flags line counts
    assert not bf16_supported("")
    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    assert resolve_dtype("auto") == ("bfloat16" if bf16_supported() else "float32")
    with pytest.raises(ValueError, match="dtype must be 'auto', 'float32' or 'bfloat16', given 'fp16'"):
        resolve_dtype("fp16")  # type: ignore[arg-type]  # the wrong value is the point


@pytest.mark.slow
def test_bf16_and_fp32_give_the_same_sids_on_most_items() -> None:
    """Codes come from codebooks trained on the fp32 embeddings, so only bf16's rounding can move an item.

    Threshold: at least 95 % of items keep all 3 codes. bf16 keeps 8 mantissa bits, MiniLM's bf16 vectors have cosine
    ≥ 0.996 to fp32 (we check ≥ 0.99 per item), so only items lying within that margin of a boundary between two
    centroids can change code, at any of the 3 levels; measured: 100 % of 400 titles here, so 95 % leaves room for
    other CPUs' kernels without letting a broken bf16 path (e.g. unnormalised or garbage vectors) pass. Training
    codebooks separately on each set is not compared code by code: k-means labels are arbitrary (a relabelled but
    identical clustering would count as all different)."""
    rng = np.random.default_rng(3)
    titles = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(240)]
    fp32 = encode_texts(titles, dtype="float32", batch_size=64, show_progress=False)
    bf16 = encode_texts(titles, dtype="bfloat16", batch_size=64, show_progress=False)
    assert fp32.dtype == bf16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert float((fp32 * bf16).sum(1).min()) >= 0.99
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    codebooks = train_codebooks(fp32, RQKMeansConfig(codebook_sizes=(8, 8, 8), seed=0))
    same = np.all(assign_codes(fp32, codebooks) == assign_codes(bf16, codebooks), axis=1)
    assert same.mean() >= 0.95, f"only {same.mean():.3f} of items keep their SID in bf16"
