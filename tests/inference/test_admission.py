"""Admission: the bound on inference requests in flight, newest-first waiting, and the deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.errors import Overloaded
from service.inference.admission import Admission

pytestmark = pytest.mark.unit


async def until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_requests_within_the_limit_pass_at_once_and_the_rest_wait_newest_first() -> None:
    async def main() -> tuple[list[str], int]:
        admission = Admission(limit=2, timeout_s=30)
        order: list[str] = []
        now = time.monotonic()
        await admission.acquire(now)
        await admission.acquire(now)
        assert admission.in_flight == 2

        async def wait(name: str) -> None:
            await admission.acquire(time.monotonic())
            order.append(name)

        waiting = [asyncio.create_task(wait(name)) for name in ("old", "middle", "new")]
        await until(lambda: admission.waiting == 3)
        admission.release()  # one slot: the newest waiter takes it
        await until(lambda: len(order) == 1)
        admission.release()
        admission.release()
        await asyncio.gather(*waiting)
        in_flight = admission.in_flight
        for _ in order:
            admission.release()
        return order, in_flight

    order, in_flight = asyncio.run(main())
    assert order == ["new", "middle", "old"]
    assert in_flight == 2  # each release passed its slot to a waiter: never more than the limit


def test_a_waiter_past_its_deadline_is_refused_and_the_slot_count_stays_right() -> None:
    async def main() -> tuple[BaseException | None, float, int]:
        admission = Admission(limit=1, timeout_s=0.05)
        await admission.acquire(time.monotonic())
        started = time.monotonic()
        refused: BaseException | None = None
        try:
            await admission.acquire(time.monotonic())
        except Overloaded as error:
            refused = error
        waited = time.monotonic() - started
        admission.release()
        await admission.acquire(time.monotonic())  # the slot is free again: no waiter holds it
        return refused, waited, admission.in_flight

    refused, waited, in_flight = asyncio.run(main())
    assert isinstance(refused, Overloaded) and refused.details["reason"] == "queue_timeout"
    assert "CALIBSERVE_QUEUE_TIMEOUT_MS" in refused.message and refused.details["retry_after"] == 1
    assert waited >= 0.04  # the deadline, not at once (a lower bound only: the machine may be slower)
    assert in_flight == 1


def test_a_request_already_past_its_deadline_on_arrival_is_refused_without_waiting() -> None:
    async def main() -> BaseException | None:
        admission = Admission(limit=1, timeout_s=0.05)
        await admission.acquire(time.monotonic())
        try:
            await admission.acquire(time.monotonic() - 1.0)  # arrived a second ago, waited in the event loop
        except Overloaded as error:
            return error
        return None

    assert isinstance(asyncio.run(main()), Overloaded)


def test_a_cancelled_waiter_does_not_keep_a_slot() -> None:
    async def main() -> int:
        admission = Admission(limit=1, timeout_s=30)
        await admission.acquire(time.monotonic())
        doomed = asyncio.create_task(admission.acquire(time.monotonic()))
        await until(lambda: admission.waiting == 1)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        admission.release()
        return admission.in_flight

    assert asyncio.run(main()) == 0


def test_a_slot_handed_to_a_waiter_cancelled_before_it_ran_is_passed_on() -> None:
    async def main() -> int:
        admission = Admission(limit=1, timeout_s=30)
        await admission.acquire(time.monotonic())
        doomed = asyncio.create_task(admission.acquire(time.monotonic()))
        await until(lambda: admission.waiting == 1)
        admission.release()  # hands the slot to the waiter ...
        doomed.cancel()  # ... which is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return admission.in_flight

    assert asyncio.run(main()) == 0
