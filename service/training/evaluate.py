"""Turn a training run into its calibration card: test metrics before/after T, conformal, drift reference."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from service import __version__
from service import card as c
from service.calibration.conformal import (
    coverage_given_card,
    empirical_coverage,
    fit_conformal,
    lac_threshold_pac,
    mean_set_size,
    pac_rank,
    prediction_sets,
)
from service.calibration.reference import confidence_histogram, selective_prediction_table
from service.calibration.temperature import softmax
from service.calibration.uncertainty import CalibrationSummary, summarize
from service.training.config import architecture_name

if TYPE_CHECKING:  # the trainer imports torch; calibrate uses this module without it
    from service.training.train import TrainingRun

N_BINS = 15
INTERVAL_LEVEL = 0.9
N_BOOTSTRAP = 1000
MCE_MIN_COUNT = 10
COVERAGES = (0.9, 0.95)
# The PAC thresholds' delta: the nominal coverage holds for the card at hand with probability 0.95.
PAC_DELTA = 0.05


def held_out_probabilities(run: TrainingRun, calibrated: bool = True) -> NDArray[np.float64]:
    return softmax(run.test_logits, run.temperature.temperature if calibrated else 1.0)


def split_metrics(probs: NDArray[np.float64], labels: NDArray[np.int64], seed: int) -> c.SplitMetrics:
    summary = summarize(
        probs,
        labels,
        n_bins=N_BINS,
        n_boot=N_BOOTSTRAP,
        level=INTERVAL_LEVEL,
        seed=seed,
        mce_min_count=MCE_MIN_COUNT,
    )
    return _card_metrics(summary, len(labels))


def _card_metrics(summary: CalibrationSummary, n: int) -> c.SplitMetrics:
    return c.SplitMetrics(
        n=n,
        n_bins=summary.n_bins,
        interval_level=INTERVAL_LEVEL,
        accuracy=summary.accuracy,
        nll=summary.nll,
        brier=summary.brier,
        ece=summary.ece,
        adaptive_ece=summary.adaptive_ece,
        classwise_ece=summary.classwise_ece,
        mce=summary.mce,
        mce_min_count=summary.mce_min_count,
        mean_confidence=summary.mean_confidence,
        ece_noise_floor=summary.ece_noise_floor,
        reliability=summary.reliability,
    )


def build_card(run: TrainingRun, name: str, version: str, created: datetime | None = None) -> c.CalibrationCard:
    """The card for ``run``; ``version`` is the digest of the exported graph it describes."""
    dataset, split, config = run.dataset, run.split, run.config
    test_labels = dataset.labels[split.test]
    calibration_labels = dataset.labels[split.calibration]
    before = held_out_probabilities(run, calibrated=False)
    after = held_out_probabilities(run, calibrated=True)
    calibration_probs = softmax(run.calibration_logits, run.temperature.temperature)
    return c.CalibrationCard(
        name=name,
        version=version,
        created=created or datetime.now(UTC),
        producer=f"calibserve {__version__}",
        classes=dataset.class_names,
        io=c.IOInfo(
            n_features=dataset.features.shape[1],
            feature_names=dataset.feature_names,
            input_shape=(-1, dataset.features.shape[1]),
        ),
        dataset=c.DatasetInfo(
            name=dataset.name,
            n_samples=len(dataset.labels),
            n_train=len(split.train),
            n_calibration=len(split.calibration),
            n_test=len(split.test),
            class_counts=tuple(int(v) for v in np.bincount(dataset.labels, minlength=dataset.n_classes)),
            split_seed=split.seed,
        ),
        training=c.TrainingConfigInfo(
            label_smoothing=config.label_smoothing,
            smoothing_prior=config.smoothing_prior,
            prior=tuple(float(v) for v in run.prior),
            seed=config.seed,
            architecture=architecture_name(dataset.features.shape[1], config.hidden_sizes, dataset.n_classes),
            hidden_sizes=config.hidden_sizes,
            dropout=config.dropout,
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
        ),
        temperature=c.TemperatureInfo(
            value=run.temperature.temperature,
            log_value=run.temperature.log_temperature,
            n=len(calibration_labels),
            nll_before=run.temperature.nll_before,
            nll_after=run.temperature.nll_after,
            at_bound=run.temperature.at_bound,
        ),
        test=c.EvaluationMetrics(
            before_temperature=split_metrics(before, test_labels, config.seed),
            after_temperature=split_metrics(after, test_labels, config.seed),
        ),
        conformal=conformal_summaries(calibration_probs, calibration_labels, after, test_labels),
        selective=selective_prediction_table(after, test_labels),
        reference=reference_distribution(after, dataset.n_classes),
    )


def conformal_summaries(
    calibration_probs: NDArray[np.float64],
    calibration_labels: NDArray[np.int64],
    test_probs: NDArray[np.float64],
    test_labels: NDArray[np.int64],
) -> tuple[c.ConformalSummary, ...]:
    levels = []
    for level in fit_conformal(calibration_probs, calibration_labels, COVERAGES):
        mask = prediction_sets(test_probs, level.threshold)
        given = coverage_given_card(level.n_calibration, level.coverage)
        levels.append(
            c.ConformalSummary(
                coverage=level.coverage,
                threshold=level.threshold,
                n_calibration=level.n_calibration,
                test_coverage=empirical_coverage(mask, test_labels),
                test_mean_set_size=mean_set_size(mask),
                p_coverage_below_nominal=given.p_below_nominal,
                coverage_quantile_05=given.quantile,
                pac=_pac(calibration_probs, calibration_labels, test_probs, test_labels, level.coverage),
            )
        )
    return tuple(levels)


def _pac(
    calibration_probs: NDArray[np.float64],
    calibration_labels: NDArray[np.int64],
    test_probs: NDArray[np.float64],
    test_labels: NDArray[np.int64],
    coverage: float,
) -> c.PacThreshold:
    """The training-conditional threshold at ``PAC_DELTA`` and what it did on the test split."""
    n = len(calibration_labels)
    rank = pac_rank(n, coverage, PAC_DELTA)
    threshold = lac_threshold_pac(calibration_probs, calibration_labels, coverage, PAC_DELTA)
    mask = prediction_sets(test_probs, threshold)
    return c.PacThreshold(
        delta=PAC_DELTA,
        rank=rank,
        threshold=threshold,
        p_coverage_below_nominal=coverage_given_card(n, coverage, rank=rank).p_below_nominal,
        test_coverage=empirical_coverage(mask, test_labels),
        test_mean_set_size=mean_set_size(mask),
    )


def reference_distribution(probs: NDArray[np.float64], n_classes: int) -> c.ReferenceDistribution:
    confidences = probs.max(axis=1)
    predicted = np.bincount(probs.argmax(axis=1), minlength=n_classes) / len(probs)
    return c.ReferenceDistribution(
        n=len(probs),
        confidence_bin_edges=tuple(float(e) for e in np.linspace(0.0, 1.0, N_BINS + 1)),
        confidence_histogram=tuple(int(v) for v in confidence_histogram(confidences, N_BINS)),
        predicted_class_fraction=tuple(float(v) for v in predicted),
        mean_confidence=float(confidences.mean()),
        confidences=tuple(round(float(v), 6) for v in np.sort(confidences)),
    )
