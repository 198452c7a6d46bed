"""Judge a live window of predictions against the calibration card: reasons with values and thresholds.

Two windows, because labels are scarce. The *labelled* window (predictions that received feedback) answers
the real question, "are the probabilities still calibrated?", with ECE and accuracy against the card's test
split. The *unlabelled* window (the most recent predictions, labelled or not) can only show that the inputs
or the model's behaviour changed: the confidence distribution drifted (PSI, two-sample KS), the estimated
accuracy fell, or the predicted classes moved away from the training prior. Either signal is worth a look;
only the labelled one proves miscalibration.

Every check yields exactly one ``Reason`` (code, status, message, value, threshold); a window below its
minimum size yields one ``insufficient_data`` reason instead of its checks, so a quiet service never raises a
false alarm. Inputs are plain arrays (the prediction log hands them over); this module is pure numpy and
performs no I/O.

Sampling noise. The thresholds (ECE 0.05, accuracy drop 0.05, PSI 0.1, total variation 0.1) are effect sizes
that assume large samples. On the bundled digits model, clean windows of 100 predictions exceed PSI 0.1 in
~86% and total variation 0.1 in ~75% of cases, and a perfectly calibrated model shows ECE > 0.05 in ~6% of
50-label windows, purely from sampling noise. So every live check only alarms when its statistic exceeds the
threshold *and* passes a gate against its own no-change distribution at these sample sizes, named in the
reason's ``gate`` field and message:

- ``live_ece``: the ECE noise floor (:func:`service.calibration.metrics.ece_noise_floor`: ECE of a perfectly
  calibrated model with these very confidences and this n, simulated);
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
from service.calibration.uncertainty import ece_noise_floor, summarize
from service.calibration.validation import validate_labels, validate_probs
from service.card import CalibrationCard
from service.monitoring.drift import (
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
    "LabelledWindow",
    "LiveReport",
    "LiveThresholds",
    "UnlabelledWindow",
    "evaluate_live",
    "null_size",
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


@dataclass(frozen=True, slots=True)
class LiveReport:
    """One reason per check and a JSON-ready ``summary`` (floats, ints, lists, dicts and None only)."""

    reasons: tuple[Reason, ...]
    summary: dict[str, object]


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


def _n_rows(probabilities: NDArray[np.float64], n_classes: int, name: str) -> int:
    """Row count of a window, after checking it is [n, K] for this card's K (n may be 0)."""
    arr = np.asarray(probabilities)
    if arr.ndim != 2 or arr.shape[1] != n_classes:
        raise ValueError(f"{name} probabilities must have shape [n, {n_classes}], got {arr.shape}")
    return int(arr.shape[0])


def evaluate_live(
    card: CalibrationCard,
    labelled: LabelledWindow,
    unlabelled: UnlabelledWindow,
    thresholds: LiveThresholds,
    seed: int = 0,
    n_boot: int = 200,
) -> LiveReport:
    """Reasons and a summary for the live windows of the model described by ``card``.

    Label checks (``live_ece``, ``live_accuracy_drop``) need ``thresholds.min_labels`` labelled predictions,
    drift checks (``confidence_psi``, ``confidence_ks``, ``estimated_accuracy_drop``, ``class_shift``) need
    ``thresholds.min_predictions`` predictions. ``seed`` and ``n_boot`` drive the bootstrap intervals and the
    noise simulations, so a report is reproducible. ``ValueError`` if a window does not have the card's K
    columns or holds something other than probabilities.
    """
    k = card.n_classes
    reasons: list[Reason] = []
    summary: dict[str, object] = {}

    n = _n_rows(labelled.probabilities, k, "labelled")
    if np.asarray(labelled.labels).shape != (n,):
        raise ValueError(f"labelled labels must have shape [{n}], got {np.asarray(labelled.labels).shape}")
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
        summary["labelled"] = {"n": n, "insufficient": True}
    else:
        label_reasons, summary["labelled"] = _labelled(card, labelled, thresholds, seed, n_boot)
        reasons.extend(label_reasons)

    m = _n_rows(unlabelled.probabilities, k, "unlabelled")
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
        summary["unlabelled"] = {"n": m, "insufficient": True}
    else:
        drift_reasons, summary["unlabelled"] = _unlabelled(card, unlabelled, thresholds, seed)
        reasons.extend(drift_reasons)

    return LiveReport(tuple(reasons), summary)


def _labelled(
    card: CalibrationCard, window: LabelledWindow, thresholds: LiveThresholds, seed: int, n_boot: int
) -> tuple[list[Reason], dict[str, object]]:
    """ECE and accuracy of the labelled window against the card's test split after temperature scaling."""
    probs = validate_probs(window.probabilities, "labelled probabilities")
    labels = validate_labels(window.labels, n_classes=card.n_classes, n_samples=probs.shape[0])
    live = summarize(probs, labels, n_boot=n_boot, level=_INTERVAL_LEVEL, seed=seed)
    ref = card.test.after_temperature
    n = probs.shape[0]
    level = round(_INTERVAL_LEVEL * 100)
    ece = live.ece
    floor = live.ece_noise_floor
    conf = np.max(probs, axis=1)
    # The gate: the same simulation as the floor above, at the check's own level (Nixon et al. 2019 on ECE's bias).
    gate = ece_noise_floor(conf, n_sim=_ECE_SIMULATIONS, level=thresholds.noise_level, seed=seed)
    ece_noise = SamplingNoise(gate.mean, gate.upper, gate.level, n, n, _ECE_SIMULATIONS)
    status, threshold, verdict = _drift_grade(
        ece.value, thresholds.ece_warning, thresholds.ece_critical, ece_noise, "a perfectly calibrated model"
    )
    reasons = [
        Reason(
            "live_ece",
            status,
            f"live ECE {ece.value:.3f} over the last {n} labelled predictions ({level}% interval "
            f"[{ece.lower:.3f}, {ece.upper:.3f}]; card: {ref.ece.value:.3f}) {verdict} [gate: ECE noise floor]",
            ece.value,
            threshold,
            "ece_noise_floor",
            ece_noise.upper,
        )
    ]

    drop = ref.accuracy.value - live.accuracy.value
    drop_noise = _accuracy_drop_noise(ref.n, ref.accuracy.value, null_size(n), thresholds.noise_level, seed)
    status, threshold, verdict = _drift_grade(
        drop, thresholds.accuracy_drop_warning, thresholds.accuracy_drop_critical, drop_noise, "an unchanged model"
    )
    reasons.append(
        Reason(
            "live_accuracy_drop",
            status,
            f"live accuracy {live.accuracy.value:.3f} over the last {n} labelled predictions ({level}% interval "
            f"[{live.accuracy.lower:.3f}, {live.accuracy.upper:.3f}]) vs {ref.accuracy.value:.3f} on the card's "
            f"{ref.n} test predictions: a drop of {drop:.3f}, which {verdict} [gate: one-sided two-sample test]",
            drop,
            threshold,
            "accuracy_drop_null",
            drop_noise.upper,
        )
    )

    summary: dict[str, object] = {
        "n": n,
        "accuracy": live.accuracy.value,
        "mean_confidence": live.mean_confidence,
        "overconfidence": live.mean_confidence - live.accuracy.value,
        "ece": {"value": ece.value, "lower": ece.lower, "upper": ece.upper, "n": ece.n},
        "ece_noise_floor": {"mean": floor.mean, "upper": floor.upper},
        "ece_gate": _noise_dict(ece_noise),
        "accuracy_drop_noise": _noise_dict(drop_noise),
        "nll": live.nll.value,
        "brier": live.brier.value,
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
    return reasons, summary


def _noise_dict(noise: SamplingNoise) -> dict[str, object]:
    return {"mean": noise.mean, "upper": noise.upper, "level": noise.level}


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


def _unlabelled(
    card: CalibrationCard, window: UnlabelledWindow, thresholds: LiveThresholds, seed: int
) -> tuple[list[Reason], dict[str, object]]:
    """Label-free checks of the recent predictions against the card's reference distribution."""
    probs = validate_probs(window.probabilities, "unlabelled probabilities")
    m, k = probs.shape
    predicted = np.argmax(probs, axis=1)
    conf = probs[np.arange(m), predicted]
    reference = card.reference
    ref_hist = np.asarray(reference.confidence_histogram, dtype=np.int64)
    n_bins = ref_hist.size
    edges = np.asarray(reference.confidence_bin_edges, dtype=np.float64)
    if edges.shape != (n_bins + 1,) or not np.allclose(edges, np.linspace(0.0, 1.0, n_bins + 1)):
        raise ValueError("the card's reference confidence bins are not the equal-width bins of its histogram")
    reference_accuracy = card.test.after_temperature.accuracy.value
    reasons: list[Reason] = []

    # Confidence PSI against the card's reference histogram, over the same bins.
    live_hist = histogram(conf, n_bins)
    psi = population_stability_index(ref_hist, live_hist)
    ref_key = tuple(int(v) for v in ref_hist)
    noise = _psi_noise(ref_key, null_size(m), thresholds.noise_level, seed)
    status, threshold, verdict = _drift_grade(psi, thresholds.psi_warning, thresholds.psi_critical, noise)
    reasons.append(
        Reason(
            "confidence_psi",
            status,
            f"PSI of the top-label confidence over the last {m} predictions vs the card's {int(ref_hist.sum())} "
            f"test predictions is {psi:.3f}, which {verdict} [gate: Dirichlet-multinomial null]",
            psi,
            threshold,
            "psi_null",
            noise.upper,
        )
    )

    # Two-sample KS on raw confidences, when the card stores them (cards written before it do not).
    ks_summary: dict[str, object] | None = None
    ref_conf = getattr(reference, "confidences", None)
    if ref_conf:
        ks = ks_two_sample(np.asarray(ref_conf, dtype=np.float64), np.round(conf, REFERENCE_CONFIDENCE_DECIMALS))
        ks_summary = {"statistic": ks.statistic, "pvalue": ks.pvalue}
        ks_level = min(thresholds.ks_pvalue, thresholds.gate_alpha)
        shifted = ks.pvalue < ks_level
        reasons.append(
            Reason(
                "confidence_ks",
                "warning" if shifted else "ok",
                f"two-sample KS test of the top-label confidence over the last {m} predictions vs the card's "
                f"{ks.n_reference}: D = {ks.statistic:.3f}, asymptotic p = {ks.pvalue:.3g}, "
                + (
                    f"below {ks_level:.3g}: the confidence distribution has shifted"
                    if shifted
                    else f"not below {ks_level:.3g}"
                )
                + " [gate: KS p-value at this check's share of the false-alarm rate]",
                ks.statistic,
                ks_level,
                "ks_pvalue",
                ks_level,
            )
        )

    # Confidence-based performance estimation (NannyML's CBPE): mean confidence estimates accuracy.
    estimated = float(np.mean(conf))
    drop = reference_accuracy - estimated
    bin_conf = _bin_confidence(getattr(reference, "confidences", None), n_bins)
    est_noise = _estimated_drop_noise(ref_key, bin_conf, null_size(m), thresholds.noise_level, seed + 2)
    status, threshold, verdict = _drift_grade(
        drop, thresholds.accuracy_drop_warning, thresholds.accuracy_drop_critical, est_noise, "an unchanged model"
    )
    reasons.append(
        Reason(
            "estimated_accuracy_drop",
            status,
            f"estimated accuracy {estimated:.3f} (mean top-label confidence over the last {m} predictions; a valid "
            f"estimate only while the model stays calibrated) vs {reference_accuracy:.3f} on the card's test split: "
            f"a drop of {drop:.3f}, which {verdict} [gate: Dirichlet-multinomial null]",
            drop,
            threshold,
            "estimated_accuracy_drop_null",
            est_noise.upper,
        )
    )

    # Predicted-class mix against the training class prior.
    class_counts = np.asarray(card.dataset.class_counts, dtype=np.int64)
    if class_counts.size != k:
        raise ValueError(f"the card has {class_counts.size} class counts for {k} classes")
    live_counts = np.bincount(predicted, minlength=k)
    tv = total_variation(class_counts, live_counts)
    tv_noise = _tv_noise(tuple(int(v) for v in class_counts), null_size(m), thresholds.noise_level, seed + 1)
    status, threshold, verdict = _drift_grade(
        tv, thresholds.class_shift_warning, thresholds.class_shift_critical, tv_noise
    )
    top = int(np.argmax(live_counts))
    reasons.append(
        Reason(
            "class_shift",
            status,
            f"total variation between the predicted classes of the last {m} predictions and the training class "
            f"fractions is {tv:.3f} (most predicted: {card.classes[top]!r} at {live_counts[top] / m:.1%}), which "
            f"{verdict} [gate: Dirichlet-multinomial null]",
            tv,
            threshold,
            "class_shift_null",
            tv_noise.upper,
        )
    )

    summary: dict[str, object] = {
        "n": m,
        "psi": psi,
        "psi_noise": _noise_dict(noise),
        "estimated_accuracy_drop_noise": _noise_dict(est_noise),
        "ks": ks_summary,
        "estimated_accuracy": estimated,
        "reference_accuracy": reference_accuracy,
        "reference_mean_confidence": reference.mean_confidence,
        "confidence_histogram": live_hist,
        "reference_histogram": [int(v) for v in ref_hist],
        "predicted_class_fraction": [float(v) for v in live_counts / m],
        "training_class_fraction": [float(v) for v in class_counts / class_counts.sum()],
        "class_shift_tv": tv,
        "class_shift_noise": _noise_dict(tv_noise),
    }
    return reasons, summary
