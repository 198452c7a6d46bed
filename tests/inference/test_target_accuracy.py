"""CALIBSERVE_TARGET_ACCURACY under simulation: how often the chosen threshold's true accuracy misses the target.

A synthetic, perfectly calibrated model: confidence ``c = 1 - U**P / 2`` (U uniform) and a prediction is
right with probability ``c``. Kept at threshold ``t`` (>= 0.5) are the rows with ``U <= (2 (1 - t)) ** (1/P)``,
and their true accuracy is exactly ``1 - (1 - t) / (P + 1)``. Each synthetic card draws a 360-row test split,
builds its selective table on a grid of thresholds and picks a threshold; it fails when the true accuracy
at that threshold is below the target.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.calibration.reference import SelectiveRow
from service.errors import ConfigurationError
from service.inference.artifact import load_artifact
from service.inference.engine import abstain_threshold, selective_lower_bound
from service.settings import default_model_path

pytestmark = pytest.mark.unit

P = 24  # overall accuracy 1 - 0.5 / (P + 1) = 0.98, like the bundled model
N_TEST = 360
CARDS = 300
TARGETS = (0.985, 0.99, 0.995)
GRID = (0.0, *np.round(np.arange(0.5, 1.0, 0.02), 2).tolist())


def true_accuracy(threshold: float) -> float:
    return 1.0 - (1.0 - max(threshold, 0.5)) / (P + 1)


def synthetic_table(rng: np.random.Generator) -> tuple[SelectiveRow, ...]:
    confidence = 1.0 - rng.random(N_TEST) ** P / 2
    correct = rng.random(N_TEST) < confidence
    rows = []
    for threshold in GRID:
        kept = confidence >= threshold
        n = int(kept.sum())
        rows.append(
            SelectiveRow(
                threshold=threshold,
                coverage=n / N_TEST,
                accuracy=float(correct[kept].mean()) if n else None,
                n=n,
            )
        )
    return tuple(rows)


def point_estimate_rule(rows: tuple[SelectiveRow, ...], target: float) -> float | None:
    """The rule before issue 12: the lowest threshold whose measured accuracy reaches the target."""
    reaching = [row.threshold for row in rows if row.accuracy is not None and row.accuracy >= target]
    return min(reaching) if reaching else None


def test_clopper_pearson_rule_misses_the_target_at_most_about_5_percent_of_cards() -> None:
    card = load_artifact(default_model_path()).card
    rng = np.random.default_rng(1934)
    old_failures = new_failures = new_refusals = 0
    trials = 0
    for target in TARGETS:
        for _ in range(CARDS):
            rows = synthetic_table(rng)
            trials += 1
            old = point_estimate_rule(rows, target)
            old_failures += old is not None and true_accuracy(old) < target
            try:
                new = abstain_threshold(card.model_copy(update={"selective": rows}), None, target)
            except ConfigurationError:
                new_refusals += 1
                continue
            new_failures += true_accuracy(new) < target
    old_rate, new_rate = old_failures / trials, new_failures / trials
    print(f"failure rate: point estimate {old_rate:.3f}, Clopper-Pearson {new_rate:.3f}; refusals {new_refusals}")
    assert old_rate > 0.35, "the simulation must reproduce the old rule's failures"
    # 5% plus three binomial standard errors over the trials.
    assert new_rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)
    assert new_refusals < trials / 2, "the rule must still pick a threshold for most cards"


def test_lower_bound_of_a_row() -> None:
    row = SelectiveRow(threshold=0.9, coverage=341 / 360, accuracy=340 / 341, n=341)
    assert selective_lower_bound(row) == pytest.approx(0.98616, abs=1e-5)
    assert selective_lower_bound(SelectiveRow(threshold=0.99, coverage=0.0, accuracy=None, n=0)) == 0.0
