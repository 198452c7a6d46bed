"""Load shedding through the real app: 503 with Retry-After in each protocol's error shape, counted in /metrics.

The inference thread is held by a blocking call submitted to the predictor's own one-thread executor, so
requests really queue behind it in the real micro-batcher; nothing in the request path is replaced.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable

import httpx
import pytest

from tests.api.conftest import error_of, serve, settings_for

pytestmark = pytest.mark.api

ROW = [0.0] * 64
V2_BODY = {"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def shed_count(metrics: str, reason: str) -> float:
    match = re.search(rf'^calibserve_shed_requests_total{{reason="{reason}"}} (\S+)$', metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_full_queue_answers_503_with_retry_after_in_both_shapes_and_counts_it() -> None:
    release = threading.Event()
    with serve(settings_for(max_queue_rows=1, queue_timeout_ms=60_000)) as served:
        before = shed_count(served.get("/metrics").text, "queue_full")
        batcher = served.app.state.repository.resolve(None).predictor.batcher
        blocker = batcher._executor.submit(release.wait, 10)  # holds the one inference thread

        async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
            first = asyncio.create_task(client.post("/v1/predict", json={"instances": [ROW]}))
            await until(lambda: batcher.jobs == 1)  # taken into a batch: waiting for the thread, not queued
            second = asyncio.create_task(client.post("/v1/predict", json={"instances": [ROW]}))
            await until(lambda: batcher.queued_rows == 1)  # the queue is now full
            refused_v1 = await client.post("/v1/predict", json={"instances": [ROW]})
            refused_v2 = await client.post("/v2/models/digits/infer", json=V2_BODY)
            release.set()
            return [await first, await second, refused_v1, refused_v2]

        try:
            first, second, refused_v1, refused_v2 = served.run(scenario)
        finally:
            release.set()
            blocker.result(10)
        after = shed_count(served.get("/metrics").text, "queue_full")

    assert first.status_code == 200 and second.status_code == 200, "queued and running requests are answered"
    error = error_of(refused_v1, 503)
    assert error["type"] == "overloaded" and error["details"]["reason"] == "queue_full"
    assert "CALIBSERVE_MAX_QUEUE_ROWS" in error["message"]
    assert refused_v1.headers["retry-after"] == "1"
    assert refused_v2.status_code == 503 and refused_v2.headers["retry-after"] == "1"
    body = refused_v2.json()
    assert set(body) == {"error", "request_id"} and "queue is full" in body["error"]
    assert after - before == 2


def test_a_request_past_the_queue_deadline_is_a_503_and_the_one_being_scored_is_answered() -> None:
    release = threading.Event()
    with serve(settings_for(queue_timeout_ms=50)) as served:
        before = shed_count(served.get("/metrics").text, "queue_timeout")
        batcher = served.app.state.repository.resolve(None).predictor.batcher
        blocker = batcher._executor.submit(release.wait, 10)

        async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
            first = asyncio.create_task(client.post("/v1/predict", json={"instances": [ROW]}))
            await until(lambda: batcher.jobs == 1)
            late = asyncio.create_task(client.post("/v1/predict", json={"instances": [ROW]}))
            await until(lambda: batcher.queued_rows == 1)
            await asyncio.sleep(0.1)  # its deadline passes while the first request holds the thread
            release.set()
            return await first, await late

        try:
            first, late = served.run(scenario)
        finally:
            release.set()
            blocker.result(10)
        after = shed_count(served.get("/metrics").text, "queue_timeout")

    assert first.status_code == 200, "a request already being scored is never dropped"
    error = error_of(late, 503)
    assert error["details"]["reason"] == "queue_timeout" and "CALIBSERVE_QUEUE_TIMEOUT_MS" in error["message"]
    assert late.headers["retry-after"] == "1"
    assert after - before == 1


def test_past_the_concurrency_bound_a_request_waits_unread_and_is_refused_at_its_deadline() -> None:
    release = threading.Event()
    with serve(settings_for(max_concurrent_requests=1, queue_timeout_ms=50)) as served:
        batcher = served.app.state.repository.resolve(None).predictor.batcher
        admission = served.app.state.admission
        blocker = batcher._executor.submit(release.wait, 10)

        async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
            first = asyncio.create_task(client.post("/v1/predict", json={"instances": [ROW]}))
            await until(lambda: batcher.jobs == 1)  # admitted and taken into a batch
            refused = await client.post("/v2/models/digits/infer", json=V2_BODY)  # waits at the gate, then 503
            health = await client.get("/health/live")  # never held back by inference load
            release.set()
            return await first, refused, health

        try:
            first, refused, health = served.run(scenario)
        finally:
            release.set()
            blocker.result(10)
        assert admission.in_flight == 0 and admission.waiting == 0

        metrics = served.get("/metrics").text
    assert first.status_code == 200 and health.status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    counted = [line for line in metrics.splitlines() if line.startswith("calibserve_requests_total{")]
    assert any('route="/v2/models/{name}/infer"' in line and 'status="503"' in line for line in counted), counted
    assert "CALIBSERVE_MAX_CONCURRENT_REQUESTS" in refused.json()["error"]
