"""The capacity sweep's plan and result, as pure functions of the steps measured so far (no Locust here).

Contract (``cfg`` is a :class:`~loadtest.profiles.SweepConfig`):
- :func:`judge_step` makes a :class:`StepResult`: a step passes when it completed at least one request, its p99
  (successful responses) is ≤ ``cfg.p99_ms`` and its failure ratio is ≤ ``cfg.max_failure_ratio``; ``reason``
  names what broke.
- :func:`capacity_step`: the passing step with the highest goodput (successful responses/s), or ``None`` when no
  step passed; the capacity is its goodput. A step that breaks on a noisy machine and a higher one that passes
  after it leave the capacity at the higher one.
- :func:`next_offered_qps`: ``cfg.start_qps`` first; then the last offered load × ``cfg.factor`` while every step
  passed; once a step failed, further steps (× ``factor``, the last one clipped to the limit) until the offered
  load reaches ``cfg.overload_multiple`` × the capacity (× the first step's offered load when there is no
  capacity); ``None`` when that limit was reached or ``cfg.max_steps`` steps ran.
- :func:`sweep_summary` is the JSON the sweep writes: the configuration, every step, the capacity (goodput, offered
  load and p99 of the capacity step), the first step that broke and why, the overload limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadtest.outcomes import Achieved
from loadtest.profiles import SweepConfig

_EPS = 1e-9


@dataclass(frozen=True)
class StepResult:
    index: int
    offered_qps: float
    users: int
    achieved: Achieved
    passed: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "offered_qps": self.offered_qps, "users": self.users, "passed": self.passed,
                "reason": self.reason, **self.achieved.to_json()}


def judge_step(index: int, offered_qps: float, users: int, achieved: Achieved, cfg: SweepConfig) -> StepResult:
    """The step's verdict against the sweep's p99 and failure-ratio targets."""
    broken = []
    if achieved.requests == 0:
        broken.append("no request completed")
    if achieved.p99_ms is None:
        broken.append("no successful response")
    elif achieved.p99_ms > cfg.p99_ms:
        broken.append(f"p99 {achieved.p99_ms:.4g} ms > {cfg.p99_ms:.4g} ms")
    if achieved.failure_ratio > cfg.max_failure_ratio:
        broken.append(f"failure ratio {achieved.failure_ratio:.4g} > {cfg.max_failure_ratio:.4g}")
    return StepResult(index, offered_qps, users, achieved, not broken, "; ".join(broken) or "met the targets")


def _first_failure(steps: Sequence[StepResult]) -> int | None:
    return next((i for i, s in enumerate(steps) if not s.passed), None)


def capacity_step(steps: Sequence[StepResult]) -> StepResult | None:
    """The passing step with the highest goodput (the earliest of equals), or ``None``."""
    passing = [s for s in steps if s.passed]
    return max(passing, key=lambda s: (s.achieved.qps, -s.index)) if passing else None


def overload_limit_qps(steps: Sequence[StepResult], cfg: SweepConfig) -> float | None:
    """The offered load the sweep stops at, once a step failed (``None`` before)."""
    if _first_failure(steps) is None:
        return None
    cap = capacity_step(steps)
    reference = cap.achieved.qps if cap is not None and cap.achieved.qps > 0 else steps[0].offered_qps
    return cfg.overload_multiple * reference


def next_offered_qps(steps: Sequence[StepResult], cfg: SweepConfig) -> float | None:
    """The next step's offered load, or ``None`` to stop (see the module docstring)."""
    if not steps:
        return cfg.start_qps
    if len(steps) >= cfg.max_steps:
        return None
    last = steps[-1].offered_qps
    limit = overload_limit_qps(steps, cfg)
    if limit is None:
        return last * cfg.factor
    if last >= limit - _EPS:
        return None
    return min(last * cfg.factor, limit)


def sweep_summary(steps: Sequence[StepResult], cfg: SweepConfig) -> dict[str, Any]:
    """The sweep's JSON (see the module docstring)."""
    cap = capacity_step(steps)
    first = _first_failure(steps)
    return {
        "config": cfg.targets(),
        "steps": [s.to_json() for s in steps],
        "capacity_qps": cap.achieved.qps if cap is not None else 0.0,
        "capacity_offered_qps": cap.offered_qps if cap is not None else None,
        "capacity_p99_ms": cap.achieved.p99_ms if cap is not None else None,
        "capacity_step": cap.index if cap is not None else None,
        "broke_at_offered_qps": steps[first].offered_qps if first is not None else None,
        "broke_because": steps[first].reason if first is not None else None,
        "overload_limit_qps": overload_limit_qps(steps, cfg),
        "max_offered_qps": max((s.offered_qps for s in steps), default=0.0),
    }
