"""Micro-batching: concurrent requests share one onnxruntime call.

A single-row call costs onnxruntime about as much as a 30-row one (the fixed per-call cost dominates
a model this small), and so does the numpy that derives the trust metadata. Coalescing concurrent
requests pays those costs once per batch instead of once per request.

The policy is opportunistic, as in Triton's dynamic batcher with a zero queue delay by default: one
collector task takes whatever is queued when the inference thread is free, up to ``max_rows`` rows,
and waits up to ``max_wait_s`` for more only if told to. Under light load a request waits for nobody;
under heavy load requests pile up while the previous batch runs, so batches grow with the load.
The batch runs in a one-thread executor (onnxruntime releases the GIL), so the event loop goes on
reading and answering requests meanwhile.

Load shedding, as Triton's queue policy (``max_queue_size``, ``default_timeout_microseconds``): past a
bound on queued rows a request is refused at once, and a request that waited in the queue past its
deadline is refused when its turn comes instead of being scored for a client that has likely given up.
Both raise ``Overloaded`` (503 with Retry-After). A request already taken into a batch is always
answered. Without a bound, 1,024 connections queued without limit: p50 475 ms, p99 550 ms, nothing
refused (bench/RESULTS.md has the figures with it).

Generic over the job and result types and free of HTTP, so the same batcher serves every protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.errors import ModelNotReady, Overloaded
from service.request_context import received_at

Job = TypeVar("Job")
Result = TypeVar("Result")

# process(jobs) -> one outcome per job, in order: its result, or the exception that job alone caused.
Process = Callable[[Sequence[Job]], Sequence[Result | Exception]]


@dataclass(slots=True)
class _Pending(Generic[Job, Result]):
    job: Job
    rows: int
    future: asyncio.Future[Result]
    deadline: float  # time.monotonic() after which the job is refused instead of scored


class MicroBatcher(Generic[Job, Result]):
    """Coalesces concurrent ``submit`` calls into calls of ``process`` on a dedicated thread.

    Outcomes go back to their own callers in order; an exception ``process`` returns for a job fails
    that job only, while an exception ``process`` raises fails every job of the batch (it is not any
    one request's fault, and each must hear of it). A job larger than ``max_rows`` runs alone; jobs are
    never split. A caller that goes away (cancelled future) is skipped, not computed.

    ``max_queue_rows`` bounds the rows waiting (not those being scored); a job that does not fit is refused
    with ``Overloaded`` (a job arriving at an empty queue is always taken, however large, so no request
    size is refused forever). ``queue_timeout_s`` is the longest a job may wait for its batch.
    """

    def __init__(
        self,
        process: Process[Job, Result],
        rows_of: Callable[[Job], int],
        *,
        max_rows: int,
        max_wait_s: float = 0.0,
        max_queue_rows: int | None = None,
        queue_timeout_s: float | None = None,
        name: str = "calibserve-inference",
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._process = process
        self._rows_of = rows_of
        if max_queue_rows is not None and max_queue_rows < 1:
            raise ValueError(f"max_queue_rows must be >= 1, got {max_queue_rows}")
        if queue_timeout_s is not None and queue_timeout_s <= 0:
            raise ValueError(f"queue_timeout_s must be > 0, got {queue_timeout_s}")
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.max_queue_rows = max_queue_rows
        self.queue_timeout_s = queue_timeout_s
        self.queued_rows = 0  # rows submitted and not yet taken into a batch (or refused)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: asyncio.Queue[_Pending[Job, Result] | None] = asyncio.Queue()  # None: stop
        self._collector: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0  # counters for tests and the benchmark: how much coalescing happened
        self.jobs = 0
        self.shed = {"queue_full": 0, "queue_timeout": 0}

    async def submit(self, job: Job) -> Result:
        """The outcome of ``job``, computed in a batch with whatever else is queued."""
        if self._closed:
            raise ModelNotReady("the server is shutting down", {"retry": True})
        loop = asyncio.get_running_loop()
        if self._collector is None:
            self._collector = loop.create_task(self._collect(), name="micro-batcher")
        rows = self._rows_of(job)
        if self.max_queue_rows is not None and self.queued_rows and self.queued_rows + rows > self.max_queue_rows:
            self.shed["queue_full"] += 1
            raise Overloaded(
                f"the inference queue is full ({self.queued_rows} rows waiting, limit {self.max_queue_rows}: "
                "CALIBSERVE_MAX_QUEUE_ROWS); retry shortly",
                {
                    "reason": "queue_full",
                    "queued_rows": self.queued_rows,
                    "limit_rows": self.max_queue_rows,
                    "retry_after": 1,
                },
            )
        deadline = received_at() + self.queue_timeout_s if self.queue_timeout_s is not None else float("inf")
        if deadline <= time.monotonic():
            # Already past it when it reaches the queue (it waited for the event loop): refused before queueing,
            # which is the cheapest answer there is.
            self.shed["queue_timeout"] += 1
            raise self._timeout_error(time.monotonic() - deadline)
        future: asyncio.Future[Result] = loop.create_future()
        self.queued_rows += rows
        self._queue.put_nowait(_Pending(job, rows, future, deadline))
        return await future

    async def close(self) -> None:
        """Stop: the batch being gathered or run is finished and answered; jobs still queued behind it
        fail with 503 (uvicorn's graceful shutdown has already drained the requests, so normally none)."""
        self._closed = True
        if self._collector is not None:
            self._queue.put_nowait(None)
            await asyncio.shield(self._collector)
        self._fail_queued()
        self._executor.shutdown(wait=True)

    def _fail_queued(self) -> None:
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None:
                self.queued_rows -= pending.rows
                if not pending.future.done():
                    pending.future.set_exception(ModelNotReady("the server is shutting down", {"retry": True}))

    def _expired(self, pending: _Pending[Job, Result], now: float) -> bool:
        """Refuses a job whose deadline passed while it waited (it leaves the queue either way)."""
        if pending.deadline > now:
            return False
        self.queued_rows -= pending.rows
        if not pending.future.done():
            self.shed["queue_timeout"] += 1
            pending.future.set_exception(self._timeout_error(now - pending.deadline))
        return True

    def _timeout_error(self, late_s: float) -> Overloaded:
        timeout_ms = (self.queue_timeout_s or 0.0) * 1000
        waited_ms = timeout_ms + late_s * 1000
        return Overloaded(
            f"the request waited {waited_ms:.0f} ms for inference, past the queue deadline of {timeout_ms:.0f} ms "
            "(CALIBSERVE_QUEUE_TIMEOUT_MS); retry shortly",
            {"reason": "queue_timeout", "waited_ms": round(waited_ms, 1), "retry_after": 1},
        )

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        carried: _Pending[Job, Result] | None = None
        stopping = False
        while not stopping:
            first = carried if carried is not None else await self._queue.get()
            carried = None
            if first is None:
                return
            if self._expired(first, time.monotonic()):
                continue
            batch, carried, stopping = await self._gather(first, loop)
            live = [pending for pending in batch if not pending.future.done()]
            if live:
                await self._run(live, loop)
        if carried is not None:
            self._queue.put_nowait(carried)  # answered by close(), like the rest of the queue

    async def _gather(
        self, first: _Pending[Job, Result], loop: asyncio.AbstractEventLoop
    ) -> tuple[list[_Pending[Job, Result]], _Pending[Job, Result] | None, bool]:
        """``first`` plus what else fits: queued jobs now, then arrivals until ``max_wait_s`` has passed.

        Returns the batch, the job that did not fit (it starts the next batch, still counted as queued) and
        whether ``close`` asked to stop (the batch is still run). Jobs past their deadline are refused here."""
        self.queued_rows -= first.rows
        batch, rows = [first], first.rows
        deadline = loop.time() + self.max_wait_s
        while rows < self.max_rows:
            pending: _Pending[Job, Result] | None
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        pending = await self._queue.get()
                except TimeoutError:
                    break
            else:
                pending = self._queue.get_nowait()
            if pending is None:
                return batch, None, True
            if self._expired(pending, time.monotonic()):
                continue
            if rows + pending.rows > self.max_rows:
                return batch, pending, False
            self.queued_rows -= pending.rows
            batch.append(pending)
            rows += pending.rows
        return batch, None, False

    async def _run(self, batch: list[_Pending[Job, Result]], loop: asyncio.AbstractEventLoop) -> None:
        self.batches += 1
        self.jobs += len(batch)
        try:
            outcomes = await loop.run_in_executor(self._executor, self._process, [p.job for p in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"batch process returned {len(outcomes)} outcomes for {len(batch)} jobs")
        except Exception as error:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
