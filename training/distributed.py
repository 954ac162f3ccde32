"""Data-parallel helpers shared by radgr's trainers: which process this is, and gathers across processes.

Contract
--------
- Every function works unchanged in a single process (``torch.distributed`` not initialised, or a world of 1):
  ``rank()`` is 0, ``world_size()`` is 1, and ``all_gather_concat(t)`` returns ``t`` flattened.
- Under ``torchrun`` (gloo on CPU, NCCL on CUDA, initialised by accelerate when Trainer starts),
  ``all_gather_concat(t)`` is a *collective*: every rank must call it the same number of times, in the same
  order. It returns the concatenation of every rank's flattened ``t``, rank 0 first, on every rank, with the
  same values bit for bit (ranks may hold different numbers of elements, zero included). Tensors stay on their
  device (NCCL needs CUDA tensors; gloo takes CPU ones).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def all_gather_concat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's flattened ``t`` concatenated in rank order (a collective; identity in one process).

    Ranks may hold different lengths: the lengths are gathered first, every rank pads to the longest, and the
    padding is cut away again.
    """
    flat = t.detach().reshape(-1)
    if not is_distributed():
        return flat
    n = world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=flat.device) for _ in range(n)]
    dist.all_gather(sizes, torch.tensor([flat.numel()], dtype=torch.long, device=flat.device))
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    if longest == 0:
        return flat
    padded = torch.zeros(longest, dtype=flat.dtype, device=flat.device)
    padded[: flat.numel()] = flat
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:length] for p, length in zip(parts, lengths, strict=True)])
