"""Load-test targets: the gates a run must pass, the load a profile offers, and the capacity sweep's steps.

Contract:
- :class:`Gates` — the pass/fail targets: ``p50_ms`` and ``p99_ms`` (latency of successful responses, upper
  bounds), ``max_failure_ratio`` (failed / all requests, where shed 503s and timed-out 504s are failures) and
  ``min_qps`` (successful responses per second, a lower bound). Checked by :func:`loadtest.gates.check_gates`.
- :class:`LoadProfile` — a constant-load run: ``users`` Locust users spawned at ``spawn_rate`` per second, measured
  for ``run_time_s`` after the ramp (Locust ``--reset-stats``); ``qps`` is the total offered load, paced with
  Locust's ``constant_throughput`` at ``qps / users`` per user (``None``: closed loop, no wait between requests);
  each request's beam width and top-K are drawn from ``beam_widths`` and ``top_ks``; ``gates`` decide the exit code.
- :data:`PROFILES` — the named profiles: ``cpu-smoke`` (the tiny test bundle on a CPU: short, generous gates, run in
  CI) and ``gpu-4090`` (the service target: 15 QPS at beam 128 with p50 ≤ 300 ms and p99 ≤ 1 s on one RTX
  4090-class GPU). :func:`profile_named` looks one up; :func:`with_overrides` replaces fields given as options.
- :class:`SweepConfig` — the capacity sweep (:mod:`loadtest.sweep`): offered load starts at ``start_qps`` and is
  multiplied by ``factor`` every ``step_s`` seconds (the first ``settle_s`` of each step are not measured), by
  ``ceil(offered / user_qps)`` users each paced at ``offered / users`` requests per second, until a step's p99
  exceeds ``p99_ms`` or its failure ratio exceeds ``max_failure_ratio``; the highest goodput of a step that met
  both is the capacity, and the sweep goes on until the offered load reaches ``overload_multiple`` × capacity
  (or ``max_steps`` steps ran).
Every dataclass is frozen and validated in ``__post_init__``; messages name the field and the bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

MAX_BEAM_WIDTH = 128  # the API's bound (server.schemas.MAX_BEAM_WIDTH; a test checks they agree)
MAX_TOP_K = 1000  # the API's bound (server.schemas.MAX_TOP_K)


def _positive(owner: str, name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.{name} must be > 0, given {value}")


@dataclass(frozen=True)
class Gates:
    """Pass/fail targets of one run (see the module docstring)."""

    p50_ms: float
    p99_ms: float
    max_failure_ratio: float
    min_qps: float

    def __post_init__(self) -> None:
        _positive("Gates", "p50_ms", self.p50_ms)
        _positive("Gates", "p99_ms", self.p99_ms)
        if not 0.0 <= self.max_failure_ratio <= 1.0:
            raise ValueError(f"Gates.max_failure_ratio must be in [0, 1], given {self.max_failure_ratio}")
        if not (math.isfinite(self.min_qps) and self.min_qps >= 0):
            raise ValueError(f"Gates.min_qps must be ≥ 0, given {self.min_qps}")


def _check_choices(owner: str, name: str, values: tuple[int, ...], high: int) -> None:
    if not values:
        raise ValueError(f"{owner}.{name} must hold at least one value, given ()")
    for v in values:
        if not 1 <= v <= high:
            raise ValueError(f"{owner}.{name} values must be in 1..{high}, given {v}")


@dataclass(frozen=True)
class LoadProfile:
    """A constant-load run and its gates (see the module docstring)."""

    name: str
    users: int
    spawn_rate: float
    run_time_s: int
    qps: float | None
    gates: Gates
    beam_widths: tuple[int, ...] = (MAX_BEAM_WIDTH,)
    top_ks: tuple[int, ...] = (10,)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("LoadProfile.name must not be empty")
        if self.users < 1:
            raise ValueError(f"LoadProfile.users must be ≥ 1, given {self.users}")
        _positive("LoadProfile", "spawn_rate", self.spawn_rate)
        if self.run_time_s < 1:
            raise ValueError(f"LoadProfile.run_time_s must be ≥ 1, given {self.run_time_s}")
        if self.qps is not None:
            _positive("LoadProfile", "qps", self.qps)
        _check_choices("LoadProfile", "beam_widths", self.beam_widths, MAX_BEAM_WIDTH)
        _check_choices("LoadProfile", "top_ks", self.top_ks, MAX_TOP_K)

    @property
    def user_qps(self) -> float | None:
        """Offered requests per second of one user (``constant_throughput``), or ``None`` for no wait."""
        return None if self.qps is None else self.qps / self.users

    @property
    def ramp_s(self) -> float:
        """Seconds Locust takes to spawn every user (not measured: ``--reset-stats``)."""
        return self.users / self.spawn_rate

    def targets(self) -> dict[str, Any]:
        """The profile as JSON (the summary's ``targets``)."""
        return {"profile": self.name, "users": self.users, "spawn_rate": self.spawn_rate,
                "run_time_s": self.run_time_s, "qps": self.qps, "user_qps": self.user_qps,
                "beam_widths": list(self.beam_widths), "top_ks": list(self.top_ks),
                "p50_ms": self.gates.p50_ms, "p99_ms": self.gates.p99_ms,
                "max_failure_ratio": self.gates.max_failure_ratio, "min_qps": self.gates.min_qps}


PROFILES: Mapping[str, LoadProfile] = {
    "cpu-smoke": LoadProfile(
        name="cpu-smoke", users=4, spawn_rate=4.0, run_time_s=15, qps=6.0,
        gates=Gates(p50_ms=2000.0, p99_ms=5000.0, max_failure_ratio=0.05, min_qps=3.0),
        beam_widths=(32, 128), top_ks=(10, 50),
        description="tiny bundle on a shared CPU: 6 QPS for 15 s, generous gates (CI)"),
    "gpu-4090": LoadProfile(
        name="gpu-4090", users=30, spawn_rate=10.0, run_time_s=120, qps=15.0,
        gates=Gates(p50_ms=300.0, p99_ms=1000.0, max_failure_ratio=0.01, min_qps=14.0),
        beam_widths=(MAX_BEAM_WIDTH,), top_ks=(10,),
        description="the service target: 15 QPS at beam 128, p50 ≤ 300 ms, p99 ≤ 1 s, ≤ 1 % failures"),
}


def profile_named(name: str) -> LoadProfile:
    """The profile called ``name``; ``ValueError`` lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def with_overrides(profile: LoadProfile, *, users: int | None = None, spawn_rate: float | None = None,
                   run_time_s: int | None = None, qps: float | None = None, p50_ms: float | None = None,
                   p99_ms: float | None = None, max_failure_ratio: float | None = None,
                   min_qps: float | None = None, beam_widths: tuple[int, ...] | None = None,
                   top_ks: tuple[int, ...] | None = None) -> LoadProfile:
    """``profile`` with every option that is not ``None`` replacing its field (validated again)."""
    g = profile.gates
    gates = Gates(p50_ms=g.p50_ms if p50_ms is None else p50_ms, p99_ms=g.p99_ms if p99_ms is None else p99_ms,
                  max_failure_ratio=g.max_failure_ratio if max_failure_ratio is None else max_failure_ratio,
                  min_qps=g.min_qps if min_qps is None else min_qps)
    changes: dict[str, Any] = {"users": users, "spawn_rate": spawn_rate, "run_time_s": run_time_s, "qps": qps,
                               "beam_widths": beam_widths, "top_ks": top_ks}
    return replace(profile, gates=gates, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class SweepConfig:
    """The capacity sweep's steps and its break condition (see the module docstring)."""

    p99_ms: float = 1000.0
    max_failure_ratio: float = 0.01
    start_qps: float = 2.0
    factor: float = 1.5
    step_s: float = 20.0
    settle_s: float = 5.0
    user_qps: float = 1.0
    overload_multiple: float = 3.0
    max_steps: int = 16
    spawn_rate: float = 100.0
    beam_widths: tuple[int, ...] = field(default=(MAX_BEAM_WIDTH,))
    top_ks: tuple[int, ...] = field(default=(10,))

    def __post_init__(self) -> None:
        for name in ("p99_ms", "start_qps", "step_s", "user_qps", "spawn_rate"):
            _positive("SweepConfig", name, float(getattr(self, name)))
        if not 0.0 <= self.max_failure_ratio <= 1.0:
            raise ValueError(f"SweepConfig.max_failure_ratio must be in [0, 1], given {self.max_failure_ratio}")
        if not self.factor > 1.0:
            raise ValueError(f"SweepConfig.factor must be > 1, given {self.factor}")
        if not 0.0 <= self.settle_s < self.step_s:
            raise ValueError(f"SweepConfig.settle_s must be in [0, step_s={self.step_s}), given {self.settle_s}")
        if not self.overload_multiple >= 1.0:
            raise ValueError(f"SweepConfig.overload_multiple must be ≥ 1, given {self.overload_multiple}")
        if self.max_steps < 2:
            raise ValueError(f"SweepConfig.max_steps must be ≥ 2, given {self.max_steps}")
        _check_choices("SweepConfig", "beam_widths", self.beam_widths, MAX_BEAM_WIDTH)
        _check_choices("SweepConfig", "top_ks", self.top_ks, MAX_TOP_K)

    def users_for(self, offered_qps: float) -> int:
        """Constant-throughput users that offer ``offered_qps`` together."""
        return max(1, math.ceil(offered_qps / self.user_qps - 1e-9))

    def targets(self) -> dict[str, Any]:
        return {"p99_ms": self.p99_ms, "max_failure_ratio": self.max_failure_ratio, "start_qps": self.start_qps,
                "factor": self.factor, "step_s": self.step_s, "settle_s": self.settle_s, "user_qps": self.user_qps,
                "overload_multiple": self.overload_multiple, "max_steps": self.max_steps,
                "beam_widths": list(self.beam_widths), "top_ks": list(self.top_ks)}
