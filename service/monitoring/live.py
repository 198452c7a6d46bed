"""Judge a live window of predictions against the calibration card: one typed check per question.

Two windows, because labels are scarce. The *labelled* window (predictions that received feedback) answers
the real question, "are the probabilities still calibrated?", with ECE and accuracy against the card's test
split. The *unlabelled* window (the most recent predictions, labelled or not) can only show that the inputs
or the model's behaviour changed: the confidence distribution drifted (PSI, two-sample KS), the estimated
accuracy fell, or the predicted classes moved away from the training prior. Either signal is worth a look;
only the labelled one proves miscalibration.

Structure. Each check is one function that returns a frozen dataclass: its ``Reason`` (code, status,
message, value, threshold, gate, noise) and the evidence behind it as typed fields, so that callers (the
Prometheus gauges in :mod:`service.monitoring.monitor`, tests) read numbers by name instead of looking up
reason codes or keys of a JSON dict:

- labelled window (:func:`labelled_checks` -> :class:`LabelledChecks`): :func:`check_live_ece`
  (:class:`LiveEceCheck`) and :func:`check_live_accuracy_drop` (:class:`AccuracyDropCheck`);
- unlabelled window (:func:`unlabelled_checks` -> :class:`UnlabelledChecks`): :func:`check_confidence_psi`
  (:class:`PsiCheck`), :func:`check_confidence_ks` (:class:`KsCheck`, or None for a card without raw
  confidences), :func:`check_estimated_accuracy_drop` (:class:`EstimatedAccuracyCheck`) and
  :func:`check_class_shift` (:class:`ClassShiftCheck`).

What checks share is computed once by the window's function and passed in: the validated window, the
bootstrap summary of the labelled window (:func:`service.calibration.uncertainty.summarize_window`) and the
top-label confidences (and classes) of each window. :class:`LiveReport` holds both windows' results and the
reasons in order; its JSON ``summary`` (what ``/health/calibration`` returns as ``live``) is built from the
typed results by :func:`report_summary` alone.

Every check yields exactly one ``Reason``; a window below its minimum size yields one ``insufficient_data``
reason instead of its checks (and None for its typed results), so a quiet service never raises a false
alarm. Inputs are plain arrays (the prediction log hands them over); this module is pure numpy and performs
no I/O.

Sampling noise. The thresholds (ECE 0.05, accuracy drop 0.05, PSI 0.1, total variation 0.1) are effect sizes
that assume large samples. On the bundled digits model, clean windows of 100 predictions exceed PSI 0.1 in
~86% and total variation 0.1 in ~75% of cases, and a perfectly calibrated model shows ECE > 0.05 in ~6% of
50-label windows, purely from sampling noise. So every live check only alarms when its statistic exceeds the
threshold *and* passes a gate against its own no-change distribution at these sample sizes, named in the
reason's ``gate`` field and message:

- ``live_ece``: the ECE noise floor (:func:`service.calibration.uncertainty.ece_noise_floor`: ECE of a
  perfectly calibrated model with these very confidences and this n, simulated);
- ``live_accuracy_drop``: :func:`service.monitoring.drift.accuracy_drop_noise` (one-sided two-sample test of
  proportions, simulated under Jeffreys' prior);
- ``confidence_psi`` and ``class_shift``: the Dirichlet-multinomial null of
  :func:`service.monitoring.drift.psi_noise` / :func:`~service.monitoring.drift.total_variation_noise`;
- ``estimated_accuracy_drop``: :func:`service.monitoring.drift.estimated_accuracy_drop_noise`;
- ``confidence_ks``: its p-value.

The status combines six checks, so each gate runs at ``false_alarm_rate / 6`` (Bonferroni): the chance that
clean traffic raises the overall status is then at most ``false_alarm_rate`` per evaluation, at every window
size (measured in bench/FALSE_ALARMS.md). The label-free nulls depend only on the card and the window size,
so they are cached per (reference, n); the ECE floor depends on the window's confidences and is simulated per
evaluation (a few ms to ~0.1 s at 500 labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.calibration.metrics import bin_indices
from service.calibration.uncertainty import MetricEstimate, NoiseFloor, WindowSummary, ece_noise_floor, summarize_window
from service.calibration.validation import validate_labels, validate_probs
from service.card import CalibrationCard, SplitMetrics
from service.monitoring.drift import (
    KSResult,
    SamplingNoise,
    accuracy_drop_noise,
    estimated_accuracy_drop_noise,
    histogram,
    ks_two_sample,
    population_stability_index,
    psi_noise,
    total_variation,
    total_variation_noise,
)
from service.monitoring.health import Reason, Status

__all__ = [
    "REFERENCE_CONFIDENCE_DECIMALS",
    "AccuracyDropCheck",
    "ClassShiftCheck",
    "EstimatedAccuracyCheck",
    "KsCheck",
    "LabelledChecks",
    "LabelledWindow",
    "LiveEceCheck",
    "LiveReport",
    "LiveThresholds",
    "PsiCheck",
    "UnlabelledChecks",
    "UnlabelledWindow",
    "check_class_shift",
    "check_confidence_ks",
    "check_confidence_psi",
    "check_estimated_accuracy_drop",
    "check_live_accuracy_drop",
    "check_live_ece",
    "evaluate_live",
    "labelled_checks",
    "null_size",
    "report_summary",
    "unlabelled_checks",
]


# The trainer stores the card's raw reference confidences rounded to 6 decimals; live confidences are rounded
# the same way before the KS test, or the float32 values just below a rounded 1.0 would count as a shift.
REFERENCE_CONFIDENCE_DECIMALS = 6
# Simulations behind the cached nulls (PSI, class shift, accuracy drops): cheap (multinomial draws over at
# most K bins, ~0.1 s, once per window size) and enough for a stable 99.8% quantile (~40 simulations above it).
_NOISE_SIMULATIONS = 20000
# Simulations behind the live ECE floor, run on every evaluation (its confidences change with the window):
# ~0.05 s at 500 labels.
_ECE_SIMULATIONS = 2000
# The live checks whose reasons can alarm; the false-alarm budget is split equally among them (Bonferroni).
LIVE_CHECKS = 6
# Level of the bootstrap intervals on live metrics (the card's intervals use the same).
_INTERVAL_LEVEL = 0.9
# The same level as a percentage, for messages.
_LEVEL_PERCENT = round(_INTERVAL_LEVEL * 100)


@dataclass(frozen=True, slots=True)
class LiveThresholds:
    """Where live checks turn warning or critical; the defaults follow common practice (see each check).

    ``false_alarm_rate`` is the chance per evaluation that clean traffic (a calibrated model, no shift) raises
    the overall status; each of the ``LIVE_CHECKS`` gates runs at an equal share of it (Bonferroni), so every
    statistic must also exceed the ``1 - false_alarm_rate / LIVE_CHECKS`` quantile of its no-change
    distribution (the KS test: p below that share, or below ``ks_pvalue`` if smaller).
    """

    min_labels: int = 50
    min_predictions: int = 100
    ece_warning: float = 0.05
    ece_critical: float = 0.10
    accuracy_drop_warning: float = 0.05
    accuracy_drop_critical: float = 0.10
    psi_warning: float = 0.10
    psi_critical: float = 0.25
    ks_pvalue: float = 0.01
    class_shift_warning: float = 0.10
    class_shift_critical: float = 0.20
    false_alarm_rate: float = 0.01

    @property
    def gate_alpha(self) -> float:
        """The false-alarm share of each check: ``false_alarm_rate / LIVE_CHECKS``."""
        return self.false_alarm_rate / LIVE_CHECKS

    @property
    def noise_level(self) -> float:
        """The quantile of each check's no-change distribution that its statistic must exceed."""
        return 1.0 - self.gate_alpha

    def __post_init__(self) -> None:
        for name in ("min_labels", "min_predictions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("ks_pvalue", "false_alarm_rate"):
            value = getattr(self, name)
            if not (0.0 < value < 1.0):
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")


@dataclass(frozen=True, slots=True)
class LabelledWindow:
    """Recent predictions that received a true label: calibrated ``probabilities`` [n, K], ``labels`` [n]."""

    probabilities: NDArray[np.float64]
    labels: NDArray[np.integer[Any]]


@dataclass(frozen=True, slots=True)
class UnlabelledWindow:
    """The most recent predictions, labelled or not: calibrated ``probabilities`` [m, K]."""

    probabilities: NDArray[np.float64]


# ------------------------------------------------------------------------------------------------ typed results


@dataclass(frozen=True, slots=True)
class LiveEceCheck:
    """``live_ece``: the labelled window's ECE with its bootstrap interval, and the noise it was judged against.

    ``noise_floor`` is what :func:`~service.calibration.uncertainty.summarize_window` reports at the interval level
    (for reading); ``gate`` is the same simulation at the check's own level, the value ECE had to exceed to
    alarm (``reason.noise == gate.upper``).
    """

    reason: Reason
    ece: MetricEstimate
    noise_floor: NoiseFloor
    gate: SamplingNoise


@dataclass(frozen=True, slots=True)
class AccuracyDropCheck:
    """``live_accuracy_drop``: card test accuracy minus live accuracy (``drop == reason.value``) and its null."""

    reason: Reason
    accuracy: MetricEstimate
    reference_accuracy: float
    n_reference: int
    drop: float
    noise: SamplingNoise


@dataclass(frozen=True, slots=True)
class PsiCheck:
    """``confidence_psi``: PSI between the live and the card's top-label confidence histograms (same bins)."""

    reason: Reason
    psi: float
    histogram: tuple[int, ...]
    reference_histogram: tuple[int, ...]
    noise: SamplingNoise


@dataclass(frozen=True, slots=True)
class KsCheck:
    """``confidence_ks``: two-sample KS of live vs the card's raw confidences; ``level`` is the p-value the test
    had to go below (the smaller of ``ks_pvalue`` and the check's share of the false-alarm rate)."""

    reason: Reason
    ks: KSResult
    level: float

    @property
    def shifted(self) -> bool:
        """Whether the p-value is below ``level``: the one thing this check's status says."""
        return self.ks.pvalue < self.level


@dataclass(frozen=True, slots=True)
class EstimatedAccuracyCheck:
    """``estimated_accuracy_drop``: mean top-label confidence as an accuracy estimate (CBPE), its drop from the
    card's test accuracy (``drop == reason.value``) and the drop's null."""

    reason: Reason
    estimated_accuracy: float
    reference_accuracy: float
    drop: float
    noise: SamplingNoise


@dataclass(frozen=True, slots=True)
class ClassShiftCheck:
    """``class_shift``: total variation between the predicted-class counts and the training class counts."""

    reason: Reason
    total_variation: float
    predicted_counts: tuple[int, ...]
    training_counts: tuple[int, ...]
    noise: SamplingNoise

    @property
    def predicted_class_fraction(self) -> tuple[float, ...]:
        """Share of the window predicted as each class."""
        counts = np.asarray(self.predicted_counts, dtype=np.int64)
        return tuple(float(v) for v in counts / counts.sum())

    @property
    def training_class_fraction(self) -> tuple[float, ...]:
        """Share of each class in the card's training data: the prior the predictions are compared with."""
        counts = np.asarray(self.training_counts, dtype=np.int64)
        return tuple(float(v) for v in counts / counts.sum())


@dataclass(frozen=True, slots=True)
class LabelledChecks:
    """The label checks of one window of ``n`` labelled predictions.

    ``calibration`` is the window's bootstrap summary (both checks read it, and the JSON summary shows its
    NLL, Brier score and reliability bins); ``reference`` is the card's test split after temperature scaling.
    """

    n: int
    calibration: WindowSummary
    reference: SplitMetrics
    live_ece: LiveEceCheck
    live_accuracy_drop: AccuracyDropCheck

    @property
    def overconfidence(self) -> float:
        """Mean top-label confidence minus accuracy: positive when the model claims more than it delivers."""
        return self.calibration.mean_confidence - self.calibration.accuracy.value

    @property
    def reasons(self) -> tuple[Reason, ...]:
        """The checks' reasons, in report order."""
        return (self.live_ece.reason, self.live_accuracy_drop.reason)


@dataclass(frozen=True, slots=True)
class UnlabelledChecks:
    """The label-free checks of one window of ``n`` recent predictions; ``confidence_ks`` is None when the
    card stores no raw reference confidences (cards written before it)."""

    n: int
    reference_mean_confidence: float
    confidence_psi: PsiCheck
    confidence_ks: KsCheck | None
    estimated_accuracy_drop: EstimatedAccuracyCheck
    class_shift: ClassShiftCheck

    @property
    def reasons(self) -> tuple[Reason, ...]:
        """The checks' reasons, in report order (the KS reason only when the check ran)."""
        ks = () if self.confidence_ks is None else (self.confidence_ks.reason,)
        return (self.confidence_psi.reason, *ks, self.estimated_accuracy_drop.reason, self.class_shift.reason)


@dataclass(frozen=True, slots=True)
class LiveReport:
    """Both windows' typed results (None for a window below its minimum size) and every reason in order.

    ``n_labelled`` / ``n_unlabelled`` are the window sizes, kept for windows too small to be checked.
    ``summary`` is the JSON-ready view (floats, ints, lists, dicts and None only), built by
    :func:`report_summary` from the fields, so the two cannot disagree.
    """

    reasons: tuple[Reason, ...]
    labelled: LabelledChecks | None
    unlabelled: UnlabelledChecks | None
    n_labelled: int
    n_unlabelled: int

    @property
    def summary(self) -> dict[str, object]:
        """:func:`report_summary` of this report (a new dict on every access)."""
        return report_summary(self)


# ------------------------------------------------------------------------------------------------ grading, shapes


def _grade(value: float, warning: float, critical: float) -> tuple[Status, float]:
    """Status of a "higher is worse" value and the threshold it was judged against."""
    if value > critical:
        return "critical", critical
    if value > warning:
        return "warning", warning
    return "ok", warning


def _verdict(status: Status, threshold: float) -> str:
    if status == "ok":
        return f"is within the warning threshold {threshold:g}"
    return f"is above the {status} threshold {threshold:g}"


def _drift_grade(
    value: float, warning: float, critical: float, noise: SamplingNoise, null: str = "no shift"
) -> tuple[Status, float, str]:
    """Like :func:`_grade`, but a value within sampling noise stays ok; also returns a sentence about the noise."""
    status, threshold = _grade(value, warning, critical)
    pct = f"{noise.level * 100:.4g}%"
    if status != "ok" and value <= noise.upper:
        return (
            "ok",
            threshold,
            f"is above the {status} threshold {threshold:g} but within sampling noise: {pct} of windows of this size "
            f"with {null} stay below {noise.upper:.3f}",
        )
    return status, threshold, f"{_verdict(status, threshold)} (noise with {null}: {pct} below {noise.upper:.3f})"


def _n_rows(probabilities: NDArray[np.float64], n_classes: int, name: str) -> int:
    """Row count of a window, after checking it is [n, K] for this card's K (n may be 0).

    Not :func:`~service.calibration.validation.validate_probs`: an empty window is normal here (a fresh log)
    and must yield ``insufficient_data``, not an error, and the window must match the card's K, which the
    shared check does not know. The values are validated by it once a window is big enough to be checked.
    """
    arr = np.asarray(probabilities)
    if arr.ndim != 2 or arr.shape[1] != n_classes:
        raise ValueError(f"{name} probabilities must have shape [n, {n_classes}], got {arr.shape}")
    return int(arr.shape[0])


# ------------------------------------------------------------------------------------------------ evaluation


def evaluate_live(
    card: CalibrationCard,
    labelled: LabelledWindow,
    unlabelled: UnlabelledWindow,
    thresholds: LiveThresholds,
    seed: int = 0,
    n_boot: int = 200,
) -> LiveReport:
    """Reasons and typed results for the live windows of the model described by ``card``.

    Label checks (``live_ece``, ``live_accuracy_drop``) need ``thresholds.min_labels`` labelled predictions,
    drift checks (``confidence_psi``, ``confidence_ks``, ``estimated_accuracy_drop``, ``class_shift``) need
    ``thresholds.min_predictions`` predictions. ``seed`` and ``n_boot`` drive the bootstrap intervals and the
    noise simulations, so a report is reproducible. ``ValueError`` if a window does not have the card's K
    columns or holds something other than probabilities.
    """
    k = card.n_classes
    reasons: list[Reason] = []

    n = _n_rows(labelled.probabilities, k, "labelled")
    if np.asarray(labelled.labels).shape != (n,):
        raise ValueError(f"labelled labels must have shape [{n}], got {np.asarray(labelled.labels).shape}")
    label_checks: LabelledChecks | None = None
    if n < thresholds.min_labels:
        reasons.append(
            Reason(
                "labels_insufficient",
                "insufficient_data",
                f"{n} labelled prediction(s) in the window; live calibration needs at least {thresholds.min_labels}",
                float(n),
                float(thresholds.min_labels),
            )
        )
    else:
        label_checks = labelled_checks(card, labelled, thresholds, seed, n_boot)
        reasons.extend(label_checks.reasons)

    m = _n_rows(unlabelled.probabilities, k, "unlabelled")
    drift_checks: UnlabelledChecks | None = None
    if m < thresholds.min_predictions:
        reasons.append(
            Reason(
                "predictions_insufficient",
                "insufficient_data",
                f"{m} prediction(s) in the window; drift checks need at least {thresholds.min_predictions}",
                float(m),
                float(thresholds.min_predictions),
            )
        )
    else:
        drift_checks = unlabelled_checks(card, unlabelled, thresholds, seed)
        reasons.extend(drift_checks.reasons)

    return LiveReport(tuple(reasons), label_checks, drift_checks, n, m)


def labelled_checks(
    card: CalibrationCard, window: LabelledWindow, thresholds: LiveThresholds, seed: int = 0, n_boot: int = 200
) -> LabelledChecks:
    """ECE and accuracy of the labelled window against the card's test split after temperature scaling.

    Validates the window and bootstraps its summary once, for both checks. Runs whatever the window's size
    (``evaluate_live`` applies ``min_labels``); ``ValueError`` on an empty or malformed window.
    """
    probs = validate_probs(window.probabilities, "labelled probabilities")
    labels = validate_labels(window.labels, n_classes=card.n_classes, n_samples=probs.shape[0])
    calibration = summarize_window(probs, labels, n_boot=n_boot, level=_INTERVAL_LEVEL, seed=seed)
    confidences = np.max(probs, axis=1)
    return LabelledChecks(
        n=int(probs.shape[0]),
        calibration=calibration,
        reference=card.test.after_temperature,
        live_ece=check_live_ece(card, calibration, confidences, thresholds, seed),
        live_accuracy_drop=check_live_accuracy_drop(card, calibration, thresholds, seed),
    )


def check_live_ece(
    card: CalibrationCard,
    calibration: WindowSummary,
    confidences: NDArray[np.float64],
    thresholds: LiveThresholds,
    seed: int = 0,
) -> LiveEceCheck:
    """``live_ece``: the window's ECE, alarming only above its threshold *and* the ECE noise floor.

    ``calibration`` is :func:`summarize_window` of the labelled window, ``confidences`` its top-label confidences
    (validated by the caller): the floor is simulated for these very confidences, since ECE's upward bias
    depends on where they fall (Nixon et al. 2019), at the check's own level.
    """
    ece = calibration.ece
    n = ece.n
    gate = ece_noise_floor(confidences, n_sim=_ECE_SIMULATIONS, level=thresholds.noise_level, seed=seed)
    noise = SamplingNoise(gate.mean, gate.upper, gate.level, n, n, _ECE_SIMULATIONS)
    status, threshold, verdict = _drift_grade(
        ece.value, thresholds.ece_warning, thresholds.ece_critical, noise, "a perfectly calibrated model"
    )
    reason = Reason(
        "live_ece",
        status,
        f"live ECE {ece.value:.3f} over the last {n} labelled predictions ({_LEVEL_PERCENT}% interval for the true "
        f"ECE [{ece.lower:.3f}, {ece.upper:.3f}], basic bootstrap, 0 while within noise; "
        f"card: {card.test.after_temperature.ece.value:.3f}) {verdict} "
        "[gate: ECE noise floor]",
        ece.value,
        threshold,
        "ece_noise_floor",
        noise.upper,
    )
    return LiveEceCheck(reason, ece, calibration.ece_noise_floor, noise)


def check_live_accuracy_drop(
    card: CalibrationCard, calibration: WindowSummary, thresholds: LiveThresholds, seed: int = 0
) -> AccuracyDropCheck:
    """``live_accuracy_drop``: card test accuracy minus live accuracy, gated by a one-sided two-sample null
    (both accuracies are estimates: the card's from its ``n`` test predictions, the window's from its own)."""
    ref = card.test.after_temperature
    accuracy = calibration.accuracy
    n = accuracy.n
    drop = ref.accuracy.value - accuracy.value
    noise = _accuracy_drop_noise(ref.n, ref.accuracy.value, null_size(n), thresholds.noise_level, seed)
    status, threshold, verdict = _drift_grade(
        drop, thresholds.accuracy_drop_warning, thresholds.accuracy_drop_critical, noise, "an unchanged model"
    )
    reason = Reason(
        "live_accuracy_drop",
        status,
        f"live accuracy {accuracy.value:.3f} over the last {n} labelled predictions ({_LEVEL_PERCENT}% interval "
        f"[{accuracy.lower:.3f}, {accuracy.upper:.3f}]) vs {ref.accuracy.value:.3f} on the card's "
        f"{ref.n} test predictions: a drop of {drop:.3f}, which {verdict} [gate: one-sided two-sample test]",
        drop,
        threshold,
        "accuracy_drop_null",
        noise.upper,
    )
    return AccuracyDropCheck(reason, accuracy, ref.accuracy.value, ref.n, drop, noise)


def unlabelled_checks(
    card: CalibrationCard, window: UnlabelledWindow, thresholds: LiveThresholds, seed: int = 0
) -> UnlabelledChecks:
    """Label-free checks of the recent predictions against the card's reference distribution.

    Validates the window and takes its top-label classes and confidences once, for all four checks. Runs
    whatever the window's size (``evaluate_live`` applies ``min_predictions``); ``ValueError`` on an empty or
    malformed window, or on a card whose reference does not match its classes or bins.
    """
    probs = validate_probs(window.probabilities, "unlabelled probabilities")
    predicted = np.argmax(probs, axis=1)
    confidences = probs[np.arange(probs.shape[0]), predicted]
    return UnlabelledChecks(
        n=int(probs.shape[0]),
        reference_mean_confidence=card.reference.mean_confidence,
        confidence_psi=check_confidence_psi(card, confidences, thresholds, seed),
        confidence_ks=check_confidence_ks(card, confidences, thresholds),
        estimated_accuracy_drop=check_estimated_accuracy_drop(card, confidences, thresholds, seed),
        class_shift=check_class_shift(card, predicted, thresholds, seed),
    )


def _reference_histogram(card: CalibrationCard) -> NDArray[np.int64]:
    """The card's reference confidence histogram, after checking its bins are the equal-width ones that
    :func:`histogram` uses for live confidences (PSI between different binnings would be meaningless)."""
    reference = card.reference
    ref_hist = np.asarray(reference.confidence_histogram, dtype=np.int64)
    n_bins = ref_hist.size
    edges = np.asarray(reference.confidence_bin_edges, dtype=np.float64)
    if edges.shape != (n_bins + 1,) or not np.allclose(edges, np.linspace(0.0, 1.0, n_bins + 1)):
        raise ValueError("the card's reference confidence bins are not the equal-width bins of its histogram")
    return ref_hist


def check_confidence_psi(
    card: CalibrationCard, confidences: NDArray[np.float64], thresholds: LiveThresholds, seed: int = 0
) -> PsiCheck:
    """``confidence_psi``: PSI of the top-label ``confidences`` (validated by the caller) against the card's
    reference histogram over the same bins, gated by the Dirichlet-multinomial null at this window size."""
    m = int(confidences.shape[0])
    ref_hist = _reference_histogram(card)
    live_hist = histogram(confidences, ref_hist.size)
    psi = population_stability_index(ref_hist, live_hist)
    ref_key = tuple(int(v) for v in ref_hist)
    noise = _psi_noise(ref_key, null_size(m), thresholds.noise_level, seed)
    status, threshold, verdict = _drift_grade(psi, thresholds.psi_warning, thresholds.psi_critical, noise)
    reason = Reason(
        "confidence_psi",
        status,
        f"PSI of the top-label confidence over the last {m} predictions vs the card's {int(ref_hist.sum())} "
        f"test predictions is {psi:.3f}, which {verdict} [gate: Dirichlet-multinomial null]",
        psi,
        threshold,
        "psi_null",
        noise.upper,
    )
    return PsiCheck(reason, psi, tuple(int(v) for v in live_hist), ref_key, noise)


def check_confidence_ks(
    card: CalibrationCard, confidences: NDArray[np.float64], thresholds: LiveThresholds
) -> KsCheck | None:
    """``confidence_ks``: two-sample KS of the top-label ``confidences`` against the card's raw ones; None for
    a card that stores none (cards written before it). Live values are rounded like the card's, or float32
    values just below a rounded 1.0 would count as a shift. Warning at most: KS sees any change of shape,
    not how much it matters."""
    ref_conf = card.reference.confidences
    if not ref_conf:
        return None
    m = int(confidences.shape[0])
    ks = ks_two_sample(np.asarray(ref_conf, dtype=np.float64), np.round(confidences, REFERENCE_CONFIDENCE_DECIMALS))
    level = min(thresholds.ks_pvalue, thresholds.gate_alpha)
    shifted = ks.pvalue < level
    reason = Reason(
        "confidence_ks",
        "warning" if shifted else "ok",
        f"two-sample KS test of the top-label confidence over the last {m} predictions vs the card's "
        f"{ks.n_reference}: D = {ks.statistic:.3f}, asymptotic p = {ks.pvalue:.3g}, "
        + (f"below {level:.3g}: the confidence distribution has shifted" if shifted else f"not below {level:.3g}")
        + " [gate: KS p-value at this check's share of the false-alarm rate]",
        ks.statistic,
        level,
        "ks_pvalue",
        level,
    )
    return KsCheck(reason, ks, level)


def check_estimated_accuracy_drop(
    card: CalibrationCard, confidences: NDArray[np.float64], thresholds: LiveThresholds, seed: int = 0
) -> EstimatedAccuracyCheck:
    """``estimated_accuracy_drop``: confidence-based performance estimation (NannyML's CBPE): the mean of the
    top-label ``confidences`` (validated by the caller) estimates accuracy while the model stays calibrated;
    its drop from the card's test accuracy is gated by a Dirichlet-multinomial null over the card's bins."""
    m = int(confidences.shape[0])
    ref_hist = _reference_histogram(card)
    reference_accuracy = card.test.after_temperature.accuracy.value
    estimated = float(np.mean(confidences))
    drop = reference_accuracy - estimated
    bin_conf = _bin_confidence(card.reference.confidences, ref_hist.size)
    ref_key = tuple(int(v) for v in ref_hist)
    noise = _estimated_drop_noise(ref_key, bin_conf, null_size(m), thresholds.noise_level, seed + 2)
    status, threshold, verdict = _drift_grade(
        drop, thresholds.accuracy_drop_warning, thresholds.accuracy_drop_critical, noise, "an unchanged model"
    )
    reason = Reason(
        "estimated_accuracy_drop",
        status,
        f"estimated accuracy {estimated:.3f} (mean top-label confidence over the last {m} predictions; a valid "
        f"estimate only while the model stays calibrated) vs {reference_accuracy:.3f} on the card's test split: "
        f"a drop of {drop:.3f}, which {verdict} [gate: Dirichlet-multinomial null]",
        drop,
        threshold,
        "estimated_accuracy_drop_null",
        noise.upper,
    )
    return EstimatedAccuracyCheck(reason, estimated, reference_accuracy, drop, noise)


def check_class_shift(
    card: CalibrationCard, predicted: NDArray[np.intp], thresholds: LiveThresholds, seed: int = 0
) -> ClassShiftCheck:
    """``class_shift``: total variation between the ``predicted`` classes (top labels of a validated window) and
    the training class fractions, gated by a Dirichlet-multinomial null at this window size."""
    k = card.n_classes
    m = int(predicted.shape[0])
    class_counts = np.asarray(card.dataset.class_counts, dtype=np.int64)
    if class_counts.size != k:
        raise ValueError(f"the card has {class_counts.size} class counts for {k} classes")
    live_counts = np.bincount(predicted, minlength=k)
    tv = total_variation(class_counts, live_counts)
    training_key = tuple(int(v) for v in class_counts)
    noise = _tv_noise(training_key, null_size(m), thresholds.noise_level, seed + 1)
    status, threshold, verdict = _drift_grade(
        tv, thresholds.class_shift_warning, thresholds.class_shift_critical, noise
    )
    top = int(np.argmax(live_counts))
    reason = Reason(
        "class_shift",
        status,
        f"total variation between the predicted classes of the last {m} predictions and the training class "
        f"fractions is {tv:.3f} (most predicted: {card.classes[top]!r} at {live_counts[top] / m:.1%}), which "
        f"{verdict} [gate: Dirichlet-multinomial null]",
        tv,
        threshold,
        "class_shift_null",
        noise.upper,
    )
    return ClassShiftCheck(reason, tv, tuple(int(v) for v in live_counts), training_key, noise)


# ------------------------------------------------------------------------------------------------ JSON summary


def _noise_dict(noise: SamplingNoise) -> dict[str, object]:
    return {"mean": noise.mean, "upper": noise.upper, "level": noise.level}


def report_summary(report: LiveReport) -> dict[str, object]:
    """The JSON-ready summary of ``report`` (``live`` in ``/health/calibration``), built from its typed results.

    The one place that decides the summary's keys: ``{"n", "insufficient": True}`` for a window that was too
    small, the evidence of each check otherwise.
    """
    summary: dict[str, object] = {}
    lab = report.labelled
    if lab is None:
        summary["labelled"] = {"n": report.n_labelled, "insufficient": True}
    else:
        live, ref = lab.calibration, lab.reference
        ece = lab.live_ece
        summary["labelled"] = {
            "n": lab.n,
            "accuracy": live.accuracy.value,
            "mean_confidence": live.mean_confidence,
            "overconfidence": lab.overconfidence,
            "ece": {
                "value": ece.ece.value,
                "lower": ece.ece.lower,
                "upper": ece.ece.upper,
                "n": ece.ece.n,
                "interval": ece.ece.interval,
            },
            "ece_noise_floor": {"mean": ece.noise_floor.mean, "upper": ece.noise_floor.upper},
            "ece_gate": _noise_dict(ece.gate),
            "accuracy_drop_noise": _noise_dict(lab.live_accuracy_drop.noise),
            "nll": live.nll,
            "brier": live.brier,
            "reliability": [
                {
                    "lower": b.lower,
                    "upper": b.upper,
                    "count": b.count,
                    "mean_confidence": b.mean_confidence,
                    "accuracy": b.accuracy,
                }
                for b in live.reliability
            ],
            "reference": {
                "accuracy": ref.accuracy.value,
                "ece": ref.ece.value,
                "nll": ref.nll.value,
                "brier": ref.brier.value,
                "mean_confidence": ref.mean_confidence,
            },
        }
    drift = report.unlabelled
    if drift is None:
        summary["unlabelled"] = {"n": report.n_unlabelled, "insufficient": True}
    else:
        psi, ks = drift.confidence_psi, drift.confidence_ks
        estimated, shift = drift.estimated_accuracy_drop, drift.class_shift
        summary["unlabelled"] = {
            "n": drift.n,
            "psi": psi.psi,
            "psi_noise": _noise_dict(psi.noise),
            "estimated_accuracy_drop_noise": _noise_dict(estimated.noise),
            "ks": None if ks is None else {"statistic": ks.ks.statistic, "pvalue": ks.ks.pvalue},
            "estimated_accuracy": estimated.estimated_accuracy,
            "reference_accuracy": estimated.reference_accuracy,
            "reference_mean_confidence": drift.reference_mean_confidence,
            "confidence_histogram": list(psi.histogram),
            "reference_histogram": list(psi.reference_histogram),
            "predicted_class_fraction": list(shift.predicted_class_fraction),
            "training_class_fraction": list(shift.training_class_fraction),
            "class_shift_tv": shift.total_variation,
            "class_shift_noise": _noise_dict(shift.noise),
        }
    return summary


# ------------------------------------------------------------------------------------------------ cached nulls


def null_size(n: int) -> int:
    """The window size a cached null is simulated for: ``n`` rounded *down* to two significant digits.

    Why: a window fills one prediction at a time, and a null cached per exact size would be simulated again
    (~0.1 s each) on every evaluation until the window is full. Rounded, a window growing from 100 to 2000
    visits about 100 sizes, and the common ones (50, 100, 500, 2000) are exact. Fewer samples mean more
    noise, so a null for at most 10% fewer samples has a slightly higher quantile: the gate only gets a
    little more conservative, never less.
    """
    n = int(n)
    if n < 100:
        return n
    scale: int = 10 ** (len(str(n)) - 2)
    return (n // scale) * scale


@lru_cache(maxsize=256)
def _psi_noise(reference: tuple[int, ...], n: int, level: float, seed: int) -> SamplingNoise:
    """:func:`psi_noise`, cached: it depends only on the card's histogram and the window size."""
    return psi_noise(reference, n, level=level, n_sim=_NOISE_SIMULATIONS, seed=seed)


@lru_cache(maxsize=256)
def _tv_noise(reference: tuple[int, ...], n: int, level: float, seed: int) -> SamplingNoise:
    """:func:`total_variation_noise`, cached like :func:`_psi_noise`."""
    return total_variation_noise(reference, n, level=level, n_sim=_NOISE_SIMULATIONS, seed=seed)


@lru_cache(maxsize=256)
def _accuracy_drop_noise(n_ref: int, accuracy: float, n: int, level: float, seed: int) -> SamplingNoise:
    """:func:`accuracy_drop_noise`, cached by the card's figures and the window size."""
    return accuracy_drop_noise(n_ref, accuracy, n, level=level, n_sim=_NOISE_SIMULATIONS, seed=seed)


@lru_cache(maxsize=256)
def _estimated_drop_noise(
    reference: tuple[int, ...], bin_confidence: tuple[float, ...], n: int, level: float, seed: int
) -> SamplingNoise:
    """:func:`estimated_accuracy_drop_noise`, cached like :func:`_psi_noise`."""
    return estimated_accuracy_drop_noise(reference, bin_confidence, n, level=level, n_sim=_NOISE_SIMULATIONS, seed=seed)


def _bin_confidence(reference_confidences: tuple[float, ...] | None, n_bins: int) -> tuple[float, ...]:
    """Mean reference confidence per bin (the bin's centre where the card has no raw confidences or none fell)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = (edges[:-1] + edges[1:]) / 2.0
    if reference_confidences:
        conf = np.asarray(reference_confidences, dtype=np.float64)
        idx = bin_indices(conf, n_bins)
        sums = np.bincount(idx, weights=conf, minlength=n_bins)
        counts = np.bincount(idx, minlength=n_bins)
        out = np.where(counts > 0, sums / np.maximum(counts, 1), out)
    return tuple(float(v) for v in out)
