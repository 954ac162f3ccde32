"""The batches of ``radgr train align``: one packed row per session (RAD-DPO) or the pairwise decomposition.

Contract:
- Features are ``training.align.encode_sessions`` examples: ``input_ids`` (prompt ids), ``pos``/``neg``
  (candidate token ids: 3 SID tokens + EOS), ``pos_codes``/``neg_codes`` (their SID codes), ``top_index`` (y* among
  the positives) and ``neg_relevant`` (simulated truth per negative: 1/0, −1 unknown).
- ``PackedSessionCollator`` packs each session into one row (``training.packing.pack_sessions``), positives first,
  then negatives, with index tensors locating both and the shared SID prefix of every negative with y*
  (``training.losses.shared_prefix_len``, batched); one loss unit per session.
- ``PairCollator`` is the baselines' pairwise decomposition: every (y⁺, y⁻) pair of a session, each side encoded
  as its own left-padded row (``training.packing.pack_rows``), as the paper's baselines do; one loss unit per pair.
- ``packed_batch_of(inputs, prefix)`` reads a ``PackedBatch`` back out of a collated (and device-moved) batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sid_index.tokens import shared_prefix_len
from training import losses
from training.batching import LABEL_KEY, UNITS_KEY, pad_ragged
from training.packing import PackedBatch, pack_rows, pack_sessions

_PACKED_KEYS = ("input_ids", "attention_mask", "position_ids", "predict_pos", LABEL_KEY, "eos_pos", "valid")


def _packed_dict(batch: PackedBatch) -> dict[str, torch.Tensor]:
    """The tensors of a ``PackedBatch`` under the keys :func:`packed_batch_of` reads back."""
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids,
            "predict_pos": batch.predict_pos, LABEL_KEY: batch.target_ids, "eos_pos": batch.eos_pos,
            "valid": batch.valid}


def packed_batch_of(inputs: dict[str, Any], prefix: str = "") -> PackedBatch:
    """The ``PackedBatch`` stored in a collated batch (keys with ``prefix``: ``""`` packed, ``"c_"``/``"r_"`` pairs)."""
    return PackedBatch(*(inputs[prefix + k] for k in _PACKED_KEYS))


@dataclass(frozen=True)
class PackedSessionCollator:
    """RAD-DPO batches: one packed row per session (positives then negatives) plus index tensors.

    Keys: the packed tensors, ``pos_idx``/``pos_valid`` ``[B, Pmax]`` and ``neg_idx``/``neg_valid`` ``[B, Nmax]``
    (candidate slots), ``top_index [B]``, ``prefix_len [B, Nmax]``, ``neg_relevant [B, Nmax]`` (1/0, −1 unknown),
    ``num_units = B``.
    """

    pad_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        packed = pack_sessions([f["input_ids"] for f in features], [f["pos"] + f["neg"] for f in features],
                               self.pad_id)
        out: dict[str, Any] = _packed_dict(packed)
        npos = [len(f["pos"]) for f in features]
        nneg = [len(f["neg"]) for f in features]
        out["pos_idx"] = pad_ragged([list(range(p)) for p in npos], 0, torch.long)
        out["pos_valid"] = pad_ragged([[True] * p for p in npos], False, torch.bool)
        out["neg_idx"] = pad_ragged([list(range(p, p + n)) for p, n in zip(npos, nneg, strict=True)], 0, torch.long)
        out["neg_valid"] = pad_ragged([[True] * n for n in nneg], False, torch.bool)
        out["top_index"] = torch.tensor([f["top_index"] for f in features], dtype=torch.long)
        top = torch.tensor([f["pos_codes"][f["top_index"]] for f in features], dtype=torch.long)
        neg_codes = pad_ragged([f["neg_codes"] for f in features], [-1, -1, -1], torch.long)
        out["prefix_len"] = losses.shared_prefix_len(top, neg_codes)  # the batched form
        out["neg_relevant"] = pad_ragged([f["neg_relevant"] for f in features], -1, torch.long)
        out[UNITS_KEY] = len(features)
        return out


@dataclass(frozen=True)
class PairCollator:
    """Baseline batches: the pairwise decomposition of the sessions, chosen rows then rejected rows, each row a
    separately encoded (prompt, candidate). Keys ``c_*``/``r_*`` (two row batches), ``prefix_len [P]``,
    ``neg_relevant [P]``, ``num_units = P`` pairs."""

    pad_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        prompts: list[list[int]] = []
        chosen: list[list[int]] = []
        rejected: list[list[int]] = []
        prefix: list[int] = []
        relevant: list[int] = []
        for f in features:
            for i in range(len(f["pos"])):  # every (positive i, negative j) of the session, row-major
                for j in range(len(f["neg"])):
                    prompts.append(f["input_ids"])
                    chosen.append(f["pos"][i])
                    rejected.append(f["neg"][j])
                    prefix.append(shared_prefix_len(f["pos_codes"][i], f["neg_codes"][j]))
                    relevant.append(f["neg_relevant"][j])
        out: dict[str, Any] = {}
        for key, rows in (("c_", chosen), ("r_", rejected)):
            batch = pack_rows(prompts, rows, self.pad_id)
            out.update({key + k: v for k, v in _packed_dict(batch).items()})
        out[LABEL_KEY] = out["c_" + LABEL_KEY]
        out["prefix_len"] = torch.tensor(prefix, dtype=torch.long)
        out["neg_relevant"] = torch.tensor(relevant, dtype=torch.long)
        out[UNITS_KEY] = len(prompts)
        return out
