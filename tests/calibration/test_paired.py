"""Champion vs challenger on the same rows (service/calibration/paired.py).

The simulations draw from bench/shadow_verdict.py's populations, where every true metric is exact; the full
tables are in bench/SHADOW_VERDICT.md.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.stats import beta
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from service.calibration.paired import EXACT_AGREEMENT_MAX_N, compare_paired, compare_unlabelled
from service.calibration.reference import confidence_histogram
from service.calibration.temperature import softmax
from service.calibration.uncertainty import summarize
from tests.conftest import load_bench

METRICS = ("accuracy", "nll", "brier", "ece")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("shadow_verdict.py")


@pytest.fixture(scope="module")
def pairs(bench: ModuleType) -> dict[str, Any]:
    pairs: dict[str, Any] = bench.make_pairs()
    return pairs


def _models(
    n: int = 400, k: int = 5, seed: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.intp]]:
    rng = np.random.default_rng(seed)
    z = 2.0 * rng.standard_normal((n, k))
    truth = softmax(z)
    labels = np.array([rng.choice(k, p=row) for row in truth], dtype=np.intp)
    return truth, softmax(1.7 * z + 0.3 * rng.standard_normal((n, k))), labels


def _brute_force_ece(probs: NDArray[np.float64], labels: NDArray[np.intp], n_bins: int) -> float:
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = []
        for p, y in zip(probs, labels, strict=True):
            conf = float(np.max(p))
            if lo <= conf < hi or (b == n_bins - 1 and conf == 1.0):
                members.append((conf, float(int(np.argmax(p)) == y)))
        if members:
            confs, hits = zip(*members, strict=True)
            total += len(members) / len(labels) * abs(float(np.mean(hits)) - float(np.mean(confs)))
    return total


# --------------------------------------------------------------------------------------------------
# Point figures and exact properties
# --------------------------------------------------------------------------------------------------


def test_point_metrics_match_independent_implementations() -> None:
    champion, challenger, labels = _models()
    result = compare_paired(champion, challenger, labels, n_bootstrap=50)
    for side, probs in (("champion", champion), ("challenger", challenger)):
        assert getattr(result.accuracy, side).value == pytest.approx(accuracy_score(labels, probs.argmax(axis=1)))
        assert getattr(result.nll, side).value == pytest.approx(log_loss(labels, probs, labels=range(5)), rel=1e-9)
        assert getattr(result.brier, side).value == pytest.approx(
            brier_score_loss(labels, probs, labels=range(5)), rel=1e-9
        )
        assert getattr(result.ece, side).value == pytest.approx(_brute_force_ece(probs, labels, 15), abs=1e-12)
    for m in METRICS:
        metric = getattr(result, m)
        assert metric.difference.value == pytest.approx(metric.challenger.value - metric.champion.value, abs=1e-15)
        assert metric.difference.lower <= metric.difference.upper
    assert result.accuracy.higher_is_better and not result.ece.higher_is_better


def test_each_model_gets_the_cards_figures() -> None:
    # Same resamples and nulls as summarize for the seed: the per-model estimates are the card's.
    champion, challenger, labels = _models(seed=1)
    result = compare_paired(champion, challenger, labels, n_bootstrap=300, level=0.9, seed=4)
    for side, probs in (("champion", champion), ("challenger", challenger)):
        card = summarize(probs, labels, n_boot=300, level=0.9, seed=4)
        for m in METRICS:
            ours, theirs = getattr(result, m), getattr(card, m)
            mine = getattr(ours, side)
            assert mine.interval == theirs.interval
            assert (mine.value, mine.lower, mine.upper) == pytest.approx(
                (theirs.value, theirs.lower, theirs.upper), rel=1e-12, abs=1e-15
            )


def test_identical_models_differ_by_exactly_zero() -> None:
    champion, _, labels = _models(seed=2)
    result = compare_paired(champion, champion.copy(), labels, n_bootstrap=200)
    for m in METRICS:
        d = getattr(result, m).difference
        assert (d.value, d.lower, d.upper) == (0.0, 0.0, 0.0), m
        assert d.better == "no significant difference"
    assert result.outcome == "no_significant_difference"
    assert result.verdict == "no significant difference"


def test_swapping_the_models_mirrors_every_figure() -> None:
    champion, challenger, labels = _models(seed=3)
    ab = compare_paired(champion, challenger, labels, n_bootstrap=200)
    ba = compare_paired(challenger, champion, labels, n_bootstrap=200)
    assert ab.outcome == "champion_better" and ba.outcome == "challenger_better"
    assert ab.verdict == "champion better calibrated" and ba.verdict == "challenger better calibrated"
    for m in METRICS:
        d, e = getattr(ab, m).difference, getattr(ba, m).difference
        assert (d.value, d.lower, d.upper) == pytest.approx((-e.value, -e.upper, -e.lower), abs=1e-12)
        assert getattr(ab, m).champion == getattr(ba, m).challenger


def test_too_few_labels_is_insufficient_data() -> None:
    champion, challenger, labels = _models(n=40, seed=3)
    result = compare_paired(champion, challenger, labels, n_bootstrap=100)
    assert (result.outcome, result.verdict) == ("insufficient_data", "insufficient data")
    assert "min_labels=50" in result.reason
    assert compare_paired(champion, challenger, labels, n_bootstrap=100, min_labels=30).outcome != "insufficient_data"


def test_ece_difference_allows_a_true_ece_of_zero_for_a_model_within_its_noise_floor() -> None:
    # The champion is the truth (calibrated): its ECE on 300 rows is noise, so the difference may be as large
    # as the challenger's whole ECE; the basic bootstrap alone stopped short of it (coverage 0.6-0.8).
    rng = np.random.default_rng(5)
    z = 2.0 * rng.standard_normal((300, 4))
    truth = softmax(z)
    labels = np.array([rng.choice(4, p=row) for row in truth], dtype=np.intp)
    result = compare_paired(truth, softmax(2.0 * z), labels, n_bootstrap=200)
    d = result.ece.difference
    assert d.interval == "paired_basic_bootstrap_noise_floor"
    assert result.ece.champion.value > 0.0 and result.ece.champion.lower == 0.0
    assert result.ece.challenger.lower > 0.0
    assert d.upper >= result.ece.challenger.upper
    assert d.lower > 0.0 and d.better == "champion"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a, b, y: (a[:, :3] / a[:, :3].sum(axis=1, keepdims=True), b, y), "same rows and classes"),
        (lambda a, b, y: (a, b[:-1], y), "same rows and classes"),
        (lambda a, b, y: (a, np.where(b > 0.5, np.nan, b), y), "challenger contains NaN"),
        (lambda a, b, y: (a * 2.0 - 0.1, b, y), "champion"),
        (lambda a, b, y: (a, b, y[:-1]), "labels has length"),
        (lambda a, b, y: (a, b, np.where(y == 0, 5, y)), r"labels must be in \[0, 5\)"),
        (lambda a, b, y: (a, b, y.astype(np.float64)), "labels must be integers"),
    ],
)
def test_invalid_inputs_raise_clear_errors(mutate: Any, message: str) -> None:
    champion, challenger, labels = _models(n=60)
    a, b, y = mutate(champion, challenger, labels)
    with pytest.raises(ValueError, match=message):
        compare_paired(a, b, y, n_bootstrap=20)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_bootstrap": 0}, "n_bootstrap"),
        ({"level": 1.0}, "level"),
        ({"n_bins": 0}, "n_bins"),
        ({"min_labels": 0}, "min_labels"),
    ],
)
def test_invalid_options_raise(kwargs: dict[str, Any], message: str) -> None:
    champion, challenger, labels = _models(n=60)
    with pytest.raises(ValueError, match=message):
        compare_paired(champion, challenger, labels, **kwargs)


# --------------------------------------------------------------------------------------------------
# Label-free agreement
# --------------------------------------------------------------------------------------------------


def test_unlabelled_agreement_and_histograms() -> None:
    champion, challenger, _ = _models(n=500, seed=6)
    summary = compare_unlabelled(champion, challenger)
    pred_a, pred_b = champion.argmax(axis=1), challenger.argmax(axis=1)
    agree = int(np.sum(pred_a == pred_b))
    assert (summary.n, summary.n_agree, summary.agreement) == (500, agree, agree / 500)
    # Two-sided Clopper-Pearson from scipy's Beta quantiles.
    iv = summary.agreement_interval
    assert iv.level == 0.95
    assert iv.lower == pytest.approx(beta.ppf(0.025, agree, 500 - agree + 1), abs=1e-9)
    assert iv.upper == pytest.approx(beta.ppf(0.975, agree + 1, 500 - agree), abs=1e-9)
    conf_a, conf_b = champion.max(axis=1), challenger.max(axis=1)
    assert summary.champion_mean_confidence == pytest.approx(conf_a.mean())
    assert summary.challenger_mean_confidence == pytest.approx(conf_b.mean())
    assert summary.mean_abs_confidence_difference == pytest.approx(np.abs(conf_a - conf_b).mean())
    assert summary.champion_histogram == tuple(confidence_histogram(conf_a))
    assert summary.challenger_histogram == tuple(confidence_histogram(conf_b))
    assert sum(summary.challenger_histogram) == 500 and len(summary.champion_histogram) == summary.n_bins == 15


def test_unlabelled_identical_models_agree_fully() -> None:
    champion, _, _ = _models(n=200, seed=7)
    summary = compare_unlabelled(champion, champion, n_bins=10, level=0.9)
    assert (summary.agreement, summary.mean_abs_confidence_difference) == (1.0, 0.0)
    assert summary.agreement_interval.upper == 1.0
    assert summary.agreement_interval.lower == pytest.approx(0.05 ** (1 / 200))  # (alpha / 2) ** (1 / n)
    assert summary.champion_histogram == summary.challenger_histogram and len(summary.champion_histogram) == 10
    with pytest.raises(ValueError, match="same rows and classes"):
        compare_unlabelled(champion, champion[:-1])


def test_unlabelled_large_n_uses_wilson_close_to_the_exact_interval() -> None:
    # Beyond EXACT_AGREEMENT_MAX_N rows the exact interval costs seconds (O(n) per bisection step); the Wilson
    # interval used there is within 1e-4 of it.
    n = EXACT_AGREEMENT_MAX_N + 1
    rng = np.random.default_rng(8)
    champion = np.zeros((n, 2))
    champion[:, 0] = 0.9
    champion[:, 1] = 0.1
    challenger = champion.copy()
    flip = rng.random(n) < 0.02
    challenger[flip] = champion[flip][:, ::-1]
    summary = compare_unlabelled(champion, challenger)
    agree = int(n - flip.sum())
    assert summary.agreement_method == "wilson" and summary.n_agree == agree
    iv = summary.agreement_interval
    assert iv.lower == pytest.approx(beta.ppf(0.025, agree, n - agree + 1), abs=1e-4)
    assert iv.upper == pytest.approx(beta.ppf(0.975, agree + 1, n - agree), abs=1e-4)
    small = compare_unlabelled(champion[:1000], challenger[:1000])
    assert small.agreement_method == "clopper_pearson"


# --------------------------------------------------------------------------------------------------
# Simulation: false verdicts, detection and coverage (bench/shadow_verdict.py's populations)
# --------------------------------------------------------------------------------------------------


def test_population_is_as_described(pairs: dict[str, Any]) -> None:
    # The "equally calibrated" pairs really are: equal true ECE (0 for the calibrated pair, exactly equal
    # for the twins), and the truth of the detection pair is known.
    sharp = pairs["calibrated, different sharpness"]
    assert sharp.true_metrics("champion")["ece"] == pytest.approx(0.0, abs=1e-12)
    assert sharp.true_metrics("challenger")["ece"] == pytest.approx(0.0, abs=1e-12)
    assert sharp.true_difference()["nll"] > 0.3  # ...yet the challenger's NLL is far worse
    twins = pairs["equally overconfident"].true_difference()
    assert all(abs(twins[m]) < 1e-12 for m in METRICS)
    assert pairs["challenger T=1, fitted T=2.0"].true_difference()["ece"] > 0.15


@pytest.mark.parametrize("name", ["calibrated, different sharpness", "equally overconfident"])
def test_equally_calibrated_models_rarely_get_a_winner(bench: ModuleType, pairs: dict[str, Any], name: str) -> None:
    # 200 trials, n = 300, n_bootstrap = 200, level 0.95 (about 2 s each). Measured with these seeds: a winner
    # was named in 2/200 trials (1.0%) for the calibrated pair of different sharpness and 4/200 (2.0%) for the
    # twins. The NLL / Brier intervals covered the true difference in 0.925 / 0.915 (sharpness) and
    # 0.92 / 0.95 (twins) of trials, nominal 0.95 (bench/SHADOW_VERDICT.md: 0.91-0.98 over n = 100..3000).
    with threadpool_limits(1):  # small matrix products: threads only contend on a loaded machine (2-4x slower)
        rates = bench.run_trials(pairs[name], n=300, trials=200, seed=21, n_bootstrap=200)
    assert rates.winner_named() / rates.trials <= 0.08, rates
    for m in ("nll", "brier"):
        assert rates.covered[m] / rates.trials >= 0.9, (m, rates)


def test_overconfident_challenger_is_detected(bench: ModuleType, pairs: dict[str, Any]) -> None:
    # Challenger at T=1 whose fitted temperature is 2.0: measured detection 200/200 trials at n = 500, never
    # the wrong winner. The NLL / Brier intervals covered the true difference in 0.925 / 0.945 of trials.
    with threadpool_limits(1):
        rates = bench.run_trials(pairs["challenger T=1, fitted T=2.0"], n=500, trials=200, seed=22, n_bootstrap=200)
    assert rates.rate("champion_better") >= 0.9, rates
    assert rates.outcomes.get("challenger_better", 0) == 0, rates
    for m in ("nll", "brier"):
        assert rates.covered[m] / rates.trials >= 0.9, (m, rates)
