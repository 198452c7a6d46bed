"""Drift statistics against brute force, hand-worked values and SciPy as the independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from service.calibration.reference import confidence_histogram
from service.monitoring.drift import (
    histogram,
    kolmogorov_sf,
    ks_two_sample,
    population_stability_index,
    psi_noise,
    total_variation,
    total_variation_noise,
)

pytestmark = pytest.mark.unit


def psi_loop(reference: list[float], live: list[float], eps: float) -> float:
    """PSI written out term by term, as Siddiqi (2006) tabulates it."""
    ref_total, live_total = sum(reference), sum(live)
    p = [max(c / ref_total, eps) for c in reference]
    q = [max(c / live_total, eps) for c in live]
    p_sum, q_sum = sum(p), sum(q)
    total = 0.0
    for a, b in zip(p, q, strict=True):
        a, b = a / p_sum, b / q_sum
        total += (b - a) * math.log(b / a)
    return total


# ------------------------------------------------------------------------------------------------ PSI


@pytest.mark.parametrize("seed", range(20))
def test_psi_matches_a_term_by_term_loop_including_empty_bins(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bins = int(rng.integers(2, 30))
    reference = rng.integers(0, 50, bins) * (rng.random(bins) < 0.7)  # some empty bins
    live = rng.integers(0, 50, bins) * (rng.random(bins) < 0.7)
    reference[0] += 1  # never all zero
    live[-1] += 1
    eps = float(rng.choice([1e-4, 1e-3, 1e-6]))
    expected = psi_loop(reference.tolist(), live.tolist(), eps)
    assert population_stability_index(reference, live, eps=eps) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_psi_is_zero_for_identical_or_proportional_histograms() -> None:
    counts = np.array([0, 3, 10, 40, 300])
    assert population_stability_index(counts, counts) == 0.0
    assert population_stability_index(counts, counts * 7) == pytest.approx(0.0, abs=1e-15)


def test_psi_known_values() -> None:
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 (ln 2 + ln 1.5) = 0.25 ln 3
    assert population_stability_index([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(3.0), rel=1e-14)
    # Three bins: 0.1 ln(0.3/0.2) + 0 + (-0.1) ln(0.4/0.5)
    expected = 0.1 * math.log(1.5) - 0.1 * math.log(0.8)
    assert population_stability_index([0.2, 0.3, 0.5], [0.3, 0.3, 0.4]) == pytest.approx(expected, rel=1e-14)


def test_psi_is_symmetric_and_positive() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.integers(1, 100, 15), rng.integers(1, 100, 15)
    assert population_stability_index(a, b) == pytest.approx(population_stability_index(b, a), rel=1e-12)
    assert population_stability_index(a, b) > 0.0


def test_psi_empty_bin_is_floored_at_eps_and_renormalised() -> None:
    # Reference puts everything in bin 0; after the floor it is [1, eps] / (1 + eps).
    eps = 1e-4
    p = np.array([1.0, eps]) / (1.0 + eps)
    q = np.array([0.5, 0.5])
    expected = float(np.sum((q - p) * np.log(q / p)))
    value = population_stability_index([100, 0], [50, 50], eps=eps)
    assert math.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-12)
    # A smaller floor makes the empty bin count more (the cap is about p ln(p / eps)).
    assert population_stability_index([100, 0], [50, 50], eps=1e-6) > value


@pytest.mark.parametrize(
    ("reference", "live", "eps", "match"),
    [
        ([1, 2], [1, 2, 3], 1e-4, "same bins"),
        ([1, -2], [1, 2], 1e-4, "non-negative"),
        ([0, 0], [1, 2], 1e-4, "sums to zero"),
        ([1, float("nan")], [1, 2], 1e-4, "NaN"),
        ([], [], 1e-4, "non-empty"),
        ([[1, 2]], [[1, 2]], 1e-4, "1-D"),
        ([1, 2], [1, 2], 0.0, "eps"),
        ([1, 2], [1, 2], 1.0, "eps"),
    ],
)
def test_psi_rejects_bad_input(reference: list[float], live: list[float], eps: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        population_stability_index(reference, live, eps=eps)


# ------------------------------------------------------------------------------------------------ KS


@pytest.mark.parametrize("lam", [0.01, 0.03, 0.05, 0.2, 0.5, 0.8, 1.0, 1.17, 1.18, 1.19, 1.36, 1.63, 2.0, 3.0, 5.0])
def test_kolmogorov_sf_matches_scipy_kstwobign(lam: float) -> None:
    expected = float(stats.kstwobign.sf(lam))
    assert kolmogorov_sf(lam) == pytest.approx(expected, rel=1e-10, abs=1e-15)


def test_kolmogorov_sf_edges() -> None:
    assert kolmogorov_sf(0.0) == 1.0
    assert kolmogorov_sf(-1.0) == 1.0
    assert kolmogorov_sf(40.0) == 0.0
    with pytest.raises(ValueError, match="finite"):
        kolmogorov_sf(float("nan"))


@pytest.mark.parametrize("seed", range(40))
def test_ks_statistic_matches_scipy_exactly_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = (int(v) for v in rng.integers(5, 2001, 2))
    decimals = int(rng.integers(0, 3))  # heavy ties at 0 decimals
    reference = np.round(rng.normal(0.0, 1.0, n), decimals)
    live = np.round(rng.normal(rng.uniform(0.0, 0.5), rng.uniform(0.8, 1.2), m), decimals)
    ours = ks_two_sample(reference, live)
    theirs = stats.ks_2samp(reference, live, method="asymp")
    assert ours.statistic == pytest.approx(float(theirs.statistic), abs=1e-12)
    assert (ours.n_reference, ours.n_live) == (n, m)
    assert 0.0 <= ours.pvalue <= 1.0


@pytest.mark.parametrize("seed", range(40))
def test_ks_pvalue_is_close_to_scipy_asymptotic_for_moderate_n(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n, m = (int(v) for v in rng.integers(50, 2001, 2))
    reference = np.round(rng.normal(0.0, 1.0, n), 2)
    live = np.round(rng.normal(rng.uniform(0.0, 0.4), 1.0, m), 2)
    ours = ks_two_sample(reference, live)
    theirs = float(stats.ks_2samp(reference, live, method="asymp").pvalue)
    assert ours.pvalue == pytest.approx(theirs, abs=0.02)
    if 1e-12 < theirs < 1e-3:  # tiny p-values: agree within a factor of 2
        assert abs(math.log(ours.pvalue / theirs)) < math.log(2.0)
    # And exactly the Stephens-corrected asymptotic formula (Numerical Recipes' probks).
    sqrt_en = math.sqrt(n * m / (n + m))
    lam = (sqrt_en + 0.12 + 0.11 / sqrt_en) * ours.statistic
    assert ours.pvalue == pytest.approx(float(stats.kstwobign.sf(lam)), rel=1e-9, abs=1e-300)


def test_ks_ties_move_both_cdfs_at_once() -> None:
    # F_ref(1) = 2/3, F_live(1) = 1/3, both 1 at 2: D = 1/3. Evaluating only one side of each jump would
    # give 2/3.
    result = ks_two_sample([1.0, 1.0, 2.0], [1.0, 2.0, 2.0])
    assert result.statistic == pytest.approx(1.0 / 3.0, abs=1e-15)


def test_ks_identical_and_disjoint_samples() -> None:
    same = ks_two_sample([0.1, 0.5, 0.5, 0.9], [0.9, 0.5, 0.1, 0.5])
    assert same.statistic == 0.0
    assert same.pvalue == 1.0
    apart = ks_two_sample(np.linspace(0, 0.4, 200), np.linspace(0.6, 1.0, 300))
    assert apart.statistic == 1.0
    assert apart.pvalue < 1e-20


def test_ks_pvalue_is_roughly_uniform_under_the_null() -> None:
    rng = np.random.default_rng(7)
    pvalues = np.array([ks_two_sample(rng.random(300), rng.random(400)).pvalue for _ in range(300)])
    assert 0.03 < np.mean(pvalues < 0.1) < 0.18
    assert np.mean(pvalues < 0.01) < 0.04


@pytest.mark.parametrize(
    ("reference", "live", "match"),
    [([], [1.0], "non-empty"), ([1.0, float("inf")], [1.0], "NaN or infinite"), (["a"], [1.0], "numeric")],
)
def test_ks_rejects_bad_input(reference: list[object], live: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ks_two_sample(reference, live)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ TV


def test_total_variation_properties() -> None:
    rng = np.random.default_rng(3)
    p, q, r = rng.dirichlet(np.ones(8), 3)
    assert total_variation(p, p) == 0.0
    assert total_variation(p, q) == pytest.approx(total_variation(q, p), rel=1e-15)
    assert total_variation(p, r) <= total_variation(p, q) + total_variation(q, r) + 1e-15
    assert 0.0 < total_variation(p, q) < 1.0
    assert total_variation([1, 0, 0], [0, 0.5, 0.5]) == pytest.approx(1.0)


def test_total_variation_normalises_counts_and_known_value() -> None:
    # [0.5, 0.5, 0] vs [0.25, 0.25, 0.5]: 0.5 * (0.25 + 0.25 + 0.5) = 0.5
    assert total_variation([10, 10, 0], [1, 1, 2]) == pytest.approx(0.5, rel=1e-15)
    assert total_variation([178, 182], [0.5, 0.5]) == pytest.approx(0.5 * (abs(178 / 360 - 0.5) * 2), rel=1e-12)
    with pytest.raises(ValueError, match="same bins"):
        total_variation([1, 2], [1, 2, 3])


# ------------------------------------------------------------------------------------------------ histogram


def test_histogram_is_the_cards_binning() -> None:
    rng = np.random.default_rng(5)
    conf = np.concatenate([rng.random(500), [0.0, 1.0, 1.0, 1.0 / 15.0]])
    counts = histogram(conf)
    assert counts == confidence_histogram(conf, 15)
    assert len(counts) == 15
    assert sum(counts) == conf.size
    assert histogram(np.array([1.0]))[-1] == 1  # exactly 1.0 lands in the last bin
    assert histogram(np.array([1.0 / 15.0]))[1] == 1  # an inner edge goes to the upper bin
    assert histogram(np.array([]), 5) == [0, 0, 0, 0, 0]


# ------------------------------------------------------------------------------------------------ noise


def test_psi_noise_matches_the_chi_square_approximation() -> None:
    # Yurdakul (2018): under no shift PSI ≈ (1/n + 1/m) chi2(B - 1), mean (1/n + 1/m)(B - 1), when no bin is small.
    bins, n, m = 10, 5000, 2000
    noise = psi_noise(np.full(bins, n // bins), m, n_sim=4000, seed=1)
    expected_mean = (1 / n + 1 / m) * (bins - 1)
    assert noise.mean == pytest.approx(expected_mean, rel=0.05)
    expected_upper = (1 / n + 1 / m) * float(stats.chi2.ppf(0.99, bins - 1))
    assert noise.upper == pytest.approx(expected_upper, rel=0.1)
    assert (noise.n_reference, noise.n_live, noise.n_sim, noise.level) == (n, m, 4000, 0.99)


def test_total_variation_noise_matches_the_normal_approximation() -> None:
    # Each class difference is ~ N(0, p(1-p)(1/n + 1/m)); E|X| = sqrt(2/pi) sd; TV = 0.5 sum_k |X_k|.
    p = np.array([0.1, 0.2, 0.3, 0.4])
    n, m = 20000, 3000
    noise = total_variation_noise(p * n, m, n_sim=4000, seed=2)
    expected = 0.5 * float(np.sum(np.sqrt(2 / np.pi) * np.sqrt(p * (1 - p) * (1 / n + 1 / m))))
    assert noise.mean == pytest.approx(expected, rel=0.05)
    assert noise.upper > noise.mean


def test_noise_is_reproducible_and_shrinks_with_the_window() -> None:
    reference = [0, 1, 3, 20, 300]
    assert psi_noise(reference, 100, seed=3) == psi_noise(reference, 100, seed=3)
    assert psi_noise(reference, 100, seed=3) != psi_noise(reference, 100, seed=4)
    assert psi_noise(reference, 2000).upper < psi_noise(reference, 100).upper
    assert total_variation_noise(reference, 2000).mean < total_variation_noise(reference, 100).mean
    with pytest.raises(ValueError, match="n_live"):
        psi_noise(reference, 0)
    with pytest.raises(ValueError, match="level"):
        total_variation_noise(reference, 10, level=1.0)
