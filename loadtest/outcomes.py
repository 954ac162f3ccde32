"""What became of each request, and the numbers the gates read: exact percentiles, failure ratio, goodput.

Contract:
- :func:`classify(status, body, beam_width, top_k, retry_after)` → ``(Outcome, message)``: 200 with a valid body
  (per :func:`loadtest.validate.response_problem`) is ``OK``; 200 with an invalid body ``INVALID``; 503 ``SHED``
  (queue full, draining or not ready; a 503 without ``Retry-After`` breaks the contract and is an ``ERROR``);
  504 ``TIMED_OUT`` (the server's deadline passed); anything else, or no answer (``status`` 0), ``ERROR``.
  Only ``OK`` is a success; the message is ``None`` for ``OK`` and short and stable otherwise (Locust groups
  failures by it). :data:`REQUEST_NAMES` gives the Locust request name of each
  outcome, so shed and timed-out requests get their own rows in Locust's report.
- :class:`OutcomeLog` accumulates ``(outcome, response_ms)`` from a start time; :meth:`OutcomeLog.achieved`
  returns :class:`Achieved` over ``[start, now]``: counts per outcome, exact p50/p99 of the successful responses'
  times (nearest rank, :func:`percentile`; Locust's own percentiles round to ~2 significant digits above 100 ms),
  the failure ratio (everything but ``OK`` over all requests), goodput (successes per second) and the rate of
  all answered requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from loadtest.validate import response_problem


class Outcome(StrEnum):
    OK = "ok"
    INVALID = "invalid"
    SHED = "shed"
    TIMED_OUT = "timed_out"
    ERROR = "error"


REQUEST_NAMES: dict[Outcome, str] = {
    Outcome.OK: "/retrieve",
    Outcome.INVALID: "/retrieve",
    Outcome.SHED: "/retrieve [503 shed]",
    Outcome.TIMED_OUT: "/retrieve [504 timed out]",
    Outcome.ERROR: "/retrieve [error]",
}


def classify(status: int, body: Any, beam_width: int, top_k: int,
             retry_after: bool = True) -> tuple[Outcome, str | None]:
    """The outcome of one answered (``status`` > 0) or unanswered (``status`` 0) request; a 503 without a
    ``Retry-After`` header (``retry_after`` False) breaks the contract and is an ``ERROR``."""
    if status == 200:
        problem = response_problem(body, beam_width, top_k)
        return (Outcome.OK, None) if problem is None else (Outcome.INVALID, f"invalid response: {problem}")
    if status == 503:
        if not retry_after:
            return Outcome.ERROR, "503 without Retry-After"
        return Outcome.SHED, "503 shed (queue full, draining or not ready)"
    if status == 504:
        return Outcome.TIMED_OUT, "504 timed out (deadline passed in the server)"
    if status == 0:
        return Outcome.ERROR, "no answer (connection error or client timeout)"
    return Outcome.ERROR, f"HTTP {status}"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``0 < q ≤ 1``) of ascending values: the smallest value with at least ``q`` of
    the values at or below it."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 < q <= 1.0:
        raise ValueError(f"percentile q must be in (0, 1], given {q}")
    return float(sorted_values[max(0, math.ceil(q * len(sorted_values) - 1e-9) - 1)])


@dataclass(frozen=True)
class Achieved:
    """One window's numbers (see the module docstring); latencies in ms, rates per second."""

    duration_s: float
    requests: int
    ok: int
    invalid: int
    shed: int
    timed_out: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None

    @property
    def failures(self) -> int:
        return self.requests - self.ok

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def qps(self) -> float:
        """Goodput: successful responses per second."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def answered_qps(self) -> float:
        """Every completed request (successful or not) per second."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "failures": self.failures, "failure_ratio": self.failure_ratio, "qps": self.qps,
                "answered_qps": self.answered_qps}


@dataclass
class OutcomeLog:
    """Outcomes and successful response times since ``start`` (seconds on any monotonic clock)."""

    start: float
    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    ok_ms: list[float] = field(default_factory=list)

    def record(self, outcome: Outcome, response_ms: float) -> None:
        self.counts[outcome] += 1
        if outcome is Outcome.OK:
            self.ok_ms.append(response_ms)

    def reset(self, start: float) -> None:
        self.start = start
        self.counts = dict.fromkeys(Outcome, 0)
        self.ok_ms = []

    def achieved(self, now: float) -> Achieved:
        times = sorted(self.ok_ms)
        c = self.counts
        return Achieved(duration_s=max(0.0, now - self.start), requests=sum(c.values()), ok=c[Outcome.OK],
                        invalid=c[Outcome.INVALID], shed=c[Outcome.SHED], timed_out=c[Outcome.TIMED_OUT],
                        errors=c[Outcome.ERROR], p50_ms=percentile(times, 0.5) if times else None,
                        p99_ms=percentile(times, 0.99) if times else None)
