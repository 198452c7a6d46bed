"""How sure the calibration figures are: bootstrap intervals, the ECE noise floor, and the card's summary.

A metric on a few hundred samples is a noisy estimate; the card and the live checks state each one with an
interval and say what a perfectly calibrated model would show at the same n, so that a reader can tell a
real calibration error from sampling noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.calibration.metrics import (
    DEFAULT_N_BINS,
    ReliabilityBin,
    adaptive_ece,
    bin_indices,
    brier_per_sample,
    classwise_design,
    classwise_ece,
    ece_from_confidences,
    equal_mass_groups,
    mce,
    nll_per_sample,
    reliability_bins,
    top_label,
)
from service.calibration.validation import (
    check_level,
    check_n_bins,
    check_positive_int,
    validate_confidences,
    validate_probs_labels,
)

__all__ = [
    "CalibrationSummary",
    "Interval",
    "IntervalMethod",
    "MetricEstimate",
    "NoiseFloor",
    "WindowSummary",
    "bootstrap_interval",
    "bootstrap_statistics",
    "calibration_error_interval",
    "ece_estimate",
    "ece_noise_floor",
    "summarize",
    "summarize_window",
]

# Bootstrap / simulation matrices are processed in chunks of at most this many elements to bound memory.
_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True, slots=True)
class Interval:
    """A two-sided interval with nominal coverage ``level``."""

    lower: float
    upper: float
    level: float


def _bootstrap_index_chunks(n: int, n_boot: int, seed: int) -> Iterator[NDArray[np.intp]]:
    """Yield bootstrap index matrices [rows, n] (rows sum to ``n_boot``) from one seeded generator.

    The chunking depends only on ``n`` and ``n_boot``, so every caller with the same seed sees the same
    resamples; chunking bounds memory for large N.
    """
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // n)
    done = 0
    while done < n_boot:
        r = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(r, n)).astype(np.intp, copy=False)
        done += r


def _resample_counts(idx: NDArray[np.intp]) -> NDArray[np.float64]:
    """How often each sample appears in each resample of ``idx`` [r, n]: the matrix [r, n] that turns a
    per-sample value into the resamples' sums (``W @ values``), so no metric is computed per resample."""
    r, n = idx.shape
    offsets = (np.arange(r, dtype=np.intp) * n)[:, None]
    out: NDArray[np.float64] = np.bincount((idx + offsets).ravel(), minlength=r * n).reshape(r, n).astype(np.float64)
    return out


def _percentile_interval(stats: NDArray[np.float64], level: float) -> Interval:
    alpha = 1.0 - level
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(lower=float(lo), upper=float(hi), level=level)


def bootstrap_statistics(
    metric: Callable[[NDArray[np.float64], NDArray[np.intp]], float],
    probs: NDArray[np.floating[Any]],
    labels: NDArray[np.integer[Any]],
    n_boot: int = 1000,
    seed: int = 0,
) -> NDArray[np.float64]:
    """``metric`` on ``n_boot`` resamples of the rows (with replacement, ``np.random.default_rng(seed)``).

    Calls ``metric`` once per resample (a loop over replicates, not samples); :func:`summarize` draws the
    same resamples for the same seed but takes a vectorised path, and the tests compare the two.
    """
    check_positive_int(n_boot, "n_boot")
    p, y = validate_probs_labels(probs, labels)
    stats = np.empty(n_boot, dtype=np.float64)
    pos = 0
    for chunk in _bootstrap_index_chunks(p.shape[0], n_boot, seed):
        for row in chunk:
            stats[pos] = float(metric(p[row], y[row]))
            pos += 1
    return stats


def bootstrap_interval(
    metric: Callable[[NDArray[np.float64], NDArray[np.intp]], float],
    probs: NDArray[np.floating[Any]],
    labels: NDArray[np.integer[Any]],
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval (Efron & Tibshirani 1993) of ``metric(probs, labels)``.

    Input: ``probs`` [N, K] probabilities, ``labels`` [N] ints; deterministic for a seed. Right for means
    of per-sample values (accuracy, NLL, Brier); wrong for binned calibration errors, which are biased
    upwards (see :func:`calibration_error_interval`).
    """
    check_level(level)
    return _percentile_interval(bootstrap_statistics(metric, probs, labels, n_boot, seed), level)


@dataclass(frozen=True, slots=True)
class NoiseFloor:
    """ECE that a perfectly calibrated model with the same confidences shows by chance at this ``n``."""

    mean: float
    upper: float
    level: float
    n: int


def _ece_null(
    confidences: NDArray[np.float64], n_bins: int, n_sim: int, seed: int, adaptive: bool = False
) -> NDArray[np.float64]:
    """Top-label ECE (equal-width, or equal-mass with ``adaptive``) of ``n_sim`` perfectly calibrated samples
    with these confidences: ``correct_i ~ Bernoulli(confidence_i)``, vectorised."""
    n = confidences.shape[0]
    conf_c = np.clip(confidences, 0.0, 1.0)
    if adaptive:
        groups = np.empty(n, dtype=np.intp)
        groups[np.argsort(conf_c, kind="stable")] = equal_mass_groups(n, n_bins)
    else:
        groups = bin_indices(conf_c, n_bins)
    design = np.zeros((n, n_bins), dtype=np.float64)
    design[np.arange(n), groups] = 1.0
    rng = np.random.default_rng(seed)
    sims = np.empty(n_sim, dtype=np.float64)
    rows = max(1, _CHUNK_ELEMENTS // n)
    done = 0
    while done < n_sim:
        r = min(rows, n_sim - done)
        correct = (rng.random((r, n)) < conf_c).astype(np.float64)
        gap = (correct - conf_c) @ design  # [r, n_bins]: per-bin sum of (correct - conf)
        sims[done : done + r] = np.sum(np.abs(gap), axis=1) / n
        done += r
    return sims


def _classwise_null(probs: NDArray[np.float64], n_bins: int, n_sim: int, seed: int) -> NDArray[np.float64]:
    """Classwise ECE of ``n_sim`` perfectly calibrated samples: labels drawn from each row's probabilities."""
    n, k = probs.shape
    flat = np.arange(k, dtype=np.intp)[None, :] * n_bins + bin_indices(probs, n_bins)  # [n, k]
    cumulative = np.cumsum(probs, axis=1)
    rng = np.random.default_rng(seed)
    sims = np.empty(n_sim, dtype=np.float64)
    rows = max(1, _CHUNK_ELEMENTS // (n * k))
    done = 0
    while done < n_sim:
        r = min(rows, n_sim - done)
        u = rng.random((r, n, 1))
        labels = np.minimum((u > cumulative[None, :, :]).sum(axis=2), k - 1)  # [r, n]
        resid = -np.broadcast_to(probs, (r, n, k)).copy()
        np.put_along_axis(resid, labels[:, :, None], np.take_along_axis(resid, labels[:, :, None], axis=2) + 1.0, 2)
        offsets = (np.arange(r, dtype=np.intp) * k * n_bins)[:, None, None]
        gap = np.bincount((flat[None, :, :] + offsets).ravel(), weights=resid.ravel(), minlength=r * k * n_bins)
        sims[done : done + r] = np.sum(np.abs(gap.reshape(r, k * n_bins)), axis=1) / (n * k)
        done += r
    return sims


def ece_noise_floor(
    confidences: NDArray[np.floating[Any]],
    n_bins: int = DEFAULT_N_BINS,
    n_sim: int = 1000,
    level: float = 0.9,
    seed: int = 0,
) -> NoiseFloor:
    """Distribution of top-label ECE under perfect calibration, for these confidences [N] in [0, 1].

    Simulates ``correct_i ~ Bernoulli(confidence_i)`` ``n_sim`` times (vectorised) and computes the ECE of
    each simulation (same bins as :func:`ece`).  Binned ECE is positive even for a perfectly calibrated
    model because bin accuracies are noisy (Nixon et al. 2019 discuss this bias); an observed ECE below
    ``upper`` (the ``level`` quantile) is indistinguishable from noise at this sample size.
    """
    check_n_bins(n_bins)
    check_positive_int(n_sim, "n_sim")
    check_level(level)
    conf = validate_confidences(confidences)
    sims = _ece_null(conf, n_bins, n_sim, seed)
    return NoiseFloor(mean=float(np.mean(sims)), upper=float(np.quantile(sims, level)), level=level, n=conf.shape[0])


def calibration_error_interval(
    point: float, bootstrap: NDArray[np.float64], null: NDArray[np.float64], level: float
) -> Interval:
    """An interval for a binned calibration error (ECE, adaptive or classwise) with honest coverage.

    Why not the percentile bootstrap: ECE is biased upwards (every bin's |gap| is positive by chance), and a
    resample is biased once more, so percentile intervals sit above the truth. Their measured coverage of the
    true ECE was 0.00 for a perfectly calibrated model and 0.57-0.76 for miscalibrated ones (issue 12).

    What this is instead: the *basic* bootstrap interval ``[2θ - q_hi, 2θ - q_lo]`` (it reflects the
    resamples' bias back onto the estimate), clipped at 0; and its lower end is 0 whenever ``θ`` lies within
    the ``(1 + level) / 2`` quantile of ``null``, the same error for a perfectly calibrated model with these
    confidences, because such a model is then a plausible explanation of the data. So the interval may lie
    below the point estimate: it is an interval for the *true* error, and the point estimate overstates it.
    Measured coverage at nominal 0.90 (bench/ece_intervals.py, README): 0.93-0.96 for calibrated models,
    0.85-0.92 for true ECE >= 0.02; it falls short (about 0.8) only for models within ~0.01 of calibrated,
    observed on thousands of samples.
    """
    alpha = 1.0 - level
    q_lo, q_hi = np.quantile(bootstrap, [alpha / 2.0, 1.0 - alpha / 2.0])
    lower = max(0.0, 2.0 * point - float(q_hi))
    upper = max(0.0, 2.0 * point - float(q_lo))
    if point <= float(np.quantile(null, 1.0 - alpha / 2.0)):
        lower = 0.0
    return Interval(lower=lower, upper=upper, level=level)


IntervalMethod = Literal["percentile_bootstrap", "basic_bootstrap_noise_floor"]


@dataclass(frozen=True, slots=True)
class MetricEstimate:
    """Point estimate with an interval [lower, upper] over ``n`` samples, and how the interval was made.

    ``interval``: ``"percentile_bootstrap"`` for accuracy, NLL and Brier (means of per-sample values, where
    the percentile bootstrap is fine); ``"basic_bootstrap_noise_floor"`` for the binned calibration errors
    (:func:`calibration_error_interval`). Cards written before the field existed used the percentile
    bootstrap for every metric, hence the default.
    """

    value: float
    lower: float
    upper: float
    n: int
    interval: IntervalMethod = "percentile_bootstrap"


def _accuracy_and_ece(
    conf: NDArray[np.float64], correct: NDArray[np.float64], n_bins: int, n_boot: int, level: float, seed: int
) -> tuple[MetricEstimate, MetricEstimate, NDArray[np.float64]]:
    """Accuracy (percentile) and top-label ECE (:func:`calibration_error_interval`) on the resamples
    :func:`summarize` draws for this seed, and the ECE null (which is also the noise floor's simulation)."""
    n = conf.shape[0]
    design = np.zeros((n, n_bins), dtype=np.float64)
    design[np.arange(n), bin_indices(conf, n_bins)] = correct - conf
    accuracy = np.empty(n_boot, dtype=np.float64)
    ece = np.empty(n_boot, dtype=np.float64)
    pos = 0
    for idx in _bootstrap_index_chunks(n, n_boot, seed):
        r = idx.shape[0]
        w = _resample_counts(idx)
        accuracy[pos : pos + r] = (w @ correct) / n
        ece[pos : pos + r] = np.sum(np.abs(w @ design), axis=1) / n
        pos += r
    null = _ece_null(conf, n_bins, n_boot, seed)
    acc = _percentile_interval(accuracy, level)
    value = float(np.sum(np.abs(design.sum(axis=0))) / n)
    iv = calibration_error_interval(value, ece, null, level)
    return (
        MetricEstimate(float(np.mean(correct)), acc.lower, acc.upper, n),
        MetricEstimate(value, iv.lower, iv.upper, n, interval="basic_bootstrap_noise_floor"),
        null,
    )


def ece_estimate(
    confidences: NDArray[np.floating[Any]],
    correct: NDArray[Any],
    n_bins: int = DEFAULT_N_BINS,
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
) -> MetricEstimate:
    """Top-label ECE with the interval of :func:`calibration_error_interval`, from confidences [N] and
    correctness [N]: the same figure as :func:`summarize`'s ``ece`` for the same seed, without the other
    metrics (bench/ece_intervals.py measures its coverage with it)."""
    check_n_bins(n_bins)
    check_positive_int(n_boot, "n_boot")
    check_level(level)
    conf = validate_confidences(confidences)
    corr = np.asarray(correct)
    if corr.shape != conf.shape:
        raise ValueError(f"correct must have shape {conf.shape}, got {corr.shape}")
    return _accuracy_and_ece(conf, corr.astype(np.float64), n_bins, n_boot, level, seed)[1]


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """What a live window's label checks read: :func:`summarize`'s figures for accuracy, ECE (with the noise
    floor), NLL, Brier, mean confidence and the reliability bins, without the rest."""

    accuracy: MetricEstimate
    ece: MetricEstimate
    ece_noise_floor: NoiseFloor
    nll: float
    brier: float
    mean_confidence: float
    reliability: tuple[ReliabilityBin, ...]


def summarize_window(
    probs: NDArray[np.floating[Any]],
    labels: NDArray[np.integer[Any]],
    n_bins: int = DEFAULT_N_BINS,
    n_boot: int = 200,
    level: float = 0.9,
    seed: int = 0,
) -> WindowSummary:
    """The labelled live window's figures, equal to :func:`summarize`'s for the same seed.

    Why not :func:`summarize`: it also bootstraps NLL, Brier, adaptive and classwise ECE and simulates their
    nulls, which the card shows and the live checks do not; at 500 labels that was most of its 90 ms, spent on
    every ``/health/calibration`` call and every ``/metrics`` scrape.
    """
    check_n_bins(n_bins)
    check_positive_int(n_boot, "n_boot")
    check_level(level)
    p, y = validate_probs_labels(probs, labels)
    conf, correct = top_label(p, y)
    accuracy, ece, null = _accuracy_and_ece(conf, correct, n_bins, n_boot, level, seed)
    return WindowSummary(
        accuracy=accuracy,
        ece=ece,
        ece_noise_floor=NoiseFloor(
            mean=float(np.mean(null)), upper=float(np.quantile(null, level)), level=level, n=conf.shape[0]
        ),
        nll=float(np.mean(nll_per_sample(p, y, 1e-12))),
        brier=float(np.mean(brier_per_sample(p, y))),
        mean_confidence=float(np.mean(conf)),
        reliability=tuple(reliability_bins(p, y, n_bins)),
    )


@dataclass(frozen=True, slots=True)
class CalibrationSummary:
    """Everything a calibration card needs, computed on one held-out set."""

    accuracy: MetricEstimate
    nll: MetricEstimate
    brier: MetricEstimate
    ece: MetricEstimate
    adaptive_ece: MetricEstimate
    classwise_ece: MetricEstimate
    mce: float | None
    mce_min_count: int
    n_bins: int
    ece_noise_floor: NoiseFloor
    mean_confidence: float
    reliability: tuple[ReliabilityBin, ...]


def summarize(
    probs: NDArray[np.floating[Any]],
    labels: NDArray[np.integer[Any]],
    n_bins: int = DEFAULT_N_BINS,
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    mce_min_count: int = 10,
) -> CalibrationSummary:
    """All calibration metrics with intervals, for ``probs`` [N, K] / ``labels`` [N].

    Accuracy, NLL, Brier, ECE, adaptive ECE and classwise ECE are bootstrapped on the *same* resamples
    as :func:`bootstrap_interval` with this seed. Accuracy, NLL and Brier get percentile intervals (the
    same as :func:`bootstrap_interval`'s); the three calibration errors get
    :func:`calibration_error_interval`, against simulated nulls (``n_boot`` simulations each) of the same
    error for a perfectly calibrated model with these probabilities.  The linear metrics
    use a resample-count matrix ``W`` [n_boot, N] (``metric_b = W_b @ per_sample / N``; binned gaps are
    ``W @ design``), and adaptive ECE re-sorts every resample in one ``np.argsort(axis=1)``, so no metric
    function is called per resample.  The noise floor uses ``n_sim = n_boot``.
    """
    check_n_bins(n_bins)
    check_positive_int(n_boot, "n_boot")
    check_positive_int(mce_min_count, "mce_min_count")
    check_level(level)
    p, y = validate_probs_labels(probs, labels)
    n, k = p.shape
    conf, correct = top_label(p, y)
    rows_n = np.arange(n)

    # Per-sample quantities and "design" matrices: every metric except adaptive ECE is linear in the
    # resample counts (binned ones inside an abs per bin).
    nll_i = nll_per_sample(p, y, 1e-12)
    brier_i = brier_per_sample(p, y)
    linear = np.stack([correct, nll_i, brier_i], axis=1)  # [N, 3]
    top_design = np.zeros((n, n_bins), dtype=np.float64)
    top_design[rows_n, bin_indices(conf, n_bins)] = correct - conf
    cw_flat, cw_resid = classwise_design(p, y, n_bins)
    cw_design = np.zeros((n, k * n_bins), dtype=np.float64)
    cw_design[rows_n[:, None], cw_flat] = cw_resid
    groups = equal_mass_groups(n, n_bins)
    resid_top = correct - conf

    stats = np.empty((n_boot, 6), dtype=np.float64)
    pos = 0
    for idx in _bootstrap_index_chunks(n, n_boot, seed):
        r = idx.shape[0]
        w = _resample_counts(idx)
        block = stats[pos : pos + r]
        block[:, 0:3] = (w @ linear) / n
        block[:, 3] = np.sum(np.abs(w @ top_design), axis=1) / n
        # adaptive ECE: stable sort of each resample, then fixed equal-mass groups by position.
        res_conf = conf[idx]
        order = np.argsort(res_conf, axis=1, kind="stable")
        sorted_resid = np.take_along_axis(resid_top[idx], order, axis=1)
        flat = (np.arange(r, dtype=np.intp) * n_bins)[:, None] + groups[None, :]
        gap = np.bincount(flat.ravel(), weights=sorted_resid.ravel(), minlength=r * n_bins)
        block[:, 4] = np.sum(np.abs(gap.reshape(r, n_bins)), axis=1) / n
        block[:, 5] = np.sum(np.abs(w @ cw_design), axis=1) / (n * k)
        pos += r

    points = (
        float(np.mean(correct)),
        float(np.mean(nll_i)),
        float(np.mean(brier_i)),
        ece_from_confidences(conf, correct, n_bins),
        adaptive_ece(p, y, n_bins),
        classwise_ece(p, y, n_bins),
    )
    ece_null = _ece_null(conf, n_bins, n_boot, seed)  # also the noise floor below: the same simulation
    nulls = (
        ece_null,
        _ece_null(conf, n_bins, n_boot, seed + 1, adaptive=True),
        _classwise_null(p, n_bins, n_boot, seed + 2),
    )
    estimates = []
    for j, value in enumerate(points):
        if j < 3:
            iv = _percentile_interval(stats[:, j], level)
            estimates.append(MetricEstimate(value=value, lower=iv.lower, upper=iv.upper, n=n))
        else:
            iv = calibration_error_interval(value, stats[:, j], nulls[j - 3], level)
            estimates.append(MetricEstimate(value, iv.lower, iv.upper, n, interval="basic_bootstrap_noise_floor"))

    return CalibrationSummary(
        accuracy=estimates[0],
        nll=estimates[1],
        brier=estimates[2],
        ece=estimates[3],
        adaptive_ece=estimates[4],
        classwise_ece=estimates[5],
        mce=mce(p, y, n_bins, mce_min_count),
        mce_min_count=mce_min_count,
        n_bins=n_bins,
        ece_noise_floor=NoiseFloor(
            mean=float(np.mean(ece_null)), upper=float(np.quantile(ece_null, level)), level=level, n=n
        ),
        mean_confidence=float(np.mean(conf)),
        reliability=tuple(reliability_bins(p, y, n_bins)),
    )
