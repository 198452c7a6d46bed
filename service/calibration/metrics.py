"""Point calibration metrics for classifiers, in pure numpy.

Their uncertainty (bootstrap intervals, the noise floor, the card's summary) is in ``uncertainty.py``, input
checks in ``validation.py`` and the card's reference statistics in ``reference.py``.

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

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.calibration.validation import check_n_bins, check_positive_int, validate_confidences, validate_probs_labels

__all__ = [
    "DEFAULT_N_BINS",
    "ReliabilityBin",
    "accuracy",
    "adaptive_ece",
    "bin_indices",
    "brier",
    "brier_per_sample",
    "classwise_design",
    "classwise_ece",
    "ece",
    "ece_from_confidences",
    "equal_mass_groups",
    "mce",
    "nll",
    "nll_per_sample",
    "reliability_bins",
    "top_label",
]

DEFAULT_N_BINS = 15


def top_label(probs: NDArray[np.float64], labels: NDArray[np.intp]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
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


def nll_per_sample(p: NDArray[np.float64], y: NDArray[np.intp], eps: float) -> NDArray[np.float64]:
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
    return float(np.mean(nll_per_sample(p, y, eps)))


def brier_per_sample(p: NDArray[np.float64], y: NDArray[np.intp]) -> NDArray[np.float64]:
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
    return float(np.mean(brier_per_sample(p, y)))


# --------------------------------------------------------------------------------------------------
# Binning and binned calibration errors
# --------------------------------------------------------------------------------------------------


def bin_indices(values: NDArray[np.floating[Any]], n_bins: int) -> NDArray[np.intp]:
    """Equal-width bin index in ``[0, n_bins)`` for each value in [0, 1] (any shape).

    Edges are ``np.linspace(0, 1, n_bins + 1)``; bins are ``[lo, hi)`` so a value exactly on an inner
    edge goes to the upper bin, and 1.0 is clipped into the last bin rather than dropped (torchmetrics
    gives it an extra bin of its own).
    """
    check_n_bins(n_bins)
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
    check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels)
    conf, correct = top_label(p, y)
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
    check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels)
    conf, correct = top_label(p, y)
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


def equal_mass_groups(n: int, n_bins: int) -> NDArray[np.intp]:
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
    check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels)
    conf, correct = top_label(p, y)
    order = np.argsort(conf, kind="stable")
    groups = equal_mass_groups(conf.shape[0], n_bins)
    gap = np.bincount(groups, weights=correct[order] - conf[order], minlength=n_bins)
    return float(np.sum(np.abs(gap)) / conf.shape[0])


def classwise_design(
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
    check_n_bins(n_bins)
    p, y = validate_probs_labels(probs, labels)
    n, k = p.shape
    flat, resid = classwise_design(p, y, n_bins)
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
    check_n_bins(n_bins)
    check_positive_int(min_count, "min_count")
    p, y = validate_probs_labels(probs, labels)
    conf, correct = top_label(p, y)
    idx = bin_indices(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    gap = np.bincount(idx, weights=correct - conf, minlength=n_bins)
    ok = counts >= min_count
    if not np.any(ok):
        return None
    return float(np.max(np.abs(gap[ok]) / counts[ok]))
