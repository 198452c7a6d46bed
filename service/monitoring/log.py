"""The prediction log: an embedded SQLite file (WAL) written off the request path.

Requests hand rows to a bounded queue and return; one background thread per process commits them in
groups. When the queue is full the behaviour is explicit (``wait`` for room, or ``drop``) and every
dropped row is counted, never silent. ``close()`` drains the queue, so a graceful shutdown keeps every
acknowledged prediction. Several processes may share the file: WAL lets readers run beside the one
writer at a time, and a busy timeout serialises the writers. A ``kill -9`` loses only rows that were
still queued; committed rows survive and the file reopens cleanly (WAL recovery).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger("calibserve.log")

FeedbackStatus = Literal["recorded", "duplicate", "conflict", "unknown_id"]
QueueFullPolicy = Literal["wait", "drop"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    model_version TEXT NOT NULL,
    class_index INTEGER NOT NULL,
    confidence REAL NOT NULL,
    probabilities BLOB NOT NULL,
    features BLOB
);
-- No index on predictions.ts: it cost a quarter of the insert rate (bench/RESULTS.md), and the reads
-- that filter on ts walk the id key instead (UUIDv7 ids sort by time). Files from before lose it here.
DROP INDEX IF EXISTS predictions_ts;
CREATE TABLE IF NOT EXISTS feedback (
    prediction_id TEXT PRIMARY KEY,
    label INTEGER NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts);
"""


class PredictionRecord(NamedTuple):
    """One logged prediction; probabilities (and features, if logged) as float32 bytes.

    A tuple, in the table's column order, so that ``executemany`` takes the rows as they are."""

    id: str
    ts: float
    model_version: str
    class_index: int
    confidence: float
    probabilities: bytes
    features: bytes | None


@dataclass(frozen=True, slots=True)
class LogStats:
    queue_depth: int
    queue_capacity: int
    written: int
    dropped: int
    on_full: QueueFullPolicy


def connect(path: Path, timeout: float = 10.0) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # in WAL: durable across process crashes, fast commits
    connection.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return connection


def records_for_batch(
    ids: Sequence[str],
    model_version: str,
    class_index: NDArray[np.intp],
    confidence: NDArray[np.float64],
    probabilities: NDArray[np.float64],
    features: NDArray[np.float32] | None,
) -> list[PredictionRecord]:
    """Rows for ``submit``; built with whole-array conversions, as a 1000-row request makes 1000 of them."""
    probs32 = np.ascontiguousarray(probabilities, dtype=np.float32)
    width = probs32.shape[1] * 4
    blob = probs32.tobytes()
    prob_blobs = [blob[i : i + width] for i in range(0, len(blob), width)]
    feature_blobs: list[bytes | None]
    if features is None:
        feature_blobs = [None] * len(ids)
    else:
        f32 = np.ascontiguousarray(features, dtype=np.float32)
        f_width, f_blob = f32.shape[1] * 4, f32.tobytes()
        feature_blobs = [f_blob[i : i + f_width] for i in range(0, len(f_blob), f_width)]
    return list(
        map(
            PredictionRecord,
            ids,
            repeat(time.time()),
            repeat(model_version),
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
    """

    def __init__(self, capacity: int, batch: int) -> None:
        self.capacity = capacity
        self._batch = batch
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
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._queue = RowQueue(queue_size, batch_size)
        self._capacity = queue_size
        self._on_full = on_full
        self._wait_timeout = wait_timeout
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._linger = linger
        self._retention_days = retention_days
        self._retention_rows = retention_rows
        self._prune_interval = prune_interval
        self._written = 0
        self._dropped = 0
        self._counter_lock = threading.Lock()
        self._idle = threading.Condition()
        self._pending = 0
        with closing(connect(path)) as connection:
            connection.executescript(SCHEMA)
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
            with self._counter_lock:
                self._dropped += len(records) - accepted
            logger.warning("prediction log queue full: dropped %d row(s)", len(records) - accepted)
        return accepted

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is committed (or ``timeout`` passes)."""
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

    def _run(self) -> None:
        connection = connect(self.path)
        next_prune = time.monotonic()
        stopping = False
        while not stopping:
            # Linger briefly after the first row so that concurrent requests share one commit: one
            # transaction per prediction would cost more than the whole prediction.
            batch, stopping = self._queue.take(self._flush_interval, self._linger)
            if batch:
                self._commit(connection, batch)
            if time.monotonic() >= next_prune:
                self._prune(connection)
                next_prune = time.monotonic() + self._prune_interval
        connection.close()

    def _commit(self, connection: sqlite3.Connection, batch: list[PredictionRecord]) -> None:
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany("INSERT OR IGNORE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
            connection.execute("COMMIT")
            with self._counter_lock:
                self._written += len(batch)
        except sqlite3.Error:
            logger.exception("prediction log: could not commit %d row(s); they are counted as dropped", len(batch))
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            with self._counter_lock:
                self._dropped += len(batch)
        finally:
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()

    def _prune(self, connection: sqlite3.Connection) -> None:
        try:
            if self._retention_days is not None:
                cutoff = time.time() - self._retention_days * 86400
                connection.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,))
            if self._retention_rows is not None:
                connection.execute(
                    "DELETE FROM predictions WHERE id IN "
                    "(SELECT id FROM predictions ORDER BY id DESC LIMIT -1 OFFSET ?)",
                    (self._retention_rows,),
                )
            connection.execute("DELETE FROM feedback WHERE prediction_id NOT IN (SELECT id FROM predictions)")
        except sqlite3.Error:
            logger.exception("prediction log: pruning failed (will retry)")

    def prune_now(self) -> None:
        with closing(connect(self.path)) as connection:
            self._prune(connection)

    # -- feedback and reads -------------------------------------------------------------------------
    def record_feedback(self, items: Sequence[tuple[str, int]]) -> list[FeedbackStatus]:
        """Attach labels to logged predictions; idempotent for the same label, ``conflict`` for another."""
        self.flush(timeout=2.0)  # this process's just-acknowledged predictions must be findable
        statuses: list[FeedbackStatus] = []
        now = time.time()
        connection = connect(self.path)
        try:
            connection.execute("BEGIN IMMEDIATE")
            for prediction_id, label in items:
                existing = connection.execute(
                    "SELECT label FROM feedback WHERE prediction_id = ?", (prediction_id,)
                ).fetchone()
                if existing is not None:
                    statuses.append("duplicate" if existing[0] == label else "conflict")
                elif connection.execute("SELECT 1 FROM predictions WHERE id = ?", (prediction_id,)).fetchone():
                    connection.execute("INSERT INTO feedback VALUES (?, ?, ?)", (prediction_id, label, now))
                    statuses.append("recorded")
                else:
                    statuses.append("unknown_id")
            connection.execute("COMMIT")
        finally:
            connection.close()
        return statuses

    def labelled_window(
        self, model_version: str, n_classes: int, limit: int | None, since: float | None
    ) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """The most recently labelled predictions of this model version: probabilities [n, K], labels [n]."""
        query = (
            "SELECT p.probabilities, f.label FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
            "WHERE p.model_version = ? AND f.ts >= ? ORDER BY f.ts DESC LIMIT ?"
        )
        rows = self._read(query, (model_version, since or 0.0, limit if limit is not None else -1))
        probs = self._stack([r[0] for r in rows], n_classes)
        return probs, np.asarray([r[1] for r in rows], dtype=np.int64)

    def recent_predictions(
        self, model_version: str, n_classes: int, limit: int | None, since: float | None
    ) -> NDArray[np.float64]:
        query = "SELECT probabilities FROM predictions WHERE model_version = ? AND ts >= ? ORDER BY id DESC LIMIT ?"
        rows = self._read(query, (model_version, since or 0.0, limit if limit is not None else -1))
        return self._stack([r[0] for r in rows], n_classes)

    def count(self) -> tuple[int, int]:
        rows = self._read("SELECT (SELECT COUNT(*) FROM predictions), (SELECT COUNT(*) FROM feedback)", ())
        predictions, feedback = rows[0]
        assert isinstance(predictions, int) and isinstance(feedback, int)
        return predictions, feedback

    def _read(self, query: str, parameters: tuple[object, ...]) -> list[tuple[object, ...]]:
        connection = connect(self.path)
        try:
            return list(connection.execute(query, parameters).fetchall())
        finally:
            connection.close()

    @staticmethod
    def _stack(blobs: list[object], n_classes: int) -> NDArray[np.float64]:
        if not blobs:
            return np.empty((0, n_classes), dtype=np.float64)
        joined = b"".join(blob for blob in blobs if isinstance(blob, bytes))
        probs = np.frombuffer(joined, dtype=np.float32).reshape(len(blobs), n_classes).astype(np.float64)
        return np.asarray(probs / probs.sum(axis=1, keepdims=True), dtype=np.float64)
