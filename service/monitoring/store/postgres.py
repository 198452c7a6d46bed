"""The shared store: PostgreSQL (psycopg 3), one database for every replica of a deployment.

Replicas stay stateless: predictions, feedback and so the live window live here, so feedback reaches a
prediction whichever replica made it, and every replica reports the same window.

- **Writes**: the writer thread's own connection, one ``INSERT ... SELECT FROM unnest(arrays)`` per batch
  (one statement and one round trip for hundreds of rows; ``ON CONFLICT DO NOTHING``, so a batch retried
  after a lost acknowledgement is harmless). Nothing on the request path talks to the database.
- **Reads and feedback**: a small ``psycopg_pool`` pool, with a short timeout so a request never hangs on a
  database that is down (it gets ``StoreFailure``, a 503 upstream).
- **Schema**: versioned in ``calibserve_schema`` and created in one transaction under a transaction-level
  advisory lock, so replicas starting at once create it exactly once. A database that is down at start-up
  is not an error: the schema is made on the first connection that works.
- **Retention that scales**: ``predictions`` and ``feedback`` are partitioned by range of id, one partition
  per UTC day (UUIDv7 ids sort by time, so a day is an id range, and a feedback lookup by id reaches one
  partition). Age retention drops whole partitions (a day's rows go in one cheap ``DROP TABLE``, no row
  deletes, no vacuum debt); rows keep up to a day longer than ``retention_days`` for it. Partitions are made
  two days ahead; an id outside them (a skewed clock, an old id) lands in the default partition, which is
  pruned by row time. The row limit deletes the oldest rows beyond it, as on SQLite (each pass deletes only
  what came in since the last). Maintenance runs under an advisory lock: one replica at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from service.monitoring.ids import id_floor
from service.monitoring.store.base import (
    ROLLUP_BINS,
    ROLLUP_CLASS,
    ROLLUP_CONFIDENCE,
    ROLLUP_SECONDS,
    Classifier,
    FeedbackStatus,
    HistoryCounts,
    HistoryQuery,
    PredictionRecord,
    Retention,
    Store,
    StoreFailure,
    describe,
    rollup_reads,
)

logger = logging.getLogger("calibserve.log")

# Version 2 adds the rollup (``base.ROLLUP_SECONDS``); a version 1 database gets it in place, built from its rows.
SCHEMA_VERSION = 2
# Advisory lock keys (any bigint; these spell "calibsrv" and differ in the last byte).
MIGRATION_LOCK = 0x63616C6962737201
MAINTENANCE_LOCK = 0x63616C6962737202
FEEDBACK_LOCK = 0x63616C6962737203
# Writers hold it shared (they never wait for each other), the rollup's rebuild after pruning exclusively.
ROLLUP_LOCK = 0x63616C6962737204
CONNECT_TIMEOUT_S = 3
# No statement may hang a request or the writer on a lock or a stalled server: past this it is cancelled
# (QueryCanceled, an OperationalError: a store failure, retried) instead of waiting without end.
STATEMENT_TIMEOUT_MS = 15_000
POOL_TIMEOUT_S = 3.0
SCHEMA_RETRY_S = 1.0
IDLE_CHECK_S = 5.0  # an idle writer asks the database this often whether it is there, so health stays current
DAYS_AHEAD = 2
PARTITIONED = ("predictions", "feedback")

SCHEMA = """
CREATE TABLE calibserve_schema (version integer NOT NULL, created double precision NOT NULL);
CREATE TABLE predictions (
    id text NOT NULL,
    model text NOT NULL,
    ts double precision NOT NULL,
    model_version text NOT NULL,
    served boolean NOT NULL,
    class_index integer NOT NULL,
    confidence double precision NOT NULL,
    probabilities bytea NOT NULL,
    features bytea,
    PRIMARY KEY (id, model)
) PARTITION BY RANGE (id);
CREATE TABLE predictions_default PARTITION OF predictions DEFAULT;
-- The label-free window: a model version's newest predictions, read backwards along this index.
CREATE INDEX predictions_model_version_id ON predictions (model, model_version, id);
CREATE TABLE feedback (
    prediction_id text PRIMARY KEY,
    label text NOT NULL,
    ts double precision NOT NULL
) PARTITION BY RANGE (prediction_id);
CREATE TABLE feedback_default PARTITION OF feedback DEFAULT;
CREATE INDEX feedback_ts ON feedback (ts);
"""

ROLLUP_SCHEMA = """
CREATE TABLE prediction_rollup (
    model text NOT NULL,
    model_version text NOT NULL,
    hour bigint NOT NULL,
    kind smallint NOT NULL,
    key integer NOT NULL,
    n bigint NOT NULL,
    confidence_sum double precision NOT NULL,
    PRIMARY KEY (model, model_version, hour, kind, key)
);
"""


def rollup_upsert(source: str) -> str:
    """Add the served rows of ``source`` (a table or CTE with the predictions' columns) to the rollup. Sorted,
    so that replicas adding to the same rows at once lock them in one order (no deadlock)."""
    hour = f"floor(ts / {ROLLUP_SECONDS})::bigint"
    key = f"least(floor(confidence * {ROLLUP_BINS})::int, {ROLLUP_BINS - 1})"
    return (
        "INSERT INTO prediction_rollup (model, model_version, hour, kind, key, n, confidence_sum) "
        "SELECT model, model_version, hour, kind, key, count(*), sum(confidence) FROM ("
        f"SELECT model, model_version, {hour} AS hour, {ROLLUP_CLASS} AS kind, class_index AS key, confidence "
        f"FROM {source} UNION ALL SELECT model, model_version, {hour}, {ROLLUP_CONFIDENCE}, {key}, confidence "
        f"FROM {source}) r GROUP BY model, model_version, hour, kind, key "
        "ORDER BY model, model_version, hour, kind, key "
        "ON CONFLICT (model, model_version, hour, kind, key) DO UPDATE SET n = prediction_rollup.n + excluded.n, "
        "confidence_sum = prediction_rollup.confidence_sum + excluded.confidence_sum"
    )


# One statement: the rows go in, and those that were new (RETURNING skips a row already stored) into the rollup.
INSERT = (
    "WITH inserted AS (INSERT INTO predictions (id, model, ts, model_version, served, class_index, confidence, "
    "probabilities, features) SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[], %s::text[], %s::bool[], "
    "%s::int4[], %s::float8[], %s::bytea[], %s::bytea[]) ON CONFLICT DO NOTHING "
    "RETURNING model, model_version, ts, class_index, confidence, served), "
    "new_served AS (SELECT * FROM inserted WHERE served) " + rollup_upsert("new_served")
)

# Failures of the database or the way to it; anything else from psycopg (a syntax error, a constraint) is ours.
# InterfaceError: a connection the server closed under us ("the connection is closed", raised for instance by
# the rollback psycopg tries when a transaction fails on a dead connection).
FAILURES = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.InsufficientResources,
    PoolTimeout,
    OSError,
)


def redact(url: str) -> str:
    """The URL without its password, for messages, logs and health reasons."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def day_partitions(now: float, days_ahead: int = DAYS_AHEAD) -> list[tuple[str, str, str]]:
    """(suffix, lower id, upper id) of the UTC days from today to ``days_ahead`` days on."""
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [today + timedelta(days=offset) for offset in range(days_ahead + 1)]
    return [
        (day.strftime("p%Y%m%d"), id_floor(day.timestamp()), id_floor((day + timedelta(days=1)).timestamp()))
        for day in days
    ]


class PostgresStore(Store):
    def __init__(self, url: str, *, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> None:
        self._url = url
        self._options = f"-c statement_timeout={statement_timeout_ms}"
        self.location = redact(url)
        self._writer: psycopg.Connection[Any] | None = None
        self._schema_ready = threading.Event()
        self._schema_lock = threading.Lock()
        self._schema_tried_at = -SCHEMA_RETRY_S
        self._schema_failure = ""
        self._checked_at = time.monotonic()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=False,
            timeout=POOL_TIMEOUT_S,
            reconnect_timeout=30.0,
            check=ConnectionPool.check_connection,
            kwargs={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "application_name": "calibserve",
                "options": self._options,
            },
            name="calibserve-store",
        )
        self._pool.open(wait=False)
        try:
            self._ensure_schema()
        except StoreFailure as exc:  # serving goes on: the writer keeps trying and health names the problem
            logger.error("prediction store %s cannot be reached at start-up: %s", self.location, exc.reason)

    # -- connections and schema -----------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._url, connect_timeout=CONNECT_TIMEOUT_S, application_name="calibserve", options=self._options
            )
        except FAILURES as exc:
            raise StoreFailure(describe(exc)) from exc

    def _ensure_schema(self) -> None:
        """The schema in place, made by whichever replica gets the lock first; at most one try a second."""
        if self._schema_ready.is_set():
            return
        with self._schema_lock:
            if self._schema_ready.is_set():
                return
            if time.monotonic() - self._schema_tried_at < SCHEMA_RETRY_S:
                raise StoreFailure(self._schema_failure)  # what the last try a moment ago said
            self._schema_tried_at = time.monotonic()
            try:
                with self._failures(), self._connect() as connection, connection.transaction():
                    migrate(connection)
                    maintain_partitions(connection, time.time())
            except StoreFailure as exc:
                self._schema_failure = exc.reason
                raise
            self._schema_ready.set()

    @contextmanager
    def _failures(self) -> Iterator[None]:
        try:
            yield
        except FAILURES as exc:
            raise StoreFailure(describe(exc)) from exc

    @contextmanager
    def _pooled(self) -> Iterator[psycopg.Connection[Any]]:
        self._ensure_schema()
        with self._failures(), self._pool.connection() as connection:
            yield connection

    def _writable(self) -> psycopg.Connection[Any]:
        self._ensure_schema()
        if self._writer is None or self._writer.closed:
            self._writer = self._connect()
        return self._writer

    def _lose_writer(self) -> None:
        if self._writer is not None:
            with suppress(Exception):
                self._writer.close()
            self._writer = None

    # -- the writer's side ----------------------------------------------------------------------------
    def write(self, records: Sequence[PredictionRecord]) -> None:
        if not records:
            return
        connection = self._writable()
        columns = [list(column) for column in zip(*records, strict=True)]
        try:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ROLLUP_LOCK,))
                connection.execute(INSERT, columns, binary=True)
        except FAILURES as exc:
            self._lose_writer()
            raise StoreFailure(describe(exc)) from exc

    def check(self, *, prove: bool) -> None:
        """``prove`` (the writer has a problem to clear) asks the database now; otherwise every
        ``IDLE_CHECK_S``, so that a replica without traffic also says when its database is gone."""
        if not prove and time.monotonic() - self._checked_at < IDLE_CHECK_S:
            return
        self._checked_at = time.monotonic()
        connection = self._writable()
        try:
            connection.execute("SELECT 1").fetchone()
            connection.rollback()
        except FAILURES as exc:
            self._lose_writer()
            raise StoreFailure(describe(exc)) from exc

    def prune(self, retention: Retention, now: float, *, wait: bool = False) -> None:
        """On a pooled connection (never the writer's: a pass asked for from another thread must not share its
        transaction), under the maintenance lock: one replica's pass at a time."""
        with self._pooled() as connection, connection.transaction():
            if wait:
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (MAINTENANCE_LOCK,))
            else:
                locked = connection.execute("SELECT pg_try_advisory_xact_lock(%s)", (MAINTENANCE_LOCK,)).fetchone()
                if not (locked and locked[0]):
                    return  # another replica is at it
            maintain_partitions(connection, now)
            if prune(connection, retention, now):
                rebuild_oldest_rollup(connection)

    def close(self) -> None:
        self._lose_writer()
        with suppress(Exception):
            self._pool.close(timeout=2.0)

    # -- feedback and reads ---------------------------------------------------------------------------
    def record_feedback(self, ids: Sequence[str], classify: Classifier) -> list[FeedbackStatus]:
        """One transaction under a transaction-level advisory lock: feedback from every replica is applied one
        request at a time, so two replicas labelling one id at once give one ``recorded`` and one
        ``duplicate`` (or ``conflict``), as on SQLite. One query for the labels, one for the logged ids."""
        with self._pooled() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (FEEDBACK_LOCK,))
            ids = list(ids)
            found = connection.execute(
                "SELECT prediction_id, label FROM feedback WHERE prediction_id = ANY(%s)", (ids,)
            ).fetchall()
            labels = {str(prediction_id): str(label) for prediction_id, label in found}
            unlabelled = [prediction_id for prediction_id in ids if prediction_id not in labels]
            logged = {
                str(row[0])
                for row in connection.execute(
                    "SELECT DISTINCT id FROM predictions WHERE id = ANY(%s)", (unlabelled,)
                ).fetchall()
            }
            statuses, rows = classify(labels, logged)
            if rows:
                columns = [list(column) for column in zip(*rows, strict=True)]
                connection.execute(
                    "INSERT INTO feedback (prediction_id, label, ts) "
                    "SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[])",
                    columns,
                )
        return statuses

    def labelled_window(
        self, model: str, model_version: str, classes: Sequence[str], limit: int | None, since: float | None
    ) -> list[tuple[bytes, str, float]]:
        query = (
            "SELECT p.probabilities, f.label, f.ts FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
            "AND p.model = %s WHERE p.model_version = %s AND f.ts >= %s AND f.label = ANY(%s) "
            "ORDER BY f.ts DESC LIMIT %s"
        )
        rows = self._read(query, (model, model_version, since or 0.0, list(classes), limit))
        return [(bytes(blob), str(label), float(ts)) for blob, label, ts in rows]

    def recent_predictions(self, model: str, model_version: str, limit: int | None, since: float | None) -> list[bytes]:
        query = (
            "SELECT probabilities FROM predictions WHERE model = %s AND model_version = %s AND ts >= %s "
            "ORDER BY id DESC LIMIT %s"
        )
        return [bytes(row[0]) for row in self._read(query, (model, model_version, since or 0.0, limit))]

    def paired_rows(
        self, champion: tuple[str, str], challenger: tuple[str, str], classes: Sequence[str], limit: int | None
    ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes, str]]]:
        joined = "FROM predictions c JOIN predictions s ON s.id = c.id AND s.model = %s"
        where = "WHERE c.model = %s AND c.model_version = %s AND c.served AND s.model_version = %s AND NOT s.served"
        keys = (challenger[0], champion[0], champion[1], challenger[1])
        recent = self._read(
            f"SELECT c.probabilities, s.probabilities {joined} {where} ORDER BY c.id DESC LIMIT %s", (*keys, limit)
        )
        labelled = self._read(
            f"SELECT c.probabilities, s.probabilities, f.label {joined} JOIN feedback f ON f.prediction_id = c.id "
            f"{where} AND f.label = ANY(%s) ORDER BY f.ts DESC LIMIT %s",
            (*keys, list(classes), limit),
        )
        return (
            [(bytes(a), bytes(b)) for a, b in recent],
            [(bytes(a), bytes(b), str(label)) for a, b, label in labelled],
        )

    def history_counts(self, query: HistoryQuery) -> HistoryCounts:
        versions: tuple[object, ...] = () if query.version is None else (query.version,)
        version = "" if query.version is None else "AND p.model_version = %s"
        window = (id_floor(query.since), id_floor(query.until), query.since, query.until)
        where = f"p.model = %s {version} AND p.served AND p.id >= %s AND p.id < %s AND p.ts >= %s AND p.ts < %s"
        bucket = "floor((p.ts - %s) / %s)::int"
        if query.reads_rollup:
            classes, confidences = self._rollup_counts(query)
        else:
            h = query.histogram_bins
            classes = self._read(
                f"SELECT {bucket} AS b, p.model_version, p.class_index, count(*) FROM predictions p WHERE {where} "
                "GROUP BY b, p.model_version, p.class_index",
                (query.since, query.bucket_seconds, query.model, *versions, *window),
            )
            confidences = self._read(
                f"SELECT {bucket} AS b, least(floor(p.confidence * %s)::int, %s) AS k, count(*), sum(p.confidence) "
                f"FROM predictions p WHERE {where} GROUP BY b, k",
                (query.since, query.bucket_seconds, h, h - 1, query.model, *versions, *window),
            )
        labelled = self._read(
            f"SELECT {bucket}, p.probabilities, f.label FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
            f"WHERE f.prediction_id >= %s AND f.prediction_id < %s AND f.label = ANY(%s) AND {where} "
            "ORDER BY f.prediction_id",
            (query.since, query.bucket_seconds, *window[:2], list(query.classes), query.model, *versions, *window),
        )
        return HistoryCounts(
            [(int(b), str(v), int(k), int(n)) for b, v, k, n in classes],
            [(int(b), int(k), int(n), float(c)) for b, k, n, c in confidences],
            [(int(b), bytes(blob), str(label)) for b, blob, label in labelled],
        )

    def _rollup_counts(self, query: HistoryQuery) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        (classes, class_parameters), (confidences, confidence_parameters) = rollup_reads(query, "%s")
        return self._read(classes, class_parameters), self._read(confidences, confidence_parameters)

    def first_prediction_time(self, model: str, since: float) -> float | None:
        rows = self._read(
            "SELECT ts FROM predictions WHERE id >= %s AND model = %s AND served AND ts >= %s ORDER BY id LIMIT 1",
            (id_floor(since), model, since),
        )
        return float(rows[0][0]) if rows else None

    def count(self) -> tuple[int, int]:
        rows = self._read("SELECT (SELECT count(*) FROM predictions), (SELECT count(*) FROM feedback)", ())
        predictions, feedback = rows[0]
        return int(predictions), int(feedback)

    def _read(self, query: str, parameters: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._pooled() as connection:
            return list(connection.execute(query, parameters).fetchall())


def migrate(connection: psycopg.Connection[Any]) -> None:
    """Create the schema, or check the one found, inside the caller's transaction: the advisory lock is
    held until it commits, so a replica that starts meanwhile waits and then finds the schema made."""
    connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    exists = connection.execute("SELECT to_regclass('calibserve_schema') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        connection.execute(SCHEMA)
        connection.execute(ROLLUP_SCHEMA)
        connection.execute("INSERT INTO calibserve_schema VALUES (%s, %s)", (SCHEMA_VERSION, time.time()))
        logger.info("prediction store: created schema version %d", SCHEMA_VERSION)
        return
    found = connection.execute("SELECT max(version) FROM calibserve_schema").fetchone()
    version = found[0] if found else None
    if version == 1:  # the rollup, built from the rows already stored
        connection.execute(ROLLUP_SCHEMA)
        connection.execute(rollup_upsert("(SELECT * FROM predictions WHERE served) p"))
        connection.execute("INSERT INTO calibserve_schema VALUES (%s, %s)", (SCHEMA_VERSION, time.time()))
        logger.info("prediction store: upgraded schema version 1 to %d (rollup built)", SCHEMA_VERSION)
        return
    if version != SCHEMA_VERSION:
        # A newer layout is not ours to touch.
        raise psycopg.errors.FeatureNotSupported(
            f"the database holds calibserve store schema version {version}; this calibserve reads {SCHEMA_VERSION}"
        )


def maintain_partitions(connection: psycopg.Connection[Any], now: float) -> None:
    """Today's partitions and the next ``DAYS_AHEAD`` days', for both tables (made once, by whoever comes first)."""
    for suffix, lower, upper in day_partitions(now):
        for table in PARTITIONED:
            name = sql.Identifier(f"{table}_{suffix}")
            exists = connection.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{table}_{suffix}",)).fetchone()
            if exists and exists[0]:
                continue
            try:
                with connection.transaction():  # a savepoint: a refused partition must not undo the others
                    connection.execute(
                        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                            name, sql.Identifier(table), sql.Literal(lower), sql.Literal(upper)
                        )
                    )
            except psycopg.errors.CheckViolation:
                # The default partition already holds rows of that day (a clock far ahead): they stay there.
                logger.warning("prediction store: partition %s_%s overlaps rows in the default one", table, suffix)


def prune(connection: psycopg.Connection[Any], retention: Retention, now: float) -> bool:
    """Age: drop whole day partitions that end before the cutoff, and old rows of the default partitions.
    Count: delete the oldest rows beyond the limit, with their feedback. Pending feedback whose prediction
    never came goes after its window. Whether any prediction went."""
    pruned = False
    if retention.days is not None:
        cutoff = now - retention.days * 86400
        floor = id_floor(cutoff)
        for table in PARTITIONED:
            for name, upper in partitions_of(connection, table):
                if upper is not None and upper <= floor:
                    connection.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                    pruned = True
                    logger.info("prediction store: dropped partition %s (older than the retention)", name)
        pruned |= connection.execute("DELETE FROM predictions_default WHERE ts < %s", (cutoff,)).rowcount > 0
        connection.execute("DELETE FROM feedback_default WHERE prediction_id < %s", (floor,))
    if retention.rows is not None:
        row = connection.execute(
            "SELECT id FROM predictions ORDER BY id DESC LIMIT 1 OFFSET %s", (retention.rows,)
        ).fetchone()
        if row is not None:  # the newest id beyond the limit: it and every older one go
            pruned |= connection.execute("DELETE FROM predictions WHERE id <= %s", (row[0],)).rowcount > 0
            connection.execute("DELETE FROM feedback WHERE prediction_id <= %s", (row[0],))
    connection.execute(
        "DELETE FROM feedback f WHERE f.prediction_id < %s "
        "AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.id = f.prediction_id)",
        (retention.pending_floor,),
    )
    return pruned


def rebuild_oldest_rollup(connection: psycopg.Connection[Any]) -> None:
    """After pruning, in its transaction: the rollup forgets the hours whose rows are gone and recounts the
    oldest hour still held (pruning may have taken part of it), with the writers held off meanwhile."""
    connection.execute("SELECT pg_advisory_xact_lock(%s)", (ROLLUP_LOCK,))
    oldest = connection.execute("SELECT ts FROM predictions ORDER BY id LIMIT 1").fetchone()
    if oldest is None:
        connection.execute("DELETE FROM prediction_rollup")
        return
    hour = int(oldest[0] // ROLLUP_SECONDS)
    start, end = hour * ROLLUP_SECONDS, (hour + 1) * ROLLUP_SECONDS
    connection.execute("DELETE FROM prediction_rollup WHERE hour <= %s", (hour,))
    # the id range (ids sort by time) reaches the partitions of that hour only
    rows = "(SELECT * FROM predictions WHERE served AND id >= %s AND id < %s AND ts >= %s AND ts < %s) p"
    bounds = (id_floor(start - ROLLUP_SECONDS), id_floor(end + ROLLUP_SECONDS), start, end)
    connection.execute(rollup_upsert(rows), bounds * 2)


def partitions_of(connection: psycopg.Connection[Any], table: str) -> list[tuple[str, str | None]]:
    """(name, upper id bound) of the table's range partitions (None for the default), oldest first."""
    rows = connection.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s) ORDER BY c.relname",
        (table,),
    ).fetchall()
    found: list[tuple[str, str | None]] = []
    for name, bound in rows:
        text = str(bound)
        if text == "DEFAULT":
            found.append((str(name), None))
            continue
        # FOR VALUES FROM ('<lower>') TO ('<upper>')
        upper = text.rsplit("TO ('", 1)[-1].rstrip("')")
        found.append((str(name), upper))
    return found
