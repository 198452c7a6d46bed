"""Champion vs challenger on the same rows: the paired comparison behind shadow scoring.

A server scores every request with its champion and, off the request path, a challenger; both predictions share
one id, and true labels later arrive for some ids. :func:`compare_paired` takes the two models' probabilities on
the *labelled* rows and says which is better calibrated, with intervals; :func:`compare_unlabelled` summarises
how the two differ on all rows, labels or not.

Why paired: both models are scored on the same rows, so most of the row-to-row noise (easy and hard inputs) is
shared. Each bootstrap replicate resamples the row indices once and evaluates *both* models on them, so the
difference's interval is much narrower than one built from two independent intervals, and identical models give
a difference of exactly 0 in every replicate.

The decision rule (:func:`compare_paired`) names a winner only when two different tests agree: the ECE
difference and the NLL difference must both exclude 0 on the same side (an intersection-union test, Berger 1982:
the false-verdict rate is at most that of either test, at most ``1 - level``, with no multiplicity correction).
Neither metric is enough alone: NLL also rewards accuracy and sharpness (a more accurate, equally calibrated
model has a lower NLL), and ECE on a few hundred rows is dominated by its upward bias, which differs between
models with different confidences. bench/shadow_verdict.py measures the rule (bench/SHADOW_VERDICT.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.calibration.binomial import clopper_pearson_lower
from service.calibration.metrics import (
    DEFAULT_N_BINS,
    bin_indices,
    brier_per_sample,
    ece_from_confidences,
    nll_per_sample,
    top_label,
)
from service.calibration.reference import confidence_histogram
from service.calibration.uncertainty import (
    Interval,
    MetricEstimate,
    _bootstrap_index_chunks,
    _ece_null,
    _percentile_interval,
    _resample_counts,
    calibration_error_interval,
)
from service.calibration.validation import (
    check_level,
    check_n_bins,
    check_positive_int,
    validate_labels,
    validate_probs,
)

__all__ = [
    "DEFAULT_MIN_LABELS",
    "EXACT_AGREEMENT_MAX_N",
    "AgreementSummary",
    "Better",
    "DifferenceMethod",
    "Outcome",
    "PairedComparison",
    "PairedDifference",
    "PairedMetric",
    "compare_paired",
    "compare_unlabelled",
]

DEFAULT_MIN_LABELS = 50
# The exact Clopper–Pearson interval costs O(n) per bisection step (0.1 s at 20 000 rows, 4 s at a million);
# beyond this many rows the Wilson interval is used, which differs from it by less than 1e-4 there.
EXACT_AGREEMENT_MAX_N = 20_000
_NLL_EPS = 1e-12  # as the card's NLL (uncertainty.summarize)

Better = Literal["champion", "challenger", "no significant difference"]
DifferenceMethod = Literal["paired_percentile_bootstrap", "paired_basic_bootstrap_noise_floor"]
Outcome = Literal["challenger_better", "champion_better", "no_significant_difference", "mixed", "insufficient_data"]

_VERDICTS: dict[Outcome, str] = {
    "challenger_better": "challenger better calibrated",
    "champion_better": "champion better calibrated",
    "no_significant_difference": "no significant difference",
    "mixed": "mixed evidence: ECE and NLL disagree",
    "insufficient_data": "insufficient data",
}


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """``challenger - champion`` for one metric, with its paired-bootstrap interval at ``level``.

    ``better`` names the side the interval favours (lower is better for NLL, Brier and ECE, higher for
    accuracy) or says ``"no significant difference"`` when the interval contains 0. ``interval``:
    ``"paired_percentile_bootstrap"`` for accuracy, NLL and Brier (differences of means);
    ``"paired_basic_bootstrap_noise_floor"`` for ECE (see :func:`compare_paired`).
    """

    value: float
    lower: float
    upper: float
    level: float
    better: Better
    interval: DifferenceMethod


@dataclass(frozen=True, slots=True)
class PairedMetric:
    """One metric for both models (each with the card's interval) and their paired difference."""

    champion: MetricEstimate
    challenger: MetricEstimate
    difference: PairedDifference
    higher_is_better: bool


@dataclass(frozen=True, slots=True)
class PairedComparison:
    """What :func:`compare_paired` found on ``n`` labelled rows scored by both models.

    ``outcome`` is the machine field and ``verdict`` the same in words (``"challenger better calibrated"``,
    ``"champion better calibrated"``, ``"no significant difference"``, ``"mixed evidence: ECE and NLL
    disagree"``, ``"insufficient data"``); ``reason`` says which differences led to it.
    """

    n: int
    n_classes: int
    level: float
    n_bins: int
    n_bootstrap: int
    min_labels: int
    accuracy: PairedMetric
    nll: PairedMetric
    brier: PairedMetric
    ece: PairedMetric
    outcome: Outcome
    verdict: str
    reason: str


@dataclass(frozen=True, slots=True)
class AgreementSummary:
    """Label-free comparison of champion and challenger on the same ``n`` rows.

    ``agreement`` is the fraction of rows whose top labels (``np.argmax``, first max on ties) are equal, with a
    two-sided interval at ``agreement_interval.level``: Clopper–Pearson (exact, conservative) up to
    ``EXACT_AGREEMENT_MAX_N`` rows, Wilson beyond (``agreement_method``); the histograms count each model's
    top-label confidences in ``n_bins`` equal-width bins (:func:`service.calibration.reference.
    confidence_histogram`, the card's convention).
    """

    n: int
    n_agree: int
    agreement: float
    agreement_interval: Interval
    agreement_method: Literal["clopper_pearson", "wilson"]
    champion_mean_confidence: float
    challenger_mean_confidence: float
    mean_abs_confidence_difference: float
    n_bins: int
    champion_histogram: tuple[int, ...]
    challenger_histogram: tuple[int, ...]


def _validate_pair(
    champion: NDArray[np.floating[Any]], challenger: NDArray[np.floating[Any]]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    cp = validate_probs(champion, "champion")
    ch = validate_probs(challenger, "challenger")
    if cp.shape != ch.shape:
        raise ValueError(
            f"champion and challenger must score the same rows and classes: shapes {cp.shape} and {ch.shape}"
        )
    return cp, ch


def _better(lower: float, upper: float, higher_is_better: bool) -> Better:
    if lower > 0.0:
        return "challenger" if higher_is_better else "champion"
    if upper < 0.0:
        return "champion" if higher_is_better else "challenger"
    return "no significant difference"


def _fmt(diff: PairedDifference) -> str:
    return f"{diff.value:+.4f} [{diff.lower:+.4f}, {diff.upper:+.4f}]"


def _decide(ece: PairedDifference, nll: PairedDifference, n: int, min_labels: int) -> tuple[Outcome, str]:
    level = f"{ece.level:.0%}"
    detail = f"challenger - champion on {n} labelled rows, {level} paired intervals: ECE {_fmt(ece)}, NLL {_fmt(nll)}"
    if n < min_labels:
        return "insufficient_data", f"{n} labelled rows scored by both models, fewer than min_labels={min_labels}"
    sides = {ece.better, nll.better} - {"no significant difference"}
    if ece.better == nll.better == "challenger":
        return "challenger_better", f"ECE and NLL both lower for the challenger; {detail}"
    if ece.better == nll.better == "champion":
        return "champion_better", f"ECE and NLL both lower for the champion; {detail}"
    if len(sides) == 2:
        return "mixed", f"ECE favours the {ece.better}, NLL the {nll.better}; {detail}"
    if sides:
        which = "ECE" if ece.better != "no significant difference" else "NLL"
        return (
            "no_significant_difference",
            f"only {which} favours the {sides.pop()}; a winner needs ECE and NLL to agree; {detail}",
        )
    return "no_significant_difference", f"neither ECE nor NLL differs significantly; {detail}"


def compare_paired(
    champion: NDArray[np.floating[Any]],
    challenger: NDArray[np.floating[Any]],
    labels: NDArray[np.integer[Any]],
    *,
    n_bins: int = DEFAULT_N_BINS,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_labels: int = DEFAULT_MIN_LABELS,
) -> PairedComparison:
    """Compare two models' calibration on the same labelled rows: ``champion`` and ``challenger`` [N, K]
    probabilities, ``labels`` [N] ints.

    Per model, accuracy, NLL, Brier and top-label ECE (``n_bins`` equal-width bins) are the card's figures:
    equal to :func:`service.calibration.uncertainty.summarize`'s for the same ``n_bins``, ``n_bootstrap``,
    ``level`` and ``seed`` (percentile intervals; ECE with :func:`calibration_error_interval`).

    Differences, ``challenger - champion``, come from a *paired* bootstrap: each of the ``n_bootstrap``
    replicates resamples the row indices once (the very resamples of ``summarize`` for this seed) and evaluates
    both models on them. Accuracy, NLL and Brier get the percentile interval of the replicate differences
    (differences of means; measured coverage at nominal 0.95 in bench/SHADOW_VERDICT.md). ECE gets the *basic*
    bootstrap ``[2d - q_hi, 2d - q_lo]`` of the difference ``d``, which subtracts the resamples' extra bias, and
    one more rule for a model whose ECE is within its noise floor (the lower end of its card interval is 0): such
    a model may be perfectly calibrated, so the interval reaches what the difference would be if its true ECE
    were 0, i.e. up to the challenger's upper bound when it is the champion (down to minus the champion's upper
    bound when it is the challenger). Why: ECE is biased upwards most for a calibrated model, and the basic
    bootstrap removes only part of that bias (about 40%), so without this rule the interval for "calibrated vs
    clearly miscalibrated" covered the true difference in only 0.6-0.8 of trials; and such a model can never be
    named the worse calibrated of the two (the interval then reaches past 0). Models with the same top-label
    confidence and correctness on every row have equal ECE on every resample: [0, 0].

    Decision rule (``outcome``/``verdict``), an intersection-union test of ECE and NLL:

    * ``insufficient_data`` when ``N < min_labels`` (the figures are still computed);
    * ``challenger_better`` (``champion_better``) when the ECE *and* the NLL difference intervals both lie
      below (above) 0;
    * ``mixed`` when both exclude 0 but on opposite sides (typically a more accurate but worse calibrated model);
    * ``no_significant_difference`` otherwise, including when only one of the two is significant.

    Requiring agreement bounds the rate of a false winner by that of either test alone (no Bonferroni or Holm
    correction is needed: both must reject, each at ``1 - level`` two-sided). Measured with ``level=0.95``,
    300 trials per cell (bench/SHADOW_VERDICT.md): equally calibrated models, i.e. two different perfectly
    calibrated models of different sharpness (NLL 0.44 apart) or two different, equally overconfident ones,
    were named a winner in 0.3-3.0% of trials at n = 100, 300, 1000, 3000 (one-sided 95% upper bounds
    1.6-5.2%); a challenger served at T=1 whose fitted temperature is 2.0 (overconfident) was caught in 66%,
    98%, 100%, 100% of trials at those n, one with fitted T=0.6 (underconfident) in 50%, 93%, 100%, 100%, and a
    mild one (fitted T=1.25, ECE 0.07) in 4%, 21%, 80%, 99%; a wrong winner was never named. Identical inputs
    give every difference exactly 0 with interval [0, 0] and ``no_significant_difference``.
    """
    check_n_bins(n_bins)
    check_positive_int(n_bootstrap, "n_bootstrap")
    check_positive_int(min_labels, "min_labels")
    check_level(level)
    cp, ch = _validate_pair(champion, challenger)
    n, k = cp.shape
    y = validate_labels(labels, n_classes=k, n_samples=n)

    models = (cp, ch)
    # Per model and sample: correct, NLL, Brier; and the ECE design (correct - conf in the row's bin).
    per_sample: list[NDArray[np.float64]] = []
    designs: list[NDArray[np.float64]] = []
    confs: list[NDArray[np.float64]] = []
    ece_points: list[float] = []
    for p in models:
        conf, correct = top_label(p, y)
        per_sample.append(np.stack([correct, nll_per_sample(p, y, _NLL_EPS), brier_per_sample(p, y)], axis=1))
        design = np.zeros((n, n_bins), dtype=np.float64)
        design[np.arange(n), bin_indices(conf, n_bins)] = correct - conf
        designs.append(design)
        confs.append(conf)
        ece_points.append(ece_from_confidences(conf, correct, n_bins))
    delta = per_sample[1] - per_sample[0]  # exactly 0 for identical models

    linear = np.empty((2, n_bootstrap, 3), dtype=np.float64)
    linear_diff = np.empty((n_bootstrap, 3), dtype=np.float64)
    ece_boot = np.empty((2, n_bootstrap), dtype=np.float64)
    pos = 0
    for idx in _bootstrap_index_chunks(n, n_bootstrap, seed):
        r = idx.shape[0]
        w = _resample_counts(idx)
        for m in range(2):
            linear[m, pos : pos + r] = (w @ per_sample[m]) / n
            ece_boot[m, pos : pos + r] = np.sum(np.abs(w @ designs[m]), axis=1) / n
        linear_diff[pos : pos + r] = (w @ delta) / n
        pos += r

    estimates: list[list[MetricEstimate]] = [[], []]  # [model][metric: accuracy, nll, brier, ece]
    for m in range(2):
        points = per_sample[m].mean(axis=0)
        for j in range(3):
            iv = _percentile_interval(linear[m, :, j], level)
            estimates[m].append(MetricEstimate(float(points[j]), iv.lower, iv.upper, n))
        null = _ece_null(confs[m], n_bins, n_bootstrap, seed)
        iv = calibration_error_interval(ece_points[m], ece_boot[m], null, level)
        estimates[m].append(
            MetricEstimate(ece_points[m], iv.lower, iv.upper, n, interval="basic_bootstrap_noise_floor")
        )

    metrics: list[PairedMetric] = []
    for j, higher_is_better in enumerate((True, False, False)):
        value = estimates[1][j].value - estimates[0][j].value
        iv = _percentile_interval(linear_diff[:, j], level)
        diff = PairedDifference(
            value,
            iv.lower,
            iv.upper,
            level,
            _better(iv.lower, iv.upper, higher_is_better),
            "paired_percentile_bootstrap",
        )
        metrics.append(PairedMetric(estimates[0][j], estimates[1][j], diff, higher_is_better))

    same_rows = bool(np.array_equal(designs[0], designs[1]))
    ece_diff = _ece_difference(ece_points, ece_boot, estimates[0][3], estimates[1][3], level, same_rows)
    metrics.append(PairedMetric(estimates[0][3], estimates[1][3], ece_diff, higher_is_better=False))

    outcome, reason = _decide(ece_diff, metrics[1].difference, n, min_labels)
    return PairedComparison(
        n=n,
        n_classes=k,
        level=level,
        n_bins=n_bins,
        n_bootstrap=n_bootstrap,
        min_labels=min_labels,
        accuracy=metrics[0],
        nll=metrics[1],
        brier=metrics[2],
        ece=metrics[3],
        outcome=outcome,
        verdict=_VERDICTS[outcome],
        reason=reason,
    )


def _ece_difference(
    points: list[float],
    boot: NDArray[np.float64],
    champion: MetricEstimate,
    challenger: MetricEstimate,
    level: float,
    same_rows: bool,
) -> PairedDifference:
    """Interval of ``ECE_challenger - ECE_champion``: the basic paired bootstrap, widened where a model may be
    perfectly calibrated (see :func:`compare_paired`); [0, 0] when both models have the same top-label
    confidence and correctness on every row (``same_rows``), whose ECEs are then equal on every resample."""
    value = points[1] - points[0]
    replicates = boot[1] - boot[0]
    alpha = 1.0 - level
    q_lo, q_hi = np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0])
    lower = 2.0 * value - float(q_hi)
    upper = 2.0 * value - float(q_lo)
    if not same_rows:
        # A model within its noise floor may have a true ECE of 0; the difference is then the other model's
        # ECE (or minus it), bounded by the other's card interval. This also keeps such a model from being
        # named the worse calibrated: the interval then reaches past 0.
        if champion.lower <= 0.0:
            upper = max(upper, challenger.upper)
        if challenger.lower <= 0.0:
            lower = min(lower, -champion.upper)
    return PairedDifference(
        value, lower, upper, level, _better(lower, upper, False), "paired_basic_bootstrap_noise_floor"
    )


def _clopper_pearson(successes: int, n: int, level: float) -> Interval:
    """Two-sided Clopper–Pearson interval (each tail ``(1 - level) / 2``) from the one-sided bound of
    :mod:`service.calibration.binomial`: the upper end is ``1 - lower(failures)``."""
    one_sided = 1.0 - (1.0 - level) / 2.0
    lower = clopper_pearson_lower(successes, n, one_sided)
    upper = 1.0 - clopper_pearson_lower(n - successes, n, one_sided)
    return Interval(lower=lower, upper=upper, level=level)


def _wilson(successes: int, n: int, level: float) -> Interval:
    """Wilson score interval (Wilson 1927), with the ends at 0 and 1 exactly when there are no failures or no
    successes."""
    z = NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1.0 + z * z / n)
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / (1.0 + z * z / n)
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(lower=lower, upper=upper, level=level)


def compare_unlabelled(
    champion: NDArray[np.floating[Any]],
    challenger: NDArray[np.floating[Any]],
    *,
    n_bins: int = DEFAULT_N_BINS,
    level: float = 0.95,
) -> AgreementSummary:
    """How two models' predictions on the same rows differ, without labels: ``champion`` and ``challenger``
    [N, K] probabilities.

    Top-label agreement rate with a Clopper–Pearson interval (exact, conservative; Wilson beyond
    ``EXACT_AGREEMENT_MAX_N`` rows, where the two agree to 1e-4; rows treated as independent draws from the
    traffic), each model's mean top-label confidence and confidence histogram (``n_bins``
    equal-width bins), and the mean absolute difference of the two top-label confidences row by row.
    Agreement says nothing about which model is right; only labels (:func:`compare_paired`) can.
    """
    check_n_bins(n_bins)
    check_level(level)
    cp, ch = _validate_pair(champion, challenger)
    n = cp.shape[0]
    pred_cp = np.argmax(cp, axis=1)
    pred_ch = np.argmax(ch, axis=1)
    rows = np.arange(n)
    conf_cp = cp[rows, pred_cp]
    conf_ch = ch[rows, pred_ch]
    n_agree = int(np.count_nonzero(pred_cp == pred_ch))
    exact = n <= EXACT_AGREEMENT_MAX_N
    return AgreementSummary(
        n=n,
        n_agree=n_agree,
        agreement=n_agree / n,
        agreement_interval=(_clopper_pearson if exact else _wilson)(n_agree, n, level),
        agreement_method="clopper_pearson" if exact else "wilson",
        champion_mean_confidence=float(np.mean(conf_cp)),
        challenger_mean_confidence=float(np.mean(conf_ch)),
        mean_abs_confidence_difference=float(np.mean(np.abs(conf_ch - conf_cp))),
        n_bins=n_bins,
        champion_histogram=tuple(confidence_histogram(np.clip(conf_cp, 0.0, 1.0), n_bins)),
        challenger_histogram=tuple(confidence_histogram(np.clip(conf_ch, 0.0, 1.0), n_bins)),
    )
