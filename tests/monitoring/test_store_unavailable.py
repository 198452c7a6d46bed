"""The prediction log's storage going away while serving, and a corrupt file at start-up.

Tests run as root, for whom permissions never fail, so "unwritable" is made the way it really fails for
root: the data directory is deleted and a plain file is put where it was (nothing can be created under it).
Everything is real: SQLite files in ``tmp_path``, the app through httpx over ASGI, no mocks, and every wait
is on a condition (a flush, or a polled predicate with a deadline).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.api.schemas import DIGIT_ONE, DIGIT_ZERO
from service.errors import StoreUnavailable
from service.monitoring.log import RETRY_AFTER_S, PredictionLog
from service.monitoring.monitor import LOG_FILE
from tests.api.conftest import Client, error_of, serve, settings_for
from tests.monitoring.test_feedback_api import calibration, predict_ids, reasons_by_code, scrape, total
from tests.monitoring.test_log import CLASSES, MODEL, VERSION, logged_ids, make_batch, open_log

ROWS = np.asarray([DIGIT_ZERO, DIGIT_ONE] * 5, dtype=np.float64)
DEADLINE_S = 10.0


class Records(logging.Handler):
    """Every record a logger emits while attached."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@contextmanager
def captured(name: str = "calibserve.log") -> Iterator[Records]:
    """Records of ``name`` (the app's loggers do not propagate to the root, so caplog would not see them)."""
    logger = logging.getLogger(name)
    handler = Records()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def block(directory: Path) -> None:
    """Delete the directory and put a plain file in its place: the log can neither be opened nor recreated."""
    shutil.rmtree(directory)
    directory.write_text("not a directory\n")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def sqlite_count(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as connection:
        (count,) = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(count)


# -- the log itself -----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_deleted_directory_is_recreated_and_rows_go_to_the_new_file(tmp_path: Path) -> None:
    """Without the check, the writer's open connection kept writing into the deleted (invisible) file."""
    directory = tmp_path / "data"
    path = directory / "log.sqlite"
    before, after = make_batch(4, seed=1), make_batch(5, seed=2)
    with open_log(path, prune_interval=3600) as log, captured() as records:
        log.submit(before)
        assert log.flush(5.0)
        shutil.rmtree(directory)
        log.submit(after)
        assert log.flush(5.0)
        assert path.exists()
        assert logged_ids(path) == {r.id for r in after}
        assert log.stats().dropped == 0 and log.store_problem() is None
        assert log.record_feedback([(after[0].id, "1")]) == ["recorded"]
    assert any(str(path) in m and "new log" in m for m in records.messages(logging.WARNING))


@pytest.mark.unit
def test_an_unavailable_store_keeps_rows_in_the_bounded_queue_drops_past_it_says_so_once_and_recovers(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "data"
    path = directory / "log.sqlite"
    heard: list[int] = []
    with (
        open_log(path, queue_size=10, prune_interval=3600, on_dropped=heard.append) as log,
        captured() as records,
    ):
        log.submit(make_batch(2, seed=0))
        assert log.flush(5.0)
        block(directory)
        held = make_batch(1, seed=11)
        assert log.submit(held) == 1  # acknowledged: serving goes on
        wait_for(lambda: log.store_problem() is not None, "the writer to find the store gone")
        wait_for(lambda: log.stats().queue_depth == 0, "the writer to hold the refused batch")
        assert not log.flush(5.0)  # at once: the rows wait for the store, a reader does not wait with them
        waiting = make_batch(3, seed=12) + make_batch(7, seed=13)
        assert log.submit(waiting[:3]) == 3 and log.submit(waiting[3:]) == 7
        started = time.monotonic()
        assert log.submit(make_batch(2, seed=14)) == 0  # the queue is full: dropped at once, never waited for
        assert time.monotonic() - started < 1.0
        assert log.stats().dropped == 2 and sum(heard) == 2  # what feeds calibserve_log_dropped_rows_total
        assert log.stats().queue_depth == 10
        problem = log.store_problem()
        assert problem is not None and problem.path == str(path)
        assert "exists" in problem.reason.lower() or "directory" in problem.reason.lower(), problem.reason
        errors = records.messages(logging.ERROR)
        assert len(errors) == 1, errors  # once, not per attempt
        assert str(path) in errors[0] and problem.reason in errors[0]

        with pytest.raises(StoreUnavailable) as refused:
            log.record_feedback([(held[0].id, "1")])
        assert refused.value.details["retry_after"] == RETRY_AFTER_S
        with pytest.raises(StoreUnavailable):
            log.labelled_window(MODEL, VERSION, CLASSES, None, None)

        directory.unlink()  # the way is free again: the writer makes the directory, a fresh log, writes what waited
        wait_for(lambda: log.store_problem() is None, "the writer to reopen the log")
        assert log.flush(5.0)
        assert logged_ids(path) == {r.id for r in held + waiting}
        back = make_batch(3, seed=30)
        log.submit(back)
        assert log.flush(5.0)
        assert logged_ids(path) == {r.id for r in held + waiting + back}
        assert log.stats().dropped == 2
        assert log.record_feedback([(back[0].id, "4"), (held[0].id, "1")]) == ["recorded", "recorded"]
        assert len(records.messages(logging.ERROR)) == 1
        assert any("written again" in m and "2 row(s)" in m for m in records.messages(logging.WARNING))


@pytest.mark.unit
def test_closing_with_the_store_still_down_counts_what_waited_as_dropped(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    heard: list[int] = []
    log = PredictionLog(directory / "log.sqlite", prune_interval=3600, on_dropped=heard.append)
    try:
        block(directory)
        log.submit(make_batch(4, seed=1))
        wait_for(lambda: log.store_problem() is not None, "the writer to find the store gone")
        log.submit(make_batch(5, seed=2))
    finally:
        started = time.monotonic()
        log.close(timeout=10.0)
    assert time.monotonic() - started < 5.0
    assert log.stats().dropped == 9 and sum(heard) == 9


@pytest.mark.unit
def test_a_corrupt_file_at_start_up_is_moved_aside_and_a_fresh_log_started(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    garbage = b"this is not a SQLite database\n" * 200
    path.write_bytes(garbage)
    with captured() as records, open_log(path) as log:
        records_in = make_batch(3, seed=3)
        log.submit(records_in)
        assert log.flush(5.0)
        assert log.count() == (3, 0)
    (moved,) = tmp_path.glob("log.sqlite.corrupt-*")
    assert moved.read_bytes() == garbage  # kept, byte for byte
    assert logged_ids(path) == {r.id for r in records_in}
    errors = records.messages(logging.ERROR)
    assert len(errors) == 1 and str(moved) in errors[0], errors


# -- through the HTTP API -----------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def client(data_dir: Path) -> Iterator[Client]:
    with serve(settings_for(data_dir=data_dir)) as served:
        yield served


def feedback(client: Client, prediction_id: str, label: str = "0") -> Any:
    return client.post("/v1/feedback", json={"feedback": [{"prediction_id": prediction_id, "label": label}]})


@pytest.mark.api
def test_serving_goes_on_and_every_endpoint_answers_while_the_data_dir_is_gone(client: Client, data_dir: Path) -> None:
    path = data_dir / LOG_FILE
    first = predict_ids(client, ROWS)
    assert feedback(client, first[0]).json()["counts"] == {"recorded": 1}
    before = scrape(client)
    with captured() as records:
        block(data_dir)
        acknowledged = [i for _ in range(3) for i in predict_ids(client, ROWS)]  # predictions still answer
        assert len(acknowledged) == 3 * len(ROWS)

        wait_for(lambda: "log_store_unavailable" in reasons_by_code(calibration(client)), "the store problem")
        health = calibration(client)  # 200, not 500
        reason = reasons_by_code(health)["log_store_unavailable"]
        assert reason["status"] == "warning"
        assert str(path) in reason["message"]
        assert health["status"] in ("warning", "critical")
        assert health["log"]["dropped"] == 0  # the rows wait in the queue for the store: nothing is lost yet
        assert "log_dropped_rows" not in reasons_by_code(health)

        after = scrape(client)  # renders although the live window cannot be read
        dropped = total(after, "calibserve_log_dropped_rows_total") - total(before, "calibserve_log_dropped_rows_total")
        assert dropped == 0

        refused = feedback(client, acknowledged[0])
        error = error_of(refused, 503)
        assert error["type"] == "store_unavailable"
        assert error["details"]["retry_after"] == RETRY_AFTER_S
        assert refused.headers["retry-after"] == str(RETRY_AFTER_S)
        errors = [m for m in records.messages(logging.ERROR) if str(path) in m]
        assert len(errors) == 1, records.messages(logging.ERROR)

    data_dir.unlink()  # back: the writer recreates the directory and starts a fresh log
    wait_for(
        lambda: "log_store_unavailable" not in reasons_by_code(calibration(client)),
        "the health reason to clear",
    )
    again = predict_ids(client, ROWS)
    assert feedback(client, again[0]).json()["counts"] == {"recorded": 1}
    assert feedback(client, acknowledged[0]).json()["counts"] == {"recorded": 1}  # what waited was written
    assert sqlite_count(path, "predictions") == len(acknowledged) + len(again)


@pytest.mark.api
def test_a_corrupt_log_at_start_up_is_moved_aside_and_the_app_serves(data_dir: Path) -> None:
    data_dir.mkdir()
    garbage = b"\x00garbage, not SQLite\n" * 100
    (data_dir / LOG_FILE).write_bytes(garbage)
    with captured() as records, serve(settings_for(data_dir=data_dir)) as client:
        ids = predict_ids(client, ROWS)
        assert feedback(client, ids[0]).json()["counts"] == {"recorded": 1}
    (moved,) = data_dir.glob(f"{LOG_FILE}.corrupt-*")
    assert moved.read_bytes() == garbage
    assert sqlite_count(data_dir / LOG_FILE, "predictions") == len(ids)
    assert any(str(moved) in m for m in records.messages(logging.ERROR))


@pytest.mark.api
def test_queue_depth_gauge_reads_zero_on_an_idle_server(client: Client) -> None:
    predict_ids(client, np.concatenate([ROWS] * 10), batch=100)
    health = calibration(client)  # waits for the writer: everything acknowledged is committed
    assert health["log"]["queue_depth"] == 0
    assert total(scrape(client), "calibserve_log_queue_depth") == 0


@pytest.mark.api
def test_pending_feedback_through_the_api_counts_once_its_prediction_lands(client: Client, data_dir: Path) -> None:
    """A label for a row another process still holds in its queue: ``pending`` now, in the window later."""
    served = client.app.state.repository.resolve(None)
    before = scrape(client)
    other = PredictionLog(data_dir / LOG_FILE, batch_size=100_000, linger=3600.0, prune_interval=3600.0)
    try:
        records = make_batch(2, seed=21, model=served.name, version=served.version)
        other.submit(records)
        response = client.post(
            "/v1/feedback",
            json={
                "feedback": [{"prediction_id": r.id, "label": "3"} for r in records]
                + [{"prediction_id": str(uuid.uuid4()), "label": "3"}]
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["counts"] == {"pending": 2, "unknown_id": 1}
        assert calibration(client)["live"]["labelled"]["n"] == 0
    finally:
        other.close()
    assert calibration(client)["live"]["labelled"]["n"] == 2
    assert feedback(client, records[0].id, "3").json()["counts"] == {"duplicate": 1}
    assert calibration(client)["live"]["labelled"]["n"] == 2
    after = scrape(client)
    for status, count in (("pending", 2), ("unknown_id", 1), ("duplicate", 1)):
        delta = total(after, "calibserve_feedback_total", status=status) - total(
            before, "calibserve_feedback_total", status=status
        )
        assert delta == count, status
