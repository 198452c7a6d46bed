"""Label-smoothing targets: worked examples, priors and validation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax

from service.calibration.smoothing import class_prior, smoothed_targets

pytestmark = pytest.mark.unit


def test_k3_alpha01_worked_example() -> None:
    targets = smoothed_targets(np.array([0]), 3, 0.1)
    np.testing.assert_allclose(targets[0], [0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3], rtol=1e-15)
    np.testing.assert_array_equal(np.round(targets[0], 4), [0.9333, 0.0333, 0.0333])
    # The optimal logit gap for this target is log(0.9333 / 0.0333) = log(28) = 3.3322.
    np.testing.assert_array_equal(np.round(scipy_softmax([3.3322, 0.0, 0.0]), 4), np.round(targets[0], 4))


def test_k10_alpha01_worked_example() -> None:
    targets = smoothed_targets(np.array([3, 7]), 10, 0.1)
    assert targets.shape == (2, 10)
    assert targets[0, 3] == pytest.approx(0.91)
    assert targets[1, 7] == pytest.approx(0.91)
    assert np.delete(targets[0], 3) == pytest.approx(np.full(9, 0.01))


def test_alpha_zero_is_one_hot() -> None:
    labels = np.array([2, 0, 1])
    np.testing.assert_array_equal(smoothed_targets(labels, 3, 0.0), np.eye(3)[labels])


def test_empirical_prior_targets() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2, 0, 1])
    prior = class_prior(labels, 4)
    np.testing.assert_allclose(prior, [4 / 8, 2 / 8, 2 / 8, 0.0])
    assert prior.sum() == pytest.approx(1.0)
    targets = smoothed_targets(labels, 4, 0.2, prior=prior)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(targets[3], 0.8 * np.eye(4)[1] + 0.2 * prior)
    assert (targets[:, 3] == 0.0).all()  # an unseen class gets no mass


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_targets_are_distributions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, size=100)
    alpha = float(rng.uniform(0, 0.5))
    targets = smoothed_targets(labels, 7, alpha)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0)
    assert (targets >= 0).all()
    np.testing.assert_allclose(targets[np.arange(100), labels], 1 - alpha + alpha / 7)
    np.testing.assert_allclose(class_prior(labels, 7), np.bincount(labels, minlength=7) / 100)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.0}, "alpha must satisfy"),
        ({"alpha": -0.1}, "alpha must satisfy"),
        ({"alpha": 0.1, "prior": np.array([0.5, 0.5])}, "prior must have shape \\(3,\\)"),
        ({"alpha": 0.1, "prior": np.array([0.5, 0.6, -0.1])}, "non-negative"),
        ({"alpha": 0.1, "prior": np.array([0.5, 0.3, 0.1])}, "prior must sum to 1"),
        ({"alpha": 0.1, "prior": np.array([np.nan, 0.5, 0.5])}, "finite"),
    ],
)
def test_bad_alpha_or_prior_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        smoothed_targets(np.array([0, 1]), 3, **kwargs)  # type: ignore[arg-type]


def test_label_validation() -> None:
    with pytest.raises(ValueError, match="labels must be in \\[0, 3\\)"):
        smoothed_targets(np.array([3]), 3, 0.1)
    with pytest.raises(ValueError, match="empty"):
        class_prior(np.array([], dtype=int), 3)
    with pytest.raises(ValueError, match="n_classes"):
        class_prior(np.array([0]), 1)
