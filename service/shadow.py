"""Shadow scoring: a challenger scores the champion's traffic on its own thread, never on the request path.

The champion's inference thread hands each scored batch (its ids and the model input) to ``offer``, which
only appends to a bounded queue: the caller's latency and answer are the champion's alone. When the
challenger falls behind, rows that do not fit are skipped and counted (``calibserve_shadow_rows_total``
with outcome ``skipped``), never queued without limit. The challenger's scores are logged under the same
prediction ids with ``served = 0``, so feedback for an id labels both models' predictions, and the paired
comparison (``GET /v1/models/{champion}/shadow``) reads the two side by side.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from numpy.typing import NDArray

from service.inference.engine import BatchPrediction, InferenceEngine
from service.monitoring import prometheus as metrics
from service.monitoring.monitor import Monitor

logger = logging.getLogger("calibserve.shadow")


class Scorer(Protocol):
    """What the shadow needs of a served version (``repository.ServedVersion``)."""

    engine: InferenceEngine
    monitor: Monitor


class ShadowScorer:
    def __init__(
        self, champion: str, challenger: str, current: Callable[[str], Scorer | None], capacity_rows: int
    ) -> None:
        self.champion = champion
        self.challenger = challenger
        self._current = current  # the challenger's serving version now: a reload is picked up per batch
        self._capacity = capacity_rows
        self._queue: deque[tuple[list[str], NDArray[Any]]] = deque()
        self._rows = 0
        self._lock = threading.Condition()
        self._closed = False
        self._warned = False
        self._busy = False  # a batch taken off the queue is being scored
        self.scored = 0
        self.skipped = 0
        self._thread = threading.Thread(target=self._run, name=f"calibserve-shadow-{challenger}", daemon=True)
        self._thread.start()

    def offer(self, ids: list[str], features: NDArray[Any]) -> None:
        """Queue a scored batch for the challenger, or skip it (counted) when the queue is full."""
        with self._lock:
            if self._closed or self._rows + len(ids) > self._capacity:
                self._count("skipped", len(ids))
                return
            self._queue.append((ids, features))
            self._rows += len(ids)
            self._lock.notify()

    def pending_rows(self) -> int:
        with self._lock:
            return self._rows

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every queued row is scored or skipped (tests, and a comparison that wants the latest)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._rows == 0 and not self._busy, timeout)

    def close(self) -> None:
        """Stop: rows still queued are skipped (counted); the batch being scored finishes."""
        with self._lock:
            self._closed = True
            dropped = self._rows
            self._queue.clear()
            self._rows = 0
            self._lock.notify_all()
        if dropped:
            self._count("skipped", dropped)
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._queue or self._closed)
                if self._closed:
                    return
                ids, features = self._queue.popleft()
                self._busy = True
            try:
                self._score(ids, features)
            except Exception:
                logger.exception(
                    "shadow %s -> %s: scoring failed; %d row(s) skipped", self.champion, self.challenger, len(ids)
                )
                self._count("skipped", len(ids))
            finally:
                with self._lock:
                    self._rows -= len(ids)
                    self._busy = False
                    self._lock.notify_all()

    def _score(self, ids: list[str], features: NDArray[Any]) -> None:
        target = self._current(self.challenger)
        if target is None:
            self._count("skipped", len(ids))
            return
        engine = target.engine
        (outcome,) = engine.predict_many([(features, engine.default_coverage)])
        if not isinstance(outcome, BatchPrediction):
            if not self._warned:
                self._warned = True
                logger.warning(
                    "shadow %s -> %s: the challenger refuses the champion's input (%s); rows are skipped",
                    self.champion,
                    self.challenger,
                    outcome,
                )
            self._count("skipped", len(ids))
            return
        target.monitor.record(
            outcome.class_index, outcome.confidence, outcome.probabilities, features, ids=ids, served=False
        )
        self._count("scored", len(ids))

    def _count(self, outcome: str, rows: int) -> None:
        if outcome == "scored":
            self.scored += rows
        else:
            self.skipped += rows
        metrics.SHADOW_ROWS.labels(champion=self.champion, challenger=self.challenger, outcome=outcome).inc(rows)
