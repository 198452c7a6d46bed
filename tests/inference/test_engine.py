"""The inference engine on the bundled model: graph parity, trust metadata and the card-derived lookups."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.calibration.metrics import ReliabilityBin
from service.card import CalibrationCard
from service.errors import ConfigurationError, InvalidInput
from service.inference.artifact import load_artifact
from service.inference.engine import InferenceEngine, abstain_threshold, accuracy_bands, wilson_interval
from service.inference.features import rows_to_matrix
from tests.conftest import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine(load_artifact(DEFAULT_MODEL_DIR))


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    return np.asarray(sklearn_datasets.load_digits().data, dtype=np.float32)


def with_bins(card: CalibrationCard, counts: list[int], accuracies: list[float | None]) -> CalibrationCard:
    edges = np.linspace(0, 1, len(counts) + 1)
    bins = tuple(
        ReliabilityBin(lower=edges[i], upper=edges[i + 1], count=c, mean_confidence=None, accuracy=a)
        for i, (c, a) in enumerate(zip(counts, accuracies, strict=True))
    )
    after = card.test.after_temperature.model_copy(update={"reliability": bins})
    return card.model_copy(update={"test": card.test.model_copy(update={"after_temperature": after})})


def test_engine_matches_onnxruntime_directly(engine: InferenceEngine, digits: np.ndarray) -> None:
    session = ort.InferenceSession(str(DEFAULT_MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, probs = session.run(None, {"features": digits})
    batch = engine.predict(digits)
    assert np.abs(batch.probabilities - probs).max() < 1e-6
    assert np.abs(batch.probabilities.sum(axis=1) - 1).max() < 1e-12
    assert np.array_equal(batch.logits, logits)
    assert np.array_equal(batch.class_index, probs.argmax(axis=1))
    assert batch.prediction_set[np.arange(len(digits)), batch.class_index].all()
    p = batch.probabilities
    assert np.allclose(batch.entropy, -(p * np.log(p)).sum(axis=1))
    ordered = np.sort(p, axis=1)
    assert np.allclose(batch.margin, ordered[:, -1] - ordered[:, -2])
    assert not batch.abstain.any()


def test_wider_coverage_gives_superset_sets(engine: InferenceEngine, digits: np.ndarray) -> None:
    narrow, wide = engine.predict(digits, 0.9), engine.predict(digits, 0.95)
    assert (wide.prediction_set >= narrow.prediction_set).all()
    with pytest.raises(InvalidInput, match="coverage 0.8 is not available; .* 0.9, 0.95"):
        engine.predict(digits[:1], 0.8)


def test_bands_partition_the_unit_interval(engine: InferenceEngine) -> None:
    bands = engine.bands
    assert bands[0].lower == 0.0 and bands[-1].upper == 1.0
    assert all(a.upper == b.lower for a, b in itertools.pairwise(bands))
    assert sum(b.support for b in bands) == engine.card.test.after_temperature.n
    assert all(b.support >= 10 for b in bands)


def test_band_merging_rules(engine: InferenceEngine) -> None:
    card = with_bins(engine.card, [0, 3, 4, 5, 0, 50], [None, 0.0, 0.5, 0.6, None, 0.9])
    bands, band_of_bin = accuracy_bands(card, min_support=5)
    assert [b.support for b in bands] == [7, 5, 50]
    assert band_of_bin.tolist() == [0, 0, 0, 1, 2, 2]  # an empty bin joins the band after it
    assert bands[0].accuracy == pytest.approx(2 / 7)
    # A short last band joins the one before it; one band when nothing reaches the support.
    bands, _ = accuracy_bands(with_bins(engine.card, [20, 3], [0.5, 1.0]), min_support=10)
    assert [b.support for b in bands] == [23]
    bands, _ = accuracy_bands(with_bins(engine.card, [1, 1], [0.0, 1.0]), min_support=10)
    assert len(bands) == 1 and bands[0].accuracy == 0.5


def test_merged_bands_stay_monotone_when_bins_are(engine: InferenceEngine) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        counts = rng.integers(0, 15, size=15).tolist()
        accuracies = np.sort(rng.uniform(size=15)).tolist()
        bands, _ = accuracy_bands(with_bins(engine.card, counts, accuracies), min_support=int(rng.integers(1, 30)))
        values = [b.accuracy for b in bands if b.accuracy is not None]
        assert values == sorted(values)


@pytest.mark.parametrize(("correct", "n"), [(0, 5), (5, 5), (339, 340), (3, 11), (50, 100)])
def test_wilson_interval_matches_its_definition(correct: int, n: int) -> None:
    """Brute force: the Wilson interval is every p with |p_hat - p| <= z * sqrt(p (1 - p) / n)."""
    z = 1.6448536269514722
    grid = np.linspace(0, 1, 200_001)
    inside = grid[np.abs(correct / n - grid) <= z * np.sqrt(grid * (1 - grid) / n)]
    low, high = wilson_interval(correct, n)
    assert low == pytest.approx(inside.min(), abs=1e-5)
    assert high == pytest.approx(inside.max(), abs=1e-5)


def test_abstain_threshold_from_the_selective_table(engine: InferenceEngine) -> None:
    card = engine.card
    assert abstain_threshold(card, 0.7, None) == 0.7
    assert abstain_threshold(card, None, None) == 0.0
    # The bundled card (360 test samples): the Clopper–Pearson lower bounds, strictest threshold first, are
    # 0.9845 (0.99), 0.9860 (0.95), 0.9862 (0.9), 0.9778 (0.8): 0.98 is shown down to 0.9, not below.
    assert abstain_threshold(card, None, 0.98) == 0.9
    assert abstain_threshold(card, None, 0.95) == 0.0
    # The old rule (point estimate) would have taken 0.9 for 0.995 (measured 0.9971 on 341 samples).
    with pytest.raises(ConfigurationError, match="target accuracy 0.995 is not reached") as refused:
        abstain_threshold(card, None, 0.995)
    assert "304 of 305" in str(refused.value) and "0.9845" in str(refused.value)
    assert "at least 598 kept test samples" in str(refused.value)  # log(0.05) / log(0.995) = 597.6
    with pytest.raises(ConfigurationError, match="no finite test split"):
        abstain_threshold(card, None, 1.0)


def test_abstain_flags_low_confidence(digits: np.ndarray) -> None:
    strict = InferenceEngine(load_artifact(DEFAULT_MODEL_DIR), abstain_below=0.999)
    batch = strict.predict(digits[:200])
    assert np.array_equal(batch.abstain, batch.confidence < 0.999)
    assert batch.abstain.any() and not batch.abstain.all()


def test_rows_to_matrix_lists_objects_and_limits() -> None:
    names = ("a", "b", "c")
    assert rows_to_matrix([[1, 2, 3]], 3, names).tolist() == [[1, 2, 3]]
    assert rows_to_matrix([{"c": 3, "a": 1, "b": 2}, [4, 5, 6]], 3, names).tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(InvalidInput, match=r"instances\[1\] has 2 features; the model expects 3"):
        rows_to_matrix([[1, 2, 3], [1, 2]], 3, names)
    with pytest.raises(InvalidInput, match=r"instances\[0\] lacks 1 feature\(s\): 'c'"):
        rows_to_matrix([{"a": 1, "b": 2}], 3, names)
    with pytest.raises(InvalidInput, match=r"instances\[0\] has unknown feature name\(s\): 'z'"):
        rows_to_matrix([{"a": 1, "b": 2, "z": 3}], 3, names)
    with pytest.raises(InvalidInput, match="card has no feature names"):
        rows_to_matrix([{"a": 1, "b": 2, "c": 3}], 3, None)
    with pytest.raises(InvalidInput, match=r"instances\[0\]\[1\] \('b'\) = 1e\+39 is not a finite float32"):
        rows_to_matrix([[1, 1e39, 3]], 3, names)
    with pytest.raises(InvalidInput, match="instances is empty"):
        rows_to_matrix([], 3, names)


def test_tiny_model_without_feature_names(tiny_artifact_dir: Path) -> None:
    engine = InferenceEngine(load_artifact(tiny_artifact_dir), min_bin_support=1)
    batch = engine.predict(np.zeros((3, 64), dtype=np.float32))
    assert batch.probabilities.shape == (3, 10)
    assert all(b.support >= 1 for b in engine.bands)


def test_inputs_that_overflow_inside_the_graph_are_refused(engine: InferenceEngine, digits: np.ndarray) -> None:
    """Found by schemathesis: finite float32 features near 3.4e38 overflow in the first layer (NaN out)."""
    extreme = digits[:3].copy()
    extreme[1, :] = 3.4e38  # every feature at the top of float32: the first layer sums to inf
    with pytest.raises(InvalidInput, match=r"instances\[1\] drive the model's output to NaN or infinity"):
        engine.predict(extreme)
