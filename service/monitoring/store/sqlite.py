"""The embedded store: one SQLite file in WAL mode, shared by the workers and servers of one machine.

WAL lets readers run beside the one writer at a time, and a busy timeout serialises the writers. A
``kill -9`` loses only rows that were still queued; committed rows survive and the file reopens cleanly
(WAL recovery). The file may go away under a running server (the directory deleted, or something else put
in its place): before each commit the writer checks that the file it holds is still the one at ``path``
and starts a new one there if it can. A file that is not a database at start-up, or a log of schema
version 1, is moved aside, never deleted, and a fresh log is started.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, suppress
from pathlib import Path

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

# Ids per ``IN (...)`` list: well below SQLite's parameter limit (32766 since 3.32, 999 before).
CHUNK = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT NOT NULL,
    model TEXT NOT NULL,
    ts REAL NOT NULL,
    model_version TEXT NOT NULL,
    served INTEGER NOT NULL,
    class_index INTEGER NOT NULL,
    confidence REAL NOT NULL,
    probabilities BLOB NOT NULL,
    features BLOB,
    PRIMARY KEY (id, model)
);
-- No index on predictions.ts: it cost a quarter of the insert rate (bench/RESULTS.md), and the reads
-- that filter on ts walk the id key instead (UUIDv7 ids sort by time).
CREATE TABLE IF NOT EXISTS feedback (
    prediction_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts);
"""
# Version 2 keys a prediction by (id, model): a shadow model's score of a request shares the request's id,
# and a label is the class *name* (models of one server may have different classes). Version 1 files
# (one model, integer labels) are moved aside at start-up, never rewritten: see ``open_or_recover``.
# Version 3 adds the rollup (``base.ROLLUP_SECONDS``): a version 2 file gets it in place, built from its rows.
SCHEMA_VERSION = 3
OLDEST_READABLE = 2

ROLLUP_SCHEMA = """
CREATE TABLE IF NOT EXISTS prediction_rollup (
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    hour INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    key INTEGER NOT NULL,
    n INTEGER NOT NULL,
    confidence_sum REAL NOT NULL,
    PRIMARY KEY (model, model_version, hour, kind, key)
) WITHOUT ROWID
"""


def rollup_insert(where: str) -> str:
    """Add the served predictions that ``where`` selects to the rollup (an upsert: counts are added)."""
    hour = f"CAST(ts / {ROLLUP_SECONDS} AS INTEGER)"
    key = f"MIN(CAST(confidence * {ROLLUP_BINS} AS INTEGER), {ROLLUP_BINS - 1})"
    return (
        "INSERT INTO prediction_rollup (model, model_version, hour, kind, key, n, confidence_sum) "
        f"SELECT * FROM (SELECT model, model_version, {hour} AS h, {ROLLUP_CLASS}, class_index, COUNT(*), "
        f"SUM(confidence) FROM predictions WHERE served = 1 AND {where} GROUP BY model, model_version, h, "
        f"class_index UNION ALL SELECT model, model_version, {hour} AS h, {ROLLUP_CONFIDENCE}, {key} AS k, "
        f"COUNT(*), SUM(confidence) FROM predictions WHERE served = 1 AND {where} GROUP BY model, model_version, "
        "h, k) WHERE 1 ON CONFLICT (model, model_version, hour, kind, key) DO UPDATE SET n = n + excluded.n, "
        "confidence_sum = confidence_sum + excluded.confidence_sum"
    )


FileIdentity = tuple[int, int]


def connect(path: Path, timeout: float = 10.0, *, create: bool = True) -> sqlite3.Connection:
    """A connection in WAL mode; ``create=False`` (readers) never makes a file where the log is missing,
    so a read cannot leave an empty database without tables behind for the writer to trip over."""
    target = str(path) if create else path.resolve().as_uri() + "?mode=rw"
    connection = sqlite3.connect(target, timeout=timeout, isolation_level=None, check_same_thread=False, uri=not create)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # in WAL: durable across process crashes, fast commits
        connection.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    except BaseException:
        connection.close()
        raise
    return connection


def file_identity(path: Path) -> FileIdentity | None:
    """(device, inode) of the file at ``path``, None if there is none: a different answer than at open
    time means the file was deleted or replaced under an open connection, which would go on writing
    into a file nobody can see."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


class OutdatedStore(sqlite3.DatabaseError):
    """A log written by an older calibserve, in a schema this one does not read."""


def open_database(path: Path) -> tuple[sqlite3.Connection, FileIdentity]:
    """A writer's connection with the schema in place (directory and file created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = connect(path)
    try:
        if _is_outdated(connection):
            raise OutdatedStore(f"{path} is a prediction log of schema version 1 (one model per file)")
        connection.executescript(SCHEMA)
        _ensure_rollup(connection)
        identity = file_identity(path)
        if identity is None:
            raise sqlite3.OperationalError(f"{path} vanished while it was being opened")
    except BaseException:
        connection.close()
        raise
    return connection, identity


def _is_outdated(connection: sqlite3.Connection) -> bool:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'predictions'").fetchone()
    return bool(version < OLDEST_READABLE and found is not None)


def _ensure_rollup(connection: sqlite3.Connection) -> None:
    """Schema version 3: the rollup table, built from the rows already logged (a version 2 file) in the same
    transaction that sets the version, so workers opening one file at once build it once."""
    if connection.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        if connection.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            connection.execute(ROLLUP_SCHEMA)
            connection.execute("DELETE FROM prediction_rollup")
            connection.execute(rollup_insert("1"))
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


ROLLUP_UPSERT = (
    "INSERT INTO prediction_rollup (model, model_version, hour, kind, key, n, confidence_sum) VALUES "
    "(?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, model_version, hour, kind, key) DO UPDATE SET n = n + excluded.n, "
    "confidence_sum = confidence_sum + excluded.confidence_sum"
)


def rollup_rows(records: Sequence[PredictionRecord]) -> list[tuple[str, str, int, int, int, int, float]]:
    """The rollup's rows for a batch, counted here (what ``rollup_insert`` counts in SQL, the same arithmetic:
    truncation of ``ts / 3600`` and of ``confidence * 120``), sorted like the table's key."""
    counts: dict[tuple[str, str, int, int, int], list[float]] = {}
    for r in records:
        if not r.served:
            continue
        hour = int(r.ts / ROLLUP_SECONDS)
        for kind, key in (
            (ROLLUP_CLASS, r.class_index),
            (ROLLUP_CONFIDENCE, min(int(r.confidence * ROLLUP_BINS), ROLLUP_BINS - 1)),
        ):
            cell = counts.setdefault((r.model, r.model_version, hour, kind, key), [0, 0.0])
            cell[0] += 1
            cell[1] += r.confidence
    return [(*k, int(v[0]), v[1]) for k, v in sorted(counts.items())]


def rebuild_oldest_rollup(connection: sqlite3.Connection) -> None:
    """After pruning: the rollup forgets the hours whose rows are gone, and recounts the oldest hour still
    held (pruning may have taken part of it). Under the write lock, so no batch lands in between."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        oldest = connection.execute("SELECT ts FROM predictions ORDER BY id LIMIT 1").fetchone()
        if oldest is None:
            connection.execute("DELETE FROM prediction_rollup")
        else:
            hour = int(oldest[0] // ROLLUP_SECONDS)
            start, end = hour * ROLLUP_SECONDS, (hour + 1) * ROLLUP_SECONDS
            connection.execute("DELETE FROM prediction_rollup WHERE hour <= ?", (hour,))
            # the id range (ids sort by time) keeps this a walk along the key, not a scan of the table
            connection.execute(
                rollup_insert("id >= ? AND id < ? AND ts >= ? AND ts < ?"),
                (id_floor(start - ROLLUP_SECONDS), id_floor(end + ROLLUP_SECONDS), start, end) * 2,
            )
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


def is_corrupt(error: sqlite3.Error) -> bool:
    """The file at the path is not (or no longer) a readable SQLite database."""
    return getattr(error, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT")


def is_store_failure(error: BaseException) -> bool:
    """Failures of the store itself (missing, locked, read-only, full, corrupt, I/O), as opposed to a
    mistake in our own SQL (``ProgrammingError``, ``IntegrityError``...), which must stay a loud 500."""
    return isinstance(error, OSError | sqlite3.OperationalError) or type(error) is sqlite3.DatabaseError


def move_aside(path: Path, tag: str = "corrupt") -> Path:
    """Rename a corrupt or outdated log (and its WAL and shared-memory files, so a new database never replays
    the old WAL) to ``<name>.<tag>-<UTC time>``: kept for a post-mortem, out of the way of a fresh log."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.{tag}-{stamp}")
    attempt = 1
    while target.exists():
        attempt += 1
        target = path.with_name(f"{path.name}.{tag}-{stamp}-{attempt}")
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    return target


def open_or_recover(path: Path) -> tuple[sqlite3.Connection, FileIdentity]:
    """``open_database`` at start-up; a file that is not a database, or a log of schema version 1, is moved
    aside and a fresh log started (a version 1 log's window restarts: it had one model and integer labels).

    Several workers may start on the same file at once: only the file that was found unusable is moved (its
    inode is compared first), so a worker never moves away the fresh log another one made.
    """
    for _ in range(3):
        found = file_identity(path)
        try:
            return open_database(path)
        except sqlite3.DatabaseError as exc:
            outdated = isinstance(exc, OutdatedStore)
            if not (outdated or is_corrupt(exc)):
                raise
            if found is None or file_identity(path) != found:
                continue  # another process moved it (and may have started the fresh log): look again
            try:
                moved = move_aside(path, "v1" if outdated else "corrupt")
            except FileNotFoundError:
                continue
            if outdated:
                logger.warning("prediction log %s: %s; moved it aside to %s and started a new log", path, exc, moved)
            else:
                logger.error(
                    "prediction log %s is not a usable SQLite database (%s): moved it aside to %s and started a "
                    "new log",
                    path,
                    describe(exc),
                    moved,
                )
    return open_database(path)


def _limit(limit: int | None) -> int:
    return -1 if limit is None else limit  # SQLite: a negative LIMIT is no limit


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _rollback(connection: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):  # on failure the connection is dropped next: nothing was committed
        if connection.in_transaction:
            connection.execute("ROLLBACK")


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        # The writer thread's own: its connection and the identity of the file it opened.
        self._connection: sqlite3.Connection | None
        self._identity: FileIdentity | None
        self._connection, self._identity = open_or_recover(path)

    # -- the writer's side ----------------------------------------------------------------------------
    def write(self, records: Sequence[PredictionRecord]) -> None:
        connection = self._writable()
        try:
            connection.execute("BEGIN IMMEDIATE")
            # The rows this batch adds have rowids above every existing one (no AUTOINCREMENT: max + 1), and
            # only they go into the rollup: a row already stored (INSERT OR IGNORE) is not counted twice.
            last = connection.execute("SELECT COALESCE(MAX(rowid), 0) FROM predictions").fetchone()[0]
            before = connection.total_changes
            connection.executemany("INSERT OR IGNORE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
            if connection.total_changes - before == len(records):  # every row is new (the normal case)
                connection.executemany(ROLLUP_UPSERT, rollup_rows(records))
            else:  # some were stored already: count only the rows this batch added, read back by rowid
                connection.execute(rollup_insert("rowid > ?"), (last, last))
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(connection)
            if not is_store_failure(exc):
                raise
            self._close_connection()
            raise StoreFailure(describe(exc)) from exc

    def check(self, *, prove: bool) -> None:
        connection = self._writable()
        if not prove:
            return
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(connection)
            self._close_connection()
            raise StoreFailure(describe(exc)) from exc

    def _writable(self) -> sqlite3.Connection:
        """The writer's connection to the file now at ``path``, reopened (a new file, a new directory if
        need be) when the one it held was deleted or replaced; ``StoreFailure`` if it cannot be opened."""
        lost: str | None = None
        if self._connection is not None:
            if file_identity(self.path) == self._identity:
                return self._connection
            self._close_connection()
            lost = "was deleted or replaced while serving"
        try:
            self._connection, self._identity = open_database(self.path)
        except (OSError, sqlite3.Error) as exc:  # whatever the cause, the writer lives on and retries
            raise StoreFailure(
                f"{lost}, and no new log can be started there: {describe(exc)}" if lost else describe(exc)
            ) from exc
        if lost is not None:
            logger.warning("prediction log %s %s: started a new log there", self.path, lost)
        return self._connection

    def _close_connection(self) -> None:
        if self._connection is not None:
            with suppress(sqlite3.Error):
                self._connection.close()
            self._connection, self._identity = None, None

    def close(self) -> None:
        self._close_connection()

    def prune(self, retention: Retention, now: float, *, wait: bool = False) -> None:
        """On a connection of its own, so a pass may run from any thread; SQLite's write lock serialises
        passes (and every other writer), so ``wait`` changes nothing here."""
        try:
            connection = connect(self.path, create=False)
        except (OSError, sqlite3.Error) as exc:
            if not is_store_failure(exc):
                raise
            raise StoreFailure(describe(exc)) from exc
        with closing(connection):
            self._prune(connection, retention, now)

    @staticmethod
    def _prune(connection: sqlite3.Connection, retention: Retention, now: float) -> None:
        try:
            before = connection.total_changes
            if retention.days is not None:
                connection.execute("DELETE FROM predictions WHERE ts < ?", (now - retention.days * 86400,))
            if retention.rows is not None:
                row = connection.execute(
                    "SELECT id FROM predictions ORDER BY id DESC LIMIT 1 OFFSET ?", (retention.rows,)
                ).fetchone()
                if row is not None:  # the newest id beyond the limit: it and every older one go
                    connection.execute("DELETE FROM predictions WHERE id <= ?", (row[0],))
                    connection.execute("DELETE FROM feedback WHERE prediction_id <= ?", (row[0],))
            if connection.total_changes != before:
                rebuild_oldest_rollup(connection)
            connection.execute(
                "DELETE FROM feedback WHERE prediction_id < ? AND prediction_id NOT IN (SELECT id FROM predictions)",
                (retention.pending_floor,),
            )
        except sqlite3.Error:
            logger.exception("prediction log: pruning failed (will retry)")

    # -- feedback and reads ---------------------------------------------------------------------------
    def record_feedback(self, ids: Sequence[str], classify: Classifier) -> list[FeedbackStatus]:
        """One transaction (``BEGIN IMMEDIATE``: feedback writers queue behind each other): one SELECT of
        existing feedback and one of existing predictions per ``CHUNK`` ids, one ``executemany``."""
        try:
            with closing(connect(self.path, create=False)) as connection:
                try:
                    connection.execute("BEGIN IMMEDIATE")
                    labels: dict[str, str] = {}
                    for chunk in _chunks(ids):
                        query = f"SELECT prediction_id, label FROM feedback WHERE prediction_id IN ({_marks(chunk)})"
                        labels.update(connection.execute(query, chunk).fetchall())
                    unlabelled = [prediction_id for prediction_id in ids if prediction_id not in labels]
                    logged: set[str] = set()
                    for chunk in _chunks(unlabelled):
                        query = f"SELECT id FROM predictions WHERE id IN ({_marks(chunk)})"
                        logged.update(row[0] for row in connection.execute(query, chunk).fetchall())
                    statuses, rows = classify(labels, logged)
                    connection.executemany("INSERT INTO feedback VALUES (?, ?, ?)", rows)
                    connection.execute("COMMIT")
                except BaseException:
                    _rollback(connection)
                    raise
        except (OSError, sqlite3.Error) as exc:
            if not is_store_failure(exc):
                raise
            raise StoreFailure(describe(exc)) from exc
        return statuses

    def labelled_window(
        self, model: str, model_version: str, classes: Sequence[str], limit: int | None, since: float | None
    ) -> list[tuple[bytes, str, float]]:
        """A pending label joins here once its prediction has landed, and only then: the inner join counts
        each (prediction, label) pair once, as ``prediction_id`` is the feedback table's key."""
        query = (
            "SELECT p.probabilities, f.label, f.ts FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
            f"AND p.model = ? WHERE p.model_version = ? AND f.ts >= ? AND f.label IN ({_marks(classes)}) "
            "ORDER BY f.ts DESC LIMIT ?"
        )
        return self._read(query, (model, model_version, since or 0.0, *classes, _limit(limit)))  # type: ignore[return-value]

    def recent_predictions(self, model: str, model_version: str, limit: int | None, since: float | None) -> list[bytes]:
        query = (
            "SELECT probabilities FROM predictions WHERE model = ? AND model_version = ? AND ts >= ? "
            "ORDER BY id DESC LIMIT ?"
        )
        rows = self._read(query, (model, model_version, since or 0.0, _limit(limit)))
        return [row[0] for row in rows]  # type: ignore[misc]

    def paired_rows(
        self, champion: tuple[str, str], challenger: tuple[str, str], classes: Sequence[str], limit: int | None
    ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes, str]]]:
        joined = "FROM predictions c JOIN predictions s ON s.id = c.id AND s.model = ?"
        where = "WHERE c.model = ? AND c.model_version = ? AND c.served = 1 AND s.model_version = ? AND s.served = 0"
        keys = (challenger[0], champion[0], champion[1], challenger[1])
        recent = self._read(
            f"SELECT c.probabilities, s.probabilities {joined} {where} ORDER BY c.id DESC LIMIT ?",
            (*keys, _limit(limit)),
        )
        labelled = self._read(
            f"SELECT c.probabilities, s.probabilities, f.label {joined} JOIN feedback f ON f.prediction_id = c.id "
            f"{where} AND f.label IN ({_marks(classes)}) ORDER BY f.ts DESC LIMIT ?",
            (*keys, *classes, _limit(limit)),
        )
        return recent, labelled  # type: ignore[return-value]

    def history_counts(self, query: HistoryQuery) -> HistoryCounts:
        versions: tuple[object, ...] = () if query.version is None else (query.version,)
        version = "" if query.version is None else "AND p.model_version = ?"
        window = (id_floor(query.since), id_floor(query.until), query.since, query.until)
        where = f"p.model = ? {version} AND p.served = 1 AND p.id >= ? AND p.id < ? AND p.ts >= ? AND p.ts < ?"
        bucket = "CAST((p.ts - ?) / ? AS INTEGER)"
        if query.reads_rollup:
            classes, confidences = self._rollup_counts(query)
        else:
            h = query.histogram_bins
            classes = self._read(
                f"SELECT {bucket} AS b, p.model_version, p.class_index, COUNT(*) FROM predictions p WHERE {where} "
                "GROUP BY b, p.model_version, p.class_index",
                (query.since, query.bucket_seconds, query.model, *versions, *window),
            )
            confidences = self._read(
                f"SELECT {bucket} AS b, MIN(CAST(p.confidence * ? AS INTEGER), ?) AS k, COUNT(*), SUM(p.confidence) "
                f"FROM predictions p WHERE {where} GROUP BY b, k",
                (query.since, query.bucket_seconds, h, h - 1, query.model, *versions, *window),
            )
        # Driven by the feedback's key range (prediction ids sort by time), each label's prediction by its key.
        labelled = self._read(
            f"SELECT {bucket}, p.probabilities, f.label FROM feedback f CROSS JOIN predictions p "
            f"ON p.id = f.prediction_id WHERE f.prediction_id >= ? AND f.prediction_id < ? "
            f"AND f.label IN ({_marks(query.classes)}) AND {where} ORDER BY f.prediction_id",
            (query.since, query.bucket_seconds, *window[:2], *query.classes, query.model, *versions, *window),
        )
        return HistoryCounts(classes, confidences, labelled)  # type: ignore[arg-type]

    def _rollup_counts(self, query: HistoryQuery) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        (classes, class_parameters), (confidences, confidence_parameters) = rollup_reads(query, "?")
        return self._read(classes, class_parameters), self._read(confidences, confidence_parameters)

    def first_prediction_time(self, model: str, since: float) -> float | None:
        rows = self._read(
            "SELECT ts FROM predictions WHERE id >= ? AND model = ? AND served = 1 AND ts >= ? ORDER BY id LIMIT 1",
            (id_floor(since), model, since),
        )
        return float(rows[0][0]) if rows else None  # type: ignore[arg-type]

    def count(self) -> tuple[int, int]:
        rows = self._read("SELECT (SELECT COUNT(*) FROM predictions), (SELECT COUNT(*) FROM feedback)", ())
        predictions, feedback = rows[0]
        assert isinstance(predictions, int) and isinstance(feedback, int)
        return predictions, feedback

    def _read(self, query: str, parameters: tuple[object, ...]) -> list[tuple[object, ...]]:
        """Rows of a read; ``StoreFailure`` when the file is missing, locked or not a database."""
        try:
            with closing(connect(self.path, create=False)) as connection:
                return list(connection.execute(query, parameters).fetchall())
        except (OSError, sqlite3.Error) as exc:
            if not is_store_failure(exc):
                raise
            raise StoreFailure(describe(exc)) from exc
