"""How sure the calibration figures are: bootstrap intervals, the ECE noise floor, and the card's summary.

A metric on a few hundred samples is a noisy estimate; the card and the live checks state each one with an
interval and say what a perfectly calibrated model would show at the same n, so that a reader can tell a
real calibration error from sampling noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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
    "MetricEstimate",
    "NoiseFloor",
    "bootstrap_interval",
    "ece_noise_floor",
    "summarize",
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


def _percentile_interval(stats: NDArray[np.float64], level: float) -> Interval:
    alpha = 1.0 - level
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(lower=float(lo), upper=float(hi), level=level)


def bootstrap_interval(
    metric: Callable[[NDArray[np.float64], NDArray[np.intp]], float],
    probs: NDArray[np.floating[Any]],
    labels: NDArray[np.integer[Any]],
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval (Efron & Tibshirani 1993) of ``metric(probs, labels)``.

    Input: ``probs`` [N, K] probabilities, ``labels`` [N] ints.  Rows are resampled with replacement
    (``np.random.default_rng(seed)``), so the result is deterministic for a seed.  Calls ``metric`` once
    per resample (a loop over replicates, not samples); :func:`summarize` uses the same resamples but a
    vectorised path.  Note that binned metrics such as ECE are biased upwards on resamples, so their
    interval may sit slightly above the point estimate for well-calibrated models.
    """
    check_positive_int(n_boot, "n_boot")
    check_level(level)
    p, y = validate_probs_labels(probs, labels)
    stats = np.empty(n_boot, dtype=np.float64)
    pos = 0
    for chunk in _bootstrap_index_chunks(p.shape[0], n_boot, seed):
        for row in chunk:
            stats[pos] = float(metric(p[row], y[row]))
            pos += 1
    return _percentile_interval(stats, level)


@dataclass(frozen=True, slots=True)
class NoiseFloor:
    """ECE that a perfectly calibrated model with the same confidences shows by chance at this ``n``."""

    mean: float
    upper: float
    level: float
    n: int


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
    n = conf.shape[0]
    conf_c = np.clip(conf, 0.0, 1.0)
    idx = bin_indices(conf_c, n_bins)
    design = np.zeros((n, n_bins), dtype=np.float64)
    design[np.arange(n), idx] = 1.0
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
    return NoiseFloor(mean=float(np.mean(sims)), upper=float(np.quantile(sims, level)), level=level, n=n)


# --------------------------------------------------------------------------------------------------
# Summary card
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricEstimate:
    """Point estimate with a bootstrap interval [lower, upper] over ``n`` samples."""

    value: float
    lower: float
    upper: float
    n: int


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
    """All calibration metrics with percentile-bootstrap intervals, for ``probs`` [N, K] / ``labels`` [N].

    Accuracy, NLL, Brier, ECE, adaptive ECE and classwise ECE are bootstrapped on the *same* resamples
    as :func:`bootstrap_interval` with this seed (so the intervals agree with it).  The linear metrics
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
        offsets = (np.arange(r, dtype=np.intp) * n)[:, None]
        w = np.bincount((idx + offsets).ravel(), minlength=r * n).reshape(r, n).astype(np.float64)
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
    estimates = []
    for j, value in enumerate(points):
        iv = _percentile_interval(stats[:, j], level)
        estimates.append(MetricEstimate(value=value, lower=iv.lower, upper=iv.upper, n=n))

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
        ece_noise_floor=ece_noise_floor(conf, n_bins=n_bins, n_sim=n_boot, level=level, seed=seed),
        mean_confidence=float(np.mean(conf)),
        reliability=tuple(reliability_bins(p, y, n_bins)),
    )
