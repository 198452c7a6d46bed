"""Split conformal prediction sets with the LAC score, in pure numpy.

LAC ("least ambiguous set-valued classifier", Sadinle, Lei & Wasserman 2019; the first method in
Angelopoulos & Bates 2021, "A Gentle Introduction to Conformal Prediction and Distribution-Free
Uncertainty Quantification") scores a calibration sample by ``s = 1 - p_true``.  With the finite-sample
corrected quantile ``qhat`` of the scores, the set ``{k : p_k >= 1 - qhat}`` contains the true label with
probability at least ``coverage`` on exchangeable data, whatever the model and however badly calibrated
(calibration only makes the sets smaller).  The guarantee is marginal: the probability is over the draw
of both the test point and the calibration set.

It is also an average over calibration sets.  For the one calibration set a card was fitted on, the
long-run coverage of its threshold is itself random: with continuous scores it follows
``Beta(k, n + 1 - k)``, ``k = ceil((n + 1) * coverage)`` (Vovk 2012, "Conditional validity of inductive
conformal predictors", PMLR 25; Angelopoulos & Bates 2021, section 3.2 "conditional on the calibration
set").  At n = 360 and coverage 0.9 that is below 0.9 for 47% of cards, and its 5% quantile is 0.873.
:func:`coverage_given_card` gives those figures from (n, coverage) alone; :func:`pac_rank` and
:func:`lac_threshold_pac` give the training-conditional ("PAC") threshold, whose coverage is at least
``coverage`` for the card at hand with probability at least ``1 - delta`` over calibration sets (Vovk 2012,
Proposition 2a; Bates, Angelopoulos, Lei, Malik & Jordan 2021, "Distribution-free, risk-controlling
prediction sets", JACM 68(6), the binomial-tail bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.calibration.binomial import beta_cdf, beta_quantile
from service.calibration.validation import validate_labels, validate_probs, validate_probs_labels

__all__ = [
    "ConformalLevel",
    "CoverageGivenCard",
    "conformal_rank",
    "coverage_given_card",
    "empirical_coverage",
    "fit_conformal",
    "lac_threshold",
    "lac_threshold_pac",
    "mean_set_size",
    "pac_rank",
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
    p, y = validate_probs_labels(probs_cal, labels_cal)
    return _threshold_at_rank(p, y, conformal_rank(p.shape[0], coverage))


def _threshold_at_rank(p: NDArray[np.float64], y: NDArray[np.intp], k: int) -> float:
    """``1 -`` the k-th smallest LAC score of validated ``p`` [n, K], ``y`` [n]; 0.0 when ``k > n``."""
    n = p.shape[0]
    p_true = p[np.arange(n), y]
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


def conformal_rank(n: int, coverage: float) -> int:
    """Rank ``k = ceil((n + 1) * coverage)`` of the plain split-conformal score quantile (``k > n``: all classes)."""
    c = _check_coverage(coverage)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.ceil((n + 1) * c - _CEIL_SLACK)


def pac_rank(n: int, coverage: float, delta: float) -> int:
    """Smallest rank ``k`` with ``P(Beta(k, n + 1 - k) < coverage) <= delta``; ``n + 1`` when none is.

    The threshold at the k-th smallest of n calibration scores has, given that calibration set, coverage
    ``Beta(k, n + 1 - k)`` (continuous scores; ties only raise it), so this k makes coverage >= ``coverage``
    hold for the card at hand with probability >= ``1 - delta`` over calibration sets: the training-conditional
    guarantee of Vovk 2012 (Prop. 2a) and the binomial bound of Bates et al. 2021 (RCPS). ``n + 1`` means the
    calibration set is too small for (coverage, delta): every class goes in every set.
    """
    c = _check_coverage(coverage)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    # P(Beta(k, n+1-k) < c) = P(Binomial(n, c) >= k) grows with k: walk up from the plain rank.
    k = min(conformal_rank(n, c), n + 1)
    low, high = max(1, k - 1), n + 1  # the plain rank's failure probability is about 1/2 > delta in practice
    while low > 1 and beta_cdf(c, low, n + 1 - low) <= delta:
        low -= 1
    while low < high:  # smallest k in [low, high] with the tail <= delta (high = n + 1 always qualifies)
        middle = (low + high) // 2
        if beta_cdf(c, middle, n + 1 - middle) <= delta:
            high = middle
        else:
            low = middle + 1
    return low


def lac_threshold_pac(
    probs_cal: NDArray[np.floating[Any]], labels_cal: NDArray[np.integer[Any]], coverage: float, delta: float = 0.05
) -> float:
    """Like :func:`lac_threshold` but training-conditional: with probability >= ``1 - delta`` over calibration
    sets, this threshold's sets contain the true label at least ``coverage`` of the time (Vovk 2012; Bates et
    al. 2021). It takes the :func:`pac_rank`-th smallest score instead of the ``ceil((n + 1) * coverage)``-th,
    so the sets are a little larger; 0.0 (every class) when the calibration set is too small."""
    p, y = validate_probs_labels(probs_cal, labels_cal)
    return _threshold_at_rank(p, y, pac_rank(p.shape[0], coverage, delta))


@dataclass(frozen=True, slots=True)
class CoverageGivenCard:
    """What one fitted plain split-conformal threshold guarantees, given its calibration set.

    ``p_below_nominal`` is ``P(coverage < nominal | card)`` over calibration sets, ``quantile`` the
    ``quantile_level``-quantile of the coverage (with probability ``1 - quantile_level`` the card's coverage
    is at least this). Exact for continuous scores; ties only raise the coverage, so both are conservative.
    """

    coverage: float
    n_calibration: int
    rank: int
    p_below_nominal: float
    quantile_level: float
    quantile: float


def coverage_given_card(
    n: int, coverage: float, quantile_level: float = 0.05, rank: int | None = None
) -> CoverageGivenCard:
    """The distribution of the long-run coverage of a split-conformal threshold from ``n`` scores.

    Coverage given the calibration set is ``Beta(k, n + 1 - k)``, ``k = ceil((n + 1) * coverage)``
    (Vovk 2012; Angelopoulos & Bates 2021, section 3.2); its mean is ``k / (n + 1) >= coverage`` (the
    marginal guarantee), but at n = 360, coverage 0.9 it is below 0.9 with probability 0.47. When
    ``k > n`` the threshold is 0 and every set holds every class: coverage is 1. ``rank`` replaces k for a
    threshold taken at another rank (the PAC threshold's :func:`pac_rank`).
    """
    if not 0.0 < quantile_level < 1.0:
        raise ValueError(f"quantile_level must be in (0, 1), got {quantile_level!r}")
    c = _check_coverage(coverage)
    k = conformal_rank(n, c) if rank is None else int(rank)
    if k < 1:
        raise ValueError(f"rank must be >= 1, got {k}")
    if k > n:
        return CoverageGivenCard(c, n, k, 0.0, quantile_level, 1.0)
    return CoverageGivenCard(
        c, n, k, beta_cdf(c, k, n + 1 - k), quantile_level, beta_quantile(quantile_level, k, n + 1 - k)
    )
