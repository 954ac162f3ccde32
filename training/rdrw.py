"""RDRW — representation-based dynamic reward weighting, RAD-DPO's denoising of pseudo-negatives.

Tags [P]/[S]/[R] and the defaults: docs/alignment.md, "What is the paper's, what is reconstructed" (RDRW rows).

Contract
--------
- ``pair_similarity(h_top [B, H], h_neg [B, N, H]) -> s [B, N]``: cosine similarity of the EOS hidden states of y*
  and each negative, **detached** ([R]). Which hidden state is ``RdrwConfig.hidden_layer``, an index into the
  model's hidden states as HF returns them (0 = embeddings, i = after decoder layer i, −1 = the last layer after
  the final norm, the default and the paper's "final-layer" [P]); ``training.packing.packed_forward`` reads it.
- ``rdrw_weight(s, q1, q2, q3, cfg)``: w(s) = 1 − (1 − w_min)·σ(k·(s − Q2)/(Q3 − Q1 + ε)) ([R]; w_min = 0.5 [S],
  k = 12 [P], ε = 1e-6 [R]): about 1 for negatives far less similar than the median (full penalty), → w_min for the
  most similar ones (likely pseudo-negatives). A pure function.
- ``RdrwState`` is the running state: a sliding window of the last M similarities (M = 4096 [S]) and its
  quartiles. ``weigh(s)`` returns weights for a batch of pairs and then adds the batch to the window:
  while fewer than M pairs have been seen before the batch (warm-up [P]), every weight is 1; afterwards the
  quartiles of the window as it stood before the batch set the weights ([R] order: weigh, then update).
  Quartiles are recomputed after every update ("updated as training goes" [P]), linear interpolation.
- **The window is global across data-parallel ranks.** ``weigh`` adds the similarities of *every* rank's batch
  (``gather``, by default ``training.distributed.all_gather_concat``: rank 0's batch first), so every rank holds
  the same window, the same pair count and the same quartiles, bit for bit, and a pair gets the same weight on
  whichever rank it lands. Two ranks with batches b0 and b1 hold exactly the state of one process fed b0 then b1
  as one batch (tested in ``tests/test_distributed.py``). ``weigh`` is therefore a collective under ``torchrun``:
  every rank calls it once per micro-batch (an empty batch included). ``update`` adds values as given (no gather).
- ``state_dict()`` / ``from_state_dict()`` round-trip the state exactly (plain numbers and lists: the training
  engine saves it inside every checkpoint's extra state), so a resumed run weighs the next pair as the
  uninterrupted run would. Rank 0's state, which the engine saves, is the global window; on resume every rank
  loads that one file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.distributed import all_gather_concat


@dataclass(frozen=True)
class RdrwConfig:
    window: int = 4096  # M: warm-up length and sliding-window size [S]
    w_min: float = 0.5  # weight floor for the most similar negatives [S]
    k: float = 12.0  # sigmoid steepness [P]
    eps: float = 1e-6  # keeps the IQR denominator positive [R]
    hidden_layer: int = -1  # which hidden state s compares: -1 = final layer, after the final norm [P]

    def __post_init__(self) -> None:
        if self.window < 4:
            raise ValueError(f"RdrwConfig.window must be >= 4, given {self.window}")
        if not 0.0 < self.w_min <= 1.0:
            raise ValueError(f"RdrwConfig.w_min must be in (0, 1], given {self.w_min}")
        if not self.k > 0:
            raise ValueError(f"RdrwConfig.k must be > 0, given {self.k}")
        if not self.eps > 0:
            raise ValueError(f"RdrwConfig.eps must be > 0, given {self.eps}")


def pair_similarity(h_top: torch.Tensor, h_neg: torch.Tensor) -> torch.Tensor:
    """s_j = cos(h(y*), h(y⁻_j)), detached: ``[B, H]``, ``[B, N, H]`` → ``[B, N]`` (float32)."""
    return F.cosine_similarity(h_top.detach().float()[:, None, :], h_neg.detach().float(), dim=-1)


def rdrw_weight(s: torch.Tensor, q1: float, q2: float, q3: float, cfg: RdrwConfig) -> torch.Tensor:
    """w(s) = 1 − (1 − w_min)·σ(k·(s − Q2)/(Q3 − Q1 + ε)); same shape as ``s``, values in (w_min, 1)."""
    z = cfg.k * (s - q2) / (q3 - q1 + cfg.eps)
    return 1.0 - (1.0 - cfg.w_min) * torch.sigmoid(z)


class RdrwState:
    """Sliding window of the last ``cfg.window`` similarities (of all ranks), pairs seen, the window's quartiles.

    ``gather`` maps this rank's similarities to those of every rank, concatenated in rank order (the default
    gathers over ``torch.distributed`` when it is initialised, and is the identity in one process).
    """

    def __init__(self, cfg: RdrwConfig,
                 gather: Callable[[torch.Tensor], torch.Tensor] = all_gather_concat) -> None:
        self.cfg = cfg
        self._gather = gather
        self._window = np.zeros(0, dtype=np.float64)  # oldest first, at most cfg.window long
        self.seen = 0
        self.quartiles: tuple[float, float, float] | None = None

    @property
    def warm(self) -> bool:
        """True once M pairs have been seen (weights are no longer all 1)."""
        return self.quartiles is not None and self.seen >= self.cfg.window

    def weigh(self, s: torch.Tensor) -> torch.Tensor:
        """Weights for the similarities ``s`` (any shape, detached), then add every rank's ``s`` to the window."""
        s = s.detach()
        if self.warm:
            assert self.quartiles is not None
            w = rdrw_weight(s.float(), *self.quartiles, self.cfg)
        else:
            w = torch.ones_like(s, dtype=torch.float32)
        self.update(self._gather(s))
        return w

    def update(self, s: torch.Tensor) -> None:
        """Add similarities to the window as given (no gather; oldest dropped); quartiles recomputed once warm."""
        flat = s.detach().double().flatten().cpu().numpy()
        if flat.size == 0:
            return
        self._window = np.concatenate([self._window, flat])[-self.cfg.window:]
        self.seen += int(flat.size)
        if self.seen >= self.cfg.window:
            q = np.quantile(self._window, [0.25, 0.5, 0.75])
            self.quartiles = (float(q[0]), float(q[1]), float(q[2]))

    def window_values(self) -> np.ndarray:
        return self._window.copy()

    def state_dict(self) -> dict[str, Any]:
        return {"config": {"window": self.cfg.window, "w_min": self.cfg.w_min, "k": self.cfg.k, "eps": self.cfg.eps,
                           "hidden_layer": self.cfg.hidden_layer},
                "seen": self.seen, "window": self._window.tolist(),
                "quartiles": list(self.quartiles) if self.quartiles is not None else None}

    @staticmethod
    def from_state_dict(d: dict[str, Any],
                        gather: Callable[[torch.Tensor], torch.Tensor] = all_gather_concat) -> RdrwState:
        for key in ("config", "seen", "window", "quartiles"):
            if key not in d:
                raise ValueError(f"RDRW state is missing field {key!r}")
        state = RdrwState(RdrwConfig(**d["config"]), gather)
        window = np.asarray(d["window"], dtype=np.float64)
        if window.ndim != 1 or window.size > state.cfg.window:
            raise ValueError(f"RDRW state field 'window' must be a list of at most {state.cfg.window} numbers, "
                             f"given {window.size}")
        if int(d["seen"]) < window.size:
            raise ValueError(f"RDRW state field 'seen' ({d['seen']}) is below the window length {window.size}")
        state._window = window
        state.seen = int(d["seen"])
        q = d["quartiles"]
        state.quartiles = None if q is None else (float(q[0]), float(q[1]), float(q[2]))
        return state
