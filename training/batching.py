"""Examples and batches: the dataset every radgr trainer reads, the batch keys, and the padding helpers.

Contract:
- ``ListDataset`` is a map-style dataset over a list of example dicts (SFT's pairs, alignment's sessions); the
  examples are built in memory before training and the collator turns a list of them into a batch.
- Every batch a collator builds holds ``UNITS_KEY`` (``"num_units"``, a Python ``int``: how many loss units the
  batch holds, see ``training.trainer``) and its targets under ``LABEL_KEY`` (``"target_ids"``, the key
  ``TrainingArguments.label_names`` names).
- ``pad_left`` left-pads token-id lists into ``input_ids``, a 2D ``attention_mask`` and ``position_ids``; left
  padding puts every sequence's last token at column ``T - 1``, so ``logits_to_keep=k`` selects the same final
  ``k`` positions of every row.
- ``pad_ragged`` pads ragged rows on the right into one rectangular tensor (index and flag tensors of collators).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

UNITS_KEY = "num_units"
LABEL_KEY = "target_ids"


class ListDataset(Dataset[dict[str, Any]]):
    """A map-style dataset over a list of example dicts."""

    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token-id lists into a batch.

    Returns ``input_ids`` [B, T] (long, ``pad_id`` in the padding), ``attention_mask`` [B, T] (long, 1 = real
    token) and ``position_ids`` [B, T] (long: real tokens count from 0, padding is 0).
    """
    if len(sequences) == 0:
        raise ValueError("sequences must hold at least one sequence, given 0")
    lengths = [len(s) for s in sequences]
    if min(lengths) < 1:
        raise ValueError(f"every sequence needs >= 1 token, given a sequence of length {min(lengths)}")
    bsz, width = len(sequences), max(lengths)
    ids = torch.full((bsz, width), int(pad_id), dtype=torch.long)
    pos = torch.zeros((bsz, width), dtype=torch.long)
    mask = torch.zeros((bsz, width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        n = lengths[i]
        ids[i, width - n:] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, width - n:] = 1
        pos[i, width - n:] = torch.arange(n)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def pad_ragged(rows: Sequence[Sequence[Any]], fill: Any, dtype: torch.dtype) -> torch.Tensor:
    """Right-pad ``rows`` with ``fill`` to the longest row's length: ``[len(rows), max len]`` of ``dtype``."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [fill] * (width - len(r)) for r in rows], dtype=dtype)
