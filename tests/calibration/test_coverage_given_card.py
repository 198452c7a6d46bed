"""Coverage conditional on the calibration set: the Beta law, the PAC threshold, and their numpy-only math.

The simulation draws many calibration sets from a known continuous score distribution, so the true
long-run coverage of each fitted threshold is known exactly (no test sample needed).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats

from service.calibration.binomial import (
    beta_cdf,
    beta_quantile,
    binomial_tail,
    clopper_pearson_lower,
    samples_for_lower_bound,
)
from service.calibration.conformal import (
    conformal_rank,
    coverage_given_card,
    lac_threshold,
    lac_threshold_pac,
    pac_rank,
)

pytestmark = pytest.mark.unit

N_CAL = 360
SETS = 4000
# p_true ~ Beta(5, 1): P(p_true < t) = t**5, so a threshold t covers 1 - t**5 of future points exactly.
SHAPE = 5.0


def true_coverage(threshold: float) -> float:
    return 1.0 - threshold**SHAPE


def calibration_set(rng: np.random.Generator) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    p_true = rng.random(N_CAL) ** (1.0 / SHAPE)
    return np.stack([p_true, 1.0 - p_true], axis=1), np.zeros(N_CAL, dtype=np.int64)


@pytest.fixture(scope="module")
def simulated() -> dict[str, NDArray[np.float64]]:
    rng = np.random.default_rng(2012)
    plain, pac = [], []
    for _ in range(SETS):
        probs, labels = calibration_set(rng)
        plain.append(true_coverage(lac_threshold(probs, labels, 0.9)))
        pac.append(true_coverage(lac_threshold_pac(probs, labels, 0.9, delta=0.1)))
    return {"plain": np.array(plain), "pac": np.array(pac)}


def test_plain_threshold_misses_nominal_coverage_for_about_half_the_cards(
    simulated: dict[str, NDArray[np.float64]],
) -> None:
    figures = coverage_given_card(N_CAL, 0.9)
    assert figures.rank == 325
    assert figures.p_below_nominal == pytest.approx(0.474, abs=1e-3)
    assert figures.quantile == pytest.approx(0.873, abs=1e-3)
    coverage = simulated["plain"]
    # The marginal guarantee holds on average over calibration sets (mean k / (n + 1) = 0.9003) ...
    a, b = figures.rank, N_CAL + 1 - figures.rank
    standard_error = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)) / SETS)
    assert coverage.mean() == pytest.approx(a / (a + b), abs=4 * standard_error)
    # ... but given one set, coverage < 0.9 as often as Beta(k, n + 1 - k) says (4 standard errors).
    tolerance = 4 * math.sqrt(0.25 / SETS)
    assert np.mean(coverage < 0.9) == pytest.approx(figures.p_below_nominal, abs=tolerance)
    assert np.quantile(coverage, 0.05) == pytest.approx(figures.quantile, abs=0.004)


def test_pac_threshold_covers_nominal_for_at_least_one_minus_delta_of_cards(
    simulated: dict[str, NDArray[np.float64]],
) -> None:
    delta = 0.1
    k = pac_rank(N_CAL, 0.9, delta)
    assert k > conformal_rank(N_CAL, 0.9)
    assert beta_cdf(0.9, k, N_CAL + 1 - k) <= delta < beta_cdf(0.9, k - 1, N_CAL + 2 - k)
    good = np.mean(simulated["pac"] >= 0.9)
    assert good >= 1 - delta - 3 * math.sqrt(delta * (1 - delta) / SETS)
    assert np.mean(simulated["plain"] >= 0.9) < 0.6  # what the plain rule gives (about 0.53)


def test_pac_rank_edge_cases() -> None:
    assert pac_rank(5, 0.9, 0.05) == 6  # too few samples: every class in every set
    assert coverage_given_card(5, 0.9).quantile == 1.0
    assert coverage_given_card(5, 0.9).p_below_nominal == 0.0
    probs = np.array([[0.6, 0.4], [0.7, 0.3]])
    assert lac_threshold_pac(probs, np.array([0, 0]), 0.9, 0.05) == 0.0
    with pytest.raises(ValueError, match="delta"):
        pac_rank(100, 0.9, 0.0)


@pytest.mark.parametrize(("x", "a", "b"), [(0.9, 325, 36), (0.5, 1, 1), (0.2, 3, 7), (0.999, 1000, 2), (0.01, 2, 500)])
def test_beta_and_binomial_match_scipy(x: float, a: int, b: int) -> None:
    assert beta_cdf(x, a, b) == pytest.approx(stats.beta.cdf(x, a, b), rel=1e-9, abs=1e-14)
    assert beta_quantile(0.05, a, b) == pytest.approx(stats.beta.ppf(0.05, a, b), abs=1e-9)
    assert binomial_tail(a + b - 1, x, a) == pytest.approx(stats.binom.sf(a - 1, a + b - 1, x), rel=1e-9, abs=1e-14)


def test_clopper_pearson_lower_bound() -> None:
    assert clopper_pearson_lower(340, 341) == pytest.approx(stats.beta.ppf(0.05, 340, 2), abs=1e-9)
    assert clopper_pearson_lower(0, 10) == 0.0
    assert clopper_pearson_lower(10, 10) == pytest.approx(0.05**0.1, abs=1e-9)
    assert samples_for_lower_bound(0.99) == 299  # log(0.05) / log(0.99) = 298.07
    assert clopper_pearson_lower(299, 299) >= 0.99 > clopper_pearson_lower(298, 298)
    assert samples_for_lower_bound(1.0) is None
