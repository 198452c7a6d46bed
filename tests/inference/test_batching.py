"""Micro-batching on the real engine: predict_many parity, per-request error isolation, the MicroBatcher's
coalescing and failure rules, and the Predictor writing each batch to a real SQLite prediction log.

Every asynchronous test runs its own event loop with ``asyncio.run`` (a batcher belongs to one loop).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from service.errors import InvalidInput, ModelNotReady, Overloaded
from service.inference.artifact import load_artifact
from service.inference.batching import MicroBatcher
from service.inference.engine import BatchPrediction, InferenceEngine
from service.inference.rows import RowValues
from service.monitoring.monitor import LOG_FILE, Monitor, MonitorConfig, open_log
from service.prediction import Predictor, Scored
from service.settings import Settings
from tests.conftest import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.unit

Job = tuple[NDArray[np.float32], float]
ARRAY_FIELDS = (
    "logits",
    "probabilities",
    "class_index",
    "confidence",
    "prediction_set",
    "band_index",
    "entropy",
    "margin",
    "abstain",
)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Yield to the event loop until ``condition`` holds (a hang detector at ``timeout``, not a timing bound)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine(load_artifact(DEFAULT_MODEL_DIR))


@pytest.fixture(scope="module")
def digits() -> NDArray[np.float32]:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    return np.asarray(sklearn_datasets.load_digits().data, dtype=np.float32)


def assert_same_prediction(got: BatchPrediction, expected: BatchPrediction) -> None:
    """Bit-for-bit the same rows: a share of a batch must be exactly what predicting alone gives."""
    assert len(got) == len(expected)
    for name in ARRAY_FIELDS:
        a, b = getattr(got, name), getattr(expected, name)
        assert a.shape == b.shape, name
        assert np.array_equal(a, b), name
    assert got.coverage == expected.coverage
    assert RowValues.of(got) == RowValues.of(expected)


def engine_process(engine: InferenceEngine, seen: list[list[int]]) -> Any:
    """The real engine as a batch function, recording the row count of every job of every batch."""

    def process(jobs: Sequence[Job]) -> list[BatchPrediction | InvalidInput]:
        seen.append([len(features) for features, _ in jobs])
        return engine.predict_many(jobs)

    return process


def rows_of(job: Job) -> int:
    return len(job[0])


# -- InferenceEngine.predict_many ------------------------------------------------------------------------------


def test_predict_many_equals_predicting_each_request_alone(
    engine: InferenceEngine, digits: NDArray[np.float32]
) -> None:
    requests: list[Job] = [
        (digits[0:1], 0.9),
        (digits[1:6], 0.95),
        (digits[6:36], 0.9),
        (digits[36:37], 0.95),
        (digits[100:130], 0.95),
    ]
    outcomes = engine.predict_many(requests)
    assert len(outcomes) == len(requests)
    for (features, coverage), outcome in zip(requests, outcomes, strict=True):
        assert isinstance(outcome, BatchPrediction)
        assert outcome.coverage == coverage  # each share knows its own conformal level
        assert_same_prediction(outcome, engine.predict(features, coverage))


def test_values_of_a_micro_batch_are_each_share_s_own(engine: InferenceEngine, digits: NDArray[np.float32]) -> None:
    """Converting a micro-batch's shares together and slicing gives exactly what converting each alone does."""
    requests: list[Job] = [(digits[:1], 0.9), (digits[1:6], 0.95), (digits[6:9], 0.9)]
    parts = engine.predict_many(requests)
    assert all(isinstance(part, BatchPrediction) for part in parts)
    shares = [part for part in parts if isinstance(part, BatchPrediction)]
    assert RowValues.of_each(shares) == [RowValues.of(share) for share in shares]
    assert RowValues.of_each(shares[1:2]) == [RowValues.of(shares[1])]


def test_predict_many_keeps_the_order_of_requests(engine: InferenceEngine, digits: NDArray[np.float32]) -> None:
    requests: list[Job] = [(digits[i : i + 1], 0.9) for i in range(20)]
    outcomes = engine.predict_many(requests)
    whole = engine.predict(digits[:20])
    for i, outcome in enumerate(outcomes):
        assert isinstance(outcome, BatchPrediction)
        assert np.array_equal(outcome.probabilities, whole.probabilities[i : i + 1])
        assert outcome.class_index.tolist() == [whole.class_index[i]]


def test_an_overflowing_row_fails_only_its_own_request(engine: InferenceEngine, digits: NDArray[np.float32]) -> None:
    poisoned = digits[40:43].copy()
    poisoned[1] = 3e38  # finite in float32, but the graph overflows to NaN on it
    requests: list[Job] = [(digits[0:2], 0.9), (poisoned, 0.95), (digits[5:9], 0.95), (digits[9:10], 0.9)]
    outcomes = engine.predict_many(requests)
    assert len(outcomes) == 4
    error = outcomes[1]
    assert isinstance(error, InvalidInput)
    assert error.details == {"field": "instances", "rows": [1]}  # relative to its request, not the batch
    assert "instances[1]" in error.message
    for index in (0, 2, 3):
        outcome = outcomes[index]
        assert isinstance(outcome, BatchPrediction)
        assert_same_prediction(outcome, engine.predict(*requests[index]))
    with pytest.raises(InvalidInput) as alone:
        engine.predict(poisoned, 0.95)
    assert alone.value.details == error.details


def test_overflowing_rows_are_named_per_request_even_when_several_fail(
    engine: InferenceEngine, digits: NDArray[np.float32]
) -> None:
    first, second = digits[0:4].copy(), digits[4:8].copy()
    first[0] = 3e38
    second[[2, 3]] = -3e38
    outcomes = engine.predict_many([(first, 0.9), (digits[10:12], 0.9), (second, 0.9)])
    assert isinstance(outcomes[0], InvalidInput) and outcomes[0].details["rows"] == [0]
    assert isinstance(outcomes[1], BatchPrediction)
    assert isinstance(outcomes[2], InvalidInput) and outcomes[2].details["rows"] == [2, 3]


@pytest.mark.parametrize(
    ("bad_features", "bad_coverage", "says"),
    [
        pytest.param(np.zeros((2, 63), np.float32), 0.9, "[2, 63]", id="wrong feature count"),
        pytest.param(np.zeros((0, 64), np.float32), 0.9, "[0, 64]", id="no rows"),
        pytest.param(np.zeros(64, np.float32), 0.9, "[64]", id="one-dimensional"),
        pytest.param(None, 0.5, "coverage 0.5 is not available", id="unknown coverage"),
    ],
)
def test_a_malformed_request_fails_alone(
    engine: InferenceEngine,
    digits: NDArray[np.float32],
    bad_features: NDArray[np.float32] | None,
    bad_coverage: float,
    says: str,
) -> None:
    features = digits[20:23] if bad_features is None else bad_features
    requests: list[Job] = [(digits[0:3], 0.9), (features, bad_coverage), (digits[3:4], 0.95)]
    outcomes = engine.predict_many(requests)
    assert len(outcomes) == 3
    assert isinstance(outcomes[1], InvalidInput)
    assert says in outcomes[1].message
    for index in (0, 2):
        outcome = outcomes[index]
        assert isinstance(outcome, BatchPrediction)
        assert_same_prediction(outcome, engine.predict(*requests[index]))


def test_predict_many_of_only_bad_requests_runs_nothing_and_fails_each(engine: InferenceEngine) -> None:
    outcomes = engine.predict_many([(np.zeros((1, 5), np.float32), 0.9), (np.zeros((1, 64), np.float32), 0.42)])
    assert [type(outcome) for outcome in outcomes] == [InvalidInput, InvalidInput]
    assert "0.42" in outcomes[1].message  # type: ignore[union-attr]


# -- MicroBatcher ------------------------------------------------------------------------------------------------


def test_concurrent_jobs_coalesce_and_each_gets_its_own_answer(
    engine: InferenceEngine, digits: NDArray[np.float32]
) -> None:
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 9, size=40).tolist()
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    jobs: list[Job] = [
        (digits[start : start + size], 0.95 if i % 3 == 0 else 0.9)
        for i, (start, size) in enumerate(zip(starts, sizes, strict=True))
    ]
    seen: list[list[int]] = []

    async def main() -> tuple[list[BatchPrediction | InvalidInput], MicroBatcher[Job, Any]]:
        batcher: MicroBatcher[Job, Any] = MicroBatcher(
            engine_process(engine, seen), rows_of, max_rows=32, max_wait_s=0.005
        )
        try:
            return list(await asyncio.gather(*(batcher.submit(job) for job in jobs))), batcher
        finally:
            await batcher.close()

    results, batcher = asyncio.run(main())
    for job, result in zip(jobs, results, strict=True):
        assert isinstance(result, BatchPrediction)
        assert_same_prediction(result, engine.predict(*job))
    assert batcher.jobs == 40
    assert batcher.batches == len(seen)
    assert batcher.batches < batcher.jobs  # requests shared onnxruntime calls
    assert all(sum(batch) <= 32 for batch in seen)
    assert sorted(size for batch in seen for size in batch) == sorted(sizes)  # each job ran exactly once


def test_a_raising_process_fails_its_whole_batch_and_the_batcher_goes_on() -> None:
    seen: list[list[str]] = []

    def process(jobs: Sequence[str]) -> list[str]:
        seen.append(list(jobs))
        if "boom" in jobs:
            raise RuntimeError("inference session broke")
        return [job.upper() for job in jobs]

    async def main() -> tuple[list[Any], str, int]:
        batcher: MicroBatcher[str, str] = MicroBatcher(process, lambda _: 1, max_rows=16)
        try:
            # Submitted before the collector first runs: they are all queued, so they form one batch.
            outcomes = await asyncio.gather(*(batcher.submit(j) for j in ("a", "boom", "c")), return_exceptions=True)
            batches_then = batcher.batches
            later = await batcher.submit("later")
            return list(outcomes), later, batches_then
        finally:
            await batcher.close()

    outcomes, later, batches_then = asyncio.run(main())
    assert batches_then == 1 and seen[0] == ["a", "boom", "c"]
    assert all(isinstance(o, RuntimeError) and str(o) == "inference session broke" for o in outcomes)
    assert later == "LATER"


def test_a_wrong_number_of_outcomes_fails_the_batch_rather_than_misrouting() -> None:
    async def main() -> list[Any]:
        batcher: MicroBatcher[int, int] = MicroBatcher(lambda jobs: list(jobs)[:-1], lambda _: 1, max_rows=8)
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True))
        finally:
            await batcher.close()

    outcomes = asyncio.run(main())
    assert all(isinstance(o, RuntimeError) and "2 outcomes for 3 jobs" in str(o) for o in outcomes)


def test_an_exception_returned_for_one_job_fails_only_that_job() -> None:
    def process(jobs: Sequence[int]) -> list[int | Exception]:
        return [ValueError(f"job {job} is odd") if job % 2 else job * 10 for job in jobs]

    async def main() -> tuple[list[Any], int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(process, lambda _: 1, max_rows=64)
        try:
            outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(6)), return_exceptions=True)
            return list(outcomes), batcher.batches
        finally:
            await batcher.close()

    outcomes, batches = asyncio.run(main())
    assert batches == 1
    assert outcomes[0::2] == [0, 20, 40]
    for job, outcome in zip((1, 3, 5), outcomes[1::2], strict=True):
        assert isinstance(outcome, ValueError) and str(outcome) == f"job {job} is odd"


def test_a_job_larger_than_max_rows_runs_alone(engine: InferenceEngine, digits: NDArray[np.float32]) -> None:
    seen: list[list[int]] = []
    jobs: list[Job] = [(digits[0:3], 0.9), (digits[3:28], 0.9), (digits[28:32], 0.95), (digits[32:34], 0.9)]

    async def main() -> list[Any]:
        batcher: MicroBatcher[Job, Any] = MicroBatcher(engine_process(engine, seen), rows_of, max_rows=10)
        try:
            return list(await asyncio.gather(*(batcher.submit(job) for job in jobs)))
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert [25] in seen  # the big job, by itself
    assert all(sum(batch) <= 10 for batch in seen if batch != [25])
    assert sorted(size for batch in seen for size in batch) == [2, 3, 4, 25]
    for job, result in zip(jobs, results, strict=True):
        assert isinstance(result, BatchPrediction)
        assert_same_prediction(result, engine.predict(*job))


def test_a_cancelled_caller_is_skipped_and_the_others_are_answered() -> None:
    entered, release = threading.Event(), threading.Event()
    seen: list[list[int]] = []

    def process(jobs: Sequence[int]) -> list[int]:
        seen.append(list(jobs))
        if 0 in jobs:  # the first batch holds the inference thread until the test has cancelled job 1
            entered.set()
            release.wait(10)
        return [job + 100 for job in jobs]

    async def main() -> tuple[int, bool, int, int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(process, lambda _: 1, max_rows=8)
        try:
            first = asyncio.create_task(batcher.submit(0))
            assert await asyncio.to_thread(entered.wait, 10)
            doomed = asyncio.create_task(batcher.submit(1))
            survivor = asyncio.create_task(batcher.submit(2))
            await asyncio.sleep(0)  # both are queued behind the running batch
            doomed.cancel()
            release.set()
            cancelled = False
            try:
                await doomed
            except asyncio.CancelledError:
                cancelled = True
            return await first, cancelled, await survivor, await batcher.submit(3)
        finally:
            release.set()
            await batcher.close()

    first, cancelled, survivor, later = asyncio.run(main())
    assert (first, cancelled, survivor, later) == (100, True, 102, 103)
    assert all(1 not in batch for batch in seen)  # the cancelled job was never computed


def test_close_answers_jobs_queued_before_it_and_refuses_new_ones() -> None:
    computed: list[int] = []

    def process(jobs: Sequence[int]) -> list[int]:
        computed.extend(jobs)
        return list(jobs)

    async def main() -> tuple[list[Any], BaseException | None]:
        batcher: MicroBatcher[int, int] = MicroBatcher(process, lambda _: 1, max_rows=8)
        queued = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        # One turn of the loop: the submits queue their jobs and start the collector task, which has not
        # run yet when close() comes; close() queues its stop marker behind them, so they are still run.
        await asyncio.sleep(0)
        await batcher.close()
        outcomes = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 5)
        refused: BaseException | None = None
        try:
            await batcher.submit(9)
        except ModelNotReady as error:
            refused = error
        return list(outcomes), refused

    outcomes, refused = asyncio.run(main())
    assert outcomes == [0, 1, 2]
    assert computed == [0, 1, 2]
    assert isinstance(refused, ModelNotReady) and refused.details == {"retry": True}


def test_close_answers_a_job_the_collector_is_holding() -> None:
    async def main() -> BaseException | int:
        batcher: MicroBatcher[int, int] = MicroBatcher(lambda jobs: list(jobs), lambda _: 1, max_rows=8, max_wait_s=30)
        held = asyncio.create_task(batcher.submit(3))
        await until(lambda: batcher.queued_rows == 0)  # the collector has taken job 3 and waits for company
        await batcher.close()
        try:
            return await asyncio.wait_for(held, 2)  # a hang detector, not a timing assertion
        except ModelNotReady as error:
            return error

    outcome = asyncio.run(main())
    assert outcome == 3 or isinstance(outcome, ModelNotReady)


def test_close_answers_the_jobs_of_a_batch_in_flight() -> None:
    entered, release = threading.Event(), threading.Event()

    def process(jobs: Sequence[int]) -> list[int]:
        entered.set()
        release.wait(10)
        return [job * 2 for job in jobs]

    async def main() -> BaseException | int:
        batcher: MicroBatcher[int, int] = MicroBatcher(process, lambda _: 1, max_rows=8)
        in_flight = asyncio.create_task(batcher.submit(21))
        assert await asyncio.to_thread(entered.wait, 10)
        threading.Timer(0.1, release.set).start()  # close() waits for the inference thread to finish
        await batcher.close()
        try:
            return await asyncio.wait_for(in_flight, 2)  # a hang detector, not a timing assertion
        except ModelNotReady as error:
            return error

    outcome = asyncio.run(main())
    assert outcome == 42 or isinstance(outcome, ModelNotReady)


def test_max_rows_one_turns_batching_off_and_answers_stay_right(
    engine: InferenceEngine, digits: NDArray[np.float32]
) -> None:
    seen: list[list[int]] = []
    jobs: list[Job] = [(digits[i * 2 : i * 2 + (1 if i % 2 else 2)], 0.9) for i in range(10)]

    async def main() -> tuple[list[Any], int, int]:
        batcher: MicroBatcher[Job, Any] = MicroBatcher(engine_process(engine, seen), rows_of, max_rows=1)
        try:
            results = list(await asyncio.gather(*(batcher.submit(job) for job in jobs)))
            return results, batcher.batches, batcher.jobs
        finally:
            await batcher.close()

    results, batches, count = asyncio.run(main())
    assert batches == count == 10
    assert all(len(batch) == 1 for batch in seen)
    for job, result in zip(jobs, results, strict=True):
        assert isinstance(result, BatchPrediction)
        assert_same_prediction(result, engine.predict(*job))


def test_the_batcher_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="max_rows"):
        MicroBatcher(lambda jobs: list(jobs), lambda _: 1, max_rows=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(lambda jobs: list(jobs), lambda _: 1, max_rows=4, max_wait_s=-1)


# -- Predictor: batches, ids and the SQLite log ------------------------------------------------------------------


def logged(path: Path) -> dict[str, tuple[int, bytes | None]]:
    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT id, class_index, features FROM predictions").fetchall()
    return {str(row[0]): (int(row[1]), row[2]) for row in rows}


def test_predictor_logs_each_successful_row_once_under_its_id(
    engine: InferenceEngine, digits: NDArray[np.float32], tmp_path: Path
) -> None:
    settings = Settings(model_path=DEFAULT_MODEL_DIR, data_dir=tmp_path, log_inputs=True)
    monitor = Monitor("digits", engine.card, open_log(settings), MonitorConfig.from_settings(settings))
    sizes = [1, 4, 2, 7, 1, 3, 5, 1, 2, 6, 1, 3]
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    spans = enumerate(zip(starts, sizes, strict=True))
    good: list[Job] = [(digits[s : s + n], 0.9 if i % 2 else 0.95) for i, (s, n) in spans]
    overflow = digits[200:203].copy()
    overflow[2] = 3e38
    bad: list[Job] = [(np.zeros((2, 10), np.float32), 0.9), (digits[300:302], 0.5), (overflow, 0.9)]

    async def main() -> tuple[list[Any], int, int]:
        predictor = Predictor(engine, monitor, max_batch_rows=16, max_batch_wait_s=0.002)
        try:
            jobs = good + bad
            outcomes = await asyncio.gather(*(predictor.predict(f, c) for f, c in jobs), return_exceptions=True)
            return list(outcomes), predictor.batcher.batches, predictor.batcher.jobs
        finally:
            await predictor.close()

    try:
        outcomes, batches, jobs = asyncio.run(main())
    finally:
        assert monitor.log is not None
        monitor.log.close()  # drains the queue: every acknowledged row is committed
    assert jobs == len(good) + len(bad) and batches < jobs
    scored = outcomes[: len(good)]
    assert all(isinstance(outcome, InvalidInput) for outcome in outcomes[len(good) :])
    assert outcomes[-1].details["rows"] == [2]
    every_id: list[str] = []
    for (features, coverage), outcome in zip(good, scored, strict=True):
        assert isinstance(outcome, Scored)
        assert len(outcome.ids) == len(features)
        assert outcome.ids == sorted(outcome.ids)
        assert_same_prediction(outcome.prediction, engine.predict(features, coverage))
        # small micro-batches: the Python values made on the inference thread, sliced from the batch's
        assert outcome.values == RowValues.of(engine.predict(features, coverage))
        every_id += outcome.ids
    assert len(set(every_id)) == len(every_id) == sum(sizes)

    rows = logged(tmp_path / LOG_FILE)
    assert set(rows) == set(every_id)  # nothing from the failed requests, nothing missing
    for (features, _), outcome in zip(good, scored, strict=True):
        for i, prediction_id in enumerate(outcome.ids):
            class_index, blob = rows[prediction_id]
            assert class_index == int(outcome.prediction.class_index[i])
            assert blob is not None and np.array_equal(np.frombuffer(blob, np.float32), features[i])


def test_predictor_logs_nothing_for_a_batch_that_only_fails(
    engine: InferenceEngine, digits: NDArray[np.float32], tmp_path: Path
) -> None:
    settings = Settings(model_path=DEFAULT_MODEL_DIR, data_dir=tmp_path)
    monitor = Monitor("digits", engine.card, open_log(settings), MonitorConfig.from_settings(settings))

    async def main() -> tuple[BaseException | None, Scored]:
        predictor = Predictor(engine, monitor, max_batch_rows=64, max_batch_wait_s=0.0)
        try:
            failure: BaseException | None = None
            try:
                await predictor.predict(digits[:3], 0.8)
            except InvalidInput as error:
                failure = error
            return failure, await predictor.predict(digits[3:5], 0.9)
        finally:
            await predictor.close()

    try:
        failure, later = asyncio.run(main())
    finally:
        assert monitor.log is not None
        monitor.log.close()
    assert isinstance(failure, InvalidInput) and "coverage 0.8" in failure.message
    rows = logged(tmp_path / LOG_FILE)
    assert set(rows) == set(later.ids) and len(rows) == 2
    assert all(blob is None for _, blob in rows.values())  # log_inputs is off by default


# -- load shedding -------------------------------------------------------------------------------------------------


def blocking_process(entered: threading.Event, release: threading.Event) -> Callable[[Sequence[int]], list[int]]:
    """Holds the inference thread on its first batch until released, so that later jobs queue behind it."""

    def process(jobs: Sequence[int]) -> list[int]:
        if not entered.is_set():
            entered.set()
            release.wait(10)
        return [job + 100 for job in jobs]

    return process


def test_a_full_queue_refuses_at_once_and_the_running_and_queued_jobs_are_answered() -> None:
    entered, release = threading.Event(), threading.Event()

    async def main() -> tuple[list[Any], Overloaded, int, dict[str, int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            blocking_process(entered, release), lambda job: 2 if job >= 10 else 1, max_rows=8, max_queue_rows=3
        )
        try:
            running = asyncio.create_task(batcher.submit(0))
            assert await asyncio.to_thread(entered.wait, 10)
            queued = [asyncio.create_task(batcher.submit(1)), asyncio.create_task(batcher.submit(10))]
            await until(lambda: batcher.queued_rows == 3)
            try:
                await batcher.submit(2)  # one more row does not fit: refused without waiting
                raise AssertionError("a full queue took another job")
            except Overloaded as error:
                refused = error
            release.set()
            answered = await asyncio.gather(running, *queued)
            return list(answered), refused, batcher.queued_rows, dict(batcher.shed)
        finally:
            release.set()
            await batcher.close()

    answered, refused, queued_rows, shed = asyncio.run(main())
    assert answered == [100, 101, 110]
    assert refused.details["reason"] == "queue_full" and refused.details["limit_rows"] == 3
    assert refused.details["retry_after"] >= 1 and "CALIBSERVE_MAX_QUEUE_ROWS" in refused.message
    assert queued_rows == 0
    assert shed == {"queue_full": 1, "queue_timeout": 0}


def test_a_job_larger_than_the_queue_bound_is_taken_when_the_queue_is_empty() -> None:
    async def main() -> int:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            lambda jobs: list(jobs), lambda job: job, max_rows=8, max_queue_rows=2
        )
        try:
            return await batcher.submit(5)  # 5 rows > 2: never refusable forever, so it runs alone
        finally:
            await batcher.close()

    assert asyncio.run(main()) == 5


def test_a_job_past_its_queue_deadline_is_refused_and_the_one_being_scored_is_not() -> None:
    entered, release = threading.Event(), threading.Event()
    computed: list[int] = []

    def process(jobs: Sequence[int]) -> list[int]:
        computed.extend(jobs)
        return blocking_process(entered, release)(jobs)

    async def main() -> tuple[Any, Any, Any]:
        batcher: MicroBatcher[int, int] = MicroBatcher(process, lambda _: 1, max_rows=8, queue_timeout_s=0.05)
        try:
            running = asyncio.create_task(batcher.submit(0))
            assert await asyncio.to_thread(entered.wait, 10)
            late = asyncio.create_task(batcher.submit(1))
            await until(lambda: batcher.queued_rows == 1)
            await asyncio.sleep(0.1)  # job 1's deadline passes while job 0 holds the inference thread
            release.set()
            outcomes = await asyncio.gather(running, late, return_exceptions=True)
            return outcomes[0], outcomes[1], await batcher.submit(2)  # the queue works on afterwards
        finally:
            release.set()
            await batcher.close()

    running, late, after = asyncio.run(main())
    assert running == 100, "a job already being scored is answered, however long it takes"
    assert isinstance(late, Overloaded) and late.details["reason"] == "queue_timeout"
    assert late.details["waited_ms"] >= 50 and "CALIBSERVE_QUEUE_TIMEOUT_MS" in late.message
    assert after == 102
    assert 1 not in computed, "a refused job is never computed"


def test_shedding_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="max_queue_rows"):
        MicroBatcher(lambda jobs: list(jobs), lambda _: 1, max_rows=8, max_queue_rows=0)
    with pytest.raises(ValueError, match="queue_timeout_s"):
        MicroBatcher(lambda jobs: list(jobs), lambda _: 1, max_rows=8, queue_timeout_s=0)
