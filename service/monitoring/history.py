"""Calibration over time: per time bucket, the figures and the verdicts the live checks give, from the store.

What a bucket holds is what ``/health/calibration`` would say of a window made of exactly that bucket's
predictions: accuracy, ECE with its interval and noise floor, NLL and Brier of the labelled ones; the
label-free estimate of accuracy (mean top-label confidence, CBPE), PSI of the confidences against the
card's reference histogram and the total variation of the predicted classes against the training prior;
each graded by the live thresholds and gated by the same sampling-noise nulls (``service.monitoring.live``),
and the bucket's status the worst of them. A bucket with fewer labels or predictions than the live checks
need gives no number for them, and says so. Tested: every figure equals the calibration functions applied
to the bucket's rows, on both stores.

Where the work is done, so that a month answers in well under a second (bench/history_query.py):

- the label-free figures need counts only: the store sums them in SQL, from its hourly rollup when the
  buckets are whole hours (``HistoryQuery.reads_rollup``), from the rows otherwise;
- the labelled figures need each labelled row (NLL, Brier and the bootstrap need more than counts): the store
  hands over their probabilities, and the bootstrap runs here, ``HISTORY_BOOTSTRAP`` resamples per bucket;
- the noise gates are simulated only for a figure above its warning threshold (below it the verdict is ok
  whatever the noise), the label-free ones cached per window size as in the live checks;
- a closed bucket's labelled figures are kept (``LabelledCache``) until a label arrives in it.

Left out: the two-sample KS test of the live checks (it needs every confidence, not a histogram): the PSI of
the same confidences stands for the distribution's shape.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from service.calibration.metrics import DEFAULT_N_BINS, bin_indices, brier_per_sample, nll_per_sample, top_label
from service.calibration.uncertainty import _accuracy_and_ece, ece_noise_floor
from service.card import CalibrationCard
from service.monitoring.drift import SamplingNoise, population_stability_index, total_variation
from service.monitoring.health import Status, worst
from service.monitoring.live import (
    _ECE_SIMULATIONS,
    _INTERVAL_LEVEL,
    LiveThresholds,
    _accuracy_drop_noise,
    _bin_confidence,
    _drift_grade,
    _estimated_drop_noise,
    _psi_noise,
    _tv_noise,
    null_size,
)
from service.monitoring.store.base import HistoryCounts, HistoryQuery, stack_probabilities


class HistorySource(Protocol):
    """What a history reads: the prediction log (``PredictionLog.history_counts``), or a store."""

    def history_counts(self, query: HistoryQuery) -> HistoryCounts: ...


# Resamples behind each bucket's ECE and accuracy intervals: half the live window's 200, so a month of
# hourly buckets with labels stays well under a second; the interval's level and method are the live ones.
HISTORY_BOOTSTRAP = 100
# Buckets per history: 31 days of hourly buckets and some; a finer view needs a shorter range.
MAX_BUCKETS = 2000


@dataclass(frozen=True, slots=True)
class BucketCheck:
    """One live check's verdict on a bucket: its value, the threshold it was graded against, and the noise
    value it had to exceed (None: the value was within the warning threshold, so no gate was needed)."""

    code: str
    status: Status
    value: float
    threshold: float
    noise: float | None
    message: str


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    lower: float
    upper: float


@dataclass(frozen=True, slots=True)
class LabelledFigures:
    """The labelled predictions of a bucket: the figures of ``summarize_window``, and the label checks."""

    accuracy: Estimate
    ece: Estimate
    ece_noise_floor: float  # the ECE a perfectly calibrated model shows at this n, at the interval level
    nll: float
    brier: float
    checks: tuple[BucketCheck, ...]


@dataclass(frozen=True, slots=True)
class HistoryBucket:
    start: float
    end: float
    predictions: int
    labelled: int
    versions: dict[str, int]  # predictions per model version in the bucket
    mean_confidence: float | None  # the label-free estimate of accuracy; None: no predictions
    confidence_histogram: tuple[int, ...]
    class_counts: tuple[int, ...]
    confidence_psi: float | None  # None: fewer predictions than min_predictions
    class_shift: float | None
    estimated_accuracy_drop: float | None
    accuracy: Estimate | None  # None: fewer labels than min_labels
    ece: Estimate | None
    ece_noise_floor: float | None
    nll: float | None
    brier: float | None
    status: Status
    checks: tuple[BucketCheck, ...]
    insufficient: tuple[str, ...]  # what the bucket lacks, in words


def history_query(
    card: CalibrationCard, model: str, version: str | None, since: float, until: float, bucket_seconds: float
) -> HistoryQuery:
    """The store query for this card's model: its classes and its reference histogram's bins."""
    if not until > since or bucket_seconds <= 0:
        raise ValueError("need since < until and a positive bucket")
    if np.ceil((until - since) / bucket_seconds) > MAX_BUCKETS:
        raise ValueError(f"more than {MAX_BUCKETS} buckets: ask for a shorter range or longer buckets")
    bins = len(card.reference.confidence_histogram)
    return HistoryQuery(model, version, tuple(card.classes), since, until, bucket_seconds, bins)


@dataclass
class LabelledCache:
    """Labelled figures of buckets already computed, keyed by the bucket and a digest of its labelled rows:
    a bucket that got no new label is not bootstrapped again on the next refresh of the page."""

    size: int = 20_000
    _entries: OrderedDict[tuple[object, ...], LabelledFigures] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple[object, ...]) -> LabelledFigures | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple[object, ...], figures: LabelledFigures) -> None:
        with self._lock:
            self._entries[key] = figures
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


def buckets_from_counts(
    card: CalibrationCard,
    query: HistoryQuery,
    counts: HistoryCounts,
    thresholds: LiveThresholds,
    cache: LabelledCache | None = None,
) -> list[HistoryBucket]:
    """Every bucket from ``since`` to ``until`` (empty ones too: a gap is information), oldest first."""
    n_buckets = query.n_buckets
    k, h = len(query.classes), query.histogram_bins
    classes = np.zeros((n_buckets, k), dtype=np.int64)
    versions: list[dict[str, int]] = [{} for _ in range(n_buckets)]
    for b, version, class_index, n in counts.classes:
        if 0 <= b < n_buckets and 0 <= class_index < k:
            classes[b, class_index] += n
            versions[b][version] = versions[b].get(version, 0) + n
    hist = np.zeros((n_buckets, h), dtype=np.int64)
    confidence = np.zeros(n_buckets)
    for b, bin_, n, confidence_sum in counts.confidences:
        if 0 <= b < n_buckets:
            hist[b, bin_] += n
            confidence[b] += confidence_sum
    labelled = _labelled_by_bucket(counts, query, n_buckets)
    bin_confidence = _bin_confidence(card.reference.confidences, h)
    out = []
    for b in range(n_buckets):
        start = query.since + b * query.bucket_seconds
        n = int(classes[b].sum())
        probs, labels = labelled[b]
        m = int(labels.shape[0])
        lacks: list[str] = []
        figures = None
        if m >= thresholds.min_labels:
            figures = _cached_labelled(card, query, start, probs, labels, thresholds, cache)
        else:
            lacks.append(f"{m} labelled prediction(s); accuracy and ECE need at least {thresholds.min_labels}")
        drift: tuple[BucketCheck, ...] = ()
        psi = shift = estimated_drop = None
        if n >= thresholds.min_predictions:
            psi, shift, estimated_drop, drift = _label_free(
                card, hist[b], classes[b], confidence[b] / n, bin_confidence, thresholds
            )
        else:
            lacks.append(f"{n} prediction(s); the drift figures need at least {thresholds.min_predictions}")
        checks = (figures.checks if figures else ()) + drift
        out.append(
            HistoryBucket(
                start=start,
                end=min(start + query.bucket_seconds, query.until),
                predictions=n,
                labelled=m,
                versions=versions[b],
                mean_confidence=float(confidence[b] / n) if n else None,
                confidence_histogram=tuple(int(v) for v in hist[b]),
                class_counts=tuple(int(v) for v in classes[b]),
                confidence_psi=psi,
                class_shift=shift,
                estimated_accuracy_drop=estimated_drop,
                accuracy=figures.accuracy if figures else None,
                ece=figures.ece if figures else None,
                ece_noise_floor=figures.ece_noise_floor if figures else None,
                nll=figures.nll if figures else None,
                brier=figures.brier if figures else None,
                status=worst([c.status for c in checks]) if checks else "insufficient_data",
                checks=checks,
                insufficient=tuple(lacks),
            )
        )
    return out


def _labelled_by_bucket(
    counts: HistoryCounts, query: HistoryQuery, n_buckets: int
) -> list[tuple[NDArray[np.float64], NDArray[np.int64]]]:
    """Each bucket's labelled probabilities [m, K] and label indices [m], in prediction id order (the store's),
    so that the same rows give the same digest and the same bootstrap."""
    k = len(query.classes)
    index = {name: i for i, name in enumerate(query.classes)}
    rows = [(b, blob, index[label]) for b, blob, label in counts.labelled if 0 <= b < n_buckets and label in index]
    rows.sort(key=lambda row: row[0])  # stable: id order within a bucket (ids and times agree, so mostly sorted)
    buckets = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    probs = stack_probabilities([row[1] for row in rows], k)
    labels = np.fromiter((row[2] for row in rows), dtype=np.int64, count=len(rows))
    bounds = np.searchsorted(buckets, np.arange(n_buckets + 1))
    return [(probs[bounds[b] : bounds[b + 1]], labels[bounds[b] : bounds[b + 1]]) for b in range(n_buckets)]


def _cached_labelled(
    card: CalibrationCard,
    query: HistoryQuery,
    start: float,
    probs: NDArray[np.float64],
    labels: NDArray[np.int64],
    thresholds: LiveThresholds,
    cache: LabelledCache | None,
) -> LabelledFigures:
    if cache is None:
        return labelled_figures(card, probs, labels, thresholds)
    digest = hashlib.blake2b(probs.tobytes() + labels.tobytes(), digest_size=16).digest()
    key = (card.name, card.version, start, query.bucket_seconds, thresholds, digest)
    found = cache.get(key)
    if found is None:
        found = labelled_figures(card, probs, labels, thresholds)
        cache.put(key, found)
    return found


def labelled_figures(
    card: CalibrationCard,
    probs: NDArray[np.float64],
    labels: NDArray[np.int64],
    thresholds: LiveThresholds,
    seed: int = 0,
) -> LabelledFigures:
    """A bucket's label figures, as ``summarize_window`` makes them (same bins, interval level, method and
    seed; ``HISTORY_BOOTSTRAP`` resamples), and the two label checks of ``/health/calibration``."""
    conf, correct = top_label(probs, labels)
    accuracy, ece, null = _accuracy_and_ece(conf, correct, DEFAULT_N_BINS, HISTORY_BOOTSTRAP, _INTERVAL_LEVEL, seed)
    reference = card.test.after_temperature
    checks = [
        _check("live_ece", ece.value, thresholds.ece_warning, thresholds.ece_critical,
               lambda: _ece_gate(conf, thresholds, seed), ece_noise_bound(conf, thresholds.gate_alpha)),
        _check(
            "live_accuracy_drop",
            reference.accuracy.value - accuracy.value,
            thresholds.accuracy_drop_warning,
            thresholds.accuracy_drop_critical,
            lambda: _accuracy_drop_noise(
                reference.n, reference.accuracy.value, null_size(conf.size), thresholds.noise_level, seed
            ),
        ),
    ]  # fmt: skip
    return LabelledFigures(
        accuracy=Estimate(accuracy.value, accuracy.lower, accuracy.upper),
        ece=Estimate(ece.value, ece.lower, ece.upper),
        ece_noise_floor=float(np.quantile(null, _INTERVAL_LEVEL)),
        nll=float(np.mean(nll_per_sample(probs, labels, 1e-12))),
        brier=float(np.mean(brier_per_sample(probs, labels))),
        checks=tuple(checks),
    )


def ece_noise_bound(confidences: NDArray[np.float64], alpha: float) -> float:
    """An upper bound on the ``1 - alpha`` quantile of the ECE noise floor, without simulating it: ECE above
    it is not noise, whatever the simulation would say, so a drifting bucket skips the simulation (~5 ms).

    Under perfect calibration ``correct_i ~ Bernoulli(c_i)`` independently. Jensen: the null's mean is at
    most ``sum_b sqrt(sum_{i in b} c_i (1 - c_i)) / m``; and one ``correct_i`` moves ECE by at most ``1/m``,
    so McDiarmid's inequality puts the quantile at most ``sqrt(ln(1/alpha) / (2m))`` above the mean.
    """
    m = int(confidences.size)
    bins = bin_indices(confidences, DEFAULT_N_BINS)
    spread = np.bincount(bins, weights=confidences * (1.0 - confidences), minlength=DEFAULT_N_BINS)
    return float(np.sum(np.sqrt(spread)) / m + np.sqrt(np.log(1.0 / alpha) / (2.0 * m)))


def _ece_gate(confidences: NDArray[np.float64], thresholds: LiveThresholds, seed: int) -> SamplingNoise:
    """The live ECE check's gate: the noise floor of these confidences at the check's own level."""
    floor = ece_noise_floor(confidences, n_sim=_ECE_SIMULATIONS, level=thresholds.noise_level, seed=seed)
    n = int(confidences.size)
    return SamplingNoise(floor.mean, floor.upper, floor.level, n, n, _ECE_SIMULATIONS)


def _label_free(
    card: CalibrationCard,
    hist: NDArray[np.int64],
    class_counts: NDArray[np.int64],
    mean_confidence: float,
    bin_confidence: tuple[float, ...],
    thresholds: LiveThresholds,
    seed: int = 0,
) -> tuple[float, float, float, tuple[BucketCheck, ...]]:
    """PSI, class shift and the estimated accuracy drop of a bucket, and their checks, with the live checks'
    nulls (cached per window size, seeds as there)."""
    n = int(hist.sum())
    reference = tuple(int(v) for v in card.reference.confidence_histogram)
    training = tuple(int(v) for v in card.dataset.class_counts)
    reference_accuracy = card.test.after_temperature.accuracy.value
    psi = population_stability_index(np.asarray(reference), hist)
    shift = total_variation(np.asarray(training), class_counts)
    drop = reference_accuracy - mean_confidence
    size, level = null_size(n), thresholds.noise_level
    checks = (
        _check("confidence_psi", psi, thresholds.psi_warning, thresholds.psi_critical,
               lambda: _psi_noise(reference, size, level, seed)),
        _check("estimated_accuracy_drop", drop, thresholds.accuracy_drop_warning, thresholds.accuracy_drop_critical,
               lambda: _estimated_drop_noise(reference, bin_confidence, size, level, seed + 2)),
        _check("class_shift", shift, thresholds.class_shift_warning, thresholds.class_shift_critical,
               lambda: _tv_noise(training, size, level, seed + 1)),
    )  # fmt: skip
    return psi, shift, drop, checks


def _check(
    code: str,
    value: float,
    warning: float,
    critical: float,
    noise: Callable[[], SamplingNoise],
    noise_bound: float | None = None,
) -> BucketCheck:
    """Graded like the live check: a value within its warning threshold is ok without a gate; above it, the
    gate (``noise``, called only then: simulating it is the expensive part) decides whether it is noise,
    unless the value is above ``noise_bound``, a bound on the gate's quantile, and so cannot be noise."""
    if not value > warning:
        return BucketCheck(code, "ok", value, warning, None, f"{value:.3f} is within the warning threshold {warning:g}")
    if noise_bound is not None and value > noise_bound:
        status: Status = "critical" if value > critical else "warning"
        threshold = critical if value > critical else warning
        message = f"{value:.3f} is above the {status} threshold {threshold:g} and above {noise_bound:.3f}, a bound on "
        return BucketCheck(code, status, value, threshold, noise_bound, message + "its sampling noise")
    gate = noise()
    status, threshold, verdict = _drift_grade(value, warning, critical, gate)
    return BucketCheck(code, status, value, threshold, gate.upper, f"{value:.3f} {verdict}")


@dataclass(frozen=True, slots=True)
class History:
    """A model's history over ``[since, until)``: the buckets, and where the label-free counts came from."""

    model: str
    version: str | None
    since: float
    until: float
    bucket_seconds: float
    source: str  # "rollup" (whole-hour buckets) or "rows"
    buckets: list[HistoryBucket]


def aligned_range(since: float, until: float, bucket_seconds: float) -> tuple[float, float]:
    """``since`` down and ``until`` up to whole buckets of UTC time (a day's buckets start at midnight, an
    hour's on the hour), so that buckets read the same on every refresh and hourly ones read the rollup."""
    start = float(np.floor(since / bucket_seconds) * bucket_seconds)
    end = float(np.ceil(until / bucket_seconds) * bucket_seconds)
    return start, max(end, start + bucket_seconds)


def calibration_history(
    log: HistorySource,
    card: CalibrationCard,
    version: str | None,
    since: float,
    until: float,
    bucket_seconds: float,
    thresholds: LiveThresholds,
    cache: LabelledCache | None = None,
) -> History:
    """The history of ``card``'s model from the prediction log, every bucket judged against ``card``."""
    since, until = aligned_range(since, until, bucket_seconds)
    query = history_query(card, card.name, version, since, until, bucket_seconds)
    buckets = buckets_from_counts(card, query, log.history_counts(query), thresholds, cache)
    source = "rollup" if query.reads_rollup else "rows"
    return History(card.name, version, since, until, bucket_seconds, source, buckets)
