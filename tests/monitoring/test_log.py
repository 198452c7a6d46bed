"""PredictionLog on a real SQLite file: rows and columns, ids, a full queue, draining, feedback, windows, retention.

The writer is blocked the way production blocks it: another connection holds the database's write lock
(``BEGIN EXCLUSIVE``), so the writer waits in SQLite's busy handler while the queue fills up behind it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from service.monitoring.ids import id_time, new_ids
from service.monitoring.log import PredictionLog, PredictionRecord, records_for_batch

pytestmark = pytest.mark.unit

K = 10
MODEL = "m-test"
VERSION = "v-test"
CLASSES = [str(i) for i in range(K)]  # class names: feedback labels are names, windows give their indices


def make_batch(
    n: int,
    seed: int = 0,
    *,
    model: str = MODEL,
    version: str = VERSION,
    served: bool = True,
    ids: list[str] | None = None,
    features: NDArray[np.float32] | None = None,
) -> list[PredictionRecord]:
    """``n`` records with fresh UUIDv7 ids (or ``ids``: a shadow model scoring the same requests) and distinct,
    normalised probability rows."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(K), size=n)
    class_index = probabilities.argmax(axis=1).astype(np.intp)
    confidence = probabilities.max(axis=1)
    ids = new_ids(n) if ids is None else ids
    return records_for_batch(ids, model, version, served, class_index, confidence, probabilities, features)


def rows(target: Path | str, query: str, parameters: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows read straight from the store's database (SQLite file or PostgreSQL URL), ``?`` placeholders."""
    if isinstance(target, str):
        import psycopg

        with psycopg.connect(target) as connection:
            return [tuple(row) for row in connection.execute(query.replace("?", "%s"), parameters).fetchall()]
    with closing(sqlite3.connect(target)) as connection:
        return list(connection.execute(query, parameters).fetchall())


def logged_ids(target: Path | str) -> set[str]:
    return {str(row[0]) for row in rows(target, "SELECT id FROM predictions")}


@contextmanager
def open_log(path: Path | str, **options: object) -> Iterator[PredictionLog]:
    log = PredictionLog(path, **options)  # type: ignore[arg-type]
    try:
        yield log
    finally:
        log.close()


def settle(log: PredictionLog) -> None:
    """Wait until the rows submitted so far are committed. The writer runs its start-up prune before it takes
    any row, so after a submitted row is flushed that prune is over and cannot hold the lock later."""
    assert log.flush(5.0)


@contextmanager
def write_lock(target: Path | str) -> Iterator[Any]:
    """Hold the database's write lock from a second connection until the block ends (or it is rolled back
    with ``lock.execute("ROLLBACK")``): SQLite's ``BEGIN EXCLUSIVE``, or on PostgreSQL a table lock that
    blocks inserts into the predictions."""
    if isinstance(target, str):
        import psycopg

        pg = psycopg.connect(target, autocommit=True)
        pg.execute("BEGIN")
        pg.execute("LOCK TABLE predictions IN EXCLUSIVE MODE")
        try:
            yield pg
        finally:
            pg.execute("ROLLBACK")
            pg.close()
        return
    connection = sqlite3.connect(target, isolation_level=None, timeout=5.0, check_same_thread=False)
    connection.execute("BEGIN EXCLUSIVE")
    try:
        yield connection
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        connection.close()


def wait_until_writer_holds_everything(log: PredictionLog, timeout: float = 5.0) -> None:
    """The writer has taken every queued row into its batch (and is now stuck waiting for the lock).

    The writer takes rows only between commits: once the queue is empty it holds them in a batch that it
    commits before it takes any more, and that commit waits for the lock."""
    deadline = time.monotonic() + timeout
    while log.stats().queue_depth > 0:
        assert time.monotonic() < deadline, "the writer never took the queued row"
        time.sleep(0.01)


# -- rows and columns ---------------------------------------------------------------------------------------


def test_submitted_rows_are_committed_with_every_column(store_target: Path | str) -> None:
    path = store_target
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(K), size=5)
    class_index = probabilities.argmax(axis=1).astype(np.intp)
    confidence = probabilities.max(axis=1)
    ids = new_ids(5)
    before = time.time()
    records = records_for_batch(ids, MODEL, VERSION, True, class_index, confidence, probabilities, None)
    with open_log(path) as log:
        assert log.submit(records) == 5
        assert log.flush(5.0)
        assert log.stats().written == 5
        assert log.count() == (5, 0)
        stored = rows(
            path,
            "SELECT id, model, ts, model_version, served, class_index, confidence, probabilities, features "
            "FROM predictions ORDER BY id",
        )
    assert [r[0] for r in stored] == ids
    for i, (_, model, ts, version, served, index, conf, blob, features) in enumerate(stored):
        assert model == MODEL
        assert isinstance(ts, float) and before - 1 <= ts <= time.time() + 1
        assert version == VERSION
        assert served == 1
        assert index == int(class_index[i])
        assert conf == pytest.approx(float(confidence[i]), abs=1e-12)
        assert isinstance(blob, bytes) and len(blob) == 4 * K
        np.testing.assert_array_equal(np.frombuffer(blob, dtype=np.float32), probabilities[i].astype(np.float32))
        assert features is None


def test_features_are_stored_as_float32_bytes_when_given(store_target: Path | str) -> None:
    path = store_target
    features = np.random.default_rng(2).uniform(0, 16, size=(4, 64)).astype(np.float32)
    records = make_batch(4, features=features)
    with open_log(path) as log:
        log.submit(records)
        assert log.flush(5.0)
    stored = rows(path, "SELECT id, features FROM predictions ORDER BY id")
    assert [r[0] for r in stored] == [r.id for r in records]
    for i, (_, blob) in enumerate(stored):
        assert isinstance(blob, bytes)
        np.testing.assert_array_equal(np.frombuffer(blob, dtype=np.float32), features[i])


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with open_log(path):
        pass
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]


def test_two_logs_in_one_process_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    first, second = make_batch(300, seed=1), make_batch(300, seed=2)
    with open_log(path, batch_size=7) as a, open_log(path, batch_size=11) as b:
        threads = [
            threading.Thread(target=lambda: [a.submit([r]) for r in first]),
            threading.Thread(target=lambda: [b.submit([r]) for r in second]),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert a.flush(10.0) and b.flush(10.0)
    assert logged_ids(path) == {r.id for r in first + second}
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]


# -- ids ----------------------------------------------------------------------------------------------------


def test_new_ids_are_uuid7_unique_and_sorted_in_creation_order() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = new_ids(5000) + new_ids(1) + [i for _ in range(200) for i in new_ids(3)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # as strings: the order SQLite's TEXT primary key keeps
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        # 4096 ids per millisecond may borrow the next milliseconds, a few at most here
        assert before_ms <= id_time(text) * 1000 <= after_ms + 5


def test_new_ids_from_several_threads_are_unique() -> None:
    results: list[list[str]] = [[] for _ in range(8)]

    def make(slot: int) -> None:
        for _ in range(500):
            results[slot] += new_ids(2)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for chunk in results for i in chunk]
    assert len(set(every)) == len(every) == 8000
    for chunk in results:
        assert chunk == sorted(chunk)  # each thread sees its ids in creation order


# -- a full queue -------------------------------------------------------------------------------------------


def test_drop_policy_accepts_what_fits_and_counts_exactly_the_rest(store_target: Path | str) -> None:
    path = store_target
    with open_log(path, queue_size=3, on_full="drop", flush_interval=0.05, prune_interval=3600) as log:
        warmup = make_batch(1, seed=0)
        log.submit(warmup)
        settle(log)
        with write_lock(path):
            held = make_batch(1, seed=1)
            assert log.submit(held) == 1
            wait_until_writer_holds_everything(log)
            burst = make_batch(10, seed=2)
            assert log.submit(burst) == 3
            assert log.stats().dropped == 7
            assert log.submit(make_batch(2, seed=3)) == 0
            stats = log.stats()
            assert stats.dropped == 9
            assert stats.queue_depth == 3 and stats.queue_capacity == 3 and stats.on_full == "drop"
        assert log.flush(10.0)
        assert log.stats().written == 1 + 1 + 3
        assert log.stats().dropped == 9
    assert logged_ids(path) == {r.id for r in warmup + held + burst[:3]}


def test_wait_policy_waits_for_room_and_drops_nothing(store_target: Path | str) -> None:
    path = store_target
    with open_log(
        path, queue_size=3, on_full="wait", wait_timeout=5.0, flush_interval=0.05, prune_interval=3600
    ) as log:
        log.submit(make_batch(1, seed=0))
        settle(log)
        with write_lock(path) as lock:
            held = make_batch(1, seed=1)
            log.submit(held)
            wait_until_writer_holds_everything(log)
            release = threading.Timer(0.5, lambda: lock.execute("ROLLBACK"))
            release.start()
            burst = make_batch(20, seed=2)
            started = time.monotonic()
            accepted = log.submit(burst)
            waited = time.monotonic() - started
            release.join()
        assert accepted == 20
        assert waited >= 0.4, "submit did not have to wait: the queue was never full"
        assert log.flush(10.0)
        assert log.stats().dropped == 0
    assert logged_ids(path) >= {r.id for r in held + burst}
    assert len(logged_ids(path)) == 22


def test_wait_policy_drops_and_counts_after_the_wait_timeout(store_target: Path | str) -> None:
    path = store_target
    with open_log(
        path, queue_size=2, on_full="wait", wait_timeout=0.3, flush_interval=0.05, prune_interval=3600
    ) as log:
        log.submit(make_batch(1, seed=0))
        settle(log)
        with write_lock(path):
            log.submit(make_batch(1, seed=1))
            wait_until_writer_holds_everything(log)
            started = time.monotonic()
            assert log.submit(make_batch(5, seed=2)) == 2
            assert time.monotonic() - started >= 0.25
            assert log.stats().dropped == 3


def test_close_drains_every_queued_row(store_target: Path | str) -> None:
    path = store_target
    log = PredictionLog(path, queue_size=5000, batch_size=50, flush_interval=0.05, prune_interval=3600)
    log.submit(make_batch(1, seed=0))
    settle(log)
    records: list[PredictionRecord] = []
    with write_lock(path) as lock:
        for seed in range(1, 21):
            batch = make_batch(100, seed=seed)
            assert log.submit(batch) == 100
            records += batch
        assert log.stats().queue_depth > 1000  # the writer is stuck: these rows are only queued
        threading.Timer(0.3, lambda: lock.execute("ROLLBACK")).start()
        log.close(timeout=20.0)
    assert logged_ids(path) >= {r.id for r in records}
    assert log.stats().dropped == 0
    assert log.stats().written == 2001


# -- feedback -----------------------------------------------------------------------------------------------


def test_record_feedback_outcomes(store_target: Path | str) -> None:
    path = store_target
    records = make_batch(3)
    a, b, c = (r.id for r in records)
    with open_log(path) as log:
        log.submit(records)  # no explicit flush: record_feedback must find this process's acknowledged rows
        assert log.record_feedback([(a, "3"), (b, "5")]) == ["recorded", "recorded"]
        assert log.record_feedback([(a, "3")]) == ["duplicate"]
        assert log.record_feedback([(a, "4")]) == ["conflict"]
        # a UUIDv4 is never ours; a fresh UUIDv7 not logged (yet) is kept as pending (tests/monitoring/test_pending.py)
        stranger = new_ids(1)[0]
        assert log.record_feedback([(str(uuid.uuid4()), "1"), (stranger, "1")]) == ["unknown_id", "pending"]
        assert log.record_feedback([(c, "1"), (c, "1"), (c, "2")]) == ["recorded", "duplicate", "conflict"]
        assert log.count() == (3, 4)
    # a conflict never overwrites the first label; labels are stored as the class names they are
    assert sorted(rows(path, "SELECT prediction_id, label FROM feedback")) == sorted(
        [(a, "3"), (b, "5"), (c, "1"), (stranger, "1")]
    )


def test_labelled_window_is_newest_feedback_first_and_per_model_version(store_target: Path | str) -> None:
    path = store_target
    mine = make_batch(5, seed=1)
    other = make_batch(3, seed=2, version="v-other")
    with open_log(path) as log:
        log.submit(mine + other)
        assert log.flush(5.0)
        order = [3, 0, 4, 1]  # feedback arrives in this order, not in prediction order
        stamps = []
        for i in order:
            assert log.record_feedback([(mine[i].id, CLASSES[i])]) == ["recorded"]
            stamps.append(time.time())
            while time.time() <= stamps[-1]:  # the next feedback gets a later timestamp than this stamp
                time.sleep(0.001)
        assert log.record_feedback([(r.id, "9") for r in other]) == ["recorded"] * 3

        probs, labels = log.labelled_window(MODEL, VERSION, CLASSES, None, None)
        assert labels.tolist() == [1, 4, 0, 3]
        for row, i in zip(probs, labels.tolist(), strict=True):
            expected = np.frombuffer(mine[i].probabilities, dtype=np.float32).astype(np.float64)
            np.testing.assert_allclose(row, expected / expected.sum(), rtol=1e-6)
        assert probs.shape == (4, K) and probs.dtype == np.float64

        assert log.labelled_window(MODEL, VERSION, CLASSES, 2, None)[1].tolist() == [1, 4]
        assert log.labelled_window(MODEL, VERSION, CLASSES, None, stamps[1])[1].tolist() == [1, 4]
        assert log.labelled_window(MODEL, "v-other", CLASSES, None, None)[1].tolist() == [9, 9, 9]
        empty_probs, empty_labels = log.labelled_window(MODEL, "v-none", CLASSES, None, None)
        assert empty_probs.shape == (0, K) and empty_labels.shape == (0,)


def test_recent_predictions_are_newest_first_and_per_model_version(store_target: Path | str) -> None:
    path = store_target
    mine = make_batch(6, seed=1)
    with open_log(path) as log:
        log.submit(mine + make_batch(4, seed=2, version="v-other"))
        assert log.flush(5.0)
        recent = log.recent_predictions(MODEL, VERSION, K, 3, None)
    expected = [np.frombuffer(r.probabilities, dtype=np.float32).astype(np.float64) for r in mine[::-1][:3]]
    np.testing.assert_allclose(recent, np.stack([e / e.sum() for e in expected]), rtol=1e-6)


# -- retention ----------------------------------------------------------------------------------------------


def test_retention_rows_keeps_the_newest_n(store_target: Path | str) -> None:
    path = store_target
    records = make_batch(12)
    with open_log(path, retention_rows=5, retention_days=None, prune_interval=3600) as log:
        log.submit(records)
        assert log.flush(5.0)
        assert log.record_feedback([(records[0].id, "1"), (records[-1].id, "2")]) == ["recorded", "recorded"]
        assert log.count() == (12, 2)
        log.prune_now()
        assert logged_ids(path) == {r.id for r in records[-5:]}
        # feedback of a pruned prediction goes with it
        assert rows(path, "SELECT prediction_id FROM feedback") == [(records[-1].id,)]


def test_retention_days_deletes_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    now = time.time()
    fresh = make_batch(4, seed=1)
    old = [r._replace(ts=now - days * 86400) for r, days in zip(make_batch(3, seed=2), (1.5, 3.0, 400.0), strict=True)]
    borderline = [r._replace(ts=now - 0.5 * 86400) for r in make_batch(1, seed=3)]
    with open_log(path, retention_days=1.0, retention_rows=None, prune_interval=3600) as log:
        log.submit(old + fresh + borderline)
        assert log.flush(5.0)
        assert log.count() == (8, 0)
        log.prune_now()
        assert logged_ids(path) == {r.id for r in fresh + borderline}
