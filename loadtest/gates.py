"""The pass/fail decision of a load test: each gate of :class:`~loadtest.profiles.Gates` against what a run achieved.

Contract: :func:`check_gates(achieved, gates)` returns one :class:`GateResult` per gate, in the order ``p50``,
``p99``, ``failure_ratio``, ``qps``:
- ``p50`` / ``p99``: the successful responses' exact percentile must be ≤ the target (no successful response
  fails both);
- ``failure_ratio``: failed requests (invalid, shed 503, timed-out 504, errors) over all requests must be ≤ the
  target; a run that completed no request fails it;
- ``qps``: goodput (successful responses per second over the measured window) must be ≥ the target.
Each result carries a message naming the gate, the achieved value and the target, e.g.
``"p50 12.3 ms > 0.001 ms"``; :func:`verdict` joins the missed ones (or says all passed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loadtest.outcomes import Achieved
from loadtest.profiles import Gates


@dataclass(frozen=True)
class GateResult:
    name: str
    target: float
    achieved: float | None
    passed: bool
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _upper(name: str, value: float | None, target: float, unit: str, fmt: str) -> GateResult:
    if value is None:
        return GateResult(name, target, None, False, f"{name}: no successful response (target ≤ {target:{fmt}}{unit})")
    ok = value <= target
    return GateResult(name, target, value, ok, f"{name} {value:{fmt}}{unit} {'≤' if ok else '>'} {target:{fmt}}{unit}")


def check_gates(achieved: Achieved, gates: Gates) -> list[GateResult]:
    """Every gate's result (see the module docstring)."""
    results = [_upper("p50", achieved.p50_ms, gates.p50_ms, " ms", ".4g"),
               _upper("p99", achieved.p99_ms, gates.p99_ms, " ms", ".4g")]
    if achieved.requests == 0:
        results.append(GateResult("failure_ratio", gates.max_failure_ratio, None, False,
                                  f"failure_ratio: no request completed (target ≤ {gates.max_failure_ratio:.4g})"))
    else:
        results.append(_upper("failure_ratio", achieved.failure_ratio, gates.max_failure_ratio, "", ".4g"))
    ok = achieved.qps >= gates.min_qps
    sign = "≥" if ok else "<"
    results.append(GateResult("qps", gates.min_qps, achieved.qps, ok,
                              f"qps {achieved.qps:.4g} {sign} {gates.min_qps:.4g} (successful responses/s)"))
    return results


def verdict(results: Sequence[GateResult]) -> str:
    """``"all gates passed"`` or ``"missed gate(s): p50 12.3 ms > 0.001 ms; ..."``."""
    missed = [r.message for r in results if not r.passed]
    return "missed gate(s): " + "; ".join(missed) if missed else "all gates passed"
