"""Temperature scaling vs scipy / torch references, finite differences and known-T recovery."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax as scipy_log_softmax
from scipy.special import softmax as scipy_softmax

from service.calibration.temperature import (
    fit_temperature,
    log_softmax,
    nll_at_temperature,
    nll_log_temperature_derivatives,
    softmax,
)

pytestmark = pytest.mark.unit

SEEDS = (0, 1, 2, 3, 4)


def sample_labels(rng: np.random.Generator, logits: NDArray[np.float64]) -> NDArray[np.int64]:
    """Labels drawn from softmax(logits): these logits are perfectly calibrated at T = 1."""
    p: NDArray[np.float64] = scipy_softmax(logits, axis=1)
    u = rng.random((p.shape[0], 1))
    y: NDArray[np.int64] = (np.cumsum(p, axis=1) < u).sum(axis=1).astype(np.int64)
    out: NDArray[np.int64] = np.minimum(y, p.shape[1] - 1)
    return out


def calibrated_logits(seed: int, n: int, k: int, scale: float = 2.0) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    return z, sample_labels(rng, z)


def torch_nll(logits: NDArray[np.float64], labels: NDArray[np.int64], temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(logits) / temperature, torch.from_numpy(labels)))


def scipy_fit_log_t(logits: NDArray[np.float64], labels: NDArray[np.int64], bounds: tuple[float, float]) -> float:
    res = minimize_scalar(
        lambda u: torch_nll(logits, labels, math.exp(u)),
        bounds=bounds,
        method="bounded",
        options={"xatol": 1e-9},
    )
    return float(res.x)


# --------------------------------------------------------------------------------------------------
# softmax / log_softmax / NLL
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_softmax_matches_scipy(seed: int, temperature: float) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(50, 7)) * 5
    np.testing.assert_allclose(softmax(z, temperature), scipy_softmax(z / temperature, axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        log_softmax(z, temperature), scipy_log_softmax(z / temperature, axis=1), rtol=1e-12, atol=1e-12
    )


def test_softmax_large_logits_no_overflow() -> None:
    z = np.array([[1000.0, 0.0, -1000.0], [1e3, 1e3 - 1.0, 999.0], [-1e3, -1e3, -1e3]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = softmax(z, 0.01)
        logp = log_softmax(z, 0.01)
    assert np.all(np.isfinite(p))
    assert np.all(np.isfinite(logp))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(softmax(z)[2], [1 / 3, 1 / 3, 1 / 3])
    assert logp[0, 2] == pytest.approx(-2000.0 / 0.01)  # not -inf: log-sum-exp keeps it


def test_softmax_float32_input_computed_in_float64() -> None:
    z = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    p = softmax(z)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, scipy_softmax(z.astype(np.float64), axis=1), rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [0.2, 1.0, 4.0])
def test_nll_at_temperature_matches_torch_cross_entropy(seed: int, temperature: float) -> None:
    z, y = calibrated_logits(seed, 200, 6)
    assert nll_at_temperature(z, y, temperature) == pytest.approx(torch_nll(z, y, temperature), rel=1e-10)


# --------------------------------------------------------------------------------------------------
# Derivatives
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("u", [-2.0, -0.5, 0.0, 0.7, 2.0])
def test_derivatives_match_finite_differences(seed: int, u: float) -> None:
    z, y = calibrated_logits(seed, 300, 5, scale=3.0)
    rng = np.random.default_rng(seed + 100)
    y = np.where(rng.random(300) < 0.3, rng.integers(0, 5, size=300), y)  # some label noise
    g, h = nll_log_temperature_derivatives(z, y, u)
    eps = 1e-5

    def f(v: float) -> float:
        return nll_at_temperature(z, y, math.exp(v))

    g_fd = (f(u + eps) - f(u - eps)) / (2 * eps)
    h_fd = (f(u + eps) - 2 * f(u) + f(u - eps)) / eps**2
    assert g == pytest.approx(g_fd, abs=1e-7, rel=1e-6)
    assert h == pytest.approx(h_fd, abs=1e-4, rel=1e-3)
    g_plus, _ = nll_log_temperature_derivatives(z, y, u + eps)
    g_minus, _ = nll_log_temperature_derivatives(z, y, u - eps)
    assert h == pytest.approx((g_plus - g_minus) / (2 * eps), abs=1e-7, rel=1e-6)


def test_derivative_sign_changes_once() -> None:
    z, y = calibrated_logits(0, 500, 10)
    grid = np.linspace(-6, 6, 121)
    signs = np.sign([nll_log_temperature_derivatives(z * 3, y, u)[0] for u in grid])
    assert signs[0] < 0 < signs[-1]
    assert np.count_nonzero(np.diff(signs)) == 1


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("k", "factor"), [(2, 2.0), (5, 0.4), (10, 1.0), (10, 3.0), (3, 0.1)])
def test_fit_matches_scipy_bounded_minimisation(seed: int, k: int, factor: float) -> None:
    z, y = calibrated_logits(seed, 400, k)
    fit = fit_temperature(z * factor, y)
    ref = scipy_fit_log_t(z * factor, y, (-6.0, 6.0))
    assert fit.log_temperature == pytest.approx(ref, abs=1e-5)
    assert fit.temperature == pytest.approx(math.exp(fit.log_temperature))
    assert not fit.at_bound
    assert fit.nll_after <= fit.nll_before + 1e-15
    assert fit.nll_before == pytest.approx(torch_nll(z * factor, y, 1.0), rel=1e-10)
    assert fit.nll_after == pytest.approx(torch_nll(z * factor, y, fit.temperature), rel=1e-10)
    assert abs(nll_log_temperature_derivatives(z * factor, y, fit.log_temperature)[0]) < 1e-8
    assert 1 <= fit.iterations < 60


@pytest.mark.parametrize(("factor", "expected_t"), [(3.0, 3.0), (0.5, 0.5)])
def test_fit_recovers_known_temperature(factor: float, expected_t: float) -> None:
    """Labels are sampled from softmax(z); feeding z * 3 (over-confident) must give T ~ 3 and
    z / 2 (under-confident, as after label smoothing) T ~ 0.5.  With N = 20000 the estimate's standard
    error in log T is about 0.01; we allow 0.05."""
    z, y = calibrated_logits(123, 20000, 10)
    fit = fit_temperature(z * factor, y)
    assert abs(fit.log_temperature - math.log(expected_t)) < 0.05
    assert fit.nll_after < fit.nll_before


def test_fit_binary() -> None:
    z, y = calibrated_logits(9, 3000, 2)
    fit = fit_temperature(z * 2.0, y)
    assert abs(fit.log_temperature - math.log(2.0)) < 0.15
    assert fit.log_temperature == pytest.approx(scipy_fit_log_t(z * 2.0, y, (-6.0, 6.0)), abs=1e-5)


def test_fit_large_logits_no_overflow() -> None:
    z, y = calibrated_logits(1, 500, 10)
    big = z * 200.0  # logits around 1e3
    assert np.abs(big).max() > 1e3
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        fit = fit_temperature(big, y)
    assert math.isfinite(fit.nll_before) and math.isfinite(fit.nll_after)
    assert not fit.at_bound
    assert fit.temperature == pytest.approx(200.0, rel=0.2)
    assert fit.log_temperature == pytest.approx(scipy_fit_log_t(big, y, (-6.0, 6.0)), abs=1e-5)
    # Far below the optimum the scaled logits are ~1e5 and the NLL must still be finite.
    assert math.isfinite(nll_at_temperature(big, y, math.exp(-6.0)))


def test_fit_float32_same_as_float64() -> None:
    z, y = calibrated_logits(2, 1000, 10)
    z32 = (z * 2).astype(np.float32)
    fit32 = fit_temperature(z32, y)
    fit64 = fit_temperature(z32.astype(np.float64), y)
    assert fit32.log_temperature == pytest.approx(fit64.log_temperature, abs=1e-12)


def test_separable_all_correct_goes_to_lower_bound() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    z = rng.normal(size=(200, 4))
    z[np.arange(200), y] += 10.0  # every prediction correct with a large margin
    fit = fit_temperature(z, y)
    assert fit.at_bound
    assert fit.log_temperature == -6.0
    assert fit.temperature == pytest.approx(math.exp(-6.0))
    assert fit.nll_after < fit.nll_before


def test_anti_informative_logits_go_to_upper_bound_and_stay_positive() -> None:
    """Logits that point away from the label would prefer T < 0 (flipping every prediction); fitting
    log T keeps T positive and stops at the upper bound (as close to uniform as allowed)."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(300, 5)) * 3
    y = np.argmin(z, axis=1)
    fit = fit_temperature(z, y, log_t_bounds=(-3.0, 4.0))
    assert fit.temperature > 0
    assert fit.at_bound
    assert fit.log_temperature == 4.0


@pytest.mark.parametrize("seed", SEEDS)
def test_temperature_always_positive_on_noisy_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(200, 10)) * rng.uniform(0.1, 20)
    y = rng.integers(0, 10, size=200)
    fit = fit_temperature(z, y)
    assert fit.temperature > 0
    assert math.isfinite(fit.temperature)
    assert fit.log_temperature == pytest.approx(scipy_fit_log_t(z, y, (-6.0, 6.0)), abs=1e-5)


def test_flat_nll_returns_unit_temperature() -> None:
    z = np.zeros((10, 3))
    y = np.arange(10) % 3
    fit = fit_temperature(z, y)
    assert fit.temperature == 1.0
    assert not fit.at_bound
    assert fit.nll_after == pytest.approx(math.log(3))


def test_bounds_not_containing_zero() -> None:
    z, y = calibrated_logits(4, 500, 5)
    fit = fit_temperature(z * 0.05, y, log_t_bounds=(-5.0, -1.0))  # optimum is log(0.05) ~ -3.0
    assert fit.log_temperature == pytest.approx(scipy_fit_log_t(z * 0.05, y, (-5.0, -1.0)), abs=1e-5)
    assert -5.0 < fit.log_temperature < -1.0


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def test_validation_errors() -> None:
    z, y = calibrated_logits(0, 10, 3)
    with pytest.raises(ValueError, match="shape \\[N, K\\]"):
        softmax(np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        softmax(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        softmax(z, 0.0)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        nll_at_temperature(z, y, -1.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_temperature(np.full((2, 2), np.inf), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels must be in"):
        fit_temperature(z, np.full(10, 3))
    with pytest.raises(ValueError, match="length 9 but there are 10 rows"):
        fit_temperature(z, y[:9])
    with pytest.raises(ValueError, match="log_t_bounds"):
        fit_temperature(z, y, log_t_bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="tol"):
        fit_temperature(z, y, tol=0.0)


@pytest.mark.parametrize("served_t", [0.45, 1.0, 2.3])
@pytest.mark.parametrize("scale", [0.4, 1.0, 3.0])
def test_the_refit_on_stored_float32_probabilities_agrees_with_the_refit_on_true_logits(
    served_t: float, scale: float
) -> None:
    """Drift that a temperature repairs (logits scaled by ``scale``), served at ``served_t`` and stored as
    float32 probabilities: the temperature refitted on those equals the one fitted on the true logits."""
    from service.calibration.temperature import refit_from_probabilities

    rng = np.random.default_rng(int(served_t * 100 + scale * 10))
    n, k = 800, 10
    base = rng.normal(0.0, 4.0, size=(n, k))
    labels = np.array([rng.choice(k, p=row) for row in softmax(base, 1.0)])
    drifted = base * scale  # the same ranking, another confidence scale
    stored = softmax(drifted, served_t).astype(np.float32)
    new_t, fit = refit_from_probabilities(stored, labels, served_t)
    true = fit_temperature(drifted, labels)
    assert new_t == pytest.approx(true.temperature, rel=1e-5)
    assert new_t == pytest.approx(scale, rel=0.15)  # the drift's own scale, within sampling error
    assert fit.nll_after <= fit.nll_before + 1e-12


def test_the_refit_survives_underflowed_probabilities() -> None:
    """Classes ruled out by hundreds of nats are 0 in float32: clipped, not -inf, and the fit still agrees to
    the bound the docstring states (0.17% here, where the refit flattens the model 8-fold)."""
    from service.calibration.temperature import refit_from_probabilities

    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 60.0, size=(500, 10))
    labels = np.array([rng.choice(10, p=row) for row in softmax(logits, 8.0)])
    stored = softmax(logits, 1.0).astype(np.float32)
    assert (stored == 0).any()
    new_t, _ = refit_from_probabilities(stored, labels, 1.0)
    assert np.isfinite(new_t)
    assert new_t == pytest.approx(fit_temperature(logits, labels).temperature, rel=5e-3)
