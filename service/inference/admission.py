"""Admission: at most ``limit`` inference requests in flight per worker; the rest wait, newest first, until
their deadline, then are refused (``Overloaded``, 503).

Why not just a queue deadline in the micro-batcher: under overload the wait is in the event loop, not in
the batcher. With 1,024 connections every request sat ~350 ms in the loop's ready queue before it reached
the batcher, so a 100 ms deadline refused all of them and nothing was answered (and without a deadline
everything was answered late: p50 475 ms). Admission keeps the work in flight small enough to finish
within the deadline; a waiting request costs a future and nothing else (its body is not even read), so the
requests that are answered stay fast and the rest get a cheap 503 when their deadline passes.

Waiters are admitted newest first (LIFO, as in Facebook's "adaptive LIFO" for overloaded queues): the
order only matters while requests wait, that is under overload, and then first-in-first-out makes every
request equally late, so all of them sit near the deadline and many miss it, while newest-first answers
most requests at once and lets the oldest, whose clients are the likeliest to have given up, run out.
Without load nobody waits and the order never shows. Free of HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from service.errors import Overloaded


class Admission:
    def __init__(self, limit: int, timeout_s: float) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.timeout_s = timeout_s
        self.in_flight = 0
        self.refused = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def _drop_expired(self) -> None:
        # Expired waiters sit at the old end (the left) and would otherwise stay until every newer one left.
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()

    async def acquire(self, received_at: float) -> None:
        """A slot for a request that arrived at ``received_at`` (``time.monotonic()``), or ``Overloaded``."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        remaining = received_at + self.timeout_s - time.monotonic()
        if remaining <= 0:
            raise self._refusal(remaining)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._drop_expired()
        self._waiters.append(waiter)
        expiry = loop.call_later(remaining, self._expire, waiter, received_at)
        try:
            await waiter  # release() hands its slot over by setting the result
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed a slot, then cancelled before it could use it
            raise
        finally:
            expiry.cancel()

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop()  # the newest: see the module docstring
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; in_flight is unchanged
                return
        self.in_flight -= 1

    def _expire(self, waiter: asyncio.Future[None], received_at: float) -> None:
        if not waiter.done():
            waiter.set_exception(self._refusal(received_at + self.timeout_s - time.monotonic()))

    def _refusal(self, remaining_s: float) -> Overloaded:
        self.refused += 1
        timeout_ms = self.timeout_s * 1000
        waited_ms = timeout_ms - remaining_s * 1000
        return Overloaded(
            f"the request waited {waited_ms:.0f} ms for inference, past the queue deadline of {timeout_ms:.0f} ms "
            f"(CALIBSERVE_QUEUE_TIMEOUT_MS; {self.in_flight} requests in flight, CALIBSERVE_MAX_CONCURRENT_REQUESTS "
            f"{self.limit}); retry shortly",
            {"reason": "queue_timeout", "waited_ms": round(waited_ms, 1), "retry_after": 1},
        )
