"""Calibration metrics for classifiers, in pure numpy.

Conventions shared by every function here:

* ``probs`` is a float array of shape ``[N, K]`` whose rows are probability vectors (sum to 1).
* ``labels`` is an integer array of shape ``[N]`` with values in ``[0, K)``.
* The top-label *confidence* is the row maximum and the *prediction* is ``np.argmax`` (first maximum
  on ties).
* Equal-width bins have edges ``np.linspace(0, 1, n_bins + 1)`` and are half-open ``[lo, hi)``, except
  that a value of exactly 1.0 belongs to the last bin.  (torchmetrics puts exactly-1.0 confidences in
  an extra bin of their own; saturated models produce many of them, so we keep them in the last bin.)

Everything is vectorised with ``np.bincount``; there are no Python loops over samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CalibrationSummary",
    "Interval",
    "MetricEstimate",
    "NoiseFloor",
    "ReliabilityBin",
    "SelectiveRow",
    "accuracy",
    "adaptive_ece",
    "bin_indices",
    "bootstrap_interval",
    "brier",
    "classwise_ece",
    "confidence_histogram",
    "ece",
    "ece_from_confidences",
    "ece_noise_floor",
    "mce",
    "nll",
    "reliability_bins",
    "selective_prediction_table",
    "summarize",
    "validate_confidences",
    "validate_labels",
    "validate_probs",
    "validate_probs_labels",
]

DEFAULT_N_BINS = 15
DEFAULT_SELECTIVE_THRESHOLDS: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)

# Row sums may be off by float32 rounding (or a softmax computed in float16); anything further off is
# not a probability vector and the metrics would be meaningless.
_ROW_SUM_ATOL = 1e-3
# Tolerance on the [0, 1] range, for probabilities produced by exp(log_softmax) in float32.
_RANGE_ATOL = 1e-6
# Bootstrap / simulation matrices are processed in chunks of at most this many elements to bound memory.
_CHUNK_ELEMENTS = 1 << 21


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def validate_probs(probs: NDArray[np.floating[Any]], name: str = "probs") -> NDArray[np.float64]:
    """Check that ``probs`` is a ``[N, K]`` matrix of probability rows (N > 0, K >= 2); return float64.

    Raises ``ValueError`` on a wrong shape, non-finite values, values outside [0, 1] or rows that do
    not sum to 1 (within 1e-3), because every metric here silently gives nonsense on such input.
    """
    arr = np.asarray(probs)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [N, K], got ndim={arr.ndim} (shape {arr.shape})")
    n, k = arr.shape
    if n == 0:
        raise ValueError(f"{name} is empty: need at least one sample (N > 0)")
    if k < 2:
        raise ValueError(f"{name} must have at least 2 classes (K >= 2), got K={k}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if arr.min() < -_RANGE_ATOL or arr.max() > 1.0 + _RANGE_ATOL:
        raise ValueError(f"{name} must lie in [0, 1], got range [{arr.min():.6g}, {arr.max():.6g}]")
    row_sums = arr.sum(axis=1)
    worst = float(np.max(np.abs(row_sums - 1.0)))
    if worst > _ROW_SUM_ATOL:
        raise ValueError(f"{name} rows must sum to 1 (probabilities, not logits); worst row is off by {worst:.3g}")
    return arr


def validate_labels(labels: NDArray[np.integer[Any]], n_classes: int, n_samples: int | None = None) -> NDArray[np.intp]:
    """Check that ``labels`` is a 1-D integer array with values in ``[0, n_classes)``; return intp.

    ``n_samples`` (when given) is the required length, i.e. the N of the matching ``probs``.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must have shape [N], got ndim={arr.ndim} (shape {arr.shape})")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError("labels is empty: need at least one sample (N > 0)")
    if n_samples is not None and arr.shape[0] != n_samples:
        raise ValueError(f"labels has length {arr.shape[0]} but there are {n_samples} rows of scores")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes}), got values in [{lo}, {hi}]")
    return arr.astype(np.intp, copy=False)


def validate_probs_labels(
    probs: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]]
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """Validate a ``probs`` [N, K] / ``labels`` [N] pair (see :func:`validate_probs`)."""
    p = validate_probs(probs)
    y = validate_labels(labels, n_classes=p.shape[1], n_samples=p.shape[0])
    return p, y


def validate_confidences(
    confidences: NDArray[np.floating[Any]], allow_empty: bool = False, name: str = "confidences"
) -> NDArray[np.float64]:
    """Check that ``confidences`` is a 1-D array of finite values in [0, 1]; return float64."""
    arr = np.asarray(confidences)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape [N], got ndim={arr.ndim} (shape {arr.shape})")
    if arr.size == 0:
        if allow_empty:
            return arr
        raise ValueError(f"{name} is empty: need at least one value (N > 0)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if arr.min() < -_RANGE_ATOL or arr.max() > 1.0 + _RANGE_ATOL:
        raise ValueError(f"{name} must lie in [0, 1], got range [{arr.min():.6g}, {arr.max():.6g}]")
    return arr


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def _check_level(level: float) -> None:
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _top_label(probs: NDArray[np.float64], labels: NDArray[np.intp]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Top-label confidence and correctness (as 0.0/1.0) per sample; ties go to the first max."""
    pred = np.argmax(probs, axis=1)
    conf = probs[np.arange(probs.shape[0]), pred]
    correct = (pred == labels).astype(np.float64)
    return conf, correct


# --------------------------------------------------------------------------------------------------
# Proper scoring rules and accuracy
# --------------------------------------------------------------------------------------------------


def accuracy(probs: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]]) -> float:
    """Top-1 accuracy: fraction of rows whose ``np.argmax`` (first max on ties) equals the label.

    Input: ``probs`` [N, K] probabilities, ``labels`` [N] ints.
    """
    p, y = validate_probs_labels(probs, labels)
    return float(np.mean(np.argmax(p, axis=1) == y))


def _nll_per_sample(p: NDArray[np.float64], y: NDArray[np.intp], eps: float) -> NDArray[np.float64]:
    p_true = p[np.arange(p.shape[0]), y]
    out: NDArray[np.float64] = -np.log(np.maximum(p_true, eps))
    return out


def nll(probs: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]], eps: float = 1e-12) -> float:
    """Mean negative log-likelihood ``mean(-log(max(p_true, eps)))`` in nats.

    Input: ``probs`` [N, K] probabilities (not logits), ``labels`` [N] ints.  NLL is the proper scoring
    rule that temperature scaling minimises (Guo et al. 2017, "On Calibration of Modern Neural
    Networks"); ``eps`` caps the loss of a confidently wrong zero probability at ``-log(eps)`` so a single
    sample cannot make it infinite.
    """
    if not (eps > 0.0):
        raise ValueError(f"eps must be > 0, got {eps!r}")
    p, y = validate_probs_labels(probs, labels)
    return float(np.mean(_nll_per_sample(p, y, eps)))


def _brier_per_sample(p: NDArray[np.float64], y: NDArray[np.intp]) -> NDArray[np.float64]:
    diff = p.copy()
    diff[np.arange(p.shape[0]), y] -= 1.0
    out: NDArray[np.float64] = np.sum(diff * diff, axis=1)
    return out


def brier(probs: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]]) -> float:
    """Multi-class Brier score: mean over samples of ``sum_k (p_k - onehot_k)^2``, range [0, 2].

    Input: ``probs`` [N, K] probabilities, ``labels`` [N] ints.  This is Brier's (1950) original
    multi-class definition (twice the binary ``brier_score_loss`` for K=2); unlike ECE it needs no
    binning, so it is a bias-free complement to the binned metrics.
    """
    p, y = validate_probs_labels(probs, labels)
    return float(np.mean(_brier_per_sample(p, y)))


# --------------------------------------------------------------------------------------------------
# Binning and binned calibration errors
# --------------------------------------------------------------------------------------------------


def bin_indices(values: NDArray[np.floating[Any]], n_bins: int) -> NDArray[np.intp]:
    """Equal-width bin index in ``[0, n_bins)`` for each value in [0, 1] (any shape).

    Edges are ``np.linspace(0, 1, n_bins + 1)``; bins are ``[lo, hi)`` so a value exactly on an inner
    edge goes to the upper bin, and 1.0 is clipped into the last bin rather than dropped (torchmetrics
    gives it an extra bin of its own).
    """
    _check_n_bins(n_bins)
    v = np.asarray(values, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, v, side="right") - 1
    out: NDArray[np.intp] = np.clip(idx, 0, n_bins - 1).astype(np.intp, copy=False)
    return out


def ece_from_confidences(
    confidences: NDArray[np.floating[Any]], correct: NDArray[Any], n_bins: int = DEFAULT_N_BINS
) -> float:
    """Top-label ECE from per-sample confidences [N] and correctness [N] (bool or 0/1).

    ``ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |sum_{i in b} (correct_i - conf_i)| / N``
    (Guo et al. 2017, eq. 3).  Split out from :func:`ece` so the noise-floor simulation can reuse it
    with simulated correctness.
    """
    conf = validate_confidences(confidences)
    corr = np.asarray(correct)
    if corr.shape != conf.shape:
        raise ValueError(f"correct must have shape {conf.shape}, got {corr.shape}")
    corr_f = corr.astype(np.float64)
    idx = bin_indices(conf, n_bins)
    gap = np.bincount(idx, weights=corr_f - conf, minlength=n_bins)
    return float(np.sum(np.abs(gap)) / conf.shape[0])


def ece(probs: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]], n_bins: int = DEFAULT_N_BINS) -> float:
    """Top-label expected calibration error with equal-width bins (Guo et al. 2017).

    Input: ``probs`` [N, K] probabilities, ``labels`` [N] ints.  ``sum_b (n_b/N) |acc_b - conf_b|`` over
    bins of the top-label confidence.  It is the standard headline number, but it is biased upwards at
    small N (see :func:`ece_noise_floor`) and depends on ``n_bins``.
    """
    _check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels)
    conf, correct = _top_label(p, y)
    return ece_from_confidences(conf, correct, n_bins)


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """One bar of a reliability diagram; ``mean_confidence``/``accuracy`` are None for empty bins."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


def reliability_bins(
    probs: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]], n_bins: int = DEFAULT_N_BINS
) -> list[ReliabilityBin]:
    """Per-bin count, mean top-label confidence and accuracy (the reliability diagram, Guo et al. 2017).

    Input: ``probs`` [N, K] probabilities, ``labels`` [N] ints.  Empty bins report None rather than 0
    so a plot cannot mistake "no data" for "always wrong".
    """
    _check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels)
    conf, correct = _top_label(p, y)
    idx = bin_indices(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out: list[ReliabilityBin] = []
    for b in range(n_bins):  # loop over bins, not samples
        c = int(counts[b])
        out.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                count=c,
                mean_confidence=float(sum_conf[b] / c) if c else None,
                accuracy=float(sum_acc[b] / c) if c else None,
            )
        )
    return out


def _equal_mass_groups(n: int, n_bins: int) -> NDArray[np.intp]:
    """Group id of each sorted position when ``n`` positions are split like ``np.array_split``."""
    base, extra = divmod(n, n_bins)
    sizes = np.full(n_bins, base, dtype=np.intp)
    sizes[:extra] += 1
    out: NDArray[np.intp] = np.repeat(np.arange(n_bins, dtype=np.intp), sizes)
    return out


def adaptive_ece(
    probs: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]], n_bins: int = DEFAULT_N_BINS
) -> float:
    """Top-label ECE with equal-mass (adaptive) bins (Nixon et al. 2019, "Measuring Calibration in Deep
    Learning").

    Input: ``probs`` [N, K] probabilities, ``labels`` [N] ints.  Confidences are sorted (stable
    ``np.argsort``) and the sorted order is cut into ``n_bins`` groups exactly as ``np.array_split`` does
    (the first ``N % n_bins`` groups get one extra sample).  Equal mass keeps every bin populated, which
    matters for accurate models whose confidences pile up near 1.  Because the cut is by position, tied
    confidences may straddle two groups (their order is then the input order); when N < n_bins the
    empty groups contribute nothing.
    """
    _check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels)
    conf, correct = _top_label(p, y)
    order = np.argsort(conf, kind="stable")
    groups = _equal_mass_groups(conf.shape[0], n_bins)
    gap = np.bincount(groups, weights=correct[order] - conf[order], minlength=n_bins)
    return float(np.sum(np.abs(gap)) / conf.shape[0])


def _classwise_design(
    p: NDArray[np.float64], y: NDArray[np.intp], n_bins: int
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Flat (class, bin) index [N, K] and residual ``1[y=k] - p_k`` [N, K] for classwise ECE."""
    n, k = p.shape
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    flat = np.arange(k, dtype=np.intp)[None, :] * n_bins + bin_indices(p, n_bins)
    return flat, onehot - p


def classwise_ece(
    probs: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]], n_bins: int = DEFAULT_N_BINS
) -> float:
    """Classwise ECE (Kull et al. 2019; "static calibration error" in Nixon et al. 2019).

    Input: ``probs`` [N, K] probabilities, ``labels`` [N] ints.  For every class k, all N samples are
    binned by ``p_k`` (equal-width bins) and ``sum_b (n_bk/N) |mean(1[y=k]) - mean(p_k)|`` is computed;
    the result is the mean over the K classes.  Unlike top-label ECE it also checks the probabilities
    of non-predicted classes, which the service exposes in full.
    """
    _check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels)
    n, k = p.shape
    flat, resid = _classwise_design(p, y, n_bins)
    gap = np.bincount(flat.ravel(), weights=resid.ravel(), minlength=k * n_bins)
    return float(np.sum(np.abs(gap)) / (n * k))


def mce(
    probs: NDArray[np.floating[Any]],
    labels: NDArray[np.integer[Any]],
    n_bins: int = DEFAULT_N_BINS,
    min_count: int = 10,
) -> float | None:
    """Maximum calibration error ``max_b |acc_b - conf_b|`` over bins with at least ``min_count`` samples.

    Input: ``probs`` [N, K] probabilities, ``labels`` [N] ints.  Guo et al. 2017 (eq. 5).  A bin with
    one or two samples has a gap of roughly 0.5 by chance alone, so such bins are excluded; returns None
    when no bin has ``min_count`` samples.
    """
    _check_n_bins(n_bins)
    _check_positive_int(min_count, "min_count")
    p, y = validate_probs_labels(probs, labels)
    conf, correct = _top_label(p, y)
    idx = bin_indices(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    gap = np.bincount(idx, weights=correct - conf, minlength=n_bins)
    ok = counts >= min_count
    if not np.any(ok):
        return None
    return float(np.max(np.abs(gap[ok]) / counts[ok]))


# --------------------------------------------------------------------------------------------------
# Uncertainty of the metrics: bootstrap and noise floor
# --------------------------------------------------------------------------------------------------


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
    _check_positive_int(n_boot, "n_boot")
    _check_level(level)
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
    _check_n_bins(n_bins)
    _check_positive_int(n_sim, "n_sim")
    _check_level(level)
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
    _check_n_bins(n_bins)
    _check_positive_int(n_boot, "n_boot")
    _check_positive_int(mce_min_count, "mce_min_count")
    _check_level(level)
    p, y = validate_probs_labels(probs, labels)
    n, k = p.shape
    conf, correct = _top_label(p, y)
    rows_n = np.arange(n)

    # Per-sample quantities and "design" matrices: every metric except adaptive ECE is linear in the
    # resample counts (binned ones inside an abs per bin).
    nll_i = _nll_per_sample(p, y, 1e-12)
    brier_i = _brier_per_sample(p, y)
    linear = np.stack([correct, nll_i, brier_i], axis=1)  # [N, 3]
    top_design = np.zeros((n, n_bins), dtype=np.float64)
    top_design[rows_n, bin_indices(conf, n_bins)] = correct - conf
    cw_flat, cw_resid = _classwise_design(p, y, n_bins)
    cw_design = np.zeros((n, k * n_bins), dtype=np.float64)
    cw_design[rows_n[:, None], cw_flat] = cw_resid
    groups = _equal_mass_groups(n, n_bins)
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


# --------------------------------------------------------------------------------------------------
# Selective prediction and drift reference
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SelectiveRow:
    """Coverage and accuracy when only predictions with confidence >= ``threshold`` are kept."""

    threshold: float
    coverage: float
    accuracy: float | None
    n: int


def selective_prediction_table(
    probs: NDArray[np.floating[Any]],
    labels: NDArray[np.integer[Any]],
    thresholds: Sequence[float] = DEFAULT_SELECTIVE_THRESHOLDS,
) -> tuple[SelectiveRow, ...]:
    """Accuracy/coverage trade-off of abstaining below a confidence threshold.

    Input: ``probs`` [N, K] probabilities, ``labels`` [N] ints, thresholds in [0, 1].  Row ``t`` keeps
    samples whose top-label confidence is ``>= t``: coverage is the kept fraction, accuracy is on the
    kept samples (None when nothing is kept) and ``n`` the kept count.  If the model is calibrated,
    accuracy rises with the threshold, which is what makes "abstain when unsure" worth offering.
    """
    p, y = validate_probs_labels(probs, labels)
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim != 1 or thr.size == 0:
        raise ValueError("thresholds must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(thr)) or thr.min() < 0.0 or thr.max() > 1.0:
        raise ValueError(f"thresholds must lie in [0, 1], got {thresholds!r}")
    conf, correct = _top_label(p, y)
    kept = conf[None, :] >= thr[:, None]  # [T, N]
    n_kept = kept.sum(axis=1)
    n_correct = (kept * correct[None, :]).sum(axis=1)
    n = conf.shape[0]
    return tuple(
        SelectiveRow(
            threshold=float(t),
            coverage=float(c / n),
            accuracy=float(nc / c) if c else None,
            n=int(c),
        )
        for t, c, nc in zip(thr, n_kept, n_correct, strict=True)
    )


def confidence_histogram(confidences: NDArray[np.floating[Any]], n_bins: int = DEFAULT_N_BINS) -> list[int]:
    """Counts of confidences [N] in [0, 1] per equal-width bin (same convention as :func:`bin_indices`).

    Stored at calibration time as the reference distribution for drift monitoring.  An empty input is
    allowed (all-zero counts) because a live monitoring window can be empty.
    """
    _check_n_bins(n_bins)
    conf = validate_confidences(confidences, allow_empty=True)
    counts = np.bincount(bin_indices(conf, n_bins), minlength=n_bins)
    return [int(c) for c in counts]
