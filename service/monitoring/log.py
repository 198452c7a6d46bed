"""The prediction log: rows handed off the request path to a bounded queue, written by one thread per process.

Requests hand rows to a bounded queue and return; one background thread per process commits them in
groups to a ``Store`` (``monitoring/store``: an embedded SQLite file, or PostgreSQL shared by replicas).
When the queue is full the behaviour is explicit (``wait`` for room, or ``drop``) and every dropped row
is counted, never silent. ``close()`` drains the queue, so a graceful shutdown keeps every acknowledged
prediction.

The store may go away under a running server (a SQLite directory deleted, a PostgreSQL server stopped or
unreachable). Predictions go on regardless: the writer keeps the batch that failed and tries it again
every second, while new rows wait in the bounded queue behind it; once the queue is full, further rows
are dropped and counted (requests never wait for a store that is down). When the store is back, what
waited is written in order. The problem is said once in the log and through ``store_problem()``; reads
and feedback raise ``StoreUnavailable`` (a 503 with Retry-After) instead of failing obscurely.

Feedback may arrive before its prediction is visible here (another process still holds the row in its
queue): a label for an id this service could have made recently is stored as ``pending``; the live
window joins it with its prediction when that row lands, and the retention pass drops it if the
prediction never comes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.errors import StoreUnavailable
from service.monitoring.ids import id_floor, parse_id_time
from service.monitoring.store import open_store
from service.monitoring.store.base import (
    FeedbackRows,
    FeedbackStatus,
    HistoryCounts,
    HistoryQuery,
    PairedWindow,
    PredictionRecord,
    Retention,
    Store,
    StoreFailure,
    stack_probabilities,
)
from service.monitoring.store.sqlite import CHUNK, SCHEMA_VERSION

__all__ = [
    "CHUNK",
    "SCHEMA_VERSION",
    "FeedbackStatus",
    "LogStats",
    "PairedWindow",
    "PredictionLog",
    "PredictionRecord",
    "RowQueue",
    "StoreProblem",
    "records_for_batch",
]

logger = logging.getLogger("calibserve.log")

QueueFullPolicy = Literal["wait", "drop"]

# An id up to this far in the future still counts as ours: another host's clock may run a little ahead.
CLOCK_SKEW_S = 30.0
# How long a client should wait after a 503 for an unavailable store, and how often the writer retries it.
RETRY_AFTER_S = 5
REOPEN_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class StoreProblem:
    """Why the writer cannot write the log now: where, what the system said, and since when (Unix s)."""

    path: str  # the store's location: a file path, or a database URL without its password
    reason: str
    since: float


@dataclass(frozen=True, slots=True)
class LogStats:
    queue_depth: int
    queue_capacity: int
    written: int
    dropped: int
    on_full: QueueFullPolicy


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

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_closed(self, timeout: float) -> None:
        """Sleep up to ``timeout``, or until the queue is closed (the writer retrying a refused batch)."""
        with self._lock:
            if not self._closed:
                self._not_empty.wait(timeout)

    def drain(self) -> list[PredictionRecord]:
        """Everything queued, taken at once (a writer that has to give up at shutdown)."""
        with self._lock:
            rows = list(self._rows)
            self._rows.clear()
            self._not_full.notify_all()
            if self._on_depth is not None:
                self._on_depth(0)
            return rows

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()


class PredictionLog:
    def __init__(
        self,
        target: Path | str | Store,
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
        on_writable: Callable[[bool], None] | None = None,
    ) -> None:
        """``target``: a SQLite file's path, a ``postgresql://`` URL or a ``Store``. ``on_dropped`` hears
        every row that was acknowledged but will never be in the store (queue full, write error) and
        ``on_queue_depth`` every change of the queue's depth: the monitor feeds its Prometheus metrics from
        them, whichever thread the event happens on; ``on_writable`` hears whether the store takes writes (True at
        the start and whenever a problem clears, False when one starts)."""
        self.store = target if isinstance(target, Store) else open_store(target)
        self.path = self.store.location
        self._queue = RowQueue(queue_size, batch_size, on_queue_depth)
        self._capacity = queue_size
        self._on_full = on_full
        self._wait_timeout = wait_timeout
        self._flush_interval = flush_interval
        self._linger = linger
        self._retention_days = retention_days
        self._retention_rows = retention_rows
        self._prune_interval = prune_interval
        self._pending_seconds = feedback_pending_seconds
        self._on_dropped = on_dropped
        self._on_writable = on_writable
        if on_writable is not None:
            on_writable(True)
        self._written = 0
        self._dropped = 0
        self._counter_lock = threading.Lock()
        self._idle = threading.Condition()
        self._pending = 0
        self._problem: StoreProblem | None = None
        self._dropped_at_problem = 0
        self._thread = threading.Thread(target=self._run, name="calibserve-log-writer", daemon=True)
        self._thread.start()

    # -- write path ---------------------------------------------------------------------------------
    def submit(self, records: Sequence[PredictionRecord]) -> int:
        """Queue rows for the writer; returns how many were accepted (the rest are counted as dropped).

        While the store is down a full queue drops at once, whatever the policy: waiting could not help."""
        with self._idle:
            self._pending += len(records)  # before the writer can see them, so flush() waits for them
        waits = self._on_full == "wait" and self.store_problem() is None
        accepted = self._queue.put(records, self._wait_timeout if waits else 0.0)
        if accepted < len(records):
            self._settle(len(records) - accepted)
            self._count_dropped(len(records) - accepted)
            logger.warning("prediction log queue full: dropped %d row(s)", len(records) - accepted)
        return accepted

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written or dropped (or ``timeout`` passes). False at once
        while the store is down: the rows wait for it, and a reader should not."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.store_problem() is not None:
                    return False
                self._idle.wait(min(remaining, 0.1))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Drain and commit everything acknowledged (what the store cannot take then is counted as dropped),
        then stop the writer and let go of the store."""
        self._queue.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("prediction log writer did not finish within %.1f s", timeout)
            return
        self.store.close()

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

    def _settle(self, count: int) -> None:
        """``count`` submitted rows are done with (written or dropped): flush() may stop waiting for them."""
        with self._idle:
            self._pending -= count
            self._idle.notify_all()

    def _run(self) -> None:
        # Prune first, before taking any row: once a submitted row is flushed, the start-up pass is over.
        self._prune()
        next_prune = time.monotonic() + self._prune_interval
        held: list[PredictionRecord] = []  # a batch the store refused, tried again before anything newer
        while True:
            if held:
                if self._commit(held):
                    held = []
                elif self._queue.closed:
                    self._drop_at_close(held)
                    return
                else:
                    self._queue.wait_closed(REOPEN_INTERVAL_S)
                continue
            # Linger briefly after the first row so that concurrent requests share one commit: one
            # transaction per prediction would cost more than the whole prediction.
            batch, stopping = self._queue.take(self._flush_interval, self._linger)
            if batch and not self._commit(batch):
                held = batch
                continue
            if stopping:
                return
            if not batch:
                self._check_idle()
            if time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + self._prune_interval

    def _commit(self, batch: list[PredictionRecord]) -> bool:
        """Write one batch: True when it is done with (written, or dropped for a bug in our own SQL), False
        when the store refused it and it is to be tried again."""
        try:
            self.store.write(batch)
        except StoreFailure as exc:
            self._set_problem(exc.reason)
            return False
        except Exception:
            logger.exception("prediction log: could not commit %d row(s); they are counted as dropped", len(batch))
            self._count_dropped(len(batch))
            self._settle(len(batch))
            return True
        with self._counter_lock:
            self._written += len(batch)
        self._clear_problem()
        self._settle(len(batch))
        return True

    def _drop_at_close(self, held: list[PredictionRecord]) -> None:
        """Shutting down with the store still down: what waited can no longer be written."""
        lost = len(held) + len(self._queue.drain())
        self._count_dropped(lost)
        self._settle(lost)
        logger.error("prediction log %s: shutting down with the store unavailable; %d row(s) dropped", self.path, lost)

    def _check_idle(self) -> None:
        """Between batches: notice a store that went away without waiting for traffic, and once it is back,
        prove it writable so that its health reason clears."""
        try:
            self.store.check(prove=self.store_problem() is not None)
        except StoreFailure as exc:
            self._set_problem(exc.reason)
            return
        self._clear_problem()

    def _set_problem(self, reason: str) -> None:
        """Record why the store cannot be written; logged once when it starts, not per batch."""
        with self._counter_lock:
            first = self._problem is None
            self._problem = StoreProblem(self.path, reason, time.time())
            if first:
                self._dropped_at_problem = self._dropped
        if first and self._on_writable is not None:
            self._on_writable(False)
        if first:
            logger.error(
                "prediction log %s cannot be written: %s. Predictions are still served; their rows wait in the "
                "queue (%d at most) and are written when the store is back, and rows beyond that are counted in "
                "calibserve_log_dropped_rows_total",
                self.path,
                reason,
                self._capacity,
            )

    def _clear_problem(self) -> None:
        with self._counter_lock:
            if self._problem is None:
                return
            self._problem = None
            lost = self._dropped - self._dropped_at_problem
        if self._on_writable is not None:
            self._on_writable(True)
        logger.warning("prediction log %s can be written again; %d row(s) were dropped meanwhile", self.path, lost)

    def _retention(self) -> Retention:
        return Retention(self._retention_days, self._retention_rows, id_floor(time.time() - self._pending_seconds))

    def _prune(self) -> None:
        try:
            self.store.prune(self._retention(), time.time())
        except StoreFailure:
            pass  # the store is down: said by the writer's commits and checks, tried again next pass
        except Exception:
            logger.exception("prediction log: pruning failed (will retry)")

    def prune_now(self) -> None:
        """One retention pass now, from the calling thread (tests and operators)."""
        try:
            self.store.prune(self._retention(), time.time(), wait=True)
        except StoreFailure as exc:
            raise self._unavailable(exc) from exc

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
        nothing kept. Set-based, in one transaction of the store.
        """
        self.flush(timeout=2.0)  # this process's just-acknowledged predictions must be findable
        now = time.time()
        unique = list(dict.fromkeys(prediction_id for prediction_id, _ in items))

        def classify(labels: dict[str, str], logged: set[str]) -> tuple[list[FeedbackStatus], FeedbackRows]:
            return self._classify(items, labels, logged, now)

        try:
            return self.store.record_feedback(unique, classify)
        except StoreFailure as exc:
            raise self._unavailable(exc) from exc

    def _classify(
        self, items: Sequence[tuple[str, str]], labels: dict[str, str], logged: set[str], now: float
    ) -> tuple[list[FeedbackStatus], FeedbackRows]:
        """Each item's status in request order (a repeated id sees the label its first copy stored)."""
        labels = dict(labels)
        statuses: list[FeedbackStatus] = []
        rows: FeedbackRows = []
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

    def _unavailable(self, error: StoreFailure) -> StoreUnavailable:
        return StoreUnavailable(
            f"the prediction log cannot be read or written now ({error.reason}); retry later",
            {"retry_after": RETRY_AFTER_S, "reason": error.reason},
        )

    def labelled_window(
        self, model: str, model_version: str, classes: Sequence[str], limit: int | None, since: float | None
    ) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """The most recently labelled predictions of this model version: probabilities [n, K], labels [n] as
        indices into ``classes`` (a label that is not one of them is not this model's to judge: left out,
        before the limit, so other models' labels never crowd this model's out of its window)."""
        probs, labels, _ = self.labelled_with_times(model, model_version, classes, limit, since)
        return probs, labels

    def labelled_with_times(
        self, model: str, model_version: str, classes: Sequence[str], limit: int | None, since: float | None
    ) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64]]:
        """``labelled_window`` and each label's time (Unix seconds), newest first: a recalibration splits its
        labels by time."""
        try:
            rows = self.store.labelled_window(model, model_version, classes, limit, since)
        except StoreFailure as exc:
            raise self._unavailable(exc) from exc
        index = {name: i for i, name in enumerate(classes)}
        kept = [(blob, index[str(label)], float(ts)) for blob, label, ts in rows if label in index]
        probs = stack_probabilities([blob for blob, _, _ in kept], len(classes))
        labels = np.asarray([label for _, label, _ in kept], dtype=np.int64)
        return probs, labels, np.asarray([ts for _, _, ts in kept], dtype=np.float64)

    def recent_predictions(
        self, model: str, model_version: str, n_classes: int, limit: int | None, since: float | None
    ) -> NDArray[np.float64]:
        try:
            blobs = self.store.recent_predictions(model, model_version, limit, since)
        except StoreFailure as exc:
            raise self._unavailable(exc) from exc
        return stack_probabilities(blobs, n_classes)

    def paired_window(
        self, champion: tuple[str, str], challenger: tuple[str, str], classes: Sequence[str], limit: int | None
    ) -> PairedWindow:
        """The latest requests both models scored (``(name, version)`` each: the champion's answers and the
        challenger's shadow scores of them), and of those the latest labelled ones with their labels."""
        try:
            recent, labelled = self.store.paired_rows(champion, challenger, classes, limit)
        except StoreFailure as exc:
            raise self._unavailable(exc) from exc
        index = {name: i for i, name in enumerate(classes)}
        labelled = [row for row in labelled if row[2] in index]
        k = len(classes)
        return PairedWindow(
            champion=stack_probabilities([r[0] for r in recent], k),
            challenger=stack_probabilities([r[1] for r in recent], k),
            labelled_champion=stack_probabilities([r[0] for r in labelled], k),
            labelled_challenger=stack_probabilities([r[1] for r in labelled], k),
            labels=np.asarray([index[str(r[2])] for r in labelled], dtype=np.int64),
        )

    def history_counts(self, query: HistoryQuery) -> HistoryCounts:
        """The store's per-bucket aggregates (``monitoring/history.py`` turns them into figures)."""
        self.flush(timeout=2.0)
        try:
            return self.store.history_counts(query)
        except StoreFailure as exc:
            raise self._unavailable(exc) from exc

    def first_prediction_time(self, model: str, since: float) -> float | None:
        """When the model's oldest served prediction since ``since`` was made (the dashboard's default range)."""
        try:
            return self.store.first_prediction_time(model, since)
        except StoreFailure as exc:
            raise self._unavailable(exc) from exc

    def count(self) -> tuple[int, int]:
        try:
            return self.store.count()
        except StoreFailure as exc:
            raise self._unavailable(exc) from exc
