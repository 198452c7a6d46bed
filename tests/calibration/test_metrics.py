"""Cross-checks of service.calibration.metrics against independent implementations.

References: sklearn (log loss, binary Brier), torchmetrics (top-label calibration error) and
deliberately naive pure-Python loops written here from the definitions.
"""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from scipy.special import softmax as scipy_softmax
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.classification import MulticlassCalibrationError

from service.calibration.metrics import (
    accuracy,
    adaptive_ece,
    bin_indices,
    brier,
    classwise_ece,
    ece,
    ece_from_confidences,
    mce,
    nll,
    reliability_bins,
)
from service.calibration.reference import confidence_histogram, selective_prediction_table
from service.calibration.uncertainty import (
    CalibrationSummary,
    bootstrap_interval,
    bootstrap_statistics,
    ece_noise_floor,
    summarize,
    summarize_window,
)

pytestmark = pytest.mark.unit

SEEDS = (0, 1, 2, 3)


# --------------------------------------------------------------------------------------------------
# Data generators
# --------------------------------------------------------------------------------------------------


def random_probs(rng: np.random.Generator, n: int, k: int, scale: float = 2.0) -> NDArray[np.float64]:
    out: NDArray[np.float64] = scipy_softmax(rng.normal(size=(n, k)) * scale, axis=1)
    return out


def sample_labels(rng: np.random.Generator, probs: NDArray[np.float64]) -> NDArray[np.int64]:
    """Labels drawn from the rows of ``probs`` (so the model is perfectly calibrated)."""
    u = rng.random((probs.shape[0], 1))
    y: NDArray[np.int64] = (np.cumsum(probs, axis=1) < u).sum(axis=1).astype(np.int64)
    out: NDArray[np.int64] = np.minimum(y, probs.shape[1] - 1)
    return out


def random_case(seed: int, n: int, k: int, scale: float = 2.0) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    p = random_probs(rng, n, k, scale)
    return p, sample_labels(rng, p)


def binary_probs(p1: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.stack([1.0 - p1, p1], axis=1)


# --------------------------------------------------------------------------------------------------
# Brute-force references (pure Python loops, written from the definitions)
# --------------------------------------------------------------------------------------------------


def bf_bin(v: float, n_bins: int) -> int:
    edges = [float(e) for e in np.linspace(0.0, 1.0, n_bins + 1)]
    for b in range(n_bins):
        if edges[b] <= v < edges[b + 1]:
            return b
    assert v >= edges[-1]  # exactly 1.0 (values are in [0, 1])
    return n_bins - 1


def bf_top(row: Any) -> tuple[float, int]:
    values = [float(x) for x in row]
    best = max(values)
    return best, values.index(best)  # first maximum


def bf_bins(probs: Any, labels: Any, n_bins: int) -> list[tuple[int, float, float]]:
    """(count, sum_conf, sum_correct) per bin."""
    stats = [[0, 0.0, 0.0] for _ in range(n_bins)]
    for row, y in zip(probs, labels, strict=True):
        conf, pred = bf_top(row)
        b = bf_bin(conf, n_bins)
        stats[b][0] += 1
        stats[b][1] += conf
        stats[b][2] += 1.0 if pred == int(y) else 0.0
    return [(int(c), float(s), float(a)) for c, s, a in stats]


def bf_ece(probs: Any, labels: Any, n_bins: int) -> float:
    n = len(labels)
    total = 0.0
    for count, s_conf, s_acc in bf_bins(probs, labels, n_bins):
        if count:
            total += count / n * abs(s_acc / count - s_conf / count)
    return total


def bf_mce(probs: Any, labels: Any, n_bins: int, min_count: int) -> float | None:
    gaps = [
        abs(s_acc / count - s_conf / count)
        for count, s_conf, s_acc in bf_bins(probs, labels, n_bins)
        if count >= min_count
    ]
    return max(gaps) if gaps else None


def bf_adaptive_ece(probs: Any, labels: Any, n_bins: int) -> float:
    n = len(labels)
    tops = [bf_top(row) for row in probs]
    order = sorted(range(n), key=lambda i: tops[i][0])  # Python's sort is stable
    base, extra = divmod(n, n_bins)
    total = 0.0
    start = 0
    for g in range(n_bins):
        size = base + (1 if g < extra else 0)
        members = order[start : start + size]
        start += size
        if not members:
            continue
        acc = sum(1.0 for i in members if tops[i][1] == int(labels[i])) / len(members)
        conf = sum(tops[i][0] for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


def bf_classwise_ece(probs: Any, labels: Any, n_bins: int) -> float:
    n, k = len(probs), len(probs[0])
    per_class = []
    for c in range(k):
        stats = [[0, 0.0, 0.0] for _ in range(n_bins)]
        for i in range(n):
            pk = float(probs[i][c])
            b = bf_bin(pk, n_bins)
            stats[b][0] += 1
            stats[b][1] += pk
            stats[b][2] += 1.0 if int(labels[i]) == c else 0.0
        per_class.append(sum(cnt / n * abs(s_y / cnt - s_p / cnt) for cnt, s_p, s_y in stats if cnt))
    return sum(per_class) / k


def bf_brier(probs: Any, labels: Any) -> float:
    total = 0.0
    for i in range(len(probs)):
        for c in range(len(probs[i])):
            target = 1.0 if c == int(labels[i]) else 0.0
            total += (float(probs[i][c]) - target) ** 2
    return total / len(probs)


def tm_calibration_error(
    probs: NDArray[np.float64], labels: NDArray[np.int64], n_bins: int, norm: Literal["l1", "max"]
) -> float:
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=n_bins, norm=norm)
    return float(metric(torch.from_numpy(probs), torch.from_numpy(labels)))


def all_metric_checks(probs: NDArray[np.float64], labels: NDArray[np.int64], n_bins: int) -> None:
    """Every binned metric against its brute-force reference."""
    assert ece(probs, labels, n_bins) == pytest.approx(bf_ece(probs, labels, n_bins), abs=1e-12)
    assert adaptive_ece(probs, labels, n_bins) == pytest.approx(bf_adaptive_ece(probs, labels, n_bins), abs=1e-12)
    assert classwise_ece(probs, labels, n_bins) == pytest.approx(bf_classwise_ece(probs, labels, n_bins), abs=1e-12)
    for min_count in (1, 3, 10):
        expected = bf_mce(probs, labels, n_bins, min_count)
        got = mce(probs, labels, n_bins, min_count)
        if expected is None:
            assert got is None
        else:
            assert got == pytest.approx(expected, abs=1e-12)
    bins = reliability_bins(probs, labels, n_bins)
    ref = bf_bins(probs, labels, n_bins)
    assert len(bins) == n_bins
    for b, (count, s_conf, s_acc) in zip(bins, ref, strict=True):
        assert b.count == count
        if count:
            assert b.mean_confidence == pytest.approx(s_conf / count, abs=1e-12)
            assert b.accuracy == pytest.approx(s_acc / count, abs=1e-12)
        else:
            assert b.mean_confidence is None
            assert b.accuracy is None


# --------------------------------------------------------------------------------------------------
# Accuracy, NLL, Brier
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 3, 10])
def test_nll_matches_sklearn_log_loss(seed: int, k: int) -> None:
    probs, labels = random_case(seed, 300, k)
    assert nll(probs, labels) == pytest.approx(log_loss(labels, probs, labels=list(range(k))), rel=1e-10)


def test_nll_clips_zero_probability_at_eps() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    labels = np.array([1, 0])
    assert nll(probs, labels, eps=1e-12) == pytest.approx((-np.log(1e-12) - np.log(0.5)) / 2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 4, 10])
def test_brier_matches_brute_force(seed: int, k: int) -> None:
    probs, labels = random_case(seed, 120, k)
    assert brier(probs, labels) == pytest.approx(bf_brier(probs, labels), rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_brier_binary_is_twice_sklearn(seed: int) -> None:
    probs, labels = random_case(seed, 400, 2)
    assert brier(probs, labels) == pytest.approx(2.0 * brier_score_loss(labels, probs[:, 1]), rel=1e-12)


def test_brier_range_extremes() -> None:
    labels = np.array([0, 1])
    assert brier(np.array([[1.0, 0.0], [0.0, 1.0]]), labels) == 0.0
    assert brier(np.array([[0.0, 1.0], [1.0, 0.0]]), labels) == 2.0


def test_accuracy_uses_first_max_on_ties() -> None:
    probs = np.array([[0.5, 0.5], [0.4, 0.6]])
    assert accuracy(probs, np.array([0, 1])) == 1.0  # the tie predicts class 0
    assert accuracy(probs, np.array([1, 1])) == 0.5


# --------------------------------------------------------------------------------------------------
# Binning convention
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 2, 3, 5, 10, 15, 50])
def test_bin_indices_edges_and_one(n_bins: int) -> None:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # A value exactly on an edge opens the upper bin ([lo, hi)); 1.0 is in the last bin.
    np.testing.assert_array_equal(bin_indices(edges[:-1], n_bins), np.arange(n_bins))
    assert bin_indices(np.array([1.0]), n_bins)[0] == n_bins - 1
    below = np.nextafter(edges[1:-1], -np.inf)
    np.testing.assert_array_equal(bin_indices(below, n_bins), np.arange(n_bins - 1))
    rng = np.random.default_rng(n_bins)
    values = np.concatenate([rng.random(200), edges, [0.0, 1.0]])
    np.testing.assert_array_equal(bin_indices(values, n_bins), [bf_bin(float(v), n_bins) for v in values])


# --------------------------------------------------------------------------------------------------
# Binned metrics vs torchmetrics and brute force
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 3, 10])
def test_ece_matches_torchmetrics(seed: int, k: int) -> None:
    probs, labels = random_case(seed, 500, k)
    assert probs.max() < 1.0  # continuous random data: no exact 1.0 confidences
    # torchmetrics works in float32, hence the tolerance.
    assert ece(probs, labels) == pytest.approx(tm_calibration_error(probs, labels, 15, "l1"), abs=2e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 10])
def test_ece_of_miscalibrated_model_matches_torchmetrics(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=400)  # labels independent of probs: badly over-confident
    probs = random_probs(rng, 400, k, scale=4.0)
    value = ece(probs, labels)
    assert value > 0.2
    assert value == pytest.approx(tm_calibration_error(probs, labels, 15, "l1"), abs=2e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 5])
def test_mce_matches_torchmetrics_max_norm(seed: int, k: int) -> None:
    probs, labels = random_case(seed, 500, k)
    assert mce(probs, labels, 15, min_count=1) == pytest.approx(
        tm_calibration_error(probs, labels, 15, "max"), abs=2e-6
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("n_bins", [15, 7])
def test_all_binned_metrics_match_brute_force(seed: int, k: int, n_bins: int) -> None:
    probs, labels = random_case(seed, 150, k)
    all_metric_checks(probs, labels, n_bins)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [1, 2, 50])
@pytest.mark.parametrize("k", [2, 4])
def test_tiny_and_many_bins_with_n20(seed: int, n_bins: int, k: int) -> None:
    probs, labels = random_case(seed, 20, k)
    all_metric_checks(probs, labels, n_bins)


def test_n_smaller_than_n_bins_adaptive_skips_empty_groups() -> None:
    probs, labels = random_case(7, 5, 3)
    value = adaptive_ece(probs, labels, 15)
    assert value == pytest.approx(bf_adaptive_ece(probs, labels, 15), abs=1e-12)
    # With one sample per group, adaptive ECE is the mean absolute per-sample gap.
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    assert value == pytest.approx(float(np.mean(np.abs(correct - conf))), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_ties_from_rounded_probabilities(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p1 = np.round(rng.random(200), 1)  # many identical confidences, exact 0.5 ties and 0.0/1.0
    probs = binary_probs(p1)
    labels = rng.integers(0, 2, size=200)
    for n_bins in (15, 10, 4, 3):
        all_metric_checks(probs, labels, n_bins)


def test_ties_straddle_adaptive_groups_in_input_order() -> None:
    # Four samples with identical confidence, two groups: stable sort keeps input order, so the first
    # two (both correct) form one group and the last two (both wrong) the other.
    probs = binary_probs(np.full(4, 0.7))
    labels = np.array([1, 1, 0, 0])
    assert adaptive_ece(probs, labels, 2) == pytest.approx((abs(1 - 0.7) + abs(0 - 0.7)) / 2)
    assert ece(probs, labels, 2) == pytest.approx(abs(0.5 - 0.7))


def test_confidence_exactly_one_is_in_last_bin() -> None:
    # 10 samples with confidence exactly 1.0 (9 correct) and 10 at 0.95 (all correct): both are in the
    # last of 15 bins ([0.933, 1]), where their gaps partly cancel.
    probs = np.concatenate([np.tile([1.0, 0.0, 0.0], (10, 1)), np.tile([0.95, 0.03, 0.02], (10, 1))])
    labels = np.array([0] * 9 + [1] + [0] * 10)
    bins = reliability_bins(probs, labels, 15)
    assert bins[-1].count == 20
    assert sum(b.count for b in bins) == 20
    assert bins[-1].mean_confidence == pytest.approx(0.975)
    assert bins[-1].accuracy == pytest.approx(0.95)
    expected = abs(19 - (10 + 9.5)) / 20
    assert ece(probs, labels) == pytest.approx(expected)
    assert ece(probs, labels) == pytest.approx(bf_ece(probs, labels, 15))
    assert confidence_histogram(probs.max(axis=1))[-1] == 20
    all_metric_checks(probs, labels, 15)
    # torchmetrics 1.x gives exactly-1.0 confidences an extra (n_bins + 1)-th bin, so the gaps no longer
    # cancel: (|9 - 10| + |10 - 9.5|) / 20.  Documents why we do not use it in the service.
    assert tm_calibration_error(probs, labels, 15, "l1") == pytest.approx((1 + 0.5) / 20, abs=1e-6)
    assert tm_calibration_error(probs, labels, 15, "l1") != pytest.approx(ece(probs, labels))


def test_confidences_exactly_on_bin_edges() -> None:
    n_bins = 10
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    on_edges = edges[edges >= 0.5]  # valid top-label confidences for K=2
    p1 = np.repeat(on_edges, 5)
    probs = binary_probs(p1)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=p1.size)
    all_metric_checks(probs, labels, n_bins)
    counts = [b.count for b in reliability_bins(probs, labels, n_bins)]
    expected = np.zeros(n_bins, dtype=int)
    for v in on_edges:
        expected[bf_bin(float(v), n_bins)] += 5
    assert counts == expected.tolist()


def test_classwise_ece_averages_over_classes() -> None:
    # Class 0 predicted 0.8 on 10 samples, 5 of them class 0; probabilities for class 1 are 0.2.
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 5 + [1] * 5)
    # Each class has one populated bin with gap |0.5 - 0.8| = |0.5 - 0.2| = 0.3.
    assert classwise_ece(probs, labels, 15) == pytest.approx(0.3)


def test_mce_none_when_no_bin_reaches_min_count() -> None:
    probs, labels = random_case(0, 12, 3)
    assert mce(probs, labels, 15, min_count=13) is None
    assert mce(probs, labels, 1, min_count=12) == pytest.approx(bf_mce(probs, labels, 1, 12))


def test_ece_from_confidences_accepts_bool_and_float_correctness() -> None:
    rng = np.random.default_rng(0)
    conf = rng.random(50)
    correct = rng.random(50) < conf
    assert ece_from_confidences(conf, correct, 15) == ece_from_confidences(conf, correct.astype(float), 15)


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_and_seed_dependent() -> None:
    probs, labels = random_case(0, 200, 5)
    a = bootstrap_interval(ece, probs, labels, n_boot=200, seed=3)
    b = bootstrap_interval(ece, probs, labels, n_boot=200, seed=3)
    c = bootstrap_interval(ece, probs, labels, n_boot=200, seed=4)
    assert a == b
    assert a != c
    assert a.level == 0.9


@pytest.mark.parametrize("seed", SEEDS)
def test_bootstrap_interval_contains_point_estimate(seed: int) -> None:
    probs, labels = random_case(seed, 400, 10)
    for metric in (accuracy, nll, brier):
        iv = bootstrap_interval(metric, probs, labels, n_boot=300, seed=seed)
        assert iv.lower < metric(probs, labels) < iv.upper
    # ECE of a clearly miscalibrated model: signal dominates the upward bias of resampled ECE.
    rng = np.random.default_rng(seed)
    bad = random_probs(rng, 400, 10, scale=5.0)
    iv = bootstrap_interval(ece, bad, labels, n_boot=300, seed=seed)
    assert iv.lower < ece(bad, labels) < iv.upper


def test_bootstrap_of_ece_is_biased_upwards_for_calibrated_model() -> None:
    """Documents a known property: resampling duplicates rows, which inflates binned ECE, so for a
    calibrated model the percentile interval sits mostly above the point estimate.  The noise floor,
    not this interval, is the right yardstick for "is this ECE real?"."""
    probs, labels = random_case(0, 360, 10)
    iv = bootstrap_interval(ece, probs, labels, n_boot=500, seed=0)
    assert (iv.lower + iv.upper) / 2 > ece(probs, labels)


def test_bootstrap_interval_is_the_percentile_interval_of_row_resamples() -> None:
    # Reference: resample rows with replacement from default_rng(seed) (a single [n_boot, N] draw,
    # which is how the implementation draws when n_boot * N is small) and take the 5%/95% quantiles.
    probs, labels = random_case(6, 80, 4)
    draws = np.random.default_rng(12).integers(0, 80, size=(150, 80))
    stats = [brier(probs[row], labels[row]) for row in draws]
    iv = bootstrap_interval(brier, probs, labels, n_boot=150, level=0.9, seed=12)
    assert iv.lower == pytest.approx(float(np.quantile(stats, 0.05)), abs=1e-12)
    assert iv.upper == pytest.approx(float(np.quantile(stats, 0.95)), abs=1e-12)


def test_bootstrap_interval_narrows_with_n() -> None:
    widths = []
    for n in (200, 3200):
        probs, labels = random_case(11, n, 5)
        iv = bootstrap_interval(nll, probs, labels, n_boot=300, seed=0)
        widths.append(iv.upper - iv.lower)
    # Width scales like 1/sqrt(n): a 16x larger sample should give roughly a 4x narrower interval.
    assert widths[1] < widths[0] / 2.5


def test_bootstrap_resamples_rows_with_replacement() -> None:
    # A metric that reports the number of distinct rows: with replacement it is ~63% of N on average.
    probs, labels = random_case(0, 500, 3)

    def distinct_rows(p: NDArray[np.float64], y: NDArray[np.intp]) -> float:
        return float(len(np.unique(p[:, 0])))

    iv = bootstrap_interval(distinct_rows, probs, labels, n_boot=100, level=0.9, seed=0)
    assert 0.55 * 500 < iv.lower <= iv.upper < 0.70 * 500


# --------------------------------------------------------------------------------------------------
# Noise floor
# --------------------------------------------------------------------------------------------------


def digits_like_confidences(rng: np.random.Generator, n: int) -> NDArray[np.float64]:
    """Top-label confidences of a good digits model: mostly 0.9-0.99 (mean about 0.95)."""
    out: NDArray[np.float64] = 1.0 - rng.beta(1.0, 20.0, size=n)
    return out


def test_noise_floor_matches_explicit_simulation() -> None:
    rng = np.random.default_rng(5)
    conf = digits_like_confidences(rng, 100)
    n_sim = 50
    floor = ece_noise_floor(conf, n_bins=15, n_sim=n_sim, level=0.9, seed=9)
    draws = np.random.default_rng(9).random((n_sim, conf.size))  # one chunk: same stream
    sims = [bf_ece(binary_probs(conf), (draws[s] < conf).astype(int), 15) for s in range(n_sim)]
    # binary_probs(conf) has top label 1 when conf > 0.5, so label 1 means "correct".
    assert floor.mean == pytest.approx(float(np.mean(sims)), abs=1e-12)
    assert floor.upper == pytest.approx(float(np.quantile(sims, 0.9)), abs=1e-12)
    assert floor.n == 100
    assert floor.level == 0.9


def test_noise_floor_plausible_for_digits_model_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    floor_360 = ece_noise_floor(digits_like_confidences(rng, 360), seed=1)
    floor_3600 = ece_noise_floor(digits_like_confidences(rng, 3600), seed=1)
    assert 0.005 < floor_360.mean < 0.03
    assert floor_360.mean < floor_360.upper
    assert floor_3600.mean < floor_360.mean / 2


def test_calibrated_model_ece_usually_below_noise_floor_upper() -> None:
    rng = np.random.default_rng(42)
    conf = digits_like_confidences(rng, 360)
    floor = ece_noise_floor(conf, n_sim=1000, level=0.9, seed=0)
    below = 0
    trials = 200
    for _ in range(trials):
        correct = rng.random(conf.size) < conf  # perfectly calibrated by construction
        below += ece_from_confidences(conf, correct) <= floor.upper
    assert 0.8 * trials <= below <= 0.97 * trials


# --------------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------------


def test_summarize_intervals_match_generic_bootstrap() -> None:
    probs, labels = random_case(2, 250, 6)
    summary = summarize(probs, labels, n_bins=10, n_boot=200, level=0.8, seed=5, mce_min_count=5)
    pairs: dict[str, Callable[[NDArray[np.float64], NDArray[np.intp]], float]] = {
        "accuracy": accuracy,
        "nll": nll,
        "brier": brier,
        "ece": lambda p, y: ece(p, y, 10),
        "adaptive_ece": lambda p, y: adaptive_ece(p, y, 10),
        "classwise_ece": lambda p, y: classwise_ece(p, y, 10),
    }
    for name, fn in pairs.items():
        est = getattr(summary, name)
        assert est.value == pytest.approx(fn(probs, labels), abs=1e-12), name
        assert est.n == 250
        if name in ("accuracy", "nll", "brier"):
            iv = bootstrap_interval(fn, probs, labels, n_boot=200, level=0.8, seed=5)
            assert est.interval == "percentile_bootstrap"
            assert est.lower == pytest.approx(iv.lower, abs=1e-10), name
            assert est.upper == pytest.approx(iv.upper, abs=1e-10), name
        else:
            # Basic bootstrap on the same resamples; the lower end is 0 when the estimate is within noise.
            q_lo, q_hi = np.quantile(bootstrap_statistics(fn, probs, labels, n_boot=200, seed=5), [0.1, 0.9])
            assert est.interval == "basic_bootstrap_noise_floor"
            assert est.upper == pytest.approx(max(0.0, 2 * est.value - q_lo), abs=1e-10), name
            assert est.lower in (0.0, pytest.approx(max(0.0, 2 * est.value - q_hi), abs=1e-10)), name


def test_summarize_adaptive_bootstrap_with_ties_matches_generic() -> None:
    rng = np.random.default_rng(8)
    probs = binary_probs(np.round(rng.random(60), 1))
    labels = rng.integers(0, 2, size=60)
    summary = summarize(probs, labels, n_bins=4, n_boot=100, seed=1)
    stats = bootstrap_statistics(lambda p, y: adaptive_ece(p, y, 4), probs, labels, n_boot=100, seed=1)
    q_lo, q_hi = np.quantile(stats, [0.05, 0.95])
    est = summary.adaptive_ece
    assert est.upper == pytest.approx(max(0.0, 2 * est.value - q_lo), abs=1e-12)
    assert est.lower in (0.0, pytest.approx(max(0.0, 2 * est.value - q_hi), abs=1e-12))


def test_summarize_fields() -> None:
    probs, labels = random_case(1, 300, 4)
    s = summarize(probs, labels, n_boot=100, mce_min_count=7)
    assert isinstance(s, CalibrationSummary)
    assert isinstance(s.reliability, tuple)
    assert list(s.reliability) == reliability_bins(probs, labels, 15)
    assert s.mce == mce(probs, labels, 15, 7)
    assert s.mce_min_count == 7
    assert s.n_bins == 15
    assert s.mean_confidence == pytest.approx(float(probs.max(axis=1).mean()))
    assert s.ece_noise_floor == ece_noise_floor(probs.max(axis=1), n_sim=100, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_bins = 3  # type: ignore[misc]


def test_summarize_timing_n360_k10() -> None:
    probs, labels = random_case(0, 360, 10)
    summarize(probs, labels, n_boot=50)  # warm-up
    start = time.perf_counter()
    summarize(probs, labels, n_boot=1000)
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------------------------------
# Selective prediction and histogram
# --------------------------------------------------------------------------------------------------


def test_selective_prediction_table_matches_brute_force() -> None:
    probs, labels = random_case(4, 300, 5)
    thresholds = (0.0, 0.3, 0.5, 0.9, 1.0)
    rows = selective_prediction_table(probs, labels, thresholds)
    assert [r.threshold for r in rows] == list(thresholds)
    for row in rows:
        kept = [i for i in range(300) if bf_top(probs[i])[0] >= row.threshold]
        assert row.n == len(kept)
        assert row.coverage == pytest.approx(len(kept) / 300)
        if kept:
            assert row.accuracy == pytest.approx(sum(bf_top(probs[i])[1] == labels[i] for i in kept) / len(kept))
        else:
            assert row.accuracy is None
    assert rows[0].coverage == 1.0
    assert rows[-1].n == 0  # no confidence is exactly 1.0 here


def test_selective_keeps_confidence_equal_to_threshold() -> None:
    probs = binary_probs(np.array([0.9, 0.95, 0.7, 0.5]))
    labels = np.array([1, 0, 1, 1])
    rows = selective_prediction_table(probs, labels, (0.5, 0.9, 0.95, 0.99))
    assert [r.n for r in rows] == [4, 2, 1, 0]
    assert [r.accuracy for r in rows] == [0.5, 0.5, 0.0, None]
    assert [r.coverage for r in rows] == [1.0, 0.5, 0.25, 0.0]


def test_selective_default_thresholds() -> None:
    probs, labels = random_case(0, 50, 3)
    rows = selective_prediction_table(probs, labels)
    assert [r.threshold for r in rows] == [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert all(a.coverage >= b.coverage for a, b in itertools.pairwise(rows))


def test_confidence_histogram() -> None:
    rng = np.random.default_rng(0)
    conf = np.concatenate([rng.random(100), [0.0, 1.0, 1.0]])
    hist = confidence_histogram(conf, 15)
    expected = [0] * 15
    for v in conf:
        expected[bf_bin(float(v), 15)] += 1
    assert hist == expected
    assert sum(hist) == 103
    assert confidence_histogram(np.array([]), 5) == [0] * 5


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.array([0.5, 0.5]), np.array([0]), "shape \\[N, K\\]"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "empty"),
        (np.array([[0.5, 0.5]]), np.array([2]), "labels must be in \\[0, 2\\)"),
        (np.array([[0.5, 0.5]]), np.array([-1]), "labels must be in"),
        (np.array([[0.5, 0.5]]), np.array([0.0]), "labels must be integers"),
        (np.array([[0.5, 0.5]]), np.array([[0]]), "labels must have shape \\[N\\]"),
        (np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([0]), "length 1 but there are 2 rows"),
        (np.array([[2.0, -1.0]]), np.array([0]), "must lie in \\[0, 1\\]"),
        (np.array([[0.2, 0.2]]), np.array([0]), "rows must sum to 1"),
        (np.array([[np.nan, 0.5]]), np.array([0]), "NaN"),
        (np.array([[1.0]]), np.array([0]), "at least 2 classes"),
    ],
)
def test_validation_errors(probs: Any, labels: Any, match: str) -> None:
    for fn in (accuracy, nll, brier, ece, adaptive_ece, classwise_ece, mce, reliability_bins, summarize):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels)


def test_validation_of_parameters() -> None:
    probs, labels = random_case(0, 10, 3)
    with pytest.raises(ValueError, match="n_bins"):
        ece(probs, labels, 0)
    with pytest.raises(ValueError, match="min_count"):
        mce(probs, labels, 15, 0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(ece, probs, labels, level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        summarize(probs, labels, n_boot=0)
    with pytest.raises(ValueError, match="confidences must lie"):
        ece_noise_floor(np.array([1.5]))
    with pytest.raises(ValueError, match="empty"):
        ece_noise_floor(np.array([]))
    with pytest.raises(ValueError, match="thresholds"):
        selective_prediction_table(probs, labels, (1.5,))
    with pytest.raises(ValueError, match="eps"):
        nll(probs, labels, eps=0.0)


def test_calibration_package_imports_only_numpy_and_stdlib() -> None:
    code = (
        "import sys, service.calibration\n"
        "bad = sorted(m for m in ('scipy', 'sklearn', 'torch', 'torchmetrics', 'pandas') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_window_summary_equals_summarize_on_the_figures_it_keeps(seed: int) -> None:
    probs, labels = random_case(seed, 300, 6)
    full = summarize(probs, labels, n_boot=150, seed=seed)
    window = summarize_window(probs, labels, n_boot=150, seed=seed)
    assert window.accuracy == full.accuracy and window.ece == full.ece
    assert window.ece_noise_floor == full.ece_noise_floor
    assert window.nll == full.nll.value and window.brier == full.brier.value
    assert window.mean_confidence == full.mean_confidence and window.reliability == full.reliability
