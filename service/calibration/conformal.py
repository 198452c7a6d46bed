"""Split conformal prediction sets with the LAC score, in pure numpy.

LAC ("least ambiguous set-valued classifier", Sadinle, Lei & Wasserman 2019; the first method in
Angelopoulos & Bates 2021, "A Gentle Introduction to Conformal Prediction and Distribution-Free
Uncertainty Quantification") scores a calibration sample by ``s = 1 - p_true``.  With the finite-sample
corrected quantile ``qhat`` of the scores, the set ``{k : p_k >= 1 - qhat}`` contains the true label with
probability at least ``coverage`` on exchangeable data, whatever the model and however badly calibrated
(calibration only makes the sets smaller).  The guarantee is marginal (on average over test points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.calibration.metrics import validate_labels, validate_probs, validate_probs_labels

__all__ = [
    "ConformalLevel",
    "empirical_coverage",
    "fit_conformal",
    "lac_threshold",
    "mean_set_size",
    "prediction_sets",
]

# (n + 1) * coverage is sometimes a hair above an integer in floating point (25 * 0.28 gives
# 7.000000000000001); without this slack ceil() would pick one order statistic too many.
_CEIL_SLACK = 1e-9


def _check_coverage(coverage: float) -> float:
    c = float(coverage)
    if not (0.0 < c < 1.0):
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    return c


def lac_threshold(probs_cal: NDArray[np.floating[Any]], labels_cal: NDArray[np.integer[Any]], coverage: float) -> float:
    """Probability threshold ``t`` such that ``{k : p_k >= t}`` has marginal coverage >= ``coverage``.

    Input: calibration ``probs_cal`` [n, K] probabilities and ``labels_cal`` [n] ints, held out from
    training.  Scores are ``s_i = 1 - p_{i, y_i}``; ``qhat`` is the ``ceil((n + 1) * coverage)``-th smallest
    score ``qhat``, i.e. the ``ceil((n + 1) * coverage) / n`` empirical quantile (Angelopoulos & Bates 2021,
    section 1); the ``+1`` is the finite-sample correction that makes the guarantee exact.  Returns
    ``1 - qhat``.  When ``ceil((n + 1) * coverage) > n`` the calibration set is too small for this level
    and 0.0 is returned (every class is in every set), the only choice that keeps the guarantee.

    We take the order statistic directly instead of ``np.quantile(..., method="higher")`` as printed in
    the Gentle Introduction's code: for ``k < n`` numpy's "higher" rule picks the ``(k+1)``-th smallest
    score, which is valid but needlessly conservative by one calibration point.
    """
    c = _check_coverage(coverage)
    p, y = validate_probs_labels(probs_cal, labels_cal)
    n = p.shape[0]
    p_true = p[np.arange(n), y]
    k = math.ceil((n + 1) * c - _CEIL_SLACK)
    if k > n:
        return 0.0
    # The k-th smallest score 1 - p_true is 1 - (the (n-k+1)-th smallest p_true); reading p_true directly
    # avoids the rounding of 1 - (1 - p), so the calibration point at the quantile stays inside its set.
    t = float(np.partition(p_true, n - k)[n - k])
    return min(max(t, 0.0), 1.0)


def prediction_sets(probs: NDArray[np.floating[Any]], threshold: float) -> NDArray[np.bool_]:
    """Boolean mask [N, K] of the LAC sets ``{k : p_k >= threshold}`` for ``probs`` [N, K].

    The top-1 class (``np.argmax``) is always included, so no set is empty: a service must return a
    prediction, and adding a class can only raise coverage, so the guarantee still holds.
    """
    p = validate_probs(probs)
    t = float(threshold)
    if not (0.0 <= t <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    mask: NDArray[np.bool_] = p >= t
    mask[np.arange(p.shape[0]), np.argmax(p, axis=1)] = True
    return mask


def _validate_mask(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise ValueError(f"mask must be a boolean array, got dtype {m.dtype}")
    if m.ndim != 2:
        raise ValueError(f"mask must have shape [N, K], got ndim={m.ndim} (shape {m.shape})")
    if m.shape[0] == 0:
        raise ValueError("mask is empty: need at least one sample (N > 0)")
    return m


def empirical_coverage(mask: NDArray[np.bool_], labels: NDArray[np.integer[Any]]) -> float:
    """Fraction of rows whose set (boolean ``mask`` [N, K]) contains the true label (``labels`` [N])."""
    m = _validate_mask(mask)
    y = validate_labels(labels, n_classes=m.shape[1], n_samples=m.shape[0])
    return float(np.mean(m[np.arange(m.shape[0]), y]))


def mean_set_size(mask: NDArray[np.bool_]) -> float:
    """Average number of classes per set for a boolean ``mask`` [N, K]; smaller is more informative."""
    m = _validate_mask(mask)
    return float(np.mean(np.sum(m, axis=1)))


@dataclass(frozen=True, slots=True)
class ConformalLevel:
    """LAC probability threshold for one target coverage, fitted on ``n_calibration`` samples."""

    coverage: float
    threshold: float
    n_calibration: int


def fit_conformal(
    probs_cal: NDArray[np.floating[Any]],
    labels_cal: NDArray[np.integer[Any]],
    coverages: Sequence[float] = (0.9, 0.95),
) -> tuple[ConformalLevel, ...]:
    """:func:`lac_threshold` for each target coverage on one calibration set (``probs_cal`` [n, K])."""
    if len(coverages) == 0:
        raise ValueError("coverages must not be empty")
    p, y = validate_probs_labels(probs_cal, labels_cal)
    return tuple(
        ConformalLevel(coverage=float(c), threshold=lac_threshold(p, y, c), n_calibration=p.shape[0]) for c in coverages
    )
