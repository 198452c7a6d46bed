"""Triton's own client against a live ``calibserve serve`` of models whose input is not flat float32: an image
(float32 ``[N, 1, 8, 8]``) and integer tokens (int64 ``[N, 8]``), built with ``onnx.helper`` and calibrated as in
``tests/api/test_any_input.py``. The client reads the model metadata and sends the tensor as the metadata says
(binary and JSON); the answers are onnxruntime's on the artifact."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

pytest.importorskip("onnx", reason="needs the 'calibrate' extra: pip install -e '.[calibrate]'")

import onnx
import onnxruntime as ort
import tritonclient.http as httpclient  # type: ignore[import-untyped]
from onnx import TensorProto, helper
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from tests.api.test_any_input import _calibrate, _least_squares, _save
from tests.test_serve_e2e import serving

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Model:
    name: str
    input: str
    datatype: str
    directory: Path
    rows: NDArray[Any]


@pytest.fixture(scope="module", params=["image", "tokens"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Model:
    root = tmp_path_factory.mktemp(f"triton-{request.param}")
    features, labels = load_digits(return_X_y=True)
    features = features.astype(np.float32)
    if request.param == "image":
        nodes = [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["scores"]),
        ]
        inputs, data = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])], features
        shaped: NDArray[Any] = features.reshape(-1, 1, 8, 8)
        name, datatype = "image", "FP32"
    else:
        nodes = [
            helper.make_node("Cast", ["tokens"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["as_float", "W"], ["scores"]),
        ]
        data = features.reshape(-1, 8, 8).sum(axis=2)
        inputs, shaped = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", 8])], data.astype(np.int64)
        name, datatype = "tokens", "INT64"
    weights = _least_squares(data[:900], labels[:900], 30.0)
    onnx_path = _save(root / f"{name}.onnx", nodes, inputs, [onnx.numpy_helper.from_array(weights, "W")])
    directory = _calibrate(root, name, onnx_path, shaped[900:1500], labels[900:1500])
    return Model(name, name, datatype, directory, shaped[1500:1532])


@pytest.fixture(scope="module")
def server(model: Model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``calibserve serve`` on the model; the host:port tritonclient takes."""
    data, log = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("log") / "serve.log"
    with serving(data, log, model.directory) as url:
        yield url.removeprefix("http://")


def reference(model: Model, rows: NDArray[Any]) -> NDArray[np.float64]:
    session = ort.InferenceSession(str(model.directory / "model.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {model.input: rows})
    return np.asarray(probabilities, dtype=np.float64)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_sends_what_the_metadata_declares(model: Model, server: str, binary: bool) -> None:
    client = httpclient.InferenceServerClient(server)
    (declared,) = client.get_model_metadata(model.name)["inputs"]
    assert declared == {"name": model.input, "datatype": model.datatype, "shape": [-1, *model.rows.shape[1:]]}
    tensor = httpclient.InferInput(declared["name"], list(model.rows.shape), declared["datatype"])
    tensor.set_data_from_numpy(model.rows, binary_data=binary)
    result = client.infer(model.name, [tensor], outputs=[httpclient.InferRequestedOutput("probabilities")])
    served = result.as_numpy("probabilities")
    assert np.max(np.abs(served - reference(model, model.rows))) < 1e-6


def test_tritonclient_hears_why_a_tensor_is_refused(model: Model, server: str) -> None:
    client = httpclient.InferenceServerClient(server)
    flat = model.rows.reshape(len(model.rows), -1)[:, :5]
    tensor = httpclient.InferInput(model.input, list(flat.shape), model.datatype)
    tensor.set_data_from_numpy(np.ascontiguousarray(flat))
    with pytest.raises(InferenceServerException, match=r"must have shape \[N, "):
        client.infer(model.name, [tensor])
