"""What the card records about the test split beyond the metrics: the selective-prediction table and the
confidence histogram that live drift checks compare traffic against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.calibration.metrics import DEFAULT_N_BINS, bin_indices, top_label
from service.calibration.validation import check_n_bins, validate_confidences, validate_probs_labels

__all__ = ["DEFAULT_SELECTIVE_THRESHOLDS", "SelectiveRow", "confidence_histogram", "selective_prediction_table"]

DEFAULT_SELECTIVE_THRESHOLDS: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


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
    conf, correct = top_label(p, y)
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
    check_n_bins(n_bins)
    conf = validate_confidences(confidences, allow_empty=True)
    counts = np.bincount(bin_indices(conf, n_bins), minlength=n_bins)
    return [int(c) for c in counts]
