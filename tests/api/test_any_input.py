"""Models whose input is not a flat float32 row, calibrated by ``calibserve calibrate`` and served end to end.

Three small ONNX graphs built here with ``onnx.helper`` (real onnxruntime, real HTTP through the app):

- ``image``: float32 ``[N, 1, 8, 8]`` -> Flatten -> MatMul -> scores (the digits as images);
- ``tokens``: int64 ``[N, 8]`` -> Cast -> MatMul -> scores (each digit image's row sums, as integers);
- ``lengths``: int64 ``[N, L]`` with L free -> Cast -> ReduceSum -> MatMul + Add -> scores (sequences of any
  length: requests of different lengths are batched apart).

Every path (``/v1`` JSON, ``/v1`` ``.npy``, ``/v2`` JSON and binary) is checked against onnxruntime run
directly on the artifact, and every refusal names the cell or instance and the expected shape. The rule on
exactness (``service.inference.inputs``) is checked on all three paths, for these models and the bundled
flat one: an integer a float32 input cannot hold exactly (16777217) is refused everywhere; sent as a float,
it is rounded everywhere.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

pytest.importorskip("onnx", reason="needs the 'calibrate' extra: pip install -e '.[calibrate]'")

import onnx
from onnx import TensorProto, helper
from sklearn.datasets import load_digits

from service.api.schemas import DIGIT_ONE, DIGIT_ZERO
from service.card import CalibrationCard
from service.cli import main
from service.inference.inputs import FLOAT32_MAX
from service.monitoring.monitor import LOG_FILE
from tests.api.conftest import Client, error_of, serve, settings_for

pytestmark = pytest.mark.api

JSON = {"content-type": "application/json"}
NPY = {"content-type": "application/x-npy"}
BIG = 2**24 + 1  # 16777217: the first integer float32 cannot hold


# -- the models ----------------------------------------------------------------------------------------------------


def _save(path: Path, nodes: list[Any], inputs: list[Any], initializers: list[Any]) -> Path:
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", None])], initializers
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _least_squares(features: NDArray[Any], labels: NDArray[Any], scale: float) -> NDArray[np.float32]:
    """A linear classifier (one-hot least squares, scaled up: over-confident, so T has work to do)."""
    w, *_ = np.linalg.lstsq(features.astype(np.float64), np.eye(10)[labels], rcond=None)
    return (w * scale).astype(np.float32)


@dataclass(frozen=True)
class Served:
    directory: Path
    card: CalibrationCard
    session: ort.InferenceSession  # onnxruntime on the artifact itself: the reference every answer meets
    inputs: NDArray[Any]  # held-out instances, in the model's own dtype and shape
    labels: NDArray[Any]

    def probabilities(self, instances: NDArray[Any]) -> NDArray[np.float64]:
        (probs,) = self.session.run(["probabilities"], {self.card.io.input: instances})
        return np.asarray(probs, dtype=np.float64)


def _calibrate(root: Path, name: str, model: Path, features: NDArray[Any], labels: NDArray[Any]) -> Path:
    data = root / f"{name}.npz"
    np.savez(data, X=features, y=labels)
    out = root / name
    assert main(["calibrate", str(model), "--data", str(data), "--name", name, "--output-dir", str(out)]) == 0
    return out


def _served(directory: Path, inputs: NDArray[Any], labels: NDArray[Any]) -> Served:
    card = CalibrationCard.from_json((directory / "card.json").read_text())
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    return Served(directory, card, session, inputs, labels)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("any-input")


@pytest.fixture(scope="module")
def digits() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    features, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(labels))
    return features[order].astype(np.float32), labels[order]


@pytest.fixture(scope="module")
def image(root: Path, digits: tuple[NDArray[np.float32], NDArray[np.int64]]) -> Served:
    features, labels = digits
    weights = _least_squares(features[:900], labels[:900], 40.0)
    model = _save(
        root / "image.onnx",
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["scores"]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [onnx.numpy_helper.from_array(weights, "W")],
    )
    images = features.reshape(-1, 1, 8, 8)
    directory = _calibrate(root, "image", model, images[900:1500], labels[900:1500])
    return _served(directory, images[1500:], labels[1500:])


@pytest.fixture(scope="module")
def tokens(root: Path, digits: tuple[NDArray[np.float32], NDArray[np.int64]]) -> Served:
    features, labels = digits
    sums = features.reshape(-1, 8, 8).sum(axis=2).astype(np.int64)  # 8 integers 0..128 per digit
    weights = _least_squares(sums[:900], labels[:900], 20.0)
    model = _save(
        root / "tokens.onnx",
        [
            helper.make_node("Cast", ["tokens"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["as_float", "W"], ["scores"]),
        ],
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", 8])],
        [onnx.numpy_helper.from_array(weights, "W")],
    )
    directory = _calibrate(root, "tokens", model, sums[900:1500], labels[900:1500])
    return _served(directory, sums[1500:], labels[1500:])


@pytest.fixture(scope="module")
def lengths(root: Path) -> Served:
    """Three classes by the sum of a sequence of digits 0..9 of any length (thresholds 20 and 34)."""
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 10, size=(900, 6))
    total = ids.sum(axis=1)
    labels = np.where(rng.random(900) < 0.1, rng.integers(0, 3, 900), (total > 20).astype(int) + (total > 34))
    model = _save(
        root / "lengths.onnx",
        [
            helper.make_node("Cast", ["ids"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["as_float", "axes"], ["total"], keepdims=1),
            helper.make_node("MatMul", ["total", "W"], ["slope"]),
            helper.make_node("Add", ["slope", "B"], ["scores"]),
        ],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "L"])],
        [
            onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            onnx.numpy_helper.from_array(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "W"),
            onnx.numpy_helper.from_array(np.array([0.0, -10.0, -27.0], dtype=np.float32), "B"),
        ],
    )
    directory = _calibrate(root, "lengths", model, ids[:600], labels[:600])
    return _served(directory, ids[600:], labels[600:])


@pytest.fixture(scope="module")
def image_client(image: Served) -> Iterator[Client]:
    with serve(settings_for(model_path=image.directory, log_inputs=True)) as client:
        yield client


@pytest.fixture(scope="module")
def tokens_client(tokens: Served) -> Iterator[Client]:
    with serve(settings_for(model_path=tokens.directory, log_inputs=True)) as client:
        yield client


@pytest.fixture(scope="module")
def lengths_client(lengths: Served) -> Iterator[Client]:
    with serve(settings_for(model_path=lengths.directory)) as client:
        yield client


# -- helpers -------------------------------------------------------------------------------------------------------


def npy(array: NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def v1_probabilities(response: httpx.Response, classes: tuple[str, ...]) -> NDArray[np.float64]:
    assert response.status_code == 200, response.text
    return np.array([[p["probabilities"][c] for c in classes] for p in response.json()["predictions"]])


def v2_probabilities(response: httpx.Response) -> NDArray[np.float64]:
    assert response.status_code == 200, response.text
    (output,) = [o for o in response.json()["outputs"] if o["name"] == "probabilities"]
    return np.array(output["data"], dtype=np.float64).reshape(output["shape"])


def v2_error(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    return str(response.json()["error"])


def v2_tensor(name: str, values: Any, datatype: str, shape: list[int] | None = None) -> dict[str, Any]:
    array = np.asarray(values)
    data = array.tolist() if shape is None else values
    return {"name": name, "shape": list(array.shape) if shape is None else shape, "datatype": datatype, "data": data}


def v2_binary(client: Client, model: str, name: str, array: NDArray[Any], datatype: str) -> httpx.Response:
    raw = np.ascontiguousarray(array).tobytes()
    tensor = {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor], "outputs": [{"name": "probabilities"}]}).encode()
    return client.post(
        f"/v2/models/{model}/infer",
        content=header + raw,
        headers={"inference-header-content-length": str(len(header))},
    )


def with_value(array: NDArray[Any], index: tuple[int, ...], value: Any) -> list[Any]:
    """``array`` as nested lists with one value replaced (any JSON value: an int past float32, a string...)."""
    nested: list[Any] = array.tolist()
    node = nested
    for i in index[:-1]:
        node = node[i]
    node[index[-1]] = value
    return nested


# -- an image input: float32 [N, 1, 8, 8] --------------------------------------------------------------------------


def test_the_image_card_declares_its_input(image: Served) -> None:
    io_info = image.card.io
    assert (io_info.input, io_info.input_dtype, io_info.input_shape, io_info.n_features) == (
        "image",
        "float32",
        (-1, 1, 8, 8),
        64,
    )


def test_nested_json_instances_get_onnxruntimes_answer(image: Served, image_client: Client) -> None:
    rows = image.inputs[:30]
    served = v1_probabilities(image_client.predict({"instances": rows.tolist()}), image.card.classes)
    assert np.max(np.abs(served - image.probabilities(rows))) < 1e-6
    accuracy = float(np.mean(served.argmax(axis=1) == image.labels[:30]))
    assert accuracy > 0.8, accuracy  # a real classifier, not noise


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int64, ">f4"], ids=str)
def test_npy_images_get_the_json_answer(image: Served, image_client: Client, dtype: Any) -> None:
    rows = image.inputs[:12]  # integers 0..16: exact in every dtype
    expected = image_client.predict({"instances": rows.tolist()}).json()
    got = image_client.post("/v1/predict", content=npy(rows.astype(dtype)), headers=NPY)
    assert got.status_code == 200, got.text
    strip = lambda body: [{k: v for k, v in p.items() if k != "prediction_id"} for p in body["predictions"]]  # noqa: E731
    assert strip(got.json()) == strip(expected)


def test_v2_metadata_declares_the_true_input(image_client: Client) -> None:
    metadata = image_client.get("/v2/models/image").json()
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]


def test_v2_infer_json_flat_nested_and_binary(image: Served, image_client: Client) -> None:
    rows = image.inputs[:5]
    expected = image.probabilities(rows)
    nested = v2_tensor("image", rows, "FP32")
    flat = v2_tensor("image", rows.ravel().tolist(), "FP32", shape=[5, 1, 8, 8])
    for tensor in (nested, flat):
        answer = image_client.post("/v2/models/image/infer", json={"inputs": [tensor]})
        assert np.max(np.abs(v2_probabilities(answer) - expected)) < 1e-6
    for array, datatype in ((rows, "FP32"), (rows.astype(np.float64), "FP64"), (rows.astype(np.uint8), "UINT8")):
        answer = v2_binary(image_client, "image", "image", array, datatype)
        assert np.max(np.abs(v2_probabilities(answer) - expected)) < 1e-6


@pytest.mark.parametrize(
    ("instance", "says"),
    [
        pytest.param(lambda r: r.reshape(64).tolist(), "instances[1] has 64 items", id="flat"),
        pytest.param(lambda r: r.reshape(8, 8).tolist(), "instances[1] has 8 items", id="rank 2"),
        pytest.param(lambda r: r[:, :7].tolist(), "instances[1][0] has 7 items", id="a row short"),
        pytest.param(lambda r: [[*r[0, :7].tolist(), [1.0] * 7]], "instances[1][0][7] has 7 items", id="ragged"),
        pytest.param(lambda r: r.tolist() * 2, "instances[1] has 2 items", id="two channels"),
        pytest.param(
            lambda r: [[[*r[0, 0].tolist(), 0.0], *r[0, 1:].tolist()]], "instances[1][0][0] has 9 items", id="deep"
        ),
        pytest.param(lambda r: r[0, 0, 0].item(), "instances[1] is a number where a list of 1 belongs", id="a number"),
        pytest.param(
            lambda r: [[r[0, 0].tolist(), "x", *r[0, 2:].tolist()]], "instances[1][0][1] is not a list", id="a string"
        ),
    ],
)
def test_wrong_json_shapes_are_422_naming_the_instance_and_the_shape(
    image: Served, image_client: Client, instance: Any, says: str
) -> None:
    rows = image.inputs[:3].tolist()
    rows[1] = instance(image.inputs[1])
    error = error_of(image_client.predict({"instances": rows}), 422)
    assert says in error["message"] and "[1, 8, 8]" in error["message"], error["message"]
    assert error["details"]["field"].startswith("instances[1]")


def test_wrong_npy_and_v2_shapes_are_refused_naming_the_expected_shape(image: Served, image_client: Client) -> None:
    rows = image.inputs[:3]
    error = error_of(image_client.post("/v1/predict", content=npy(rows.reshape(3, 64)), headers=NPY), 422)
    assert "got [3, 64]" in error["message"] and "[N, 1, 8, 8]" in error["message"]
    assert error["details"]["expected"] == [-1, 1, 8, 8]
    tensor = v2_tensor("image", rows.reshape(3, 64), "FP32")
    message = v2_error(image_client.post("/v2/models/image/infer", json={"inputs": [tensor]}))
    assert "input 'image'" in message and "got [3, 64]" in message and "[N, 1, 8, 8]" in message
    tensor = v2_tensor("features", rows, "FP32")
    message = v2_error(image_client.post("/v2/models/image/infer", json={"inputs": [tensor]}))
    assert "'features'" in message and "'image' FP32 [-1, 1, 8, 8]" in message


@pytest.mark.parametrize(
    ("literal", "says"),
    [
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("1e39", "not a finite float32"),
        ('"3"', "valid number"),
        ("true", "valid number"),
    ],
)
def test_bad_json_values_are_422_naming_the_cell(image: Served, image_client: Client, literal: str, says: str) -> None:
    rows = image.inputs[:2].tolist()
    body = json.dumps({"instances": with_value(np.asarray(rows), (1, 0, 3, 4), "@")}).replace('"@"', literal)
    error = error_of(image_client.post("/v1/predict", content=body, headers=JSON), 422)
    assert "instances[1][0][3][4]" in error["message"] and says in error["message"], error["message"]


def test_non_finite_npy_and_binary_values_are_refused_naming_the_cell(image: Served, image_client: Client) -> None:
    rows = image.inputs[:3].copy()
    rows[2, 0, 5, 1] = np.inf
    error = error_of(image_client.post("/v1/predict", content=npy(rows), headers=NPY), 422)
    assert "instances[2][0][5][1] = inf" in error["message"] and error["details"]["field"] == "instances[2][0][5][1]"
    rows[2, 0, 5, 1] = np.nan
    message = v2_error(v2_binary(image_client, "image", "image", rows, "FP32"))
    assert "image[2][0][5][1] = nan" in message and "float32" in message


def test_openapi_describes_nested_instances(image_client: Client) -> None:
    document = image_client.get("/openapi.json").json()
    instances = document["components"]["schemas"]["PredictRequest"]["properties"]["instances"]
    level = instances["items"]
    for size in (1, 8, 8):
        assert level["type"] == "array" and level["minItems"] == level["maxItems"] == size, level
        level = level["items"]
    assert level["type"] == "number" and level["maximum"] == FLOAT32_MAX and level["minimum"] == -FLOAT32_MAX
    assert "[1, 8, 8]" in instances["description"]


def test_too_many_nested_instances_is_413(image: Served) -> None:
    with serve(settings_for(model_path=image.directory, max_instances=4)) as client:
        assert client.predict({"instances": image.inputs[:4].tolist()}).status_code == 200
        error = error_of(client.predict({"instances": image.inputs[:5].tolist()}), 413)
        assert "5 instances exceed the limit of 4" in error["message"]
        error = error_of(client.post("/v1/predict", content=npy(image.inputs[:5]), headers=NPY), 413)
        assert "limit of 4" in error["message"]


def test_a_huge_nested_body_is_refused_for_its_shape_before_it_is_decoded(image: Served, image_client: Client) -> None:
    """Past 1 MiB the lists' lengths are read raw (microseconds), not validated one by one."""
    instance: list[Any] = image.inputs[0].tolist()
    instance[0][2] = ["a"] * 300_000
    body = json.dumps({"instances": [image.inputs[1].tolist(), instance]})
    assert len(body) > 1024 * 1024
    error = error_of(image_client.post("/v1/predict", content=body.encode(), headers=JSON), 422)
    assert "instances[1][0][2] has more than 8 items" in error["message"], error["message"]
    small = json.dumps({"instances": [[[*instance[0][:2], ["a"] * 5000, *instance[0][3:]]]]})
    error = error_of(image_client.post("/v1/predict", content=small.encode(), headers=JSON), 422)
    assert "instances[0][0][2] has 5000 items" in error["message"], error["message"]


def test_concurrent_image_requests_share_batches_and_get_their_own_answers(image: Served, image_client: Client) -> None:
    rows = image.inputs[:40]

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return list(
            await asyncio.gather(
                *(client.post("/v1/predict", json={"instances": rows[i : i + 2].tolist()}) for i in range(0, 40, 2))
            )
        )

    batcher = image_client.app.state.repository.resolve(None).predictor.batcher
    batches, jobs = batcher.batches, batcher.jobs
    responses = image_client.run(scenario)
    served = np.concatenate([v1_probabilities(r, image.card.classes) for r in responses])
    assert np.max(np.abs(served - image.probabilities(rows))) < 1e-6
    assert batcher.jobs - jobs == 20 and batcher.batches - batches <= 20


def _logged_inputs(client: Client, ids: list[str]) -> dict[str, bytes]:
    log = client.app.state.repository.log
    assert log is not None and log.flush(10.0)
    with sqlite3.connect(client.app.state.settings.data_dir / LOG_FILE) as db:
        return dict(db.execute("SELECT id, features FROM predictions"))


def test_logged_images_are_their_float32_values(image: Served, image_client: Client) -> None:
    rows = image.inputs[:3]
    ids = [p["prediction_id"] for p in image_client.predict({"instances": rows.tolist()}).json()["predictions"]]
    stored = _logged_inputs(image_client, ids)
    for prediction_id, row in zip(ids, rows, strict=True):
        np.testing.assert_array_equal(np.frombuffer(stored[prediction_id], dtype="<f4"), row.ravel())


# -- 16777217 and a float32 input: refused as an integer on every path, rounded as a float on every path -----------


def test_an_integer_float32_cannot_hold_is_refused_on_every_path_of_an_image_model(
    image: Served, image_client: Client
) -> None:
    rows = image.inputs[:2].astype(np.int64)
    cell = (1, 0, 3, 4)
    body = {"instances": with_value(rows, cell, BIG)}
    error = error_of(image_client.predict(body), 422)
    assert "instances[1][0][3][4] = 16777217" in error["message"] and "float32" in error["message"], error
    assert "16777217.0" in error["message"]  # how to send it if rounding is fine
    array = rows.copy()
    array[cell] = BIG
    error = error_of(image_client.post("/v1/predict", content=npy(array), headers=NPY), 422)
    assert "instances[1][0][3][4] = 16777217" in error["message"] and "float32" in error["message"], error
    for tensor in (
        v2_tensor("image", array, "INT64"),
        v2_tensor("image", array.ravel().tolist(), "INT64", [2, 1, 8, 8]),
    ):
        message = v2_error(image_client.post("/v2/models/image/infer", json={"inputs": [tensor]}))
        assert "image[1][0][3][4] = 16777217" in message and "float32" in message, message
    message = v2_error(v2_binary(image_client, "image", "image", array, "INT64"))
    assert "image[1][0][3][4] = 16777217" in message and "float32" in message, message


def test_the_same_value_sent_as_a_float_is_rounded_on_every_path(image: Served, image_client: Client) -> None:
    rows = image.inputs[:2].astype(np.float64)
    rows[1, 0, 3, 4] = float(BIG)
    rounded = rows.astype(np.float32)
    assert rounded[1, 0, 3, 4] == 2**24
    expected = image.probabilities(rounded)
    json_answer = v1_probabilities(image_client.predict({"instances": rows.tolist()}), image.card.classes)
    npy_answer = v1_probabilities(image_client.post("/v1/predict", content=npy(rows), headers=NPY), image.card.classes)
    v2_answer = v2_probabilities(
        image_client.post("/v2/models/image/infer", json={"inputs": [v2_tensor("image", rows, "FP64")]})
    )
    for answer in (json_answer, npy_answer, v2_answer):
        assert np.max(np.abs(answer - expected)) < 1e-6


def test_integers_float32_does_hold_are_accepted_on_every_path(image: Served, image_client: Client) -> None:
    rows = image.inputs[:2].astype(np.int64)
    rows[1, 0, 3, 4] = 2**24  # exact
    rows[0, 0, 0, 0] = 2**40  # a power of two: exact too
    expected = image.probabilities(rows.astype(np.float32))
    assert v1_probabilities(image_client.predict({"instances": rows.tolist()}), image.card.classes).shape == (2, 10)
    answers = [
        v1_probabilities(image_client.predict({"instances": rows.tolist()}), image.card.classes),
        v1_probabilities(image_client.post("/v1/predict", content=npy(rows), headers=NPY), image.card.classes),
        v2_probabilities(v2_binary(image_client, "image", "image", rows, "INT64")),
    ]
    for answer in answers:
        assert np.allclose(answer, expected, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("as_object", [False, True], ids=["list row", "object row"])
def test_an_integer_float32_cannot_hold_is_refused_on_every_path_of_the_flat_model(
    client: Client, as_object: bool
) -> None:
    """The bundled flat float32 model: the same rule (JSON used to round 16777217 silently, /v2 refused it)."""
    row = np.asarray(DIGIT_ZERO, dtype=np.int64)
    row[10] = BIG
    instance: Any = row.tolist()
    if as_object:
        instance = {f"pixel_{i // 8}_{i % 8}": v for i, v in enumerate(instance)}
    error = error_of(client.predict({"instances": [DIGIT_ONE, instance]}), 422)
    assert "instances[1][10] ('pixel_1_2') = 16777217" in error["message"] and "float32" in error["message"], error
    error = error_of(client.post("/v1/predict", content=npy(np.stack([row, row])), headers=NPY), 422)
    assert "instances[0][10] ('pixel_1_2') = 16777217" in error["message"], error
    tensor = v2_tensor("features", row[None, :], "INT64")
    message = v2_error(client.post("/v2/models/digits/infer", json={"inputs": [tensor]}))
    assert "features[0][10] ('pixel_1_2') = 16777217" in message and "float32" in message, message
    floats = row.astype(np.float64)
    assert client.predict({"instances": [floats.tolist()]}).status_code == 200  # 16777217.0: a float, rounded


# -- an integer input: int64 [N, 8] -----------------------------------------------------------------------------------


def test_token_model_metadata_and_card(tokens: Served, tokens_client: Client) -> None:
    assert tokens.card.io.input_dtype == "int64" and tokens.card.io.input_shape == (-1, 8)
    metadata = tokens_client.get("/v2/models/tokens").json()
    assert metadata["inputs"] == [{"name": "tokens", "datatype": "INT64", "shape": [-1, 8]}]


def test_integer_instances_on_every_path_get_onnxruntimes_answer(tokens: Served, tokens_client: Client) -> None:
    rows = tokens.inputs[:20]
    expected = tokens.probabilities(rows)
    classes = tokens.card.classes
    answers = [
        v1_probabilities(tokens_client.predict({"instances": rows.tolist()}), classes),
        v1_probabilities(tokens_client.predict({"instances": rows.astype(np.float64).tolist()}), classes),  # 3.0 is 3
        v1_probabilities(tokens_client.post("/v1/predict", content=npy(rows), headers=NPY), classes),
        v1_probabilities(tokens_client.post("/v1/predict", content=npy(rows.astype(np.uint8)), headers=NPY), classes),
        v1_probabilities(tokens_client.post("/v1/predict", content=npy(rows.astype(np.float32)), headers=NPY), classes),
        v2_probabilities(
            tokens_client.post("/v2/models/tokens/infer", json={"inputs": [v2_tensor("tokens", rows, "INT64")]})
        ),
        v2_probabilities(
            tokens_client.post("/v2/models/tokens/infer", json={"inputs": [v2_tensor("tokens", rows, "FP32")]})
        ),
        v2_probabilities(v2_binary(tokens_client, "tokens", "tokens", rows, "INT64")),
        v2_probabilities(v2_binary(tokens_client, "tokens", "tokens", rows.astype(np.int32), "INT32")),
    ]
    for answer in answers:
        assert np.max(np.abs(answer - expected)) < 1e-6


def test_an_integer_past_float32_is_exact_for_an_integer_input(tokens: Served, tokens_client: Client) -> None:
    """16777217 is an ordinary int64: taken as it is (and logged as it is), never through float32."""
    rows = tokens.inputs[:2].copy()
    rows[1, 3] = BIG
    expected = tokens.probabilities(rows)
    response = tokens_client.predict({"instances": rows.tolist()})
    assert np.max(np.abs(v1_probabilities(response, tokens.card.classes) - expected)) < 1e-6
    ids = [p["prediction_id"] for p in response.json()["predictions"]]
    stored = _logged_inputs(tokens_client, ids)
    assert np.frombuffer(stored[ids[1]], dtype="<i8").tolist() == rows[1].tolist()


@pytest.mark.parametrize(
    ("literal", "says"),
    [
        ("2.5", "valid integer"),
        ("true", "valid integer"),
        ('"7"', "valid integer"),
        ("NaN", "valid integer"),
        (str(2**63), "outside the range of int64"),
        (str(-(2**63) - 1), "outside the range of int64"),
        ("1e30", "outside the range of int64"),
    ],
)
def test_bad_integers_in_json_are_422_naming_the_cell(
    tokens: Served, tokens_client: Client, literal: str, says: str
) -> None:
    body = json.dumps({"instances": with_value(tokens.inputs[:3], (2, 5), "@")}).replace('"@"', literal)
    error = error_of(tokens_client.post("/v1/predict", content=body, headers=JSON), 422)
    assert "instances[2][5]" in error["message"] and says in error["message"], error["message"]


def test_fractions_and_ranges_on_npy_and_v2_are_refused_naming_the_cell(tokens: Served, tokens_client: Client) -> None:
    fractional = tokens.inputs[:3].astype(np.float64)
    fractional[2, 5] = 2.5
    error = error_of(tokens_client.post("/v1/predict", content=npy(fractional), headers=NPY), 422)
    assert "instances[2][5] = 2.5 is not an integer" in error["message"] and "int64" in error["message"]
    message = v2_error(
        tokens_client.post("/v2/models/tokens/infer", json={"inputs": [v2_tensor("tokens", fractional, "FP64")]})
    )
    assert "tokens[2][5] = 2.5 is not an integer" in message
    message = v2_error(v2_binary(tokens_client, "tokens", "tokens", fractional.astype(np.float32), "FP32"))
    assert "tokens[2][5] = 2.5" in message
    huge = tokens.inputs[:3].astype(np.uint64)
    huge[1, 0] = 2**63
    message = v2_error(v2_binary(tokens_client, "tokens", "tokens", huge, "UINT64"))
    assert "tokens[1][0] = 9223372036854775808 is outside the range of int64" in message
    error = error_of(tokens_client.post("/v1/predict", content=npy(huge), headers=NPY), 422)
    assert "instances[1][0] = 9223372036854775808 is outside the range of int64" in error["message"]


def test_openapi_describes_integer_instances(tokens_client: Client) -> None:
    document = tokens_client.get("/openapi.json").json()
    items = document["components"]["schemas"]["PredictRequest"]["properties"]["instances"]["items"]
    assert items["minItems"] == items["maxItems"] == 8
    assert items["items"] == {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}


# -- a free dimension: int64 [N, L] ------------------------------------------------------------------------------------


def test_sequences_of_any_length_are_served(lengths: Served, lengths_client: Client) -> None:
    assert lengths.card.io.input_shape == (-1, -1) and lengths.card.io.n_features == -1
    metadata = lengths_client.get("/v2/models/lengths").json()
    assert metadata["inputs"] == [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}]
    classes = lengths.card.classes
    for length in (1, 6, 11):
        rows = np.random.default_rng(length).integers(0, 10, size=(3, length))
        expected = lengths.probabilities(rows)
        assert (
            np.max(np.abs(v1_probabilities(lengths_client.predict({"instances": rows.tolist()}), classes) - expected))
            < 1e-6
        )
        npy_answer = lengths_client.post("/v1/predict", content=npy(rows), headers=NPY)
        assert np.max(np.abs(v1_probabilities(npy_answer, classes) - expected)) < 1e-6
        v2_answer = lengths_client.post("/v2/models/lengths/infer", json={"inputs": [v2_tensor("ids", rows, "INT64")]})
        assert np.max(np.abs(v2_probabilities(v2_answer) - expected)) < 1e-6


def test_instances_of_one_request_must_share_their_length(lengths_client: Client) -> None:
    error = error_of(lengths_client.predict({"instances": [[1, 2, 3], [1, 2, 3], [4, 5]]}), 422)
    assert "instances[2] has 2 features; instances[0] has 3" in error["message"], error["message"]
    error = error_of(lengths_client.predict({"instances": [[]]}), 422)
    assert "instances[0] has no values" in error["message"] and "[-1] (-1: any size)" in error["message"]


def test_concurrent_requests_of_different_lengths_are_batched_apart(lengths: Served, lengths_client: Client) -> None:
    rng = np.random.default_rng(9)
    requests = [rng.integers(0, 10, size=(2, 3 + i % 4)) for i in range(16)]

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return list(
            await asyncio.gather(*(client.post("/v1/predict", json={"instances": r.tolist()}) for r in requests))
        )

    for rows, response in zip(requests, lengths_client.run(scenario), strict=True):
        served = v1_probabilities(response, lengths.card.classes)
        assert np.max(np.abs(served - lengths.probabilities(rows))) < 1e-6


def test_a_free_dimension_full_of_strings_is_refused_with_a_few_errors(lengths_client: Client) -> None:
    """No length limit refuses it first: the strict model sees the instance cut after its first bad values."""
    body = json.dumps({"instances": [[1, 2], ["a"] * 200_000]})
    error = error_of(lengths_client.post("/v1/predict", content=body.encode(), headers=JSON), 422)
    assert error["message"].startswith("instances[1][0]: "), error["message"]
    assert len(error["details"]["errors"]) <= 10
