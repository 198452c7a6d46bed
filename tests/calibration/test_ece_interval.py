"""The ECE interval covers the true ECE: a small, seeded run of ``bench/ece_intervals.py``.

The statistical review (issue 12) measured the former percentile-bootstrap interval: coverage 0.00 for a
perfectly calibrated model and 0.56-0.77 for miscalibrated ones at nominal 0.90. These tests fail on it.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from service.calibration.uncertainty import ece_estimate
from tests.conftest import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("ece_intervals.py")


def test_calibrated_model_interval_includes_zero(bench: ModuleType) -> None:
    # True ECE 0: the interval must reach down to 0 (percentile bootstrap: never, measured 0.00).
    ref = bench.reference_confidences()
    result = bench.coverage(ref, bench.POPULATIONS["calibrated"], n=100, trials=60, seed=11, n_boot=400)
    assert result["true_ece"] == 0.0
    assert result["coverage"] >= 0.85, result
    assert result["percentile"] <= 0.05, result


def test_miscalibrated_model_coverage_near_nominal(bench: ModuleType) -> None:
    # True ECE 0.03 on 2000 predictions: the percentile bootstrap covered 0.56 of the time; the stated interval
    # ~0.9 (bench/ECE_INTERVALS.md). 60 trials: P(< 45 covered | p = 0.88) ~ 0.01.
    ref = bench.reference_confidences()
    result = bench.coverage(ref, bench.POPULATIONS["overconfident -0.03"], n=2000, trials=60, seed=12, n_boot=400)
    assert result["true_ece"] == pytest.approx(0.03, abs=1e-3)
    assert result["coverage"] >= 0.75, result
    assert result["percentile"] < result["coverage"], result


def test_interval_may_lie_below_the_biased_point_estimate() -> None:
    # Perfectly calibrated, 360 samples: the point estimate is positive by chance, the interval starts at 0.
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.5, 1.0, 360)
    correct = rng.random(360) < conf
    est = ece_estimate(conf, correct, n_boot=500, seed=0)
    assert est.value > 0.0
    assert est.lower == 0.0
    assert est.upper >= est.lower
    assert est.interval == "basic_bootstrap_noise_floor"
