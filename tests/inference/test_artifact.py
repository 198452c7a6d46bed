"""Loading an artifact fails fast, naming the file and the problem, whenever the card cannot be trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import TRAIN_EXTRA

pytest.importorskip("onnx", reason=f"onnx is missing; {TRAIN_EXTRA}")

import onnx

from service.card import CARD_METADATA_KEY
from service.errors import ArtifactError
from service.inference.artifact import load_artifact

pytestmark = pytest.mark.unit


@pytest.fixture
def artifact(tiny_artifact_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_artifact_dir, copy)
    return copy


def rewrite_card(directory: Path, change: dict[str, object]) -> None:
    model = onnx.load(str(directory / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    card = json.loads(props[CARD_METADATA_KEY])
    card.update(change)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {CARD_METADATA_KEY: json.dumps(card)})
    onnx.save(model, str(directory / "model.onnx"))


def test_loads_directory_or_file(artifact: Path) -> None:
    loaded = load_artifact(artifact)
    assert loaded.card.name == "tiny"
    assert load_artifact(artifact / "model.onnx").card == loaded.card


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"nowhere: model file not found"):
        load_artifact(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"empty/model.onnx: model file not found"):
        load_artifact(tmp_path / "empty")


def test_not_an_onnx_model(artifact: Path) -> None:
    (artifact / "model.onnx").write_bytes(b"this is not a protobuf at all \xff\xff")
    with pytest.raises(ArtifactError, match="model.onnx: not a loadable ONNX model"):
        load_artifact(artifact)


def test_card_missing(artifact: Path) -> None:
    model = onnx.load(str(artifact / "model.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(artifact / "model.onnx"))
    with pytest.raises(ArtifactError, match="no calibration card in the ONNX metadata"):
        load_artifact(artifact)


def test_card_version_must_match_the_graph(artifact: Path) -> None:
    rewrite_card(artifact, {"version": "0" * 64})
    (artifact / "card.json").unlink()
    with pytest.raises(ArtifactError, match="does not match the model's sha256"):
        load_artifact(artifact)


def test_weights_changed_after_export(artifact: Path) -> None:
    model = onnx.load(str(artifact / "model.onnx"))
    weights = model.graph.initializer[-1]
    weights.raw_data = bytes(len(weights.raw_data))
    onnx.save(model, str(artifact / "model.onnx"))
    with pytest.raises(ArtifactError, match="does not match the model's sha256"):
        load_artifact(artifact)


def test_card_with_wrong_class_count_or_features(artifact: Path) -> None:
    rewrite_card(artifact, {"classes": ["a", "b", "c"]})
    (artifact / "card.json").unlink()
    with pytest.raises(ArtifactError, match="output 'logits' has shape .* card has 3 classes"):
        load_artifact(artifact)


def test_invalid_embedded_card(artifact: Path) -> None:
    rewrite_card(artifact, {"temperature": {"value": -1.0}})
    with pytest.raises(ArtifactError, match="embedded calibration card is invalid"):
        load_artifact(artifact)


def test_card_json_must_agree_with_embedded_card(artifact: Path) -> None:
    card = json.loads((artifact / "card.json").read_text())
    card["name"] = "someone-else"
    (artifact / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="card.json: does not match the card embedded in model.onnx"):
        load_artifact(artifact)
    (artifact / "card.json").write_text("{}")
    with pytest.raises(ArtifactError, match="card.json: invalid calibration card"):
        load_artifact(artifact)


def test_wrong_inputs_and_outputs(artifact: Path) -> None:
    model = onnx.load(str(artifact / "model.onnx"))
    model.graph.output[1].name = "probs"
    for node in model.graph.node:
        node.output[:] = ["probs" if o == "probabilities" else o for o in node.output]
    onnx.save(model, str(artifact / "model.onnx"))
    with pytest.raises(ArtifactError, match="output 'probabilities' is missing"):
        load_artifact(artifact)


def test_the_cards_input_must_be_the_graphs(artifact: Path) -> None:
    """Every request is decoded into what the card declares: a dtype or shape the graph does not take is refused
    at load, naming both."""
    card = json.loads((artifact / "card.json").read_text())
    (artifact / "card.json").unlink()
    rewrite_card(artifact, {"io": {**card["io"], "input_dtype": "int64"}})
    with pytest.raises(ArtifactError, match=r"input 'features' is tensor\(float\), card says int64"):
        load_artifact(artifact)
    rewrite_card(artifact, {"io": {**card["io"], "input_shape": [-1, 1, 8, 8]}})
    with pytest.raises(ArtifactError, match=r"card says \[-1, 1, 8, 8\]"):
        load_artifact(artifact)
    rewrite_card(artifact, {"io": {**card["io"], "input_shape": [-1, 64], "n_features": 63}})
    with pytest.raises(ArtifactError, match=r"card says 63 features for instances of shape \[64\]"):
        load_artifact(artifact)
    rewrite_card(artifact, {"io": {**card["io"], "input_shape": [-1, 64]}})
    assert load_artifact(artifact).card.io.input_shape == (-1, 64)


def test_a_graph_with_a_fixed_batch_dimension_is_refused(artifact: Path) -> None:
    model = onnx.load(str(artifact / "model.onnx"))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch.ClearField("dim_param")
    batch.dim_value = 1
    onnx.save(model, str(artifact / "model.onnx"))
    with pytest.raises(ArtifactError, match="the batch dimension must be free"):
        load_artifact(artifact)
