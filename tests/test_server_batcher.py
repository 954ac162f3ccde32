"""The micro-batcher's contract, step by step, with a recording batch function at the engine seam (the server
tests run the same batcher in front of the real engine)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from decoding.engine import RetrievalRequest, RetrievalResult
from server.batch_jobs import BatcherClosed, BatcherConfig, DeadlineExceeded, QueueFull
from server.batcher import MicroBatcher
from server.metrics import ServerMetrics

T = TypeVar("T")


class Recorder:
    """Answers each request with an empty result; records batches; can block (bounded) on a gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []  # prompt ids' first token per request, per batch
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        self.threads.add(threading.current_thread().name)
        self.batches.append([r.prompt_ids[0] for r in requests])
        self.gate.wait(timeout=10)
        if self.fail:
            raise RuntimeError("boom")
        return [RetrievalResult(sids=[], items=[], timings={"prefill": 0.001}) for _ in requests]


def req(tag: int, beam: int = 4) -> RetrievalRequest:
    return RetrievalRequest((tag,), beam_width=beam)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def far() -> float:
    return time.monotonic() + 30


def test_waits_max_wait_after_the_first_request_then_batches_what_queued() -> None:
    async def main() -> tuple[list[list[int]], float]:
        rec = Recorder()
        b = MicroBatcher(rec, BatcherConfig(max_wait_s=0.2, max_batch_requests=8))
        await b.start()
        t0 = time.monotonic()
        first = asyncio.ensure_future(b.retrieve(req(1), far()))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.retrieve(req(i), far())) for i in (2, 3)]
        await asyncio.gather(first, *rest)
        waited = time.monotonic() - t0
        await b.stop()
        return rec.batches, waited

    batches, waited = run(main())
    assert batches == [[1, 2, 3]]
    assert waited >= 0.2 - 0.01  # the window is measured from the first request


def test_request_cap_and_beam_row_budget_fifo() -> None:
    async def main() -> list[list[int]]:
        rec = Recorder()
        rec.gate.clear()
        b = MicroBatcher(rec, BatcherConfig(max_wait_s=0.0, max_batch_requests=3, max_batch_rows=130))
        await b.start()
        blocker = asyncio.ensure_future(b.retrieve(req(0), far()))
        while not rec.batches:
            await asyncio.sleep(0.001)
        # queued while the engine is busy: widths 64, 64, 8 (row budget 130 stops at 2), then 4 x 1 (cap 3)
        tasks = [asyncio.ensure_future(b.retrieve(req(t, w), far()))
                 for t, w in [(1, 64), (2, 64), (3, 8), (4, 1), (5, 1), (6, 1), (7, 1)]]
        await asyncio.sleep(0.01)
        rec.gate.set()
        await asyncio.gather(blocker, *tasks)
        await b.stop()
        return rec.batches

    assert run(main()) == [[0], [1, 2], [3, 4, 5], [6, 7]]


def test_admission_is_synchronous_and_bounded() -> None:
    async def main() -> tuple[list[str], int]:
        rec = Recorder()
        rec.gate.clear()
        metrics = ServerMetrics()
        b = MicroBatcher(rec, BatcherConfig(max_wait_s=0.0, max_queue_requests=3, max_queue_rows=300), metrics)
        await b.start()
        blocker = asyncio.ensure_future(b.retrieve(req(0), far()))
        while not rec.batches:
            await asyncio.sleep(0.001)
        outcomes: list[str] = []
        jobs = []
        for i, beam in enumerate([128, 128, 64, 4, 4]):  # a burst with no await between the checks
            try:
                jobs.append(b.admit(req(10 + i, beam), far()))
                outcomes.append("admitted")
            except QueueFull as exc:
                outcomes.append(exc.reason)
        queued = b.queued_rows
        rec.gate.set()
        await asyncio.gather(blocker, *(b.wait(j) for j in jobs))
        await b.stop()
        return outcomes, queued

    outcomes, queued = run(main())
    # 128 + 128 = 256 fits 300; +64 would not; 4 fits (260); the 4th queued request exceeds 3 requests
    assert outcomes == ["admitted", "admitted", "queue_rows_full", "admitted", "queue_full"]
    assert queued == 260


def test_cancelled_and_expired_requests_never_reach_the_engine() -> None:
    async def main() -> tuple[list[list[int]], float, float]:
        rec = Recorder()
        rec.gate.clear()
        metrics = ServerMetrics()
        b = MicroBatcher(rec, BatcherConfig(max_wait_s=0.0), metrics)
        await b.start()
        blocker = asyncio.ensure_future(b.retrieve(req(0), far()))
        while not rec.batches:
            await asyncio.sleep(0.001)
        gone = asyncio.ensure_future(b.retrieve(req(1), far()))
        late = asyncio.ensure_future(b.retrieve(req(2), time.monotonic() + 0.05))
        kept = asyncio.ensure_future(b.retrieve(req(3), far()))
        await asyncio.sleep(0.01)
        gone.cancel()  # what a client disconnect does to the waiting handler
        with pytest.raises(DeadlineExceeded):
            await late
        assert b.queued_requests == 1
        rec.gate.set()
        await asyncio.gather(blocker, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
        await b.stop()
        samples = {(s.name, s.labels.get("reason")): s.value for f in metrics.registry.collect() for s in f.samples}
        return (rec.batches, samples[("radgr_cancellations_total", "client_disconnect")],
                samples[("radgr_cancellations_total", "deadline")])

    batches, disconnects, deadlines = run(main())
    assert batches == [[0], [3]]
    assert (disconnects, deadlines) == (1, 1)


def test_engine_runs_in_one_worker_thread_and_failures_reach_every_waiter() -> None:
    async def main() -> tuple[set[str], list[str], bool]:
        rec = Recorder()
        b = MicroBatcher(rec, BatcherConfig(max_wait_s=0.01))
        await b.start()
        for i in range(3):
            await b.retrieve(req(i), far())
        rec.fail = True
        results = await asyncio.gather(*(b.retrieve(req(9), far()) for _ in range(2)), return_exceptions=True)
        alive_after_one_failure = b.alive
        await b.stop()
        with pytest.raises(BatcherClosed):
            b.admit(req(1), far())
        return rec.threads, [type(r).__name__ for r in results], alive_after_one_failure

    threads, errors, alive = run(main())
    assert len(threads) == 1 and next(iter(threads)) != threading.main_thread().name
    assert errors == ["RuntimeError", "RuntimeError"] and alive


def test_config_bounds_are_named() -> None:
    with pytest.raises(ValueError, match="max_batch_rows must be >= 1, given 0"):
        BatcherConfig(max_batch_rows=0)
    with pytest.raises(ValueError, match=r"max_wait_s must be in \[0, 10\], given -1"):
        BatcherConfig(max_wait_s=-1)


class SlowPerRow:
    """Takes ``seconds_per_row`` × Σ beam widths per batch: a known service rate."""

    def __init__(self, seconds_per_row: float) -> None:
        self.seconds_per_row = seconds_per_row

    def __call__(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        time.sleep(self.seconds_per_row * sum(r.beam_width for r in requests))
        return [RetrievalResult(sids=[], items=[], timings={}) for _ in requests]


def test_admission_bounds_the_wait_by_the_measured_service_rate() -> None:
    """At 10 ms per beam row (measured from the first batch), 4-row requests cost ~40 ms: with a 0.3 s wait bound
    about 7 of them fit (7 × 40 ms = 0.28 s ≤ 0.3 s, 8 would be 0.32 s), the rest are shed at once as
    ``queue_wait``; before any batch ran only the length bounds applied."""

    async def main() -> tuple[int, list[str], float | None, int]:
        b = MicroBatcher(SlowPerRow(0.01), BatcherConfig(max_wait_s=0.0, max_queue_wait_s=0.3, max_batch_requests=1,
                                                         service_ewma=1.0))
        await b.start()
        assert b.estimated_wait(4) is None  # nothing measured yet
        await b.retrieve(req(0), far())  # measures 10 ms per row
        estimate = b.estimated_wait(4)
        admitted, reasons = [], []
        for i in range(12):
            try:
                admitted.append(b.admit(req(i), far()))
            except QueueFull as exc:
                reasons.append(exc.reason)
        waited = await asyncio.gather(*(b.wait(j) for j in admitted))
        await b.stop()
        return len(admitted), reasons, estimate, len(waited)

    n, reasons, estimate, served = run(main())
    assert estimate is not None and 0.035 <= estimate <= 0.08
    assert 5 <= n <= 8 and served == n  # ~7 (timing noise of a loaded machine moves the first batch's measure)
    assert reasons and set(reasons) == {"queue_wait"}


def test_a_deadline_shorter_than_the_estimated_wait_is_shed_at_once() -> None:
    async def main() -> str:
        b = MicroBatcher(SlowPerRow(0.01), BatcherConfig(max_wait_s=0.0, max_queue_wait_s=10.0, service_ewma=1.0))
        await b.start()
        await b.retrieve(req(0, beam=32), far())  # 0.32 s measured: 10 ms per row
        try:
            b.check_wait(32, time.monotonic() + 0.1)  # needs ~0.32 s, has 0.1 s
        except QueueFull as exc:
            return exc.reason
        finally:
            await b.stop()
        return "admitted"

    assert run(main()) == "queue_wait"


def test_an_idle_server_serves_a_request_longer_than_the_wait_bound() -> None:
    """With nothing queued or running, a request whose own service (~0.64 s) exceeds ``max_queue_wait_s`` (0.3 s)
    is admitted and served (only its deadline binds); the same request behind another is shed."""

    async def main() -> tuple[int, str]:
        b = MicroBatcher(SlowPerRow(0.01), BatcherConfig(max_wait_s=0.0, max_queue_wait_s=0.3, service_ewma=1.0))
        await b.start()
        await b.retrieve(req(0, beam=4), far())  # measures 10 ms per row
        first = b.admit(req(1, beam=64), far())  # idle: admitted although 64 rows ≈ 0.64 s > 0.3 s
        try:
            b.admit(req(2, beam=64), far())
            second = "admitted"
        except QueueFull as exc:
            second = exc.reason
        out = await b.wait(first)
        await b.stop()
        return out.batch_rows, second

    served_rows, second = run(main())
    assert served_rows == 64
    assert second == "queue_wait"


def test_the_wait_bound_is_a_few_full_batches_when_that_is_shorter() -> None:
    """At 10 ms per row, with 8-row batches and ``queue_wait_batches`` 2, the bound is 2 × 8 × 10 ms = 0.16 s (not
    ``max_queue_wait_s`` 10 s): 4-row requests are admitted while the rows ahead plus their own fit in 16 rows
    (4 requests), the rest shed as ``queue_wait``; a shorter ``max_queue_wait_s`` still wins over the batches."""

    async def main() -> tuple[float, int, list[str], float]:
        cfg = BatcherConfig(max_wait_s=0.0, max_queue_wait_s=10.0, max_batch_rows=8, queue_wait_batches=2.0,
                            service_ewma=1.0)
        b = MicroBatcher(SlowPerRow(0.01), cfg)
        await b.start()
        assert b.wait_bound() == 10.0  # nothing measured yet: max_queue_wait_s
        await b.retrieve(req(0), far())  # measures 10 ms per row
        bound = b.wait_bound()
        admitted, reasons = [], []
        for i in range(10):
            try:
                admitted.append(b.admit(req(i), far()))
            except QueueFull as exc:
                reasons.append(exc.reason)
        await asyncio.gather(*(b.wait(j) for j in admitted))
        tight = MicroBatcher(SlowPerRow(0.01), replace(cfg, max_queue_wait_s=0.05))
        await tight.start()
        await tight.retrieve(req(0), far())
        tight_bound = tight.wait_bound()
        await tight.stop()
        await b.stop()
        return bound, len(admitted), reasons, tight_bound

    bound, n, reasons, tight_bound = run(main())
    assert 0.12 <= bound <= 0.25  # 0.16 s, with the first batch's timing noise
    assert 3 <= n <= 5 and reasons and set(reasons) == {"queue_wait"}
    assert tight_bound == 0.05


def test_wait_bound_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="max_queue_wait_s"):
        BatcherConfig(max_queue_wait_s=0.0)
    with pytest.raises(ValueError, match="service_ewma"):
        BatcherConfig(service_ewma=0.0)
    with pytest.raises(ValueError, match=r"queue_wait_batches must be in \[1, 1000\]"):
        BatcherConfig(queue_wait_batches=0.5)
