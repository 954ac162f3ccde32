"""An asyncio micro-batcher in front of one engine: admission control, batching, deadlines, cancellation.

Contract (docs/serving.md "Serving behaviour"):
1. ``admit(request, deadline)`` is synchronous: it checks the queue bounds (requests and beam rows) and counts the
   request in the same step, so a burst can never pass the check and then all be counted; over a bound it raises
   :class:`QueueFull` (→ 503). ``retrieve`` = ``admit`` + ``wait``.
   It also bounds the *wait*: from the measured service rate (an exponential moving average of engine seconds
   per beam row over recent batches, :meth:`MicroBatcher.estimated_wait`), a request is admitted only if the rows
   ahead of it (queued + running) plus its own would be served within the wait bound
   (:meth:`MicroBatcher.wait_bound`: ``max_queue_wait_s`` or ``queue_wait_batches`` full batches at the measured
   rate, whichever is shorter) and before its deadline; otherwise it is shed at once (reason ``queue_wait``)
   instead of waiting to time out. With nothing ahead only the deadline binds (an idle server serves a request
   however long its own service). Until the first batch has run there is no estimate and only the length bounds
   apply.
2. The dispatcher takes the queue's head and waits at most ``max_wait_s`` after that *first* request was queued
   (Ray Serve semantics) for more, or less if the batch fills first; when the engine was busy the head has usually
   waited already and the batch goes at once with whatever queued meanwhile.
3. A batch is capped by ``max_batch_requests`` and by the beam-row budget ``max_batch_rows`` (Σ beam widths);
   requests are taken first in, first out (the first that does not fit starts the next batch).
4. Cancelled requests (the waiter was cancelled: client disconnect) are removed from the queue at once;
   expired ones (deadline passed) are dropped when the dispatcher meets them; neither reaches the engine.
5. The engine's ``retrieve_batch`` runs in one dedicated worker thread (it owns the device), never on the event
   loop, one batch at a time.
6. ``wait`` raises :class:`DeadlineExceeded` at the deadline (→ 504) even if the batch is still running;
   an engine exception is re-raised in every waiter of that batch (→ 500). Results that are not one
   :class:`RetrievalResult` per request count as an engine failure (a ``RuntimeError`` saying so); no engine fault
   stops the dispatcher.
7. Health: :attr:`MicroBatcher.alive` is False while the engine has failed ``DEAD_AFTER_FAILURES`` batches in a row
   or a batch has run longer than ``stall_s`` (a hung engine), and True again once a batch succeeds or the hung
   batch returns. While dead and idle the dispatcher retries the probe request (:meth:`MicroBatcher.set_probe`,
   the warm-up request) every ``probe_interval_s``, so the engine recovers without traffic (a server out of its
   load balancer's rotation gets none). :attr:`MicroBatcher.dead_reason` says why it is dead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from decoding.engine import RetrievalRequest, RetrievalResult
from server.batch_jobs import BatcherClosed, BatcherConfig, BatchOutcome, DeadlineExceeded, Job, QueueFull
from server.metrics import ServerMetrics

logger = logging.getLogger(__name__)

RunBatch = Callable[[Sequence[RetrievalRequest]], list[RetrievalResult]]
DEAD_AFTER_FAILURES = 3
ENGINE_PHASES = ("prefill", "decode", "masking", "host", "finalize")  # timings keys observed per phase (seconds)


class MicroBatcher:
    """Feeds one engine from an asyncio queue; see the module docstring for the contract."""

    def __init__(self, run_batch: RunBatch, cfg: BatcherConfig, metrics: ServerMetrics | None = None,
                 engine_name: str = "engine", engine_thread: ThreadPoolExecutor | None = None) -> None:
        """``engine_thread``: the one-worker executor that built the engine, if any (the batcher then runs batches
        on it and shuts it down at :meth:`stop`). vLLM binds its compute threads to the thread that starts it:
        the same engine driven from another thread ran about 1.4× slower on CPU."""
        self._run_batch = run_batch
        self._engine_thread = engine_thread
        self.cfg = cfg
        self._metrics = metrics
        self._engine_name = engine_name
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_rows = 0
        self._changed = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._consecutive_failures = 0
        self._batch_started: float | None = None  # time.monotonic() when the running batch (or probe) started
        self._probe: RetrievalRequest | None = None
        self._engine_busy = False  # set on the worker thread while the engine call runs
        self._closing = False
        self.batches_run = 0
        self._seconds_per_row: float | None = None  # measured service cost (moving average), None until a batch ran
        self._inflight_rows = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._executor = self._engine_thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix="radgr-engine")
        self._task = asyncio.create_task(self._dispatch_forever(), name="radgr-batcher")

    async def stop(self) -> None:
        """Stop dispatching, fail what is still queued with :class:`BatcherClosed`, wait for the running batch."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            job = self._queue.popleft()
            self._unqueue(job)
            if not job.future.done():
                job.future.set_exception(BatcherClosed("the server is shutting down"))
        self._publish()
        if self._executor is not None:
            if self._engine_busy:  # a hung engine call cannot be interrupted: do not wait for it
                logger.warning("stopping while an engine batch still runs; not waiting for it")
                self._executor.shutdown(wait=False)
            else:
                await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    def set_probe(self, request: RetrievalRequest) -> None:
        """The request retried while the engine is dead and no traffic comes (the app gives its warm-up)."""
        self._probe = request

    @property
    def dead_reason(self) -> str | None:
        """None while the engine is alive; otherwise why not (contract item 7)."""
        if self._task is None or self._task.done():
            return "the batch dispatcher is not running"
        if self._consecutive_failures >= DEAD_AFTER_FAILURES:
            return f"the engine failed {self._consecutive_failures} batches in a row"
        started = self._batch_started
        if started is not None and time.monotonic() - started > self.cfg.stall_s:
            return f"an engine batch has been running for {time.monotonic() - started:.0f} s"
        return None

    @property
    def alive(self) -> bool:
        """False while the dispatcher is stopped, the engine failed ``DEAD_AFTER_FAILURES`` batches in a row, or a
        batch has run past ``stall_s``; see :attr:`dead_reason`."""
        return self.dead_reason is None

    @property
    def engine_busy(self) -> bool:
        """True while an engine call runs on the worker thread (even after a stop gave up waiting for it)."""
        return self._engine_busy

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def estimated_wait(self, rows: int = 0) -> float | None:
        """Seconds until ``rows`` more beam rows would be served: (running + queued + ``rows``) × the measured
        seconds per row; ``None`` before the first batch."""
        if self._seconds_per_row is None:
            return None
        return (self._inflight_rows + self._queued_rows + rows) * self._seconds_per_row

    def wait_bound(self) -> float:
        """Seconds a request may be estimated to wait (ahead of it, plus its own service) while anything is queued
        or running: ``max_queue_wait_s``, or ``queue_wait_batches`` full batches (``max_batch_rows`` rows each) at
        the measured rate, whichever is shorter. More queued work than a few batches keeps the engine no busier; it
        only adds latency. On a slow machine the batches' share is long and ``max_queue_wait_s`` binds."""
        if self._seconds_per_row is None:
            return self.cfg.max_queue_wait_s
        batches = self.cfg.queue_wait_batches * self.cfg.max_batch_rows * self._seconds_per_row
        return min(self.cfg.max_queue_wait_s, batches)

    def shed_reason(self) -> str | None:
        """A message while even one more beam row would wait longer than the wait bound, else ``None`` (the cheap
        early check, made before a request's body is read)."""
        wait = self.estimated_wait(1)
        bound = self.wait_bound()
        if wait is not None and wait > bound:
            return f"server busy: estimated wait {wait:.2f} s exceeds {bound:.2f} s"
        return None

    def check_wait(self, rows: int, deadline: float) -> None:
        """Raise :class:`QueueFull` (``queue_wait``) when ``rows`` more beam rows would not be served before
        ``deadline`` (``time.monotonic()`` seconds) at the measured rate, or, while anything is queued or running,
        within :meth:`wait_bound`. An idle server never sheds for the wait bound: a request whose own service
        alone takes longer (a big beam on a slow machine) would otherwise never be served."""
        wait = self.estimated_wait(rows)
        if wait is not None:
            budget = deadline - time.monotonic()
            if self._inflight_rows + self._queued_rows > 0:  # alone, a big request is served (only its deadline binds)
                budget = min(budget, self.wait_bound())
            if wait > budget:
                raise QueueFull("queue_wait", f"server busy: estimated wait {wait:.2f} s exceeds {budget:.2f} s")

    # -- admission and waiting -------------------------------------------------------------------------------
    def admit(self, request: RetrievalRequest, deadline: float) -> Job:
        """Check the bounds and count the request, in one synchronous step."""
        if self._closing or self._task is None:
            raise BatcherClosed("the batcher is not running")
        if len(self._queue) + 1 > self.cfg.max_queue_requests:
            raise QueueFull("queue_full", f"queue is full ({self.cfg.max_queue_requests} requests)")
        if self._queued_rows + request.beam_width > self.cfg.max_queue_rows:
            raise QueueFull("queue_rows_full", f"queue is full ({self.cfg.max_queue_rows} beam rows)")
        self.check_wait(request.beam_width, deadline)
        job = Job(request, deadline, time.monotonic(), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._queued_rows += job.rows
        self._publish()
        self._changed.set()
        return job

    async def wait(self, job: Job) -> BatchOutcome:
        """The job's outcome; on cancellation (client disconnect) or deadline the job is dropped."""
        try:
            done, _ = await asyncio.wait({job.future}, timeout=max(0.0, job.deadline - time.monotonic()))
        except asyncio.CancelledError:
            self._drop(job, "client_disconnect")
            raise
        if not done:
            self._drop(job, "deadline")
            raise DeadlineExceeded("the request's deadline passed")
        return job.future.result()

    async def retrieve(self, request: RetrievalRequest, deadline: float) -> BatchOutcome:
        return await self.wait(self.admit(request, deadline))

    # -- internals -------------------------------------------------------------------------------------------
    def _unqueue(self, job: Job) -> None:
        if job.queued:
            job.queued = False
            self._queued_rows -= job.rows

    def _drop(self, job: Job, reason: str) -> None:
        if job.dropped or (job.future.done() and not job.queued):
            return
        job.dropped = True
        if job.queued:
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
            self._unqueue(job)
            self._publish()
        if not job.future.done():
            job.future.cancel()
        if self._metrics is not None:
            self._metrics.cancellations.labels(reason=reason).inc()

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_requests.set(len(self._queue))
            self._metrics.queue_rows.set(self._queued_rows)

    def _batch_is_full(self) -> bool:
        n, rows = 0, 0
        for job in self._queue:
            if n + 1 > self.cfg.max_batch_requests or rows + job.rows > self.cfg.max_batch_rows:
                return True
            n, rows = n + 1, rows + job.rows
        return n >= self.cfg.max_batch_requests or rows >= self.cfg.max_batch_rows

    def _take_batch(self) -> list[Job]:
        now = time.monotonic()
        batch: list[Job] = []
        rows = 0
        while self._queue:
            job = self._queue[0]
            if job.deadline <= now:
                self._queue.popleft()
                self._unqueue(job)
                if not job.future.done():
                    job.future.set_exception(DeadlineExceeded("the request's deadline passed in the queue"))
                job.dropped = True
                if self._metrics is not None:
                    self._metrics.cancellations.labels(reason="deadline").inc()
                continue
            if len(batch) + 1 > self.cfg.max_batch_requests or rows + job.rows > self.cfg.max_batch_rows:
                break
            self._queue.popleft()
            self._unqueue(job)
            batch.append(job)
            rows += job.rows
        self._publish()
        return batch

    def _needs_probe(self) -> bool:
        return self._probe is not None and self._consecutive_failures >= DEAD_AFTER_FAILURES

    async def _dispatch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._changed.clear()
                if not self._needs_probe():
                    await self._changed.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=self.cfg.probe_interval_s)
                if not self._queue and self._needs_probe():
                    await self._run_probe(loop)
                continue
            wait_until = self._queue[0].enqueued + self.cfg.max_wait_s
            while self._queue and not self._batch_is_full():
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=remaining)
            batch = self._take_batch()
            if not batch:
                continue
            try:
                await self._run(loop, batch)
            except Exception as exc:  # a fault outside the engine call (e.g. odd timings): fail the batch, go on
                logger.exception("dispatching a batch failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _call_engine(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        """The engine call, on the worker thread, with its answer checked (contract item 6)."""
        self._engine_busy = True
        try:
            results = self._run_batch(requests)
        finally:
            self._engine_busy = False
        if not isinstance(results, list) or len(results) != len(requests):
            got = len(results) if isinstance(results, list) else type(results).__name__
            raise RuntimeError(f"engine returned {got} results for {len(requests)} requests")
        for res in results:
            if not isinstance(res, RetrievalResult):
                raise RuntimeError(f"engine returned a {type(res).__name__}, not a RetrievalResult")
        return results

    async def _run_probe(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._executor is not None and self._probe is not None
        self._batch_started = time.monotonic()
        try:
            await loop.run_in_executor(self._executor, self._call_engine, [self._probe])
        except Exception as exc:
            logger.warning("engine still failing (probe: %s: %s)", type(exc).__name__, exc)
            return
        finally:
            self._batch_started = None
        logger.info("engine recovered (probe succeeded after %d failed batches)", self._consecutive_failures)
        self._consecutive_failures = 0

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[Job]) -> None:
        assert self._executor is not None
        rows = sum(job.rows for job in batch)
        started = time.monotonic()
        if self._metrics is not None:
            self._metrics.batch_requests.observe(len(batch))
            self._metrics.batch_rows.observe(rows)
            self._metrics.inflight_rows.set(rows)
            for job in batch:
                self._metrics.queue_wait.observe(started - job.enqueued)
        for job in batch:
            job.started = started
        requests = [job.request for job in batch]
        t0 = time.perf_counter()
        self._batch_started = time.monotonic()
        self._inflight_rows = rows
        try:
            results = await loop.run_in_executor(self._executor, self._call_engine, requests)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._consecutive_failures += 1
            logger.exception("engine batch failed (%d in a row)", self._consecutive_failures)
            if self._metrics is not None:
                self._metrics.engine_failures.inc()
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self._batch_started = None
            self._inflight_rows = 0
            if self._metrics is not None:
                self._metrics.inflight_rows.set(0)
        engine_s = time.perf_counter() - t0
        per_row = engine_s / max(rows, 1)
        a = self.cfg.service_ewma
        prev = self._seconds_per_row
        self._seconds_per_row = per_row if prev is None else (1 - a) * prev + a * per_row
        if self._consecutive_failures:
            logger.info("engine recovered after %d failed batches", self._consecutive_failures)
        self._consecutive_failures = 0
        self.batches_run += 1
        if self._metrics is not None:
            self._metrics.engine_time.labels(phase="total", engine=self._engine_name).observe(engine_s)
            phases: dict[str, float] = {}
            for res in results:
                for phase, seconds in res.timings.items():
                    if phase in ENGINE_PHASES:
                        phases[phase] = max(phases.get(phase, 0.0), float(seconds))
            for phase, seconds in phases.items():
                self._metrics.engine_time.labels(phase=phase, engine=self._engine_name).observe(seconds)
        for job, res in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(BatchOutcome(res, job.started - job.enqueued, engine_s, len(batch), rows))
