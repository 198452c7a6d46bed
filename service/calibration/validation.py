"""Input checks shared by every calibration and monitoring function.

Why one module: the metrics, the drift statistics and the live checks all take probability matrices, label
vectors and confidence vectors from outside (a card, a prediction log, a caller). Each of them silently
gives nonsense on NaN, on logits passed as probabilities or on labels out of range, so each validates, and
they must say the same thing about the same mistake.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "check_level",
    "check_n_bins",
    "check_positive_int",
    "validate_confidences",
    "validate_labels",
    "validate_probs",
    "validate_probs_labels",
    "validate_sample",
]

# Row sums may be off by float32 rounding (or a softmax computed in float16); anything further off is
# not a probability vector and the metrics would be meaningless.
_ROW_SUM_ATOL = 1e-3
# Tolerance on the [0, 1] range, for probabilities produced by exp(log_softmax) in float32.
_RANGE_ATOL = 1e-6


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


def check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def check_level(level: float) -> None:
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def validate_sample(values: NDArray[Any] | Any, name: str) -> NDArray[np.float64]:
    """A non-empty 1-D array of finite numbers (any range), as float64: the input of two-sample tests and
    of histogram distances, which take counts or confidences alike."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if out.ndim != 1 or out.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return out
