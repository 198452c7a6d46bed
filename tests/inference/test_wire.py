"""The wire-level edits the server's recalibration makes, checked with onnxruntime and the ``onnx`` package."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from service.calibration.temperature import softmax
from service.card import CARD_METADATA_KEY, CalibrationCard, model_digest
from service.errors import ArtifactError
from service.inference import wire
from tests.conftest import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.unit

MODEL = (DEFAULT_MODEL_DIR / "model.onnx").read_bytes()
CARD = CalibrationCard.from_json((DEFAULT_MODEL_DIR / "card.json").read_bytes())


def outputs(model: bytes, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, probs = ort.InferenceSession(model).run(["logits", "probabilities"], {"features": rows})
    return np.asarray(logits, dtype=np.float64), np.asarray(probs, dtype=np.float64)


def test_the_served_temperature_is_read_from_the_graph() -> None:
    assert wire.served_temperature(MODEL) == pytest.approx(CARD.temperature.value, rel=1e-6)


@pytest.mark.parametrize("temperature", [0.2, 1.0, 3.7])
def test_a_new_temperature_changes_only_the_softmax_scale(temperature: float) -> None:
    rows = np.random.default_rng(0).uniform(0, 16, size=(32, 64)).astype(np.float32)
    patched = wire.with_temperature(MODEL, temperature)
    assert len(patched) == len(MODEL)
    assert sum(a != b for a, b in zip(patched, MODEL, strict=True)) <= 4  # four bytes at most
    old_logits, _ = outputs(MODEL, rows)
    new_logits, new_probs = outputs(patched, rows)
    assert np.array_equal(old_logits, new_logits)
    np.testing.assert_allclose(new_probs, softmax(old_logits, temperature), atol=1e-6)
    assert wire.served_temperature(patched) == pytest.approx(temperature, rel=1e-6)
    assert model_digest(patched) != model_digest(MODEL) or temperature == pytest.approx(CARD.temperature.value)


def test_the_card_goes_into_metadata_props_and_leaves_the_digest_alone() -> None:
    onnx = pytest.importorskip("onnx", reason="the check reads the result with the onnx package")
    card = CARD.model_copy(update={"producer": "a test"})
    with_card = wire.with_card(wire.with_card(MODEL, CARD.to_json()), card.to_json())  # replaced, not added
    assert model_digest(with_card) == model_digest(MODEL)
    props = {p.key: p.value for p in onnx.load_from_string(with_card).metadata_props}
    assert list(props) == [CARD_METADATA_KEY] and CalibrationCard.from_json(props[CARD_METADATA_KEY]) == card
    session = ort.InferenceSession(with_card)
    assert CalibrationCard.from_json(session.get_modelmeta().custom_metadata_map[CARD_METADATA_KEY]) == card


def test_a_graph_without_a_scaled_softmax_is_refused() -> None:
    onnx = pytest.importorskip("onnx", reason="builds a graph with the onnx package")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "bare",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
    )
    bare = onnx.helper.make_model(graph).SerializeToString()
    with pytest.raises(ArtifactError, match="does not scale its input"):
        wire.with_temperature(bare, 2.0)


def test_an_artifact_made_by_calibrate_is_patched_too(model_sources) -> None:  # type: ignore[no-untyped-def]
    model = (model_sources.digits_t1 / "model.onnx").read_bytes()
    card = CalibrationCard.from_json((model_sources.digits_t1 / "card.json").read_bytes())
    assert wire.served_temperature(model) == pytest.approx(card.temperature.value, rel=1e-6)
    rows = np.random.default_rng(1).uniform(0, 16, size=(8, 64)).astype(np.float32)
    logits, _ = outputs(model, rows)
    _, probs = outputs(wire.with_temperature(model, 0.5), rows)
    np.testing.assert_allclose(probs, softmax(logits, 0.5), atol=1e-6)
