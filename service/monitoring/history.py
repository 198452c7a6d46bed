"""Calibration over time: per time bucket, the figures the live checks look at, from the database's aggregates.

Groundwork for the history API and the dashboard (issue 16): the store counts (``Store.history_counts``:
GROUP BY bucket and bin, in SQL on both backends), this module turns the counts into figures with the same
definitions the live window uses, so that the history of a bucket equals the calibration functions applied
to that bucket's rows (tested): accuracy and ECE (15 equal-width bins, top label: Guo et al. 2017, eq. 3)
of the labelled predictions, mean confidence, PSI of the confidences against the card's reference histogram
and the total variation of the predicted classes against the training class fractions. A bucket with fewer
labels or predictions than the live checks need gives no number for them, and says so.

Not yet here: the intervals, NLL and Brier (they need each row's probabilities, not counts) and the status a
bucket would get.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.calibration.metrics import DEFAULT_N_BINS
from service.card import CalibrationCard
from service.monitoring.drift import population_stability_index, total_variation
from service.monitoring.store.base import HistoryCounts, HistoryQuery


@dataclass(frozen=True, slots=True)
class HistoryBucket:
    start: float
    end: float
    predictions: int
    mean_confidence: float | None
    labelled: int
    accuracy: float | None  # None: fewer labels than min_labels
    ece: float | None
    confidence_psi: float | None  # None: fewer predictions than min_predictions
    class_shift: float | None
    insufficient: tuple[str, ...]  # what the bucket lacks, in words


def history_query(
    card: CalibrationCard, model: str, version: str | None, since: float, until: float, bucket_seconds: float
) -> HistoryQuery:
    """The store query for this card's model: its classes and its reference histogram's bins."""
    if not until > since or bucket_seconds <= 0:
        raise ValueError("need since < until and a positive bucket")
    bins = len(card.reference.confidence_histogram)
    return HistoryQuery(model, version, tuple(card.classes), since, until, bucket_seconds, bins, DEFAULT_N_BINS)


def buckets_from_counts(
    card: CalibrationCard, query: HistoryQuery, counts: HistoryCounts, min_labels: int, min_predictions: int
) -> list[HistoryBucket]:
    """Every bucket from ``since`` to ``until`` (empty ones too: a gap is information), oldest first."""
    n_buckets = int(np.ceil((query.until - query.since) / query.bucket_seconds))
    k, h, e = len(query.classes), query.histogram_bins, query.ece_bins
    classes = np.zeros((n_buckets, k), dtype=np.int64)
    hist = np.zeros((n_buckets, h), dtype=np.int64)
    confidence = np.zeros(n_buckets)
    for b, class_index, bin_, n, confidence_sum in counts.predictions:
        if 0 <= b < n_buckets and 0 <= class_index < k:
            classes[b, class_index] += n
            hist[b, bin_] += n
            confidence[b] += confidence_sum
    labelled = np.zeros((n_buckets, e), dtype=np.int64)
    labelled_confidence = np.zeros((n_buckets, e))
    correct = np.zeros((n_buckets, e), dtype=np.int64)
    for b, bin_, n, confidence_sum, right in counts.labelled:
        if 0 <= b < n_buckets:
            labelled[b, bin_] += n
            labelled_confidence[b, bin_] += confidence_sum
            correct[b, bin_] += right
    reference = np.asarray(card.reference.confidence_histogram, dtype=np.int64)
    training = np.asarray(card.dataset.class_counts, dtype=np.int64)
    out = []
    for b in range(n_buckets):
        n, m = int(classes[b].sum()), int(labelled[b].sum())
        lacks = []
        if m < min_labels:
            lacks.append(f"{m} labelled prediction(s); accuracy and ECE need at least {min_labels}")
        if n < min_predictions:
            lacks.append(f"{n} prediction(s); the drift figures need at least {min_predictions}")
        start = query.since + b * query.bucket_seconds
        out.append(
            HistoryBucket(
                start=start,
                end=min(start + query.bucket_seconds, query.until),
                predictions=n,
                mean_confidence=float(confidence[b] / n) if n else None,
                labelled=m,
                accuracy=float(correct[b].sum() / m) if m >= min_labels else None,
                # ECE = sum over bins |correct_b - confidence_b| / m, the bins' gaps weighted by their share
                ece=float(np.abs(correct[b] - labelled_confidence[b]).sum() / m) if m >= min_labels else None,
                confidence_psi=population_stability_index(reference, hist[b]) if n >= min_predictions else None,
                class_shift=total_variation(training, classes[b]) if n >= min_predictions else None,
                insufficient=tuple(lacks),
            )
        )
    return out
