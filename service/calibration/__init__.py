"""Calibration math in pure numpy: metrics, temperature scaling, conformal sets and label smoothing.

Only numpy and the standard library are imported here, so the serving image stays small.
"""

from service.calibration.conformal import (
    ConformalLevel,
    empirical_coverage,
    fit_conformal,
    lac_threshold,
    mean_set_size,
    prediction_sets,
)
from service.calibration.metrics import (
    ReliabilityBin,
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
from service.calibration.reference import SelectiveRow, confidence_histogram, selective_prediction_table
from service.calibration.smoothing import class_prior, smoothed_targets
from service.calibration.temperature import (
    TemperatureFit,
    fit_temperature,
    log_softmax,
    nll_at_temperature,
    softmax,
)
from service.calibration.uncertainty import (
    CalibrationSummary,
    Interval,
    MetricEstimate,
    NoiseFloor,
    bootstrap_interval,
    ece_noise_floor,
    summarize,
)

__all__ = [
    "CalibrationSummary",
    "ConformalLevel",
    "Interval",
    "MetricEstimate",
    "NoiseFloor",
    "ReliabilityBin",
    "SelectiveRow",
    "TemperatureFit",
    "accuracy",
    "adaptive_ece",
    "bin_indices",
    "bootstrap_interval",
    "brier",
    "class_prior",
    "classwise_ece",
    "confidence_histogram",
    "ece",
    "ece_from_confidences",
    "ece_noise_floor",
    "empirical_coverage",
    "fit_conformal",
    "fit_temperature",
    "lac_threshold",
    "log_softmax",
    "mce",
    "mean_set_size",
    "nll",
    "nll_at_temperature",
    "prediction_sets",
    "reliability_bins",
    "selective_prediction_table",
    "smoothed_targets",
    "softmax",
    "summarize",
]
