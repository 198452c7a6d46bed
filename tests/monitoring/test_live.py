"""Live evaluation on replays of the bundled digits model: clean, noisy, mislabelled, shifted and tiny windows.

The windows are real outputs of ``models/digits/model.onnx`` (onnxruntime) on scikit-learn's digits, and the
card is the bundled ``card.json``, so these tests check the thresholds against what the model really does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client import REGISTRY

from service.calibration.metrics import ece
from service.calibration.uncertainty import summarize_window
from service.card import CalibrationCard
from service.monitoring import prometheus as metrics
from service.monitoring.drift import population_stability_index, total_variation
from service.monitoring.health import Reason
from service.monitoring.live import (
    AccuracyDropCheck,
    ClassShiftCheck,
    EstimatedAccuracyCheck,
    KsCheck,
    LabelledWindow,
    LiveEceCheck,
    LiveReport,
    LiveThresholds,
    PsiCheck,
    UnlabelledWindow,
    check_class_shift,
    check_confidence_ks,
    check_confidence_psi,
    check_estimated_accuracy_drop,
    check_live_accuracy_drop,
    check_live_ece,
    evaluate_live,
    report_summary,
)
from service.monitoring.monitor import Monitor, MonitorConfig, open_log, record_feedback
from service.settings import Settings
from tests.conftest import DEFAULT_MODEL_DIR

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

pytestmark = pytest.mark.unit

LABEL_CODES = ["live_ece", "live_accuracy_drop"]
DRIFT_CODES = ["confidence_psi", "confidence_ks", "estimated_accuracy_drop", "class_shift"]
Probs = NDArray[np.float64]
Labels = NDArray[np.int64]


class Replay:
    """The digits data, its card split and a function from raw features to the model's probabilities."""

    def __init__(self) -> None:
        from service.training.data import load_dataset, stratified_split

        self.card = CalibrationCard.from_json((DEFAULT_MODEL_DIR / "card.json").read_text())
        self.data = load_dataset("digits")
        self.split = stratified_split(self.data, 0.2, 0.2, seed=self.card.dataset.split_seed)
        self.session = ort.InferenceSession(str(DEFAULT_MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])

    def probs(self, features: NDArray[np.float64]) -> Probs:
        out = self.session.run(["probabilities"], {"features": features.astype(np.float32)})[0]
        return np.asarray(out, dtype=np.float64)

    def test_split(self) -> tuple[Probs, Labels]:
        rows = self.split.test
        return self.probs(self.data.features[rows]), self.data.labels[rows]


@pytest.fixture(scope="module")
def replay() -> Replay:
    return Replay()


@pytest.fixture(scope="module")
def clean(replay: Replay) -> tuple[Probs, Labels]:
    return replay.test_split()


@pytest.fixture(scope="module")
def noisy(replay: Replay) -> tuple[Probs, Labels]:
    """Test split with Gaussian pixel noise (sd 4 on a 0..16 scale), clipped back to the pixel range."""
    rows = replay.split.test
    rng = np.random.default_rng(0)
    features = np.clip(replay.data.features[rows] + rng.normal(0.0, 4.0, (rows.size, 64)), 0.0, 16.0)
    return replay.probs(features), replay.data.labels[rows]


def evaluate(card: CalibrationCard, probs: Probs, labels: Labels, **thresholds: float) -> LiveReport:
    return evaluate_live(card, LabelledWindow(probs, labels), UnlabelledWindow(probs), LiveThresholds(**thresholds))  # type: ignore[arg-type]


def by_code(report: LiveReport) -> dict[str, object]:
    codes = [r.code for r in report.reasons]
    assert len(codes) == len(set(codes)), f"a check yielded more than one reason: {codes}"
    return {r.code: r for r in report.reasons}


def status(report: LiveReport, code: str) -> str:
    return next(r.status for r in report.reasons if r.code == code)


def assert_json_ready(summary: dict[str, object]) -> None:
    text = json.dumps(summary, allow_nan=False)  # raises on NaN / inf and on numpy scalars
    assert json.loads(text) == summary


# ------------------------------------------------------------------------------------------------ replays


def test_clean_test_split_is_ok_on_every_check(replay: Replay, clean: tuple[Probs, Labels]) -> None:
    report = evaluate(replay.card, *clean)
    assert list(by_code(report)) == LABEL_CODES + DRIFT_CODES
    assert {r.code: r.status for r in report.reasons} == dict.fromkeys(LABEL_CODES + DRIFT_CODES, "ok")
    labelled = report.summary["labelled"]
    assert isinstance(labelled, dict)
    # The card was computed on these very predictions.
    assert labelled["ece"]["value"] == pytest.approx(replay.card.test.after_temperature.ece.value, abs=1e-6)
    assert labelled["accuracy"] == replay.card.test.after_temperature.accuracy.value


def test_clean_calibration_split_is_ok_on_every_check(replay: Replay) -> None:
    # Data the card's reference never saw (its temperature was fitted on it, its drift reference was not).
    rows = replay.split.calibration
    report = evaluate(replay.card, replay.probs(replay.data.features[rows]), replay.data.labels[rows])
    assert {r.code: r.status for r in report.reasons} == dict.fromkeys(LABEL_CODES + DRIFT_CODES, "ok")


def test_noisy_inputs_raise_label_and_drift_alarms(replay: Replay, noisy: tuple[Probs, Labels]) -> None:
    report = evaluate(replay.card, *noisy)
    statuses = {r.code: r.status for r in report.reasons}
    assert statuses["live_ece"] == "critical"
    assert statuses["live_accuracy_drop"] == "critical"
    assert statuses["confidence_psi"] in ("warning", "critical")
    assert statuses["confidence_ks"] == "warning"
    # Mean confidence falls too, far less than accuracy: the estimate is only valid while calibrated.
    unlabelled = report.summary["unlabelled"]
    labelled = report.summary["labelled"]
    assert isinstance(unlabelled, dict) and isinstance(labelled, dict)
    assert unlabelled["estimated_accuracy"] < replay.card.test.after_temperature.accuracy.value - 0.05
    assert labelled["accuracy"] < unlabelled["estimated_accuracy"] - 0.3
    assert labelled["overconfidence"] > 0.3


def test_swapped_labels_are_caught_by_label_checks_only(replay: Replay, clean: tuple[Probs, Labels]) -> None:
    probs, labels = clean
    rng = np.random.default_rng(1)
    wrong = labels.copy()
    rows = rng.choice(labels.size, size=int(0.3 * labels.size), replace=False)
    wrong[rows] = (wrong[rows] + rng.integers(1, 10, rows.size)) % 10  # a different class for 30% of rows
    report = evaluate(replay.card, probs, wrong)
    statuses = {r.code: r.status for r in report.reasons}
    assert statuses["live_accuracy_drop"] == "critical"
    assert statuses["live_ece"] == "critical"
    # The predictions themselves did not change: no label-free check can see this.
    assert all(statuses[code] == "ok" for code in DRIFT_CODES)
    reason = next(r for r in report.reasons if r.code == "live_accuracy_drop")
    live_accuracy = float(np.mean(probs.argmax(axis=1) == wrong))
    assert reason.value == pytest.approx(replay.card.test.after_temperature.accuracy.value - live_accuracy)
    assert reason.threshold == LiveThresholds().accuracy_drop_critical


def test_class_shift_to_two_digits_is_critical(replay: Replay) -> None:
    rows = np.flatnonzero(np.isin(replay.data.labels, [0, 1]))
    probs = replay.probs(replay.data.features[rows])
    report = evaluate(replay.card, probs, replay.data.labels[rows])
    shift = next(r for r in report.reasons if r.code == "class_shift")
    assert shift.status == "critical"
    assert shift.value == pytest.approx(0.8, abs=0.01)  # 2 of 10 balanced classes hold everything
    assert shift.threshold == LiveThresholds().class_shift_critical
    # Labels are still right: the model is as good as ever on these digits.
    assert status(report, "live_accuracy_drop") == "ok"


# ------------------------------------------------------------------------------------------------ small windows


def test_ten_labels_are_insufficient_not_an_alarm(replay: Replay, noisy: tuple[Probs, Labels]) -> None:
    probs, labels = noisy  # badly miscalibrated: enough labels would be critical
    report = evaluate_live(
        replay.card, LabelledWindow(probs[:10], labels[:10]), UnlabelledWindow(probs[:20]), LiveThresholds()
    )
    reasons = by_code(report)
    assert list(reasons) == ["labels_insufficient", "predictions_insufficient"]
    assert all(r.status == "insufficient_data" for r in report.reasons)
    first = report.reasons[0]
    assert (first.value, first.threshold) == (10.0, 50.0)
    assert (report.reasons[1].value, report.reasons[1].threshold) == (20.0, 100.0)
    assert report.summary == {
        "labelled": {"n": 10, "insufficient": True},
        "unlabelled": {"n": 20, "insufficient": True},
    }


def test_window_sizes_at_the_minimum_are_evaluated(replay: Replay, clean: tuple[Probs, Labels]) -> None:
    probs, labels = clean
    thresholds = LiveThresholds(min_labels=50, min_predictions=100)
    report = evaluate_live(
        replay.card, LabelledWindow(probs[:50], labels[:50]), UnlabelledWindow(probs[:100]), thresholds
    )
    assert [r.code for r in report.reasons] == LABEL_CODES + DRIFT_CODES
    report = evaluate_live(
        replay.card, LabelledWindow(probs[:49], labels[:49]), UnlabelledWindow(probs[:99]), thresholds
    )
    assert [r.code for r in report.reasons] == ["labels_insufficient", "predictions_insufficient"]


def test_empty_windows_from_a_fresh_log(replay: Replay) -> None:
    k = replay.card.n_classes
    report = evaluate_live(
        replay.card,
        LabelledWindow(np.empty((0, k)), np.empty(0, dtype=np.int64)),
        UnlabelledWindow(np.empty((0, k))),
        LiveThresholds(),
    )
    assert [r.status for r in report.reasons] == ["insufficient_data", "insufficient_data"]
    assert_json_ready(report.summary)


def test_labelled_only_with_enough_predictions(replay: Replay, clean: tuple[Probs, Labels]) -> None:
    probs, labels = clean
    report = evaluate_live(
        replay.card, LabelledWindow(probs[:5], labels[:5]), UnlabelledWindow(probs), LiveThresholds()
    )
    assert [r.code for r in report.reasons] == ["labels_insufficient", *DRIFT_CODES]


# ------------------------------------------------------------------------------------------------ sampling noise


def test_small_clean_windows_do_not_raise_drift_alarms(replay: Replay) -> None:
    """At the minimum window (100 predictions) most clean windows exceed PSI 0.1 and TV 0.1 by chance alone."""
    pool = np.concatenate([replay.split.test, replay.split.calibration])
    probs = replay.probs(replay.data.features[pool])
    rng = np.random.default_rng(2)
    k = replay.card.n_classes
    no_labels = LabelledWindow(np.empty((0, k)), np.empty(0, dtype=np.int64))
    above_threshold = 0
    for seed in range(30):
        window = UnlabelledWindow(probs[rng.choice(pool.size, size=100, replace=False)])
        report = evaluate_live(replay.card, no_labels, window, LiveThresholds(), seed=seed)
        reasons = {r.code: r for r in report.reasons}
        psi, shift = reasons["confidence_psi"], reasons["class_shift"]
        above_threshold += (psi.value or 0.0) > 0.1 or (shift.value or 0.0) > 0.1
        assert psi.status == "ok", psi.message
        assert shift.status == "ok", shift.message
        assert reasons["confidence_ks"].status == "ok"
        assert reasons["estimated_accuracy_drop"].status == "ok"
    # The gate is what keeps them quiet: most windows are above the fixed thresholds.
    assert above_threshold >= 15


def test_a_value_above_threshold_but_within_noise_says_so(replay: Replay) -> None:
    pool = np.concatenate([replay.split.test, replay.split.calibration])
    probs = replay.probs(replay.data.features[pool])
    rng = np.random.default_rng(3)
    k = replay.card.n_classes
    for _ in range(50):
        window = UnlabelledWindow(probs[rng.choice(pool.size, size=100, replace=False)])
        report = evaluate_live(
            replay.card, LabelledWindow(np.empty((0, k)), np.empty(0, dtype=np.int64)), window, LiveThresholds()
        )
        psi = next(r for r in report.reasons if r.code == "confidence_psi")
        if psi.value is not None and psi.value > 0.1:
            assert psi.status == "ok"
            assert "within sampling noise" in psi.message
            assert psi.threshold == 0.1
            return
    pytest.fail("no clean window of 100 predictions had PSI above 0.1")


# ------------------------------------------------------------------------------------------------ contents


def test_summary_is_json_ready_and_consistent(
    replay: Replay, clean: tuple[Probs, Labels], noisy: tuple[Probs, Labels]
) -> None:
    for probs, labels in (clean, noisy):
        report = evaluate(replay.card, probs, labels)
        assert_json_ready(report.summary)
        labelled, unlabelled = report.summary["labelled"], report.summary["unlabelled"]
        assert isinstance(labelled, dict) and isinstance(unlabelled, dict)
        assert labelled["n"] == unlabelled["n"] == probs.shape[0]
        assert labelled["ece"]["value"] == pytest.approx(ece(probs, labels))
        assert labelled["ece"]["lower"] <= labelled["ece"]["upper"]
        assert len(labelled["reliability"]) == 15
        assert sum(b["count"] for b in labelled["reliability"]) == probs.shape[0]
        ref = replay.card.test.after_temperature
        assert labelled["reference"] == {
            "accuracy": ref.accuracy.value,
            "ece": ref.ece.value,
            "nll": ref.nll.value,
            "brier": ref.brier.value,
            "mean_confidence": ref.mean_confidence,
        }
        assert unlabelled["estimated_accuracy"] == pytest.approx(float(probs.max(axis=1).mean()))
        assert unlabelled["reference_accuracy"] == ref.accuracy.value
        assert sum(unlabelled["confidence_histogram"]) == probs.shape[0]
        assert unlabelled["reference_histogram"] == list(replay.card.reference.confidence_histogram)
        assert math.isclose(sum(unlabelled["predicted_class_fraction"]), 1.0)
        counts = np.asarray(replay.card.dataset.class_counts)
        assert unlabelled["training_class_fraction"] == pytest.approx(counts / counts.sum())
        assert set(unlabelled["ks"]) == {"statistic", "pvalue"}
        # Every reason's value is the number in the summary.
        reasons = {r.code: r for r in report.reasons}
        assert reasons["confidence_psi"].value == unlabelled["psi"]
        assert reasons["class_shift"].value == unlabelled["class_shift_tv"]
        assert reasons["confidence_ks"].value == unlabelled["ks"]["statistic"]
        assert reasons["live_ece"].value == labelled["ece"]["value"]


def test_messages_carry_the_numbers(replay: Replay, noisy: tuple[Probs, Labels]) -> None:
    report = evaluate(replay.card, *noisy)
    reasons = {r.code: r for r in report.reasons}
    ece_message = reasons["live_ece"].message
    assert f"{reasons['live_ece'].value:.3f}" in ece_message
    assert "last 360 labelled predictions" in ece_message
    assert "critical threshold 0.1" in ece_message
    assert f"card: {replay.card.test.after_temperature.ece.value:.3f}" in ece_message
    assert "p = " in reasons["confidence_ks"].message
    assert "only while the model stays calibrated" in reasons["estimated_accuracy_drop"].message


def test_thresholds_are_the_ones_given(replay: Replay, clean: tuple[Probs, Labels]) -> None:
    # The clean window's ECE (0.018) against tightened thresholds: above them, but within what a perfectly
    # calibrated model shows at n = 360, so the ECE gate keeps it ok (before the gates it went critical: that
    # was a false alarm) and the reason names the gate and the threshold it was judged against.
    report = evaluate(replay.card, *clean, ece_warning=0.005, ece_critical=0.015)
    ece_reason = next(r for r in report.reasons if r.code == "live_ece")
    assert (ece_reason.status, ece_reason.threshold, ece_reason.gate) == ("ok", 0.015, "ece_noise_floor")
    assert ece_reason.noise is not None and ece_reason.value is not None and ece_reason.value <= ece_reason.noise
    assert "above the critical threshold 0.015 but within sampling noise" in ece_reason.message
    report = evaluate(replay.card, *clean, ece_warning=0.015, ece_critical=0.5)
    assert status(report, "live_ece") == "ok"
    report = evaluate(replay.card, *clean, min_labels=1000)
    assert status(report, "labels_insufficient") == "insufficient_data"


def test_ks_is_skipped_for_a_card_without_raw_confidences(replay: Replay, clean: tuple[Probs, Labels]) -> None:
    card = replay.card.model_copy(update={"reference": replay.card.reference.model_copy(update={"confidences": None})})
    report = evaluate(card, *clean)
    assert [r.code for r in report.reasons] == [
        *LABEL_CODES,
        "confidence_psi",
        "estimated_accuracy_drop",
        "class_shift",
    ]
    unlabelled = report.summary["unlabelled"]
    assert isinstance(unlabelled, dict) and unlabelled["ks"] is None
    assert_json_ready(report.summary)


def test_ks_rounds_live_confidences_like_the_card(replay: Replay) -> None:
    # A saturated model: half the confidences are float32's largest value below 1, which the card stores as
    # 1.0 (6 decimals). Compared unrounded, the same predictions would look like a shift with D = 0.5.
    rng = np.random.default_rng(4)
    k = replay.card.n_classes
    conf = np.concatenate([np.full(200, float(np.float32(0.99999994))), rng.uniform(0.5, 0.99, 200)])
    probs = np.tile(((1.0 - conf) / (k - 1))[:, None], (1, k))
    probs[np.arange(conf.size), np.arange(conf.size) % k] = conf
    reference = replay.card.reference.model_copy(update={"confidences": tuple(round(float(v), 6) for v in conf)})
    card = replay.card.model_copy(update={"reference": reference})
    k_s = next(r for r in evaluate(card, probs, np.arange(conf.size) % k).reasons if r.code == "confidence_ks")
    assert k_s.status == "ok"
    assert k_s.value is not None and k_s.value < 0.01


def test_report_is_reproducible_for_a_seed(replay: Replay, noisy: tuple[Probs, Labels]) -> None:
    first, second = evaluate(replay.card, *noisy), evaluate(replay.card, *noisy)
    assert first == second


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p, y: (LabelledWindow(p[:, :9], y), UnlabelledWindow(p)), r"shape \[n, 10\]"),
        (lambda p, y: (LabelledWindow(p, y[:-1]), UnlabelledWindow(p)), "labels must have shape"),
        (lambda p, y: (LabelledWindow(p, y), UnlabelledWindow(p[:, :9])), r"shape \[n, 10\]"),
        (lambda p, y: (LabelledWindow(p * 0.5, y), UnlabelledWindow(p)), "sum to 1"),
        (lambda p, y: (LabelledWindow(p, y + 10), UnlabelledWindow(p)), r"labels must be in \[0, 10\)"),
    ],
)
def test_malformed_windows_are_rejected(
    replay: Replay,
    clean: tuple[Probs, Labels],
    make: Callable[[Probs, Labels], tuple[LabelledWindow, UnlabelledWindow]],
    match: str,
) -> None:
    labelled, unlabelled = make(*clean)
    with pytest.raises(ValueError, match=match):
        evaluate_live(replay.card, labelled, unlabelled, LiveThresholds())


@pytest.mark.parametrize(
    ("field", "value"), [("min_labels", 0), ("min_predictions", -1), ("ks_pvalue", 1.0), ("false_alarm_rate", 0.0)]
)
def test_thresholds_reject_nonsense(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        LiveThresholds(**{field: value})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ typed checks


def assert_graded(reason: Reason) -> None:
    """A reason's status agrees with its value, threshold and gate: an alarm is above both, ok is not."""
    assert reason.value is not None and reason.threshold is not None and reason.noise is not None
    if reason.code == "confidence_ks":
        return  # judged on its p-value, checked with the KsCheck itself
    if reason.status == "ok":
        assert reason.value <= reason.threshold or reason.value <= reason.noise
    else:
        assert reason.status in ("warning", "critical")
        assert reason.value > reason.threshold and reason.value > reason.noise


@pytest.mark.parametrize("window", ["clean", "noisy"])
def test_each_check_returns_evidence_consistent_with_its_reason(
    replay: Replay, window: str, request: pytest.FixtureRequest
) -> None:
    probs, labels = request.getfixturevalue(window)
    card, thresholds = replay.card, LiveThresholds()
    report = evaluate(card, probs, labels)
    lab, unl = report.labelled, report.unlabelled
    assert lab is not None and unl is not None
    assert report.reasons == lab.reasons + unl.reasons
    assert (report.n_labelled, report.n_unlabelled, lab.n, unl.n) == (360, 360, 360, 360)
    ref = card.test.after_temperature
    assert lab.reference == ref

    # Each check function, called on the shared inputs, gives exactly what the report holds.
    calibration = summarize_window(probs, labels, n_boot=200, level=0.9, seed=0)
    assert lab.calibration == calibration
    conf, predicted = probs.max(axis=1), probs.argmax(axis=1)
    ece_check = check_live_ece(card, calibration, conf, thresholds)
    drop_check = check_live_accuracy_drop(card, calibration, thresholds)
    psi_check = check_confidence_psi(card, conf, thresholds)
    ks_check = check_confidence_ks(card, conf, thresholds)
    estimated_check = check_estimated_accuracy_drop(card, conf, thresholds)
    shift_check = check_class_shift(card, predicted, thresholds)
    assert (ece_check, drop_check) == (lab.live_ece, lab.live_accuracy_drop)
    assert (psi_check, ks_check, estimated_check, shift_check) == (
        unl.confidence_psi,
        unl.confidence_ks,
        unl.estimated_accuracy_drop,
        unl.class_shift,
    )

    assert isinstance(ece_check, LiveEceCheck)
    assert (ece_check.reason.code, ece_check.reason.gate) == ("live_ece", "ece_noise_floor")
    assert ece_check.reason.value == ece_check.ece.value
    assert ece_check.reason.noise == ece_check.gate.upper
    assert ece_check.ece == calibration.ece and ece_check.noise_floor == calibration.ece_noise_floor
    assert ece_check.gate.level == thresholds.noise_level and ece_check.gate.n_live == ece_check.ece.n == 360
    assert ece_check.ece.value == pytest.approx(ece(probs, labels))

    assert isinstance(drop_check, AccuracyDropCheck)
    assert (drop_check.reason.code, drop_check.reason.gate) == ("live_accuracy_drop", "accuracy_drop_null")
    assert drop_check.reason.value == drop_check.drop == drop_check.reference_accuracy - drop_check.accuracy.value
    assert (drop_check.reference_accuracy, drop_check.n_reference) == (ref.accuracy.value, ref.n)
    assert drop_check.accuracy == calibration.accuracy
    assert drop_check.reason.noise == drop_check.noise.upper

    assert isinstance(psi_check, PsiCheck)
    assert (psi_check.reason.code, psi_check.reason.gate) == ("confidence_psi", "psi_null")
    assert psi_check.reason.value == psi_check.psi
    assert psi_check.psi == population_stability_index(psi_check.reference_histogram, psi_check.histogram)
    assert psi_check.reference_histogram == card.reference.confidence_histogram
    assert sum(psi_check.histogram) == 360
    assert psi_check.reason.noise == psi_check.noise.upper

    assert isinstance(ks_check, KsCheck)
    assert (ks_check.reason.code, ks_check.reason.gate) == ("confidence_ks", "ks_pvalue")
    assert ks_check.reason.value == ks_check.ks.statistic
    assert ks_check.reason.threshold == ks_check.reason.noise == ks_check.level
    assert ks_check.level == min(thresholds.ks_pvalue, thresholds.gate_alpha)
    assert ks_check.shifted == (ks_check.ks.pvalue < ks_check.level) == (ks_check.reason.status == "warning")
    assert (ks_check.ks.n_reference, ks_check.ks.n_live) == (card.reference.n, 360)

    assert isinstance(estimated_check, EstimatedAccuracyCheck)
    assert estimated_check.reason.code == "estimated_accuracy_drop"
    assert estimated_check.reason.value == estimated_check.drop
    assert estimated_check.drop == estimated_check.reference_accuracy - estimated_check.estimated_accuracy
    assert estimated_check.estimated_accuracy == float(np.mean(conf))
    assert estimated_check.reference_accuracy == ref.accuracy.value
    assert estimated_check.reason.noise == estimated_check.noise.upper

    assert isinstance(shift_check, ClassShiftCheck)
    assert (shift_check.reason.code, shift_check.reason.gate) == ("class_shift", "class_shift_null")
    assert shift_check.reason.value == shift_check.total_variation
    assert shift_check.total_variation == total_variation(shift_check.training_counts, shift_check.predicted_counts)
    assert shift_check.predicted_counts == tuple(np.bincount(predicted, minlength=card.n_classes).tolist())
    assert shift_check.training_counts == card.dataset.class_counts
    assert math.isclose(sum(shift_check.predicted_class_fraction), 1.0)
    assert shift_check.reason.noise == shift_check.noise.upper

    for reason in report.reasons:
        assert_graded(reason)
    if window == "noisy":
        assert ece_check.reason.status == drop_check.reason.status == psi_check.reason.status == "critical"
        assert ks_check.shifted


def test_ks_check_is_none_and_absent_for_a_card_without_raw_confidences(
    replay: Replay, clean: tuple[Probs, Labels]
) -> None:
    card = replay.card.model_copy(update={"reference": replay.card.reference.model_copy(update={"confidences": None})})
    probs, _ = clean
    assert check_confidence_ks(card, probs.max(axis=1), LiveThresholds()) is None
    report = evaluate_live(
        card, LabelledWindow(probs[:0], np.empty(0, np.int64)), UnlabelledWindow(probs), LiveThresholds()
    )
    assert report.unlabelled is not None and report.unlabelled.confidence_ks is None
    assert "confidence_ks" not in [r.code for r in report.unlabelled.reasons]


def test_small_windows_have_no_typed_results(replay: Replay, noisy: tuple[Probs, Labels]) -> None:
    probs, labels = noisy
    report = evaluate_live(
        replay.card, LabelledWindow(probs[:10], labels[:10]), UnlabelledWindow(probs[:20]), LiveThresholds()
    )
    assert (report.labelled, report.unlabelled, report.n_labelled, report.n_unlabelled) == (None, None, 10, 20)


def synthetic_windows(card: CalibrationCard) -> tuple[Probs, Labels]:
    """400 rows of softmax(N(0, 3) logits) with labels drawn at temperature 2: an overconfident model whose
    outputs do not depend on onnxruntime (only on numpy's seeded generator)."""
    rng = np.random.default_rng(11)
    logits = rng.normal(0.0, 3.0, (400, card.n_classes))
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    labels = np.argmax(logits / 2.0 + rng.gumbel(size=logits.shape), axis=1)
    return probs, labels


def test_summary_matches_the_output_before_the_typed_refactor(replay: Replay) -> None:
    """The summary built from the typed results is the one the dict-building code produced (same seed, same
    seed offsets): the numbers below were printed by that code and must match to the last bit."""
    probs, labels = synthetic_windows(replay.card)
    report = evaluate_live(
        replay.card, LabelledWindow(probs[:150], labels[:150]), UnlabelledWindow(probs), LiveThresholds(), seed=7
    )
    summary = report.summary
    assert summary == report_summary(report)
    assert_json_ready(summary)
    assert list(summary) == ["labelled", "unlabelled"]
    labelled, unlabelled = summary["labelled"], summary["unlabelled"]
    assert isinstance(labelled, dict) and isinstance(unlabelled, dict)
    assert list(labelled) == [
        "n",
        "accuracy",
        "mean_confidence",
        "overconfidence",
        "ece",
        "ece_noise_floor",
        "ece_gate",
        "accuracy_drop_noise",
        "nll",
        "brier",
        "reliability",
        "reference",
    ]
    assert list(unlabelled) == [
        "n",
        "psi",
        "psi_noise",
        "estimated_accuracy_drop_noise",
        "ks",
        "estimated_accuracy",
        "reference_accuracy",
        "reference_mean_confidence",
        "confidence_histogram",
        "reference_histogram",
        "predicted_class_fraction",
        "training_class_fraction",
        "class_shift_tv",
        "class_shift_noise",
    ]
    level = 0.9983333333333333
    assert labelled["n"] == 150
    assert labelled["accuracy"] == 0.4533333333333333
    assert labelled["mean_confidence"] == 0.6405633295219991
    assert labelled["overconfidence"] == 0.18722999618866581
    # The ECE interval is the basic bootstrap since issue 12: the percentile interval of the same resamples,
    # [0.17822066719464003, 0.28549398571981494], reflected about the estimate (2 * value - q).
    value = 0.21555631237991368
    assert labelled["ece"] == {
        "value": value,
        "lower": pytest.approx(2 * value - 0.28549398571981494, abs=1e-12),
        "upper": pytest.approx(2 * value - 0.17822066719464003, abs=1e-12),
        "n": 150,
        "interval": "basic_bootstrap_noise_floor",
    }
    # A quantile of the simulated null: its last digits move with numpy's summation order (seen: 2.4.6).
    assert labelled["ece_noise_floor"] == {
        "mean": pytest.approx(0.09123670755651526, rel=1e-12),
        "upper": pytest.approx(0.11833979557801917, rel=1e-12),
    }
    assert labelled["ece_gate"] == {"mean": 0.09232381463439017, "upper": 0.1615725951100193, "level": level}
    assert labelled["accuracy_drop_noise"] == {
        "mean": -1.31111111111187e-05,
        "upper": 0.04981574074073952,
        "level": level,
    }
    assert (labelled["nll"], labelled["brier"]) == (1.818820850699757, 0.754331560813232)
    assert unlabelled["n"] == 400
    assert unlabelled["psi"] == 3.9185436222101493
    assert unlabelled["psi_noise"] == {"mean": 0.08399588993126851, "upper": 0.24642714953790454, "level": level}
    assert unlabelled["estimated_accuracy_drop_noise"] == {
        "mean": -7.54702841512198e-05,
        "upper": 0.03329011070906203,
        "level": level,
    }
    assert unlabelled["ks"] == {"statistic": 0.845, "pvalue": 3.936184325692568e-120}
    assert unlabelled["estimated_accuracy"] == 0.6637012992420186
    assert unlabelled["confidence_histogram"] == [0, 0, 0, 2, 17, 26, 40, 45, 42, 32, 33, 35, 42, 29, 57]
    assert unlabelled["predicted_class_fraction"] == [
        0.1125,
        0.125,
        0.105,
        0.0925,
        0.105,
        0.07,
        0.095,
        0.1175,
        0.0875,
        0.09,
    ]
    assert unlabelled["class_shift_tv"] == 0.0658347245409015
    assert unlabelled["class_shift_noise"] == {
        "mean": 0.0660844097801892,
        "upper": 0.1208410893155249,
        "level": level,
    }
    assert [(r.code, r.status) for r in report.reasons] == [
        ("live_ece", "critical"),
        ("live_accuracy_drop", "critical"),
        ("confidence_psi", "critical"),
        ("confidence_ks", "warning"),
        ("estimated_accuracy_drop", "critical"),
        ("class_shift", "ok"),
    ]


# ------------------------------------------------------------------------------------------------ gauges


def gauge(name: str, series: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, series)


def test_monitor_sets_the_gauges_from_the_typed_results(replay: Replay, tmp_path: Path) -> None:
    probs, labels = synthetic_windows(replay.card)
    settings = Settings(model_path=DEFAULT_MODEL_DIR, data_dir=tmp_path)
    log = open_log(settings)
    monitor = Monitor("gauged", replay.card, log, MonitorConfig.from_settings(settings))
    series = {"model": "gauged", "version": replay.card.version[:12]}
    try:
        # A fresh log: both windows are too small, so the gauges keep whatever they held.
        for name, value in (("LIVE_ECE", -1.0), ("LIVE_PSI", -2.0), ("ESTIMATED_ACCURACY", -3.0)):
            getattr(metrics, name).labels(**series).set(value)
        empty = monitor.live()
        assert empty is not None and empty.labelled is None and empty.unlabelled is None
        assert (gauge("calibserve_live_ece", series), gauge("calibserve_live_psi", series)) == (-1.0, -2.0)
        assert gauge("calibserve_estimated_accuracy", series) == -3.0

        predicted = probs.argmax(axis=1)
        ids = monitor.record(predicted, probs.max(axis=1), probs, np.zeros((len(probs), 64), np.float32))
        named = [replay.card.classes[label] for label in labels[:150].tolist()]
        assert set(record_feedback(log, list(zip(ids[:150], named, strict=True)))) == {"recorded"}
        report = monitor.live()
        assert report is not None and report.labelled is not None and report.unlabelled is not None
        assert (report.n_labelled, report.n_unlabelled) == (150, 400)
        assert gauge("calibserve_live_ece", series) == report.labelled.live_ece.ece.value
        assert gauge("calibserve_live_psi", series) == report.unlabelled.confidence_psi.psi
        assert (
            gauge("calibserve_estimated_accuracy", series)
            == report.unlabelled.estimated_accuracy_drop.estimated_accuracy
        )
        # The same numbers as the reasons that /health/calibration shows.
        reasons = {r.code: r for r in report.reasons}
        assert gauge("calibserve_live_ece", series) == reasons["live_ece"].value
        assert gauge("calibserve_live_psi", series) == reasons["confidence_psi"].value
    finally:
        assert log is not None
        log.close()
