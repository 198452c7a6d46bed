"""What only the PostgreSQL store does: its schema made once by replicas starting together, day partitions
dropped whole by retention, a database that is down at start-up, a schema it must not touch.

A real PostgreSQL server (tests/postgres.py); a fresh database per test.
"""

from __future__ import annotations

import threading
import time
from contextlib import suppress

import psycopg
import pytest

from service.errors import StoreUnavailable
from service.monitoring.log import PredictionLog
from service.monitoring.store import postgres as postgres_store
from service.monitoring.store.postgres import PostgresStore, day_partitions, maintain_partitions, redact
from tests.monitoring.test_log import logged_ids, make_batch, open_log, rows
from tests.monitoring.test_pending import uuid7_at
from tests.postgres import PostgresServer, free_port

pytestmark = [pytest.mark.unit, pytest.mark.postgres]


def partitions(url: str, table: str = "predictions") -> list[str]:
    found = rows(
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(?) ORDER BY c.relname",
        (table,),
    )
    return [str(r[0]) for r in found]


def test_replicas_starting_at_once_create_the_schema_exactly_once(postgres_url: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def open_one() -> None:
        start.wait()
        try:
            stores.append(PostgresStore(postgres_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert rows(postgres_url, "SELECT version FROM calibserve_schema") == [(postgres_store.SCHEMA_VERSION,)]
        for store in stores:
            store.write(make_batch(3))
        assert stores[0].count() == (24, 0)
    finally:
        for store in stores:
            store.close()


def test_retention_drops_whole_day_partitions_and_old_rows_of_the_default_one(postgres_url: str) -> None:
    now = time.time()
    with open_log(postgres_url, retention_days=3.0, retention_rows=None, prune_interval=3600) as log:
        log.submit(make_batch(1, seed=0))
        assert log.flush(5.0)  # the writer's start-up prune is over (it runs before the first row is taken)
        with psycopg.connect(postgres_url) as connection:
            maintain_partitions(connection, now - 10 * 86400)  # as if the store had served ten days ago
        made = now - 10 * 86400
        old_day = [
            make_batch(1, seed=1, ids=[uuid7_at(made)])[0]._replace(ts=made),
            make_batch(1, seed=2, ids=[uuid7_at(made + 60)])[0]._replace(ts=made + 60),
        ]
        stray = make_batch(1, seed=3, ids=[uuid7_at(now - 6 * 86400)])[0]._replace(ts=now - 6 * 86400)
        fresh = make_batch(3, seed=4)
        first = logged_ids(postgres_url)
        log.submit([*old_day, stray, *fresh])
        assert log.flush(5.0)
        assert log.record_feedback([(old_day[0].id, "1"), (fresh[0].id, "2")]) == ["recorded", "recorded"]
        ten_days_ago = day_partitions(now - 10 * 86400, 0)[0][0]
        assert f"predictions_{ten_days_ago}" in partitions(postgres_url)
        assert rows(postgres_url, "SELECT count(*) FROM predictions_default") == [(1,)]  # the stray row

        log.prune_now()
        kept = partitions(postgres_url)
        assert f"predictions_{ten_days_ago}" not in kept  # dropped whole, not deleted row by row
        assert f"feedback_{ten_days_ago}" not in partitions(postgres_url, "feedback")
        today = day_partitions(now, 0)[0][0]
        assert f"predictions_{today}" in kept and "predictions_default" in kept
        assert logged_ids(postgres_url) == {r.id for r in fresh} | first
        assert rows(postgres_url, "SELECT prediction_id FROM feedback") == [(fresh[0].id,)]


def test_a_database_down_at_start_up_fails_nothing_and_is_used_once_it_is_up(postgres_server: PostgresServer) -> None:
    """A server that never ran at that address yet: the log starts, keeps the rows, and writes them (schema
    first) once a database answers there. Simulated with a second cluster started on the port later."""
    server = PostgresServer(postgres_server.bindir)
    server.port = free_port()
    url = server.url("postgres")
    try:
        log = PredictionLog(url, prune_interval=3600)
        try:
            waiting = make_batch(5, seed=7)
            assert log.submit(waiting) == 5
            deadline = time.monotonic() + 15
            while log.store_problem() is None:
                assert time.monotonic() < deadline, "the writer never reported the store down"
                time.sleep(0.05)
            problem = log.store_problem()
            assert problem is not None and problem.path == url
            with pytest.raises(StoreUnavailable):
                log.record_feedback([(waiting[0].id, "1")])
            server.init()
            server.start()
            deadline = time.monotonic() + 20
            while log.store_problem() is not None:
                assert time.monotonic() < deadline, "the writer never reached the database once it was up"
                time.sleep(0.1)
            assert log.flush(5.0)
            assert logged_ids(url) == {r.id for r in waiting}
            assert log.record_feedback([(waiting[0].id, "1")]) == ["recorded"]
            assert log.stats().dropped == 0
        finally:
            log.close()
    finally:
        with suppress(Exception):
            server.stop("immediate")
        server.remove()


def test_a_statement_stuck_on_a_lock_is_cancelled_and_reported_not_waited_for(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, statement_timeout_ms=300)
    log = PredictionLog(store, prune_interval=3600)
    try:
        with psycopg.connect(postgres_url) as holder:
            holder.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")  # held until the block ends
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="statement timeout"):
                log.count()
            assert time.monotonic() - started < 5.0
        assert log.count() == (0, 0)  # the lock is gone: the same store answers
    finally:
        log.close()


def test_a_schema_of_another_version_is_refused_loudly_not_rewritten(postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as connection:
        connection.execute("UPDATE calibserve_schema SET version = 99")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="version 99"):
        PostgresStore(postgres_url)
    assert rows(postgres_url, "SELECT version FROM calibserve_schema") == [(99,)]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://calib:s3cret@db.example:5432/calib", "postgresql://calib:***@db.example:5432/calib"),
        ("postgresql://calib@db/calib", "postgresql://calib@db/calib"),
    ],
)
def test_the_store_is_named_without_its_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_version_1_database_gets_its_rollup_built_from_its_rows(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    try:
        store.write(make_batch(40) + make_batch(5, seed=1, served=False))
    finally:
        store.close()
    with psycopg.connect(postgres_url) as connection:  # as calibserve wrote it before the rollup
        connection.execute("DROP TABLE prediction_rollup")
        connection.execute("DELETE FROM calibserve_schema")
        connection.execute("INSERT INTO calibserve_schema VALUES (1, 0)")
    store = PostgresStore(postgres_url)
    store.close()
    assert rows(postgres_url, "SELECT max(version) FROM calibserve_schema") == [(postgres_store.SCHEMA_VERSION,)]
    # each served row counted once per kind (its class and its confidence bin); the shadow rows not at all
    assert rows(postgres_url, "SELECT kind, sum(n)::int FROM prediction_rollup GROUP BY kind ORDER BY kind") == [
        (0, 40),
        (1, 40),
    ]
