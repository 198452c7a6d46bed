"""What every prediction store offers the buffered writer and the readers, whatever database holds it.

A store knows SQL and connections, nothing of queues, threads or metrics: ``monitoring/log.py`` wraps one
in the bounded queue and the writer thread. Two backends: SQLite (``sqlite.py``, an embedded file, the
default for one server) and PostgreSQL (``postgres.py``, shared by every replica of a deployment).

A store reports a failure of the database itself (gone, unreachable, locked, full, read-only, corrupt) as
``StoreFailure`` with a reason a person can read; anything else it raises is a bug and stays loud.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

FeedbackStatus = Literal["recorded", "pending", "duplicate", "conflict", "unknown_id"]

# How a store's ``record_feedback`` asks the log which status each item gets, given the labels already stored
# for these ids and the ids that are logged: statuses in item order, and the (id, label, ts) rows to insert.
FeedbackRows = list[tuple[str, str, float]]
Classifier = Callable[[dict[str, str], set[str]], tuple[list[FeedbackStatus], FeedbackRows]]


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
class PairedWindow:
    """Probabilities [n, K] of the same requests under two models, and the labelled subset [m, K] with labels."""

    champion: NDArray[np.float64]
    challenger: NDArray[np.float64]
    labelled_champion: NDArray[np.float64]
    labelled_challenger: NDArray[np.float64]
    labels: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Retention:
    """What the prune pass keeps: predictions younger than ``days`` and at most ``rows`` of them (None: no
    limit), and pending feedback for ids made after ``pending_floor`` (an id text: see ``ids.id_floor``)."""

    days: float | None
    rows: int | None
    pending_floor: str


# The rollup both stores keep of served predictions as they are written, so that a history of a month reads a
# few thousand rows instead of every prediction: per (model, version, hour) the count of each predicted class
# (kind 0) and of each of ``ROLLUP_BINS`` equal-width confidence bins with its confidence sum (kind 1).
# 120 bins: the card's histogram bins (10, 12, 15, 20, 24, 30, 40 or 60) are unions of whole rollup bins.
ROLLUP_SECONDS = 3600
ROLLUP_BINS = 120
ROLLUP_CLASS, ROLLUP_CONFIDENCE = 0, 1


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """One model's predictions (``version`` None: every version) made in ``[since, until)``, in buckets of
    ``bucket_seconds`` from ``since``; confidences binned in ``histogram_bins`` equal-width bins (``[lo, hi)``,
    1.0 in the last), labels read against ``classes``. Served predictions only."""

    model: str
    version: str | None
    classes: tuple[str, ...]
    since: float
    until: float
    bucket_seconds: float
    histogram_bins: int

    @property
    def n_buckets(self) -> int:
        return int(np.ceil((self.until - self.since) / self.bucket_seconds))

    @property
    def reads_rollup(self) -> bool:
        """Whether the rollup answers the label-free counts: every bucket a union of whole rollup hours, and
        the histogram's bins unions of rollup bins. Otherwise (sub-hour buckets) the rows are read."""
        whole = all(float(v) % ROLLUP_SECONDS == 0 for v in (self.since, self.until, self.bucket_seconds))
        return whole and ROLLUP_BINS % self.histogram_bins == 0


def rollup_reads(
    query: HistoryQuery, mark: str
) -> tuple[tuple[str, tuple[object, ...]], tuple[str, tuple[object, ...]]]:
    """The two rollup reads of a history (class counts by version; confidence-histogram counts and sums), as
    (SQL, parameters) with the backend's placeholder ``mark``: the same statements on SQLite and PostgreSQL."""
    version = "" if query.version is None else f"AND model_version = {mark}"
    versions: tuple[object, ...] = () if query.version is None else (query.version,)
    first, last = int(query.since // ROLLUP_SECONDS), int(query.until // ROLLUP_SECONDS)
    per_bucket = int(query.bucket_seconds // ROLLUP_SECONDS)
    where = f"model = {mark} {version} AND hour >= {mark} AND hour < {mark} AND kind = {mark}"
    bucket = f"(hour - {mark}) / {mark}"
    classes = (
        f"SELECT {bucket} AS b, model_version, key, SUM(n) FROM prediction_rollup WHERE {where} "
        "GROUP BY b, model_version, key",
        (first, per_bucket, query.model, *versions, first, last, ROLLUP_CLASS),
    )
    confidences = (
        f"SELECT {bucket} AS b, key / {mark} AS k, SUM(n), SUM(confidence_sum) FROM prediction_rollup "
        f"WHERE {where} GROUP BY b, k",
        (first, per_bucket, ROLLUP_BINS // query.histogram_bins, query.model, *versions, first, last,
         ROLLUP_CONFIDENCE),
    )  # fmt: skip
    return classes, confidences


@dataclass(frozen=True, slots=True)
class HistoryCounts:
    """The database's aggregates for a history (the calibration maths turns them into figures):

    ``classes``: rows (bucket, model version, predicted class, count); ``confidences``: rows (bucket,
    histogram bin, count, confidence sum); ``labelled``: the labelled predictions one by one, (bucket,
    probabilities, label) in prediction id order, as NLL, Brier and the intervals need each row (labels
    are the scarce part of a log). Buckets are counted from ``since``; a bucket with nothing in it has no row."""

    classes: list[tuple[int, str, int, int]]
    confidences: list[tuple[int, int, int, float]]
    labelled: list[tuple[int, bytes, str]]


class StoreFailure(Exception):
    """The database cannot be read or written now; ``reason`` says why in the database's own words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__


class Store(ABC):
    """A prediction log's database. Every method may be called from any thread; ``write``, ``check`` and
    ``prune`` come from the writer thread only."""

    #: where the data lives, for messages and health reasons (a path, or a URL without its password)
    location: str

    @abstractmethod
    def write(self, records: Sequence[PredictionRecord]) -> None:
        """Commit the rows in one transaction (a row already stored is kept as it is); ``StoreFailure`` when
        the database cannot take them now, and then nothing of them is committed."""

    @abstractmethod
    def check(self, *, prove: bool) -> None:
        """Between batches: notice a store that went away without waiting for traffic; with ``prove``, show
        that it can be written again (``StoreFailure`` if not)."""

    @abstractmethod
    def prune(self, retention: Retention, now: float, *, wait: bool = False) -> None:
        """Retention: old and surplus predictions go, with their feedback, and so does pending feedback whose
        prediction never came. A store shared by several processes runs one pass at a time: by default a
        pass finding another one running is skipped (the writer's periodic pass), ``wait`` waits its turn
        (a pass asked for now)."""

    @abstractmethod
    def record_feedback(self, ids: Sequence[str], classify: Classifier) -> list[FeedbackStatus]:
        """In one transaction, serialised against every other writer of feedback: read the labels stored for
        ``ids`` and which of them are logged, let ``classify`` decide, insert the rows it returns."""

    @abstractmethod
    def labelled_window(
        self, model: str, model_version: str, classes: Sequence[str], limit: int | None, since: float | None
    ) -> list[tuple[bytes, str, float]]:
        """(probabilities, label, label time) of the most recently labelled predictions of this model version,
        newest label first, labels among ``classes`` only (filtered before the limit)."""

    @abstractmethod
    def recent_predictions(self, model: str, model_version: str, limit: int | None, since: float | None) -> list[bytes]:
        """Probabilities of this model version's newest predictions, newest first."""

    @abstractmethod
    def paired_rows(
        self, champion: tuple[str, str], challenger: tuple[str, str], classes: Sequence[str], limit: int | None
    ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes, str]]]:
        """The latest requests the champion answered and the challenger shadow-scored, newest first, and of
        those the latest labelled ones (by label time) with their labels."""

    @abstractmethod
    def history_counts(self, query: HistoryQuery) -> HistoryCounts:
        """Per-bucket aggregates computed in the database (GROUP BY), so a month of a large log answers
        without moving its rows: walked along the id key (UUIDv7 ids sort by time)."""

    @abstractmethod
    def first_prediction_time(self, model: str, since: float) -> float | None:
        """Time of the model's oldest served prediction made at or after ``since`` (None: there is none)."""

    @abstractmethod
    def count(self) -> tuple[int, int]:
        """Predictions and feedback rows stored."""

    @abstractmethod
    def close(self) -> None:
        """Let go of every connection."""


def stack_probabilities(blobs: Sequence[bytes], n_classes: int) -> NDArray[np.float64]:
    """float32 rows as stored, as float64 renormalised (float32 rounding leaves sums a few ulps off 1)."""
    if not blobs:
        return np.empty((0, n_classes), dtype=np.float64)
    joined = b"".join(bytes(blob) for blob in blobs)
    probs = np.frombuffer(joined, dtype=np.float32).reshape(len(blobs), n_classes).astype(np.float64)
    return np.asarray(probs / probs.sum(axis=1, keepdims=True), dtype=np.float64)
