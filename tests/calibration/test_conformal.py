"""Split conformal (LAC) thresholds, sets and coverage on synthetic calibrated data."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.special import softmax as scipy_softmax

from service.calibration.conformal import (
    ConformalLevel,
    empirical_coverage,
    fit_conformal,
    lac_threshold,
    mean_set_size,
    prediction_sets,
)

pytestmark = pytest.mark.unit

SEEDS = (0, 1, 2, 3, 4, 5)


def calibrated_data(rng: np.random.Generator, n: int, k: int = 10) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Probabilities with labels sampled from them (a perfectly calibrated model)."""
    probs: NDArray[np.float64] = scipy_softmax(rng.normal(size=(n, k)) * 2.5, axis=1)
    u = rng.random(n)
    y = np.minimum((np.cumsum(probs, axis=1) < u[:, None]).sum(axis=1), k - 1).astype(np.int64)
    return probs, y


def bf_threshold(probs: NDArray[np.float64], labels: NDArray[np.int64], coverage: float) -> float:
    """Definition with exact rational arithmetic for k = ceil((n + 1) * coverage)."""
    n = len(labels)
    k = math.ceil((n + 1) * Fraction(str(coverage)))
    if k > n:
        return 0.0
    scores = sorted(1.0 - float(probs[i, labels[i]]) for i in range(n))
    return 1.0 - scores[k - 1]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("coverage", [0.9, 0.95])
def test_heldout_coverage_meets_target(seed: int, coverage: float) -> None:
    """Split conformal guarantees coverage >= target only *marginally*: in expectation over the
    calibration and test draws (and at most target + 1/(n_cal + 1) above it).  One run fluctuates by
    sigma = sqrt(c (1 - c) (1/n_cal + 1/n_test)), about 0.010 for c = 0.9 and 0.007 for c = 0.95 with
    n_cal = 1000, n_test = 5000, so a fixed 0.02 slack would be only ~2 sigma and fail on about one
    seed in forty.  We allow target - 3.5 sigma (0.036 / 0.027) and reject sets that are wildly
    conservative (> target + 0.05).  The pooled test below checks the mean much more tightly."""
    rng = np.random.default_rng(seed)
    n_cal, n_test = 1000, 5000
    probs_cal, y_cal = calibrated_data(rng, n_cal)
    probs_test, y_test = calibrated_data(rng, n_test)
    threshold = lac_threshold(probs_cal, y_cal, coverage)
    mask = prediction_sets(probs_test, threshold)
    cov = empirical_coverage(mask, y_test)
    sigma = math.sqrt(coverage * (1 - coverage) * (1 / n_cal + 1 / n_test))
    assert coverage - 3.5 * sigma <= cov <= coverage + 0.05
    assert 1.0 <= mean_set_size(mask) < 10.0


@pytest.mark.parametrize("coverage", [0.9, 0.95])
def test_mean_coverage_over_seeds_is_at_least_target(coverage: float) -> None:
    """Averaged over 40 independent calibration/test splits (n_cal = 1000, n_test = 2000) the coverage
    estimates the marginal coverage with sigma ~ 0.0018 (0.9) / 0.0013 (0.95); the guarantee puts it in
    [target, target + 1/1001], so we allow target - 0.006 .. target + 0.01."""
    covs = []
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        probs_cal, y_cal = calibrated_data(rng, 1000)
        probs_test, y_test = calibrated_data(rng, 2000)
        mask = prediction_sets(probs_test, lac_threshold(probs_cal, y_cal, coverage))
        covs.append(empirical_coverage(mask, y_test))
    assert coverage - 0.006 <= float(np.mean(covs)) <= coverage + 0.01


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [5, 19, 24, 100, 999])
@pytest.mark.parametrize("coverage", [0.28, 0.5, 0.8, 0.9, 0.95])
def test_threshold_matches_definition(seed: int, n: int, coverage: float) -> None:
    rng = np.random.default_rng(seed)
    probs, y = calibrated_data(rng, n, 5)
    t = lac_threshold(probs, y, coverage)
    assert t == pytest.approx(bf_threshold(probs, y, coverage), abs=1e-12)
    k = math.ceil((n + 1) * Fraction(str(coverage)))
    if k <= n:
        # At least k calibration points are covered (the quantile point itself included, exactly).
        p_true = probs[np.arange(n), y]
        assert int(np.sum(p_true >= t)) >= k
        assert t in set(p_true.tolist())


def test_ceil_is_robust_to_float_rounding() -> None:
    # (24 + 1) * 0.28 evaluates to 7.000000000000001 in floating point; k must be 7, not 8.
    assert (24 + 1) * 0.28 > 7
    probs = np.tile([0.5, 0.5], (24, 1))
    p1 = np.linspace(0.01, 0.99, 24)
    probs = np.stack([1 - p1, p1], axis=1)
    y = np.ones(24, dtype=np.int64)
    assert lac_threshold(probs, y, 0.28) == pytest.approx(np.sort(p1)[24 - 7])


def test_threshold_zero_when_calibration_set_too_small() -> None:
    rng = np.random.default_rng(0)
    probs, y = calibrated_data(rng, 5, 4)
    # ceil(6 * 0.9) = 6 > 5: no finite quantile exists, every class must be included.
    assert lac_threshold(probs, y, 0.9) == 0.0
    mask = prediction_sets(probs, 0.0)
    assert mask.all()
    # ceil(6 * 0.8) = 5 <= 5: the largest score.
    assert lac_threshold(probs, y, 0.8) == pytest.approx(float(probs[np.arange(5), y].min()))


def test_sets_always_contain_argmax_and_are_never_empty() -> None:
    rng = np.random.default_rng(3)
    probs, _ = calibrated_data(rng, 500)
    for t in (0.0, 0.3, 0.9, 1.0):
        mask = prediction_sets(probs, t)
        assert mask[np.arange(500), probs.argmax(axis=1)].all()
        assert (mask.sum(axis=1) >= 1).all()
        np.testing.assert_array_equal(mask | (probs >= t), mask)
    np.testing.assert_array_equal(prediction_sets(probs, 1.0).sum(axis=1), 1)
    tie = np.array([[0.5, 0.5]])
    np.testing.assert_array_equal(prediction_sets(tie, 0.9), [[True, False]])  # first max on ties


def test_coverage_and_set_size_match_brute_force() -> None:
    rng = np.random.default_rng(4)
    probs, y = calibrated_data(rng, 200, 6)
    mask = prediction_sets(probs, 0.1)
    covered = sum(bool(mask[i, y[i]]) for i in range(200))
    sizes = sum(int(v) for row in mask for v in row)
    assert empirical_coverage(mask, y) == pytest.approx(covered / 200)
    assert mean_set_size(mask) == pytest.approx(sizes / 200)


def test_fit_conformal_levels() -> None:
    rng = np.random.default_rng(5)
    probs, y = calibrated_data(rng, 300)
    levels = fit_conformal(probs, y, (0.8, 0.9, 0.95))
    assert [lvl.coverage for lvl in levels] == [0.8, 0.9, 0.95]
    assert all(isinstance(lvl, ConformalLevel) and lvl.n_calibration == 300 for lvl in levels)
    assert levels[0].threshold == lac_threshold(probs, y, 0.8)
    # Higher coverage needs a lower probability threshold (bigger sets).
    assert levels[0].threshold >= levels[1].threshold >= levels[2].threshold
    assert fit_conformal(probs, y)[1].coverage == 0.95


def test_validation_errors() -> None:
    rng = np.random.default_rng(0)
    probs, y = calibrated_data(rng, 10, 3)
    with pytest.raises(ValueError, match="coverage must be in \\(0, 1\\)"):
        lac_threshold(probs, y, 1.0)
    with pytest.raises(ValueError, match="coverage must be in"):
        lac_threshold(probs, y, 0.0)
    with pytest.raises(ValueError, match="labels must be in"):
        lac_threshold(probs, np.full(10, 3), 0.9)
    with pytest.raises(ValueError, match="shape \\[N, K\\]"):
        prediction_sets(probs[0], 0.5)
    with pytest.raises(ValueError, match="threshold must be in"):
        prediction_sets(probs, 1.5)
    with pytest.raises(ValueError, match="boolean"):
        empirical_coverage(probs, y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        mean_set_size(np.zeros((0, 3), dtype=bool))
    with pytest.raises(ValueError, match="coverages must not be empty"):
        fit_conformal(probs, y, ())
