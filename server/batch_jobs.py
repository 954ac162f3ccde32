"""The micro-batcher's vocabulary: its configuration, a queued job, a served outcome, and the errors admission and
waiting raise (the behaviour is :mod:`server.batcher`'s contract).

Contract: :class:`BatcherConfig` is validated at construction (messages name the field and the bound);
:class:`QueueFull` carries the rejection ``reason`` (``queue_full``, ``queue_rows_full`` or ``queue_wait``) that the
app counts and answers with 503; :class:`DeadlineExceeded` becomes 504; :class:`BatcherClosed` 503 (draining).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from decoding.engine import RetrievalRequest, RetrievalResult


class QueueFull(Exception):
    """Admission refused; ``reason`` is ``queue_full`` or ``queue_rows_full``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DeadlineExceeded(Exception):
    """The request's deadline passed before its result was ready."""


class BatcherClosed(Exception):
    """The batcher stopped before the request was served."""


@dataclass(frozen=True)
class BatcherConfig:
    max_wait_s: float = 0.005
    max_batch_requests: int = 16
    max_batch_rows: int = 1024
    max_queue_requests: int = 64
    max_queue_rows: int = 8192
    stall_s: float = 60.0  # a batch running longer than this marks the engine dead (hung) until it returns
    probe_interval_s: float = 5.0  # while dead and idle, retry the probe request this often
    max_queue_wait_s: float = 0.5  # shed a request whose estimated wait + service exceeds this (measured rate)
    # ... or exceeds this many full batches (max_batch_rows rows each) at the measured rate, whichever is shorter:
    # queueing more than a few batches adds latency and no throughput (the engine is busy either way)
    queue_wait_batches: float = 3.0
    service_ewma: float = 0.2  # weight of the newest batch in the seconds-per-row moving average

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_wait_s <= 10.0:
            raise ValueError(f"max_wait_s must be in [0, 10], given {self.max_wait_s}")
        if not 0.01 <= self.stall_s <= 3600.0:
            raise ValueError(f"stall_s must be in [0.01, 3600], given {self.stall_s}")
        if not 0.01 <= self.probe_interval_s <= 3600.0:
            raise ValueError(f"probe_interval_s must be in [0.01, 3600], given {self.probe_interval_s}")
        if not 0.01 <= self.max_queue_wait_s <= 600.0:
            raise ValueError(f"max_queue_wait_s must be in [0.01, 600], given {self.max_queue_wait_s}")
        if not 1.0 <= self.queue_wait_batches <= 1000.0:
            raise ValueError(f"queue_wait_batches must be in [1, 1000], given {self.queue_wait_batches}")
        if not 0.0 < self.service_ewma <= 1.0:
            raise ValueError(f"service_ewma must be in (0, 1], given {self.service_ewma}")
        for name in ("max_batch_requests", "max_batch_rows", "max_queue_requests", "max_queue_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, given {getattr(self, name)}")


@dataclass(frozen=True)
class BatchOutcome:
    """A request's result plus where its time went."""

    result: RetrievalResult
    queue_seconds: float
    engine_seconds: float
    batch_requests: int
    batch_rows: int


@dataclass(eq=False)
class Job:
    request: RetrievalRequest
    deadline: float  # time.monotonic() seconds
    enqueued: float
    future: asyncio.Future[BatchOutcome]
    queued: bool = True
    dropped: bool = False
    started: float = field(default=0.0)

    @property
    def rows(self) -> int:
        return self.request.beam_width
