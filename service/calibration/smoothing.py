"""Label-smoothing targets (Szegedy et al. 2016; Müller, Kornblith & Hinton 2019), in pure numpy.

Training against ``(1 - alpha) * onehot + alpha * prior`` instead of one-hot targets stops the logits
from growing without bound, which reduces over-confidence (Müller et al. 2019, "When Does Label
Smoothing Help?").  The optimum of the smoothed loss is no longer a one-hot vector, so a smoothed model
tends to be *under*-confident on easy data; temperature scaling afterwards may then fit T < 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.calibration.validation import validate_labels

__all__ = ["class_prior", "smoothed_targets"]

_PRIOR_SUM_ATOL = 1e-6


def _check_n_classes(n_classes: int) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    return int(n_classes)


def smoothed_targets(
    labels: NDArray[np.integer[Any]],
    n_classes: int,
    alpha: float,
    prior: NDArray[np.floating[Any]] | None = None,
) -> NDArray[np.float64]:
    """Smoothed target distributions [N, K]: ``(1 - alpha) * onehot(labels) + alpha * prior``.

    Input: ``labels`` [N] ints in ``[0, n_classes)``; ``0 <= alpha < 1`` (alpha = 1 would erase the
    label); ``prior`` a probability vector of length K (non-negative, sums to 1 within 1e-6), uniform
    ``1/K`` by default as in Szegedy et al. 2016.  E.g. K=3, alpha=0.1 gives ``[0.9333, 0.0333, 0.0333]``.
    """
    k = _check_n_classes(n_classes)
    a = float(alpha)
    if not (0.0 <= a < 1.0):
        raise ValueError(f"alpha must satisfy 0 <= alpha < 1, got {alpha!r}")
    y = validate_labels(labels, n_classes=k)
    if prior is None:
        pr = np.full(k, 1.0 / k, dtype=np.float64)
    else:
        pr = np.asarray(prior, dtype=np.float64)
        if pr.shape != (k,):
            raise ValueError(f"prior must have shape ({k},), got {pr.shape}")
        if not np.all(np.isfinite(pr)) or pr.min() < 0.0:
            raise ValueError("prior must be finite and non-negative")
        if abs(float(pr.sum()) - 1.0) > _PRIOR_SUM_ATOL:
            raise ValueError(f"prior must sum to 1 (within {_PRIOR_SUM_ATOL}), got {float(pr.sum())!r}")
    targets = np.zeros((y.shape[0], k), dtype=np.float64)
    targets[np.arange(y.shape[0]), y] = 1.0 - a
    targets += a * pr[None, :]
    return targets


def class_prior(labels: NDArray[np.integer[Any]], n_classes: int) -> NDArray[np.float64]:
    """Empirical class frequencies [K] of ``labels`` [N] ints (sums to 1).

    Used to smooth towards the training label distribution instead of the uniform one (Pereyra et al.
    2017), which avoids pushing probability mass onto classes that are rare in the data.
    """
    k = _check_n_classes(n_classes)
    y = validate_labels(labels, n_classes=k)
    out: NDArray[np.float64] = np.bincount(y, minlength=k).astype(np.float64) / y.shape[0]
    return out
