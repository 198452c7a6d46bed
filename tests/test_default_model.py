"""The committed default model: consistent files and the quality the project promises."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import DEFAULT_MODEL_DIR, TRAIN_EXTRA

pytest.importorskip("onnx", reason=f"onnx is missing; {TRAIN_EXTRA}")

import numpy as np
import onnx
import onnxruntime as ort

from service.calibration.metrics import accuracy, nll
from service.card import CARD_METADATA_KEY, CalibrationCard

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def card() -> CalibrationCard:
    return CalibrationCard.from_json((DEFAULT_MODEL_DIR / "card.json").read_text())


def test_card_json_embedded_card_and_graph_hash_agree(card: CalibrationCard) -> None:
    model = onnx.load(str(DEFAULT_MODEL_DIR / "model.onnx"))
    embedded = {p.key: p.value for p in model.metadata_props}[CARD_METADATA_KEY]
    assert CalibrationCard.from_json(embedded) == card
    del model.metadata_props[:]
    assert hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest() == card.version


def test_default_model_meets_the_targets(card: CalibrationCard) -> None:
    after = card.test.after_temperature
    assert after.n == 360
    assert after.accuracy.value >= 0.97
    assert after.nll.value <= 0.12
    assert after.ece.value <= 0.02
    assert after.ece.lower <= after.ece.value <= after.ece.upper
    assert card.temperature.value > 0


def test_default_model_reproduces_its_card_on_the_test_split(card: CalibrationCard) -> None:
    """onnxruntime on the digits test split (re-derived from the card's seed) gives the card's figures."""
    pytest.importorskip("sklearn")
    from service.training.data import load_dataset, stratified_split

    dataset = load_dataset("digits")
    split = stratified_split(dataset, 0.2, 0.2, seed=card.dataset.split_seed)
    session = ort.InferenceSession(str(DEFAULT_MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"features": dataset.features[split.test].astype(np.float32)})
    labels = dataset.labels[split.test]
    assert accuracy(probs.astype(np.float64), labels) == pytest.approx(card.test.after_temperature.accuracy.value)
    assert nll(probs.astype(np.float64), labels) == pytest.approx(card.test.after_temperature.nll.value, abs=1e-4)
