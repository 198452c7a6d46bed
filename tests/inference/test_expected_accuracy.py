"""Per-prediction ``expected_accuracy``: its interval covers the true accuracy at the row's confidence.

Simulation (seeded): many synthetic cards, each with a 360-row test split whose confidences are shaped like
the digits card (most near 1) and whose labels are drawn from a known accuracy curve; then new predictions
at fresh confidences are quoted by ``InferenceEngine.expected_accuracy``'s rule (confidence plus the band's
gap interval, the bands built by the engine's own ``bands_from_bins``). The rule before (the band's
accuracy and its 90% Wilson interval) covered 0.57 of predictions of a calibrated model: a row at confidence
0.948 was told 0.997 [0.987, 0.999] because the top band holds mostly rows near 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from service.calibration.metrics import ReliabilityBin
from service.inference.engine import bands_from_bins, bin_indices

pytestmark = pytest.mark.unit

N_BINS = 15
Curve = Callable[[NDArray[np.float64]], NDArray[np.float64]]


def reliability_bins(confidence: NDArray[np.float64], correct: NDArray[np.bool_]) -> list[ReliabilityBin]:
    edges = np.linspace(0.0, 1.0, N_BINS + 1)
    index = bin_indices(confidence, N_BINS)
    bins = []
    for b in range(N_BINS):
        members = index == b
        n = int(members.sum())
        bins.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                count=n,
                mean_confidence=float(confidence[members].mean()) if n else None,
                accuracy=float(correct[members].mean()) if n else None,
            )
        )
    return bins


def digits_like_confidences(rng: np.random.Generator, n: int) -> NDArray[np.float64]:
    """Mostly near 1, a tail down to 0.1 (10 classes), as the bundled card's test split."""
    return np.clip(1.0 - 0.9 * rng.beta(0.5, 6.0, n), 0.1, 1.0)


def coverage(
    truth: Curve, cards: int = 150, n_test: int = 360, n_new: int = 1000, seed: int = 7
) -> tuple[float, float]:
    """(new rule, old rule): the fraction of new predictions whose interval holds the true accuracy."""
    rng = np.random.default_rng(seed)
    new_rule, old_rule = [], []
    for _ in range(cards):
        confidence = digits_like_confidences(rng, n_test)
        correct = rng.random(n_test) < truth(confidence)
        bands, band_of_bin = bands_from_bins(reliability_bins(confidence, correct), 10)
        gap = np.array([band.gap if band.gap is not None else (np.nan,) * 3 for band in bands])
        wilson = np.array([[band.accuracy_low, band.accuracy_high] for band in bands], dtype=np.float64)
        fresh = digits_like_confidences(rng, n_new)
        band = band_of_bin[bin_indices(fresh, N_BINS)]
        true_accuracy = truth(fresh)
        low, high = np.clip(fresh + gap[band, 1], 0, 1), np.clip(fresh + gap[band, 2], 0, 1)
        new_rule.append(np.mean((low <= true_accuracy) & (true_accuracy <= high)))
        old_rule.append(np.mean((wilson[band, 0] <= true_accuracy) & (true_accuracy <= wilson[band, 1])))
    return float(np.mean(new_rule)), float(np.mean(old_rule))


def test_the_interval_covers_the_true_accuracy_of_a_calibrated_model_for_at_least_90_percent() -> None:
    new_rule, old_rule = coverage(lambda c: c)
    assert new_rule >= 0.90, new_rule  # measured 0.95-0.97 over seeds
    assert old_rule < 0.70, old_rule  # the band's own accuracy, even with the same 95% Wilson interval: 0.63


def test_residual_miscalibration_is_covered_less_well_and_says_so() -> None:
    """Where temperature scaling left the model miscalibrated, the band's average gap cannot follow the curve
    inside the band: measured 0.90 (overconfident, accuracy c^1.5) and 0.80 (underconfident, sqrt c), still
    above the old rule (0.57, 0.74). The README states these figures; this test keeps them from sliding."""
    over_new, over_old = coverage(lambda c: c**1.5, cards=80)
    under_new, under_old = coverage(np.sqrt, cards=80)
    assert over_new > over_old and over_new >= 0.85, (over_new, over_old)
    assert under_new > under_old and under_new >= 0.75, (under_new, under_old)
