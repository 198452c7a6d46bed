"""Feedback that arrives before its prediction is visible: ``pending``, then counted once the row lands.

Two ``PredictionLog``s share one SQLite file, as two workers or two servers do. The "other process" holds its
rows back the way a busy writer does: they wait in its queue while its writer lingers for more
(``linger`` far beyond the test), until ``close()`` makes it commit. Nothing is mocked; every status and
window comes from the real file.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.monitoring.ids import new_ids
from service.monitoring.log import CHUNK, CLOCK_SKEW_S, PredictionLog
from tests.monitoring.test_log import CLASSES, MODEL, VERSION, K, make_batch, open_log, rows

pytestmark = pytest.mark.unit


def uuid7_at(unix_seconds: float) -> str:
    """A well-formed UUIDv7, written as ``new_ids`` writes them, made at ``unix_seconds``."""
    text = f"{int(unix_seconds * 1000):012x}7abc9{uuid.uuid4().hex[:15]}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"


def feedback_rows(target: Path | str) -> dict[str, str]:
    return {str(i): str(label) for i, label in rows(target, "SELECT prediction_id, label FROM feedback")}


@contextmanager
def held_back(path: Path | str) -> Iterator[PredictionLog]:
    """Another process's log: its writer waits for more rows before committing, until ``close()``."""
    log = PredictionLog(path, batch_size=100_000, linger=3600.0, prune_interval=3600.0)
    try:
        yield log
    finally:
        log.close(timeout=20.0)


def test_uuid7_at_writes_ids_like_new_ids() -> None:
    made = uuid7_at(time.time())
    parsed = uuid.UUID(made)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == made
    assert made[:13] <= new_ids(1)[0][:13]


def test_feedback_before_the_row_commits_is_pending_then_counted_exactly_once(store_target: Path | str) -> None:
    path = store_target
    records = make_batch(3, seed=4)
    a, b, c = (r.id for r in records)
    with open_log(path) as here:
        with held_back(path) as other:
            assert other.submit(records) == 3  # queued there: its writer lingers for more before committing
            assert here.count() == (0, 0)  # invisible to this process
            assert here.record_feedback([(a, "3"), (b, "4")]) == ["pending", "pending"]
            # a second label for a pending id keeps the duplicate / conflict rules
            assert here.record_feedback([(a, "3"), (a, "5"), (c, "1"), (c, "1")]) == [
                "duplicate",
                "conflict",
                "pending",
                "duplicate",
            ]
            probs, labels = here.labelled_window(MODEL, VERSION, CLASSES, None, None)
            assert labels.tolist() == [] and probs.shape == (0, K)
        # leaving held_back closed the other log: its writer committed the rows
        assert here.count() == (3, 3)
        probs, labels = here.labelled_window(MODEL, VERSION, CLASSES, None, None)
        assert sorted(labels.tolist()) == [1, 3, 4]  # each label once
        assert probs.shape == (3, K)
        # once the row is there, a resent label is a duplicate and the window still counts it once
        assert here.record_feedback([(a, "3"), (b, "9")]) == ["duplicate", "conflict"]
        assert sorted(here.labelled_window(MODEL, VERSION, CLASSES, None, None)[1].tolist()) == [1, 3, 4]
    assert feedback_rows(path) == {a: "3", b: "4", c: "1"}


def test_ids_that_cannot_be_ours_are_unknown_and_nothing_is_kept(store_target: Path | str) -> None:
    path = store_target
    now = time.time()
    fresh = new_ids(1)[0]
    recent = uuid7_at(now - 200)  # inside the 300 s window: another process may still hold its row
    ahead = uuid7_at(now + CLOCK_SKEW_S / 2)  # a clock a little ahead is tolerated
    cases = {
        str(uuid.uuid4()): "unknown_id",  # a made-up UUIDv4
        "not-a-prediction-id": "unknown_id",
        fresh.upper(): "unknown_id",  # not how ids are written here
        "{" + new_ids(1)[0] + "}": "unknown_id",
        new_ids(1)[0].replace("-", ""): "unknown_id",
        uuid7_at(now - 301): "unknown_id",  # older than the pending window
        uuid7_at(now - 86_400): "unknown_id",
        uuid7_at(now + 3600): "unknown_id",  # from the future, beyond clock skew
        fresh: "pending",
        recent: "pending",
        ahead: "pending",
    }
    with open_log(path, feedback_pending_seconds=300.0) as log:
        assert log.record_feedback([(i, "2") for i in cases]) == list(cases.values())
    assert set(feedback_rows(path)) == {fresh, recent, ahead}


def test_an_old_id_that_is_logged_is_recorded_however_old(tmp_path: Path) -> None:
    """The age check is for ids that are not in the log: labels for logged predictions may come days later."""
    path = tmp_path / "log.sqlite"
    made = time.time() - 3 * 86_400
    old = make_batch(1, seed=5, ids=[uuid7_at(made)])[0]._replace(ts=made)
    with open_log(path, feedback_pending_seconds=300.0) as log:
        log.submit([old])
        assert log.flush(5.0)
        assert log.record_feedback([(old.id, "1")]) == ["recorded"]


def test_pending_labels_outlive_the_start_up_prune_and_expire_after_the_window(store_target: Path | str) -> None:
    """The retention pass keeps a pending label while its prediction may still come, and drops it after."""
    path = store_target
    now = time.time()
    logged = make_batch(1, seed=6)
    young, aged = uuid7_at(now - 5), uuid7_at(now - 100)
    with open_log(path, feedback_pending_seconds=300.0) as log:
        log.submit(logged)
        assert log.flush(5.0)
        assert log.record_feedback([(young, "1"), (aged, "2"), (logged[0].id, "3")]) == [
            "pending",
            "pending",
            "recorded",
        ]
        log.prune_now()
        assert set(feedback_rows(path)) == {young, aged, logged[0].id}
    # a restart prunes at start-up: still within the window, both pending labels stay
    with open_log(path, feedback_pending_seconds=300.0) as restarted:
        restarted.submit(make_batch(1, seed=7))
        assert restarted.flush(5.0)  # the start-up prune ran before this row was committed
        assert set(feedback_rows(path)) == {young, aged, logged[0].id}
    # a retention pass whose window has passed for `aged` (but not for `young`) drops it; logged labels stay
    with open_log(path, feedback_pending_seconds=60.0) as later:
        later.prune_now()
        assert set(feedback_rows(path)) == {young, logged[0].id}


def test_feedback_of_predictions_pruned_by_row_retention_goes_with_them(store_target: Path | str) -> None:
    path = store_target
    records = make_batch(6, seed=8)
    pending = new_ids(1)[0]  # newer than every logged row: stays while it may still land
    with open_log(path, retention_rows=3, retention_days=None, prune_interval=3600) as log:
        log.submit(records)
        assert log.flush(5.0)
        items = [(r.id, "1") for r in records] + [(pending, "2")]
        assert log.record_feedback(items) == ["recorded"] * 6 + ["pending"]
        log.prune_now()
        assert log.count() == (3, 4)
    assert set(feedback_rows(path)) == {r.id for r in records[3:]} | {pending}


def test_many_items_across_chunks_keep_their_order_and_statuses(tmp_path: Path) -> None:
    """More ids than one IN (...) list holds, repeated across chunk boundaries, in one request."""
    path = tmp_path / "log.sqlite"
    logged = make_batch(CHUNK + 150, seed=9)
    pending = new_ids(CHUNK + 20)
    strangers = [str(uuid.uuid4()) for _ in range(30)]
    with open_log(path) as log:
        log.submit(logged)
        assert log.flush(10.0)
        first = [(r.id, "1") for r in logged] + [(i, "2") for i in pending] + [(s, "3") for s in strangers]
        again = [(logged[0].id, "1"), (logged[-1].id, "4"), (pending[0], "2"), (pending[-1], "5")]
        statuses = log.record_feedback(first + again)
        assert statuses == (
            ["recorded"] * len(logged)
            + ["pending"] * len(pending)
            + ["unknown_id"] * len(strangers)
            + ["duplicate", "conflict", "duplicate", "conflict"]
        )
        assert log.count() == (len(logged), len(logged) + len(pending))
