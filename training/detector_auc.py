"""How well a score detects a hidden binary truth: ROC AUC, exact, and streamed with bounded memory.

Used to measure RDRW as a pseudo-negative detector (``training.align``: score 1 − w, truth = the simulator's
``negative_relevant``), but nothing here knows about RDRW.

Contract
--------
- ``roc_auc(scores [n], labels [n]) -> float``: the probability that a random positive (label True) scores above
  a random negative, a tie counting 1/2 — the Mann–Whitney U statistic over n_pos·n_neg. NaN when either class
  is empty. Computed from mid-ranks (O(n log n)); ``tests/test_detector_auc.py`` checks it against the
  double loop over every (positive, negative) pair. Scores must be finite.
- ``AucAccumulator(cap)`` takes (score, label) batches in arrival order and holds at most ``cap`` of them:
  every pair while at most ``cap`` have arrived, then a systematic sample — pair i (0-based, arrival order) is
  kept iff i is a multiple of ``stride``, and ``stride`` doubles (every other kept pair dropped) whenever more
  than ``cap`` would be kept. Deterministic, no random state. ``auc()`` is ``roc_auc`` of the kept pairs, so it
  is exact while ``pairs <= cap``; ``pairs``, ``positives``, ``negatives`` and the mean score of each class in
  ``summary()`` count *every* pair added, kept or not. ``state_dict()`` / ``from_state_dict()`` round-trip the
  state exactly (tensors and plain numbers, for a checkpoint's ``torch.save``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

DEFAULT_CAP = 1 << 20  # ≈ 9 MB of kept pairs (float64 score + bool label)


def roc_auc(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool]) -> float:
    """P(score of a random positive > score of a random negative) + ½·P(tie); NaN if a class is empty."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"roc_auc: {s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("roc_auc: scores must be finite")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # mid-ranks (1-based): a group of c tied values spanning ranks a+1..a+c gets a + (c + 1)/2
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid = ends - (counts - 1) / 2.0
    rank_sum_pos = float(mid[inverse][y].sum())
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2.0  # (positive, negative) pairs won, ties counting 1/2
    return u / (n_pos * n_neg)


class AucAccumulator:
    """Streams (score, label) pairs into at most ``cap`` kept pairs; see the module docstring."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        if cap < 2:
            raise ValueError(f"AucAccumulator cap must be >= 2, given {cap}")
        self.cap = int(cap)
        self.stride = 1
        self.pairs = 0
        self.positives = 0
        self._score_sum = [0.0, 0.0]  # [negatives, positives]
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._kept = 0

    @property
    def negatives(self) -> int:
        return self.pairs - self.positives

    @property
    def kept(self) -> int:
        return self._kept

    def add(self, scores: np.ndarray | torch.Tensor | Sequence[float],
            labels: np.ndarray | torch.Tensor | Sequence[bool]) -> None:
        """Add a batch of pairs (any shapes with the same number of elements)."""
        s = _numpy(scores).astype(np.float64).reshape(-1)
        y = _numpy(labels).astype(bool).reshape(-1)
        if s.shape != y.shape:
            raise ValueError(f"AucAccumulator.add: {s.size} scores but {y.size} labels")
        if not np.isfinite(s).all():
            raise ValueError("AucAccumulator.add: scores must be finite")
        if s.size == 0:
            return
        keep = (self.pairs + np.arange(s.size)) % self.stride == 0
        self._scores.append(s[keep])
        self._labels.append(y[keep])
        self._kept += int(keep.sum())
        self.pairs += int(s.size)
        self.positives += int(y.sum())
        self._score_sum[1] += float(s[y].sum())
        self._score_sum[0] += float(s[~y].sum())
        while self._kept > self.cap:
            ks, ky = self._consolidated()
            # kept indices are 0, stride, 2·stride, ...: every other one is a multiple of 2·stride
            self._scores, self._labels = [ks[::2]], [ky[::2]]
            self._kept = int(self._scores[0].size)
            self.stride *= 2

    def _consolidated(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self._scores) != 1:
            s = np.concatenate(self._scores) if self._scores else np.zeros(0, dtype=np.float64)
            y = np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=bool)
            self._scores, self._labels = [s], [y]
        return self._scores[0], self._labels[0]

    def auc(self) -> float:
        """``roc_auc`` of the kept pairs (exact while ``pairs <= cap``); NaN when a class is empty."""
        s, y = self._consolidated()
        return roc_auc(s, y)

    def summary(self) -> dict[str, Any]:
        """AUC (None for NaN), counts over every pair, kept pairs, stride and each class's mean score (or None)."""
        auc = self.auc()
        return {"auc": None if auc != auc else auc, "pairs": self.pairs, "positives": self.positives,
                "negatives": self.negatives, "kept": self._kept, "stride": self.stride,
                "mean_score_positive": self._score_sum[1] / self.positives if self.positives else None,
                "mean_score_negative": self._score_sum[0] / self.negatives if self.negatives else None}

    def state_dict(self) -> dict[str, Any]:
        s, y = self._consolidated()
        return {"cap": self.cap, "stride": self.stride, "pairs": self.pairs, "positives": self.positives,
                "score_sum": list(self._score_sum), "scores": torch.from_numpy(s.copy()),
                "labels": torch.from_numpy(y.copy())}

    @staticmethod
    def from_state_dict(d: dict[str, Any]) -> AucAccumulator:
        for key in ("cap", "stride", "pairs", "positives", "score_sum", "scores", "labels"):
            if key not in d:
                raise ValueError(f"AUC accumulator state is missing field {key!r}")
        acc = AucAccumulator(int(d["cap"]))
        s = _numpy(d["scores"]).astype(np.float64).reshape(-1)
        y = _numpy(d["labels"]).astype(bool).reshape(-1)
        if s.shape != y.shape or s.size > acc.cap:
            raise ValueError(f"AUC accumulator state holds {s.size} scores and {y.size} labels (cap {acc.cap})")
        acc.stride, acc.pairs, acc.positives = int(d["stride"]), int(d["pairs"]), int(d["positives"])
        acc._score_sum = [float(d["score_sum"][0]), float(d["score_sum"][1])]
        acc._scores, acc._labels, acc._kept = [s], [y], int(s.size)
        return acc


def _numpy(x: np.ndarray | torch.Tensor | Sequence[Any]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
