"""The prediction log: an embedded SQLite file (WAL) written off the request path.

Requests hand rows to a bounded queue and return; one background thread per process commits them in
groups. When the queue is full the behaviour is explicit (``wait`` for room, or ``drop``) and every
dropped row is counted, never silent. ``close()`` drains the queue, so a graceful shutdown keeps every
acknowledged prediction. Several processes may share the file: WAL lets readers run beside the one
writer at a time, and a busy timeout serialises the writers. A ``kill -9`` loses only rows that were
still queued; committed rows survive and the file reopens cleanly (WAL recovery).

The store may go away under a running server (the directory deleted, or something else put in its
place). Predictions go on regardless: the writer notices before each commit that the file it holds is
no longer the one at ``path``, starts a new one there if it can, and otherwise drops and counts the
rows, says so once in the log and through ``store_problem()``, and tries again every second. Reads and
feedback raise ``StoreUnavailable`` (a 503 with Retry-After) instead of failing obscurely. A file
that is not a database at start-up is moved aside, never deleted, and a fresh log is started.

Feedback may arrive before its prediction is visible here (another process still holds the row in its
queue): a label for an id this service could have made recently is stored as ``pending``; the live
window joins it with its prediction when that row lands, and the retention pass drops it if the
prediction never comes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from service.errors import StoreUnavailable
from service.monitoring.ids import id_floor, parse_id_time

logger = logging.getLogger("calibserve.log")

FeedbackStatus = Literal["recorded", "pending", "duplicate", "conflict", "unknown_id"]
QueueFullPolicy = Literal["wait", "drop"]

# An id up to this far in the future still counts as ours: another host's clock may run a little ahead.
CLOCK_SKEW_S = 30.0
# How long a client should wait after a 503 for an unavailable store, and how often the writer retries it.
RETRY_AFTER_S = 5
REOPEN_INTERVAL_S = 1.0
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
PRAGMA user_version = 2;
"""
# Version 2 keys a prediction by (id, model): a shadow model's score of a request shares the request's id,
# and a label is the class *name* (models of one server may have different classes). Version 1 files
# (one model, integer labels) are moved aside at start-up, never rewritten: see ``open_or_recover``.
SCHEMA_VERSION = 2


class PredictionRecord(NamedTuple):
    """One logged prediction; probabilities as float32 bytes, and the input if logged: one instance's values,
    row-major, little-endian, as float32 for a float input (as always) and in its own dtype for an integer
    input (the card names the dtype and the shape).

    A tuple, in the table's column order, so that ``executemany`` takes the rows as they are."""

    id: str
    model: str
    ts: float
    model_version: str
    served: bool  # False: a shadow model's score of a request another model answered
    class_index: int
    confidence: float
    probabilities: bytes
    features: bytes | None


@dataclass(frozen=True, slots=True)
class StoreProblem:
    """Why the writer cannot write the log now: where, what the system said, and since when (Unix s)."""

    path: str
    reason: str
    since: float


@dataclass(frozen=True, slots=True)
class PairedWindow:
    """Probabilities [n, K] of the same requests under two models, and the labelled subset [m, K] with labels."""

    champion: NDArray[np.float64]
    challenger: NDArray[np.float64]
    labelled_champion: NDArray[np.float64]
    labelled_challenger: NDArray[np.float64]
    labels: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class LogStats:
    queue_depth: int
    queue_capacity: int
    written: int
    dropped: int
    on_full: QueueFullPolicy


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


FileIdentity = tuple[int, int]


def file_identity(path: Path) -> FileIdentity | None:
    """(device, inode) of the file at ``path``, None if there is none: a different answer than at open
    time means the file was deleted or replaced under an open connection, which would go on writing
    into a file nobody can see."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def open_store(path: Path) -> tuple[sqlite3.Connection, FileIdentity]:
    """A writer's connection with the schema in place (directory and file created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = connect(path)
    try:
        if _is_outdated(connection):
            raise OutdatedStore(f"{path} is a prediction log of schema version 1 (one model per file)")
        connection.executescript(SCHEMA)
        identity = file_identity(path)
        if identity is None:
            raise sqlite3.OperationalError(f"{path} vanished while it was being opened")
    except BaseException:
        connection.close()
        raise
    return connection, identity


class OutdatedStore(sqlite3.DatabaseError):
    """A log written by an older calibserve, in a schema this one does not read."""


def _is_outdated(connection: sqlite3.Connection) -> bool:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'predictions'").fetchone()
    return bool(version < SCHEMA_VERSION and found is not None)


def is_corrupt(error: sqlite3.Error) -> bool:
    """The file at the path is not (or no longer) a readable SQLite database."""
    return getattr(error, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT")


def is_store_failure(error: BaseException) -> bool:
    """Failures of the store itself (missing, locked, read-only, full, corrupt, I/O), as opposed to a
    mistake in our own SQL (``ProgrammingError``, ``IntegrityError``...), which must stay a loud 500."""
    return isinstance(error, OSError | sqlite3.OperationalError) or type(error) is sqlite3.DatabaseError


def describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


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
    """``open_store`` at start-up; a file that is not a database, or a log of schema version 1, is moved aside
    and a fresh log started (a version 1 log's window restarts: it had one model and integer labels).

    Several workers may start on the same file at once: only the file that was found unusable is moved (its
    inode is compared first), so a worker never moves away the fresh log another one made.
    """
    for _ in range(3):
        found = file_identity(path)
        try:
            return open_store(path)
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
    return open_store(path)


def _limit(limit: int | None) -> int:
    return -1 if limit is None else limit  # SQLite: a negative LIMIT is no limit


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def records_for_batch(
    ids: Sequence[str],
    model: str,
    model_version: str,
    served: bool,
    class_index: NDArray[np.intp],
    confidence: NDArray[np.float64],
    probabilities: NDArray[np.float64],
    features: NDArray[Any] | None,
) -> list[PredictionRecord]:
    """Rows for ``submit``; built with whole-array conversions, as a 1000-row request makes 1000 of them.

    ``features`` is the model's input, ``[N, *instance]``; each row keeps its instance's values, floats as
    float32 and integers in their own type (an int64 token id past 2**24 would not survive float32)."""
    probs32 = np.ascontiguousarray(probabilities, dtype=np.float32)
    width = probs32.shape[1] * 4
    blob = probs32.tobytes()
    prob_blobs = [blob[i : i + width] for i in range(0, len(blob), width)]
    feature_blobs: list[bytes | None]
    if features is None:
        feature_blobs = [None] * len(ids)
    else:
        stored = np.dtype("<f4") if features.dtype.kind == "f" else features.dtype.newbyteorder("<")
        values = np.ascontiguousarray(features, dtype=stored)
        f_width, f_blob = values[:1].nbytes, values.tobytes()
        feature_blobs = [f_blob[i : i + f_width] for i in range(0, len(f_blob), f_width)]
    return list(
        map(
            PredictionRecord,
            ids,
            repeat(model),
            repeat(time.time()),
            repeat(model_version),
            repeat(served),
            class_index.tolist(),
            confidence.tolist(),
            prob_blobs,
            feature_blobs,
        )
    )


class RowQueue:
    """A bounded FIFO of rows that takes a request's rows under one lock (``queue.Queue`` takes one item
    per lock round trip, which cost more than the prediction for a 1000-row request).

    ``put`` accepts what fits, then waits up to ``timeout`` for room for the rest; the writer's ``take``
    returns up to ``batch`` rows, lingering briefly for more so concurrent requests share a commit.
    ``on_depth`` hears the new depth after every change, under the lock, so a gauge fed from it ends at
    the queue's real depth (0 on an idle server) and never goes back to an older value.
    """

    def __init__(self, capacity: int, batch: int, on_depth: Callable[[int], None] | None = None) -> None:
        self.capacity = capacity
        self._batch = batch
        self._on_depth = on_depth
        self._rows: deque[PredictionRecord] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False

    def __len__(self) -> int:
        return len(self._rows)

    def put(self, records: Sequence[PredictionRecord], timeout: float) -> int:
        accepted = 0
        deadline: float | None = None
        with self._lock:
            while accepted < len(records):
                room = self.capacity - len(self._rows)
                if room > 0:
                    was_empty = not self._rows
                    chunk = records[accepted : accepted + room]
                    self._rows.extend(chunk)
                    accepted += len(chunk)
                    if was_empty or len(self._rows) >= self._batch:
                        self._not_empty.notify()
                    continue
                deadline = deadline if deadline is not None else time.monotonic() + timeout
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._not_full.wait(remaining)
            if accepted and self._on_depth is not None:
                self._on_depth(len(self._rows))
        return accepted

    def take(self, wait: float, linger: float) -> tuple[list[PredictionRecord], bool]:
        """Up to ``batch`` rows, and whether the queue is closed and now empty (the writer may stop)."""
        with self._lock:
            if not self._rows and not self._closed:
                self._not_empty.wait(wait)
            if self._rows and len(self._rows) < self._batch and not self._closed:
                self._not_empty.wait(linger)
            count = min(self._batch, len(self._rows))
            rows = [self._rows.popleft() for _ in range(count)]
            if rows:
                self._not_full.notify_all()
                if self._on_depth is not None:
                    self._on_depth(len(self._rows))
            return rows, self._closed and not self._rows

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()


class PredictionLog:
    def __init__(
        self,
        path: Path,
        *,
        queue_size: int = 10_000,
        on_full: QueueFullPolicy = "wait",
        wait_timeout: float = 5.0,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        linger: float = 0.05,
        retention_days: float | None = 30.0,
        retention_rows: int | None = 1_000_000,
        prune_interval: float = 60.0,
        feedback_pending_seconds: float = 300.0,
        on_dropped: Callable[[int], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
    ) -> None:
        """``on_dropped`` hears every row that was acknowledged but will never be in the file (queue full,
        store unavailable, write error) and ``on_queue_depth`` every change of the queue's depth: the
        monitor feeds its Prometheus metrics from them, whichever thread the event happens on."""
        self.path = path
        self._queue = RowQueue(queue_size, batch_size, on_queue_depth)
        self._capacity = queue_size
        self._on_full = on_full
        self._wait_timeout = wait_timeout
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._linger = linger
        self._retention_days = retention_days
        self._retention_rows = retention_rows
        self._prune_interval = prune_interval
        self._pending_seconds = feedback_pending_seconds
        self._on_dropped = on_dropped
        self._written = 0
        self._dropped = 0
        self._counter_lock = threading.Lock()
        self._idle = threading.Condition()
        self._pending = 0
        # The writer thread's own: its connection, the identity of the file it opened, when to retry.
        self._connection: sqlite3.Connection | None
        self._identity: FileIdentity | None
        self._connection, self._identity = open_or_recover(path)
        self._reopen_at = 0.0
        self._problem: StoreProblem | None = None
        self._dropped_at_problem = 0
        self._thread = threading.Thread(target=self._run, name="calibserve-log-writer", daemon=True)
        self._thread.start()

    # -- write path ---------------------------------------------------------------------------------
    def submit(self, records: Sequence[PredictionRecord]) -> int:
        """Queue rows for the writer; returns how many were accepted (the rest are counted as dropped)."""
        with self._idle:
            self._pending += len(records)  # before the writer can see them, so flush() waits for them
        accepted = self._queue.put(records, self._wait_timeout if self._on_full == "wait" else 0.0)
        if accepted < len(records):
            with self._idle:
                self._pending -= len(records) - accepted
                self._idle.notify_all()
            self._count_dropped(len(records) - accepted)
            logger.warning("prediction log queue full: dropped %d row(s)", len(records) - accepted)
        return accepted

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is committed or dropped (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Drain and commit everything acknowledged, then stop the writer."""
        self._queue.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("prediction log writer did not finish within %.1f s", timeout)

    def stats(self) -> LogStats:
        with self._counter_lock:
            return LogStats(len(self._queue), self._capacity, self._written, self._dropped, self._on_full)

    def store_problem(self) -> StoreProblem | None:
        """Why the writer cannot write now, or None while it can (as of its last attempt or check)."""
        with self._counter_lock:
            return self._problem

    def _count_dropped(self, count: int) -> None:
        with self._counter_lock:
            self._dropped += count
        if self._on_dropped is not None:
            self._on_dropped(count)

    def _run(self) -> None:
        # Prune first, before taking any row: once a submitted row is flushed, the start-up pass is over.
        self._prune_if_open()
        next_prune = time.monotonic() + self._prune_interval
        stopping = False
        while not stopping:
            # Linger briefly after the first row so that concurrent requests share one commit: one
            # transaction per prediction would cost more than the whole prediction.
            batch, stopping = self._queue.take(self._flush_interval, self._linger)
            if batch:
                self._commit(batch)
            else:
                self._check_idle()
            if time.monotonic() >= next_prune:
                self._prune_if_open()
                next_prune = time.monotonic() + self._prune_interval
        self._close_connection()

    def _writable(self) -> sqlite3.Connection | None:
        """The writer's connection to the file now at ``path``, reopened (a new file, a new directory if
        need be) when the one it held was deleted or replaced; None while the store cannot be opened."""
        lost: str | None = None
        if self._connection is not None:
            if file_identity(self.path) == self._identity:
                return self._connection
            self._close_connection()
            lost = "was deleted or replaced while serving"
        elif time.monotonic() < self._reopen_at:
            return None
        try:
            self._connection, self._identity = open_store(self.path)
        except (OSError, sqlite3.Error) as exc:  # whatever the cause, the writer lives on and retries
            self._reopen_at = time.monotonic() + REOPEN_INTERVAL_S
            self._set_problem(
                f"{lost}, and no new log can be started there: {describe(exc)}" if lost else describe(exc)
            )
            return None
        if lost is not None:
            logger.warning("prediction log %s %s: started a new log there", self.path, lost)
        return self._connection

    def _check_idle(self) -> None:
        """Between batches: notice a deleted file without waiting for traffic, and once the store is back,
        prove it writable (take the write lock and let go) so that its health reason clears."""
        connection = self._writable()
        if connection is None or self._problem is None:
            return
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(connection)
            self._lose_connection(exc)
            return
        self._clear_problem()

    def _commit(self, batch: list[PredictionRecord]) -> None:
        try:
            connection = self._writable()
            if connection is None:
                self._count_dropped(len(batch))
                return
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany("INSERT OR IGNORE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)
                connection.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(connection)
                self._count_dropped(len(batch))
                if not is_store_failure(exc):
                    logger.exception(
                        "prediction log: could not commit %d row(s); they are counted as dropped", len(batch)
                    )
                    return
                self._lose_connection(exc)
                return
            with self._counter_lock:
                self._written += len(batch)
            self._clear_problem()
        finally:
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()

    @staticmethod
    def _rollback(connection: sqlite3.Connection) -> None:
        with suppress(sqlite3.Error):  # on failure the connection is dropped next: nothing was committed
            if connection.in_transaction:
                connection.execute("ROLLBACK")

    def _lose_connection(self, error: sqlite3.Error) -> None:
        """A write failed on the store itself: forget the connection (the next attempt opens the file
        at ``path`` afresh, after ``REOPEN_INTERVAL_S``) and report the problem."""
        self._close_connection()
        self._reopen_at = time.monotonic() + REOPEN_INTERVAL_S
        self._set_problem(describe(error))

    def _close_connection(self) -> None:
        if self._connection is not None:
            with suppress(sqlite3.Error):
                self._connection.close()
            self._connection, self._identity = None, None

    def _set_problem(self, reason: str) -> None:
        """Record why the store cannot be written; logged once when it starts, not per batch."""
        with self._counter_lock:
            first = self._problem is None
            self._problem = StoreProblem(str(self.path), reason, time.time())
            if first:
                self._dropped_at_problem = self._dropped
        if first:
            logger.error(
                "prediction log %s cannot be written: %s. Predictions are still served but not logged; "
                "they are counted in calibserve_log_dropped_rows_total until the log can be written again",
                self.path,
                reason,
            )

    def _clear_problem(self) -> None:
        with self._counter_lock:
            if self._problem is None:
                return
            self._problem = None
            lost = self._dropped - self._dropped_at_problem
        logger.warning("prediction log %s can be written again; %d row(s) were dropped meanwhile", self.path, lost)

    def _prune_if_open(self) -> None:
        connection = self._writable()
        if connection is not None:
            self._prune(connection)

    def _prune(self, connection: sqlite3.Connection) -> None:
        """Retention: old and surplus predictions go, with their feedback; so does pending feedback whose
        prediction never arrived within ``feedback_pending_seconds`` of its id's time."""
        try:
            if self._retention_days is not None:
                cutoff = time.time() - self._retention_days * 86400
                connection.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,))
            if self._retention_rows is not None:
                row = connection.execute(
                    "SELECT id FROM predictions ORDER BY id DESC LIMIT 1 OFFSET ?", (self._retention_rows,)
                ).fetchone()
                if row is not None:  # the newest id beyond the limit: it and every older one go
                    connection.execute("DELETE FROM predictions WHERE id <= ?", (row[0],))
                    connection.execute("DELETE FROM feedback WHERE prediction_id <= ?", (row[0],))
            connection.execute(
                "DELETE FROM feedback WHERE prediction_id < ? AND prediction_id NOT IN (SELECT id FROM predictions)",
                (id_floor(time.time() - self._pending_seconds),),
            )
        except sqlite3.Error:
            logger.exception("prediction log: pruning failed (will retry)")

    def prune_now(self) -> None:
        with closing(connect(self.path, create=False)) as connection:
            self._prune(connection)

    # -- feedback and reads -------------------------------------------------------------------------
    def could_be_ours(self, prediction_id: str, now: float) -> bool:
        """A well-formed id made within the pending window (up to a little clock skew ahead): its
        prediction may still be on its way from another process's queue."""
        made = parse_id_time(prediction_id)
        return made is not None and now - self._pending_seconds <= made <= now + CLOCK_SKEW_S

    def record_feedback(self, items: Sequence[tuple[str, str]]) -> list[FeedbackStatus]:
        """Attach labels (class names) to logged predictions; idempotent for the same label, ``conflict`` for
        another. A label belongs to the request, so it labels every model's prediction under that id (the
        answer and any shadow score); each model's window reads it against its own classes.

        ``recorded``: the prediction is in the log. ``pending``: it is not there yet but the id is one we
        could have made recently; the label is kept and counts once the prediction lands. ``unknown_id``:
        nothing kept. Set-based: one SELECT of existing feedback and one of existing predictions (per
        ``CHUNK`` ids), one ``executemany``, all in one transaction.
        """
        self.flush(timeout=2.0)  # this process's just-acknowledged predictions must be findable
        now = time.time()
        unique = list(dict.fromkeys(prediction_id for prediction_id, _ in items))
        try:
            with closing(connect(self.path, create=False)) as connection:
                try:
                    connection.execute("BEGIN IMMEDIATE")
                    labels: dict[str, str] = {}
                    for chunk in _chunks(unique):
                        marks = ",".join("?" * len(chunk))
                        query = f"SELECT prediction_id, label FROM feedback WHERE prediction_id IN ({marks})"
                        labels.update(connection.execute(query, chunk).fetchall())
                    unlabelled = [prediction_id for prediction_id in unique if prediction_id not in labels]
                    logged: set[str] = set()
                    for chunk in _chunks(unlabelled):
                        marks = ",".join("?" * len(chunk))
                        query = f"SELECT id FROM predictions WHERE id IN ({marks})"
                        logged.update(row[0] for row in connection.execute(query, chunk).fetchall())
                    statuses, rows = self._classify(items, labels, logged, now)
                    connection.executemany("INSERT INTO feedback VALUES (?, ?, ?)", rows)
                    connection.execute("COMMIT")
                except BaseException:
                    self._rollback(connection)
                    raise
        except (OSError, sqlite3.Error) as exc:
            if not is_store_failure(exc):
                raise
            raise self._unavailable(exc) from exc
        return statuses

    def _classify(
        self, items: Sequence[tuple[str, str]], labels: dict[str, str], logged: set[str], now: float
    ) -> tuple[list[FeedbackStatus], list[tuple[str, str, float]]]:
        """Each item's status in request order (a repeated id sees the label its first copy stored)."""
        statuses: list[FeedbackStatus] = []
        rows: list[tuple[str, str, float]] = []
        for prediction_id, label in items:
            known = labels.get(prediction_id)
            if known is not None:
                statuses.append("duplicate" if known == label else "conflict")
                continue
            if prediction_id in logged:
                statuses.append("recorded")
            elif self.could_be_ours(prediction_id, now):
                statuses.append("pending")
            else:
                statuses.append("unknown_id")
                continue
            labels[prediction_id] = label
            rows.append((prediction_id, label, now))
        return statuses, rows

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"the prediction log cannot be read or written now ({describe(error)}); retry later",
            {"retry_after": RETRY_AFTER_S, "reason": describe(error)},
        )

    def labelled_window(
        self, model: str, model_version: str, classes: Sequence[str], limit: int | None, since: float | None
    ) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """The most recently labelled predictions of this model version: probabilities [n, K], labels [n] as
        indices into ``classes`` (a label that is not one of them is not this model's to judge: left out).

        A pending label joins here once its prediction has landed, and only then: the inner join counts
        each (prediction, label) pair once, as ``prediction_id`` is the feedback table's key."""
        query = (
            "SELECT p.probabilities, f.label FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
            f"AND p.model = ? WHERE p.model_version = ? AND f.ts >= ? AND f.label IN ({_marks(classes)}) "
            "ORDER BY f.ts DESC LIMIT ?"
        )  # labels filtered before the limit: other models' labels never crowd this model's out of its window
        rows = self._read(query, (model, model_version, since or 0.0, *classes, _limit(limit)))
        index = {name: i for i, name in enumerate(classes)}
        kept = [(blob, index[str(label)]) for blob, label in rows if label in index]
        probs = self._stack([blob for blob, _ in kept], len(classes))
        return probs, np.asarray([label for _, label in kept], dtype=np.int64)

    def recent_predictions(
        self, model: str, model_version: str, n_classes: int, limit: int | None, since: float | None
    ) -> NDArray[np.float64]:
        query = (
            "SELECT probabilities FROM predictions WHERE model = ? AND model_version = ? AND ts >= ? "
            "ORDER BY id DESC LIMIT ?"
        )
        rows = self._read(query, (model, model_version, since or 0.0, _limit(limit)))
        return self._stack([r[0] for r in rows], n_classes)

    def paired_window(
        self, champion: tuple[str, str], challenger: tuple[str, str], classes: Sequence[str], limit: int | None
    ) -> PairedWindow:
        """The latest requests both models scored (``(name, version)`` each: the champion's answers and the
        challenger's shadow scores of them), and of those the latest labelled ones with their labels."""
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
        index = {name: i for i, name in enumerate(classes)}
        labelled = [row for row in labelled if row[2] in index]
        k = len(classes)
        return PairedWindow(
            champion=self._stack([r[0] for r in recent], k),
            challenger=self._stack([r[1] for r in recent], k),
            labelled_champion=self._stack([r[0] for r in labelled], k),
            labelled_challenger=self._stack([r[1] for r in labelled], k),
            labels=np.asarray([index[str(r[2])] for r in labelled], dtype=np.int64),
        )

    def count(self) -> tuple[int, int]:
        rows = self._read("SELECT (SELECT COUNT(*) FROM predictions), (SELECT COUNT(*) FROM feedback)", ())
        predictions, feedback = rows[0]
        assert isinstance(predictions, int) and isinstance(feedback, int)
        return predictions, feedback

    def _read(self, query: str, parameters: tuple[object, ...]) -> list[tuple[object, ...]]:
        """Rows of a read; ``StoreUnavailable`` when the file is missing, locked or not a database."""
        try:
            with closing(connect(self.path, create=False)) as connection:
                return list(connection.execute(query, parameters).fetchall())
        except (OSError, sqlite3.Error) as exc:
            if not is_store_failure(exc):
                raise
            raise self._unavailable(exc) from exc

    @staticmethod
    def _stack(blobs: list[object], n_classes: int) -> NDArray[np.float64]:
        if not blobs:
            return np.empty((0, n_classes), dtype=np.float64)
        joined = b"".join(blob for blob in blobs if isinstance(blob, bytes))
        probs = np.frombuffer(joined, dtype=np.float32).reshape(len(blobs), n_classes).astype(np.float64)
        return np.asarray(probs / probs.sum(axis=1, keepdims=True), dtype=np.float64)
