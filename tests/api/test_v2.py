"""The Open Inference Protocol (KServe V2) REST endpoints, through the real HTTP stack.

Every /v2 answer is checked against what /v1 says for the same rows (the /v1 path is checked against
onnxruntime and the card in test_predict.py), every refusal for its status and the protocol's error shape
``{"error": "<message>"}`` naming the problem, and the binary tensor data extension is built by hand here
(tritonclient drives it in tests/test_tritonclient.py).
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from tests.api.conftest import Client, error_of, serve, settings_for

pytestmark = pytest.mark.api

INFER = "/v2/models/digits/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
ALL_OUTPUTS = (
    "probabilities",
    "logits",
    "label",
    "confidence",
    "prediction_set",
    "expected_accuracy",
    "prediction_id",
)
DEFAULT_OUTPUTS = ["probabilities", "label", "confidence"]
OUTPUT_DATATYPES = {
    name: "BYTES" if name in ("label", "prediction_set", "prediction_id") else "FP32" for name in ALL_OUTPUTS
}
TOLERANCE = 1e-6  # /v2 sends FP32, /v1 float64: the same values, rounded to float32


# -- helpers -----------------------------------------------------------------------------------------------------


def v2_error(response: httpx.Response, status: int) -> str:
    """Assert ``status`` and the protocol's error shape, ``{"error": str}`` plus the request id; return the message."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error", "request_id"}, body
    assert body["request_id"] == response.headers["x-request-id"], body
    assert isinstance(body["error"], str) and body["error"], body
    message: str = body["error"]
    return message


def tensor(
    rows: Any, datatype: str = "FP32", *, shape: Sequence[int] | None = None, nested: bool = False
) -> dict[str, Any]:
    array = np.asarray(rows)
    data = array.tolist() if nested else array.ravel().tolist()
    return {
        "name": "features",
        "shape": list(array.shape if shape is None else shape),
        "datatype": datatype,
        "data": data,
    }


def request(rows: Any, outputs: Sequence[str] | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [tensor(np.asarray(rows, dtype=np.float32))], **fields}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def infer(client: Client, body: Any, url: str = INFER) -> dict[str, Any]:
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert HEADER_LENGTH.lower() not in response.headers
    answer: dict[str, Any] = response.json()
    return answer


def outputs_of(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [output["name"] for output in answer["outputs"]]
    assert len(set(names)) == len(names), names
    return {output["name"]: output for output in answer["outputs"]}


def data_of(answer: dict[str, Any], name: str) -> list[Any]:
    data: list[Any] = outputs_of(answer)[name]["data"]
    return data


def v1_predictions(client: Client, rows: NDArray[Any], coverage: float = 0.9) -> list[dict[str, Any]]:
    response = client.post(
        "/v1/predict", json={"instances": np.asarray(rows).tolist(), "coverage": coverage, "include_logits": True}
    )
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


def v1_values(predictions: list[dict[str, Any]], name: str, classes: list[str]) -> list[Any]:
    """What /v1 says for output ``name``, flattened row-major as /v2 sends it."""
    if name == "probabilities":
        return [p["probabilities"][c] for p in predictions for c in classes]
    if name == "logits":
        return [value for p in predictions for value in p["logits"]]
    if name == "prediction_set":
        return [",".join(p["prediction_set"]) for p in predictions]
    if name == "expected_accuracy":
        return [p["expected_accuracy"]["value"] for p in predictions]
    return [p[name] for p in predictions]


def assert_close(got: Sequence[float | None], expected: Sequence[float | None]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        if b is None:  # no expected accuracy at this confidence: NaN in FP32, null in JSON
            assert a is None or np.isnan(a), (a, b)
        else:
            assert a is not None and abs(a - b) <= TOLERANCE, (a, b)


def assert_matches_v1(
    answer: dict[str, Any], predictions: list[dict[str, Any]], classes: list[str], names: Sequence[str]
) -> None:
    outputs = outputs_of(answer)
    n = len(predictions)
    for name in names:
        output = outputs[name]
        assert output["datatype"] == OUTPUT_DATATYPES[name], output
        assert output["shape"] == ([n, len(classes)] if name in ("probabilities", "logits") else [n]), output
        if name in ("probabilities", "logits", "confidence", "expected_accuracy"):
            assert_close(output["data"], v1_values(predictions, name, classes))
        elif name in ("label", "prediction_set"):
            assert output["data"] == v1_values(predictions, name, classes)


def binary_post(
    client: Client,
    header: dict[str, Any],
    tensors: bytes,
    *,
    length: str | None = None,
    content_type: str | None = "application/octet-stream",
    url: str = INFER,
) -> httpx.Response:
    """The binary tensor data extension by hand: JSON header, then the raw tensors, the header's length in
    ``Inference-Header-Content-Length``."""
    json_part = json.dumps(header).encode()
    headers = {HEADER_LENGTH: str(len(json_part)) if length is None else length}
    if content_type is not None:
        headers["content-type"] = content_type
    return client.post(url, content=json_part + tensors, headers=headers)


def binary_input(rows: NDArray[Any], datatype: str = "FP32", dtype: str = "<f4") -> tuple[dict[str, Any], bytes]:
    raw = np.ascontiguousarray(rows, dtype=dtype).tobytes()
    spec = {
        "name": "features",
        "shape": list(rows.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(raw)},
    }
    return spec, raw


def split_binary(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    assert response.status_code == 200, response.text
    length = int(response.headers[HEADER_LENGTH])
    header: dict[str, Any] = json.loads(response.content[:length])
    return header, response.content[length:]


def bytes_elements(raw: bytes) -> list[str]:
    """BYTES elements: a 4-byte little-endian length, then that many bytes of UTF-8."""
    values, offset = [], 0
    while offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        values.append(raw[offset : offset + size].decode("utf-8"))
        offset += size
    assert offset == len(raw)
    return values


def decoded(header: dict[str, Any], raw: bytes) -> dict[str, list[Any]]:
    """Every output's values, flat: from ``data`` (JSON) or from its slice of the binary part."""
    values: dict[str, list[Any]] = {}
    offset = 0
    for output in header["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values[output["name"]] = output["data"]
            continue
        assert "data" not in output, output
        chunk = raw[offset : offset + size]
        assert len(chunk) == size
        offset += size
        if output["datatype"] == "BYTES":
            values[output["name"]] = bytes_elements(chunk)
        else:
            assert output["datatype"] == "FP32"
            values[output["name"]] = np.frombuffer(chunk, dtype="<f4").tolist()
        count = int(np.prod(output["shape"]))
        assert len(values[output["name"]]) == count, (output, count)
    assert offset == len(raw), "bytes no output declares"
    return values


def json_values(answer: dict[str, Any]) -> dict[str, list[Any]]:
    return {output["name"]: output["data"] for output in answer["outputs"]}


def without_ids(values: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {name: data for name, data in values.items() if name != "prediction_id"}


# -- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """This module's own app: its many predictions must stay out of the shared app's log."""
    with serve() as served:
        yield served


@pytest.fixture(scope="module")
def rows(digits: NDArray[np.float64]) -> NDArray[np.float64]:
    """A spread of real digits plus a few blurred ones (lower confidence, so not every answer is alike)."""
    blurred = (digits[:6] + digits[600:606]) / 2
    return np.concatenate([digits[::97], blurred])


@pytest.fixture(scope="module")
def classes(card: dict[str, Any]) -> list[str]:
    names: list[str] = card["classes"]
    assert names == [str(i) for i in range(10)]
    return names


@pytest.fixture(scope="module")
def version(card: dict[str, Any]) -> str:
    value: str = card["version"]
    assert len(value) == 64 and int(value, 16) >= 0
    return value


# -- health and metadata -----------------------------------------------------------------------------------------


def test_server_live_and_ready(client: Client) -> None:
    live = client.get("/v2/health/live")
    assert live.status_code == 200 and live.json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_server_metadata(client: Client) -> None:
    response = client.get("/v2")
    assert response.status_code == 200
    metadata = response.json()
    assert metadata["name"] == "calibserve"
    assert isinstance(metadata["version"], str) and metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]
    assert client.get("/openapi.json").json()["info"]["version"] == metadata["version"]


def test_model_metadata(client: Client, version: str, card: dict[str, Any]) -> None:
    response = client.get("/v2/models/digits")
    assert response.status_code == 200
    metadata = response.json()
    assert metadata["name"] == "digits"
    assert metadata["versions"] == [version]
    assert metadata["platform"] == "onnx_onnxv1"
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}]
    outputs = {output["name"]: output for output in metadata["outputs"]}
    assert set(outputs) == set(ALL_OUTPUTS)
    for name, output in outputs.items():
        assert set(output) == {"name", "datatype", "shape"}
        assert output["datatype"] == OUTPUT_DATATYPES[name]
        assert output["shape"] == ([-1, len(card["classes"])] if name in ("probabilities", "logits") else [-1])
    assert version == client.get("/v1/models/digits").json()["version"]
    versioned = client.get(f"/v2/models/digits/versions/{version}")
    assert versioned.status_code == 200 and versioned.json() == metadata


def test_model_ready(client: Client, version: str) -> None:
    for url in ("/v2/models/digits/ready", f"/v2/models/digits/versions/{version}/ready"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.json() == {"name": "digits", "ready": True}


def test_infer_under_the_version_path(client: Client, version: str, rows: NDArray[np.float64]) -> None:
    plain = infer(client, request(rows[:4]))
    versioned = infer(client, request(rows[:4]), url=f"/v2/models/digits/versions/{version}/infer")
    assert versioned["model_version"] == version
    assert json_values(versioned) == json_values(plain)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/digits/versions/{v}"),
        ("GET", "/v2/models/digits/versions/{v}/ready"),
        ("POST", "/v2/models/digits/versions/{v}/infer"),
    ],
)
@pytest.mark.parametrize("wrong", ["1", "0" * 64, "latest"])
def test_an_unknown_version_is_404_naming_it(
    client: Client, rows: NDArray[np.float64], method: str, path: str, wrong: str
) -> None:
    body = request(rows[:2]) if method == "POST" else None
    message = v2_error(client.request(method, path.format(v=wrong), json=body), 404)
    assert repr(wrong) in message


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/cifar"),
        ("GET", "/v2/models/cifar/ready"),
        ("POST", "/v2/models/cifar/infer"),
        ("GET", "/v2/models/cifar/versions/1"),
        ("GET", "/v2/models/cifar/versions/1/ready"),
        ("POST", "/v2/models/cifar/versions/1/infer"),
    ],
)
def test_an_unknown_model_is_404_naming_it(client: Client, rows: NDArray[np.float64], method: str, path: str) -> None:
    body = request(rows[:2]) if method == "POST" else None
    message = v2_error(client.request(method, path, json=body), 404)
    assert "'cifar'" in message and "digits" in message


def test_unknown_paths_and_methods_answer_in_the_v2_shape(client: Client) -> None:
    v2_error(client.get("/v2/nothing/here"), 404)
    v2_error(client.get(INFER), 405)
    v2_error(client.post("/v2", json={}), 405)


def test_before_the_model_is_loaded_ready_is_503_and_live_is_200(rows: NDArray[np.float64]) -> None:
    with serve(lifespan=False) as cold:
        assert cold.get("/v2/health/live").json() == {"live": True}
        for method, path in [
            ("GET", "/v2/health/ready"),
            ("GET", "/v2/models/digits"),
            ("GET", "/v2/models/digits/ready"),
            ("POST", INFER),
        ]:
            body = request(rows[:1]) if method == "POST" else None
            message = v2_error(cold.request(method, path, json=body), 503)
            assert "not loaded" in message


# -- the specification's JSON examples ----------------------------------------------------------------------------


SPEC_REQUEST = """
{
  "id" : "42",
  "inputs" : [
    {
      "name" : "features",
      "shape" : [ 2, 64 ],
      "datatype" : "FP32",
      "data" : %s
    }
  ],
  "outputs" : [
    {
      "name" : "probabilities"
    }
  ]
}
"""


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_the_specification_example_request(
    client: Client, digits: NDArray[np.float64], classes: list[str], version: str, nested: bool
) -> None:
    two = digits[[0, 1]]
    data = json.dumps(two.tolist() if nested else two.ravel().tolist())
    response = client.post(INFER, content=(SPEC_REQUEST % data).encode(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "digits"
    assert answer["model_version"] == version
    assert answer["id"] == "42"
    assert [output["name"] for output in answer["outputs"]] == ["probabilities"]
    output = answer["outputs"][0]
    assert set(output) == {"name", "datatype", "shape", "data"}
    assert output["datatype"] == "FP32" and output["shape"] == [2, 10]
    assert len(output["data"]) == 20 and all(isinstance(v, float) for v in output["data"])  # flat, row-major
    predictions = v1_predictions(client, two)
    assert_close(output["data"], v1_values(predictions, "probabilities", classes))
    for row in np.reshape(output["data"], (2, 10)):
        assert abs(float(row.sum()) - 1.0) < 1e-5


def test_default_outputs_match_v1(client: Client, rows: NDArray[np.float64], classes: list[str]) -> None:
    answer = infer(client, request(rows, id="batch-1"))
    assert answer["id"] == "batch-1"
    assert [output["name"] for output in answer["outputs"]] == DEFAULT_OUTPUTS
    predictions = v1_predictions(client, rows)
    assert_matches_v1(answer, predictions, classes, DEFAULT_OUTPUTS)
    assert data_of(answer, "label") == [p["label"] for p in predictions]
    probabilities = np.reshape(data_of(answer, "probabilities"), (len(rows), 10))
    assert data_of(answer, "confidence") == probabilities.max(axis=1).tolist()


def test_nested_and_flat_data_get_the_same_answer(client: Client, rows: NDArray[np.float64]) -> None:
    flat = infer(client, {"inputs": [tensor(rows)]})
    nested = infer(client, {"inputs": [tensor(rows, nested=True)]})
    assert json_values(nested) == json_values(flat)
    assert "id" not in flat  # none sent, none echoed


def test_calibration_metadata_in_the_response_parameters(client: Client, version: str) -> None:
    answer = infer(client, request(np.zeros((1, 64))))
    model = client.post("/v1/predict", json={"instances": [[0.0] * 64]}).json()["model"]
    parameters = answer["parameters"]
    assert parameters["model_version"] == version == model["version"]
    assert parameters["temperature"] == model["temperature"]
    assert parameters["label_smoothing"] == model["label_smoothing"]
    assert parameters["ece"] == model["ece"]["value"]
    assert parameters["ece_lower"] == model["ece"]["lower"]
    assert parameters["ece_upper"] == model["ece"]["upper"]
    assert parameters["ece_n"] == model["ece"]["n"]
    assert parameters["ece_noise_floor"] == model["ece"]["noise_floor"]
    assert parameters["coverage"] == model["coverage"] == 0.9
    assert parameters["abstain_threshold"] == model["abstain_threshold"]
    assert parameters["coverage_p_below_nominal"] == model["conformal"]["p_coverage_below_nominal"]
    assert parameters["coverage_quantile_05"] == model["conformal"]["coverage_quantile_05"]


# -- datatypes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "datatype", ["FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
)
def test_other_numeric_datatypes_get_the_fp32_answer(
    client: Client, digits: NDArray[np.float64], datatype: str
) -> None:
    rows = digits[:12]  # integers 0..16: every datatype holds them exactly
    expected = json_values(infer(client, {"inputs": [tensor(rows, "FP32")]}))
    values = rows.astype(np.int64) if datatype[0] in "IU" else rows
    got = json_values(infer(client, {"inputs": [tensor(values, datatype)]}))
    assert got == expected


def test_fp64_values_that_are_not_integers(client: Client, rows: NDArray[np.float64], classes: list[str]) -> None:
    answer = infer(client, {"inputs": [tensor(rows, "FP64")]})
    assert_matches_v1(answer, v1_predictions(client, rows), classes, DEFAULT_OUTPUTS)


@pytest.mark.parametrize("datatype", ["INT32", "INT64", "UINT32", "UINT64"])
@pytest.mark.parametrize("value", [2**24 + 1, 2**31 - 1])
def test_integers_float32_cannot_hold_are_400_naming_the_cell(
    client: Client, digits: NDArray[np.float64], datatype: str, value: int
) -> None:
    values = digits[:3].astype(np.int64).tolist()
    values[2][41] = value
    message = v2_error(client.post(INFER, json={"inputs": [tensor(values, datatype)]}), 400)
    assert "features[2][41]" in message and str(value) in message and "float32" in message


def test_an_integer_float32_does_hold_is_accepted(client: Client, digits: NDArray[np.float64]) -> None:
    values = digits[:1].astype(np.int64)
    values[0, 5] = 2**24  # exactly representable
    infer(client, {"inputs": [tensor(values, "INT64")]})


@pytest.mark.parametrize(("datatype", "value"), [("UINT8", -1), ("UINT8", 300), ("INT8", 1000), ("UINT16", -5)])
def test_integers_outside_the_declared_datatype_are_400(
    client: Client, digits: NDArray[np.float64], datatype: str, value: int
) -> None:
    values = digits[:2].astype(np.int64).tolist()
    values[1][7] = value
    message = v2_error(client.post(INFER, json={"inputs": [tensor(values, datatype)]}), 400)
    assert "features[1][7]" in message and datatype in message


def test_fp16_values_beyond_fp16_are_400(client: Client, digits: NDArray[np.float64]) -> None:
    values = digits[:2].tolist()
    values[1][7] = 70000.0
    message = v2_error(client.post(INFER, json={"inputs": [tensor(values, "FP16")]}), 400)
    assert "features[1][7]" in message and "FP16" in message


@pytest.mark.parametrize("datatype", ["BOOL", "BYTES", "FP8", "fp32", "Fp64", "BF16", "FLOAT32", ""])
def test_unaccepted_datatypes_are_400_naming_the_datatype(
    client: Client, digits: NDArray[np.float64], datatype: str
) -> None:
    message = v2_error(client.post(INFER, json={"inputs": [tensor(digits[:2], datatype)]}), 400)
    assert repr(datatype) in message and "FP32" in message


def test_bool_and_bytes_data_are_400(client: Client) -> None:
    bools = {"name": "features", "shape": [1, 64], "datatype": "BOOL", "data": [True] * 64}
    message = v2_error(client.post(INFER, json={"inputs": [bools]}), 400)
    assert "'BOOL'" in message
    strings = {"name": "features", "shape": [1, 64], "datatype": "BYTES", "data": ["1"] * 64}
    message = v2_error(client.post(INFER, json={"inputs": [strings]}), 400)
    assert "'BYTES'" in message


@pytest.mark.parametrize(("shape", "rows"), [([2, 64], 1), ([1, 64], 2), ([3, 64], 2)])
def test_shape_and_data_length_must_agree(
    client: Client, digits: NDArray[np.float64], shape: list[int], rows: int
) -> None:
    body = {"inputs": [tensor(digits[:rows], shape=shape)]}
    message = v2_error(client.post(INFER, json=body), 400)
    assert f"has {rows * 64} values" in message and str(shape) in message


@pytest.mark.parametrize("shape", [[1, 3], [64], [0, 64], [2, 64, 1], [2, 8, 8], [-1, 64], [2, 63], []])
def test_wrong_shapes_are_400_naming_the_shape(client: Client, shape: list[int]) -> None:
    count = int(np.prod(shape)) if shape else 0
    body = {"inputs": [{"name": "features", "shape": shape, "datatype": "FP32", "data": [0.0] * max(count, 0)}]}
    message = v2_error(client.post(INFER, json=body), 400)
    assert f"got {shape}" in message and "[N, 64]" in message


def test_an_input_of_another_name_is_400_naming_it(client: Client, digits: NDArray[np.float64]) -> None:
    spec = tensor(digits[:2]) | {"name": "input0"}
    message = v2_error(client.post(INFER, json={"inputs": [spec]}), 400)
    assert "'input0'" in message and "'features'" in message


def test_two_inputs_are_400(client: Client, digits: NDArray[np.float64]) -> None:
    for second in (tensor(digits[:2]), tensor(digits[:2]) | {"name": "mask"}):
        message = v2_error(client.post(INFER, json={"inputs": [tensor(digits[:2]), second]}), 400)
        assert "exactly one input" in message


def test_no_inputs_is_400(client: Client) -> None:
    assert "exactly one input" in v2_error(client.post(INFER, json={"inputs": []}), 400)
    assert "inputs" in v2_error(client.post(INFER, json={"id": "1"}), 400)


@pytest.mark.parametrize("bad", ["3", True, False, None, [1.0], {"v": 1}], ids=repr)
@pytest.mark.parametrize("datatype", ["FP32", "INT64"])
def test_non_numbers_in_data_are_400(client: Client, digits: NDArray[np.float64], bad: Any, datatype: str) -> None:
    data: list[Any] = digits[:2].astype(np.int64).ravel().tolist()
    data[70] = bad
    body = {"inputs": [{"name": "features", "shape": [2, 64], "datatype": datatype, "data": data}]}
    message = v2_error(client.post(INFER, json=body), 400)
    assert "features" in message and datatype in message


def test_fractions_in_integer_data_are_400(client: Client, digits: NDArray[np.float64]) -> None:
    data: list[Any] = digits[:1].astype(np.int64).ravel().tolist()
    data[3] = 1.5
    body = {"inputs": [{"name": "features", "shape": [1, 64], "datatype": "INT32", "data": data}]}
    assert "integers" in v2_error(client.post(INFER, json=body), 400)


def test_no_data_is_400(client: Client) -> None:
    body = {"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32"}]}
    assert "neither data nor binary_data_size" in v2_error(client.post(INFER, json=body), 400)


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
@pytest.mark.parametrize("value", [1e39, -1e39, 3.5e38])
def test_values_beyond_float32_are_400(
    client: Client, digits: NDArray[np.float64], datatype: str, value: float
) -> None:
    values = digits[:3].tolist()
    values[1][20] = value
    message = v2_error(client.post(INFER, json={"inputs": [tensor(values, datatype)]}), 400)
    assert "features[1][20]" in message and "float32" in message and repr(value) in message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{", "not valid JSON"),
        (b"not json", "not valid JSON"),
        (b'{"inputs": [}', "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"", "body is required"),
        (b"[]", "object"),
        (b'"inputs"', "object"),
        (b'{"inputs": {}}', "inputs"),
        (b'{"inputs": [], "id": 42}', "id"),
        (b'{"inputs": [{"name": "features"}]}', "shape"),
    ],
)
def test_malformed_bodies_are_400(client: Client, body: bytes, says: str) -> None:
    response = client.post(INFER, content=body, headers={"content-type": "application/json"})
    assert says in v2_error(response, 400)


# -- parameters ---------------------------------------------------------------------------------------------------


def test_unknown_request_and_output_parameters_are_ignored(
    client: Client, rows: NDArray[np.float64], classes: list[str]
) -> None:
    expected = json_values(infer(client, request(rows[:5], ["probabilities", "label"])))
    body = request(rows[:5], parameters={"foo": 1, "priority": 0, "binary_data_output": False, "x": {"y": [1]}})
    body["outputs"] = [
        {"name": "probabilities", "parameters": {"binary_data": False, "foo": 1}},
        {"name": "label", "parameters": {"classification": 0, "bar": "baz"}},
    ]
    body["inputs"][0]["parameters"] = {"foo": "bar"}
    answer = infer(client, body)
    assert json_values(answer) == expected
    assert answer["parameters"]["coverage"] == 0.9


@pytest.mark.parametrize("coverage", [0.9, 0.95])
def test_coverage_parameter_picks_the_conformal_level(
    client: Client, rows: NDArray[np.float64], classes: list[str], coverage: float
) -> None:
    answer = infer(client, request(rows, ["prediction_set", "label"], parameters={"coverage": coverage}))
    assert answer["parameters"]["coverage"] == coverage
    assert_matches_v1(answer, v1_predictions(client, rows, coverage), classes, ["prediction_set", "label"])


@pytest.mark.parametrize("coverage", [0.8, 0.5, 1.0, 0, 95])
def test_other_coverage_levels_are_400(client: Client, rows: NDArray[np.float64], coverage: float) -> None:
    message = v2_error(client.post(INFER, json=request(rows[:2], parameters={"coverage": coverage})), 400)
    assert "0.9, 0.95" in message and f"{coverage:g}" in message


@pytest.mark.parametrize("coverage", ["0.95", True, [0.9]], ids=repr)
def test_a_coverage_that_is_not_a_number_is_400(client: Client, rows: NDArray[np.float64], coverage: Any) -> None:
    message = v2_error(client.post(INFER, json=request(rows[:2], parameters={"coverage": coverage})), 400)
    assert "coverage" in message


def test_binary_flags_that_are_not_booleans_are_400(client: Client, rows: NDArray[np.float64]) -> None:
    body = request(rows[:2], parameters={"binary_data_output": "false"})
    assert "binary_data_output" in v2_error(client.post(INFER, json=body), 400)
    body = request(rows[:2])
    body["outputs"] = [{"name": "label", "parameters": {"binary_data": 1}}]
    assert "binary_data" in v2_error(client.post(INFER, json=body), 400)


# -- requested outputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_OUTPUTS)
def test_each_output_alone(client: Client, rows: NDArray[np.float64], classes: list[str], name: str) -> None:
    answer = infer(client, request(rows, [name]))
    assert [output["name"] for output in answer["outputs"]] == [name]
    assert_matches_v1(answer, v1_predictions(client, rows), classes, [name])
    if name == "prediction_id":
        ids = data_of(answer, name)
        assert len(ids) == len(rows) == len(set(ids))


def test_all_seven_outputs_together(client: Client, rows: NDArray[np.float64], classes: list[str]) -> None:
    answer = infer(client, request(rows, ALL_OUTPUTS))
    assert [output["name"] for output in answer["outputs"]] == list(ALL_OUTPUTS)
    assert_matches_v1(answer, v1_predictions(client, rows), classes, ALL_OUTPUTS)
    logits = np.reshape(data_of(answer, "logits"), (len(rows), 10))
    probabilities = np.reshape(data_of(answer, "probabilities"), (len(rows), 10))
    assert (logits.argmax(axis=1) == probabilities.argmax(axis=1)).all()
    assert [classes[i] for i in probabilities.argmax(axis=1)] == data_of(answer, "label")


def test_the_order_of_outputs_follows_the_request(client: Client, rows: NDArray[np.float64]) -> None:
    order = ["prediction_id", "confidence", "logits", "label", "expected_accuracy", "prediction_set", "probabilities"]
    for names in (order, order[::-1], ["label", "probabilities"]):
        answer = infer(client, request(rows[:3], names))
        assert [output["name"] for output in answer["outputs"]] == names


@pytest.mark.parametrize("unknown", ["output0", "Probabilities", "entropy", ""])
def test_an_unknown_output_is_400_naming_it(client: Client, rows: NDArray[np.float64], unknown: str) -> None:
    message = v2_error(client.post(INFER, json=request(rows[:2], ["label", unknown])), 400)
    assert repr(unknown) in message and "probabilities" in message


def test_an_empty_outputs_list_is_the_default_set(client: Client, rows: NDArray[np.float64]) -> None:
    answer = infer(client, request(rows[:2], []))
    assert [output["name"] for output in answer["outputs"]] == DEFAULT_OUTPUTS


def test_prediction_sets_are_v1s_sets_joined_with_commas(tiny_artifact_dir: Path, rows: NDArray[np.float64]) -> None:
    """On a briefly trained model (the bundled one is so sharp that every set is one label) sets have several
    labels, and the 0.95 level gives larger ones than 0.9."""
    with serve(settings_for(model_path=tiny_artifact_dir)) as tiny:
        url = "/v2/models/tiny/infer"
        sizes = {}
        for coverage in (0.9, 0.95):
            answer = infer(tiny, request(rows, ["prediction_set"], parameters={"coverage": coverage}), url=url)
            predictions = v1_predictions(tiny, rows, coverage)
            assert data_of(answer, "prediction_set") == [",".join(p["prediction_set"]) for p in predictions]
            sizes[coverage] = [len(s.split(",")) for s in data_of(answer, "prediction_set")]
        assert max(sizes[0.95]) > 1
        assert sum(sizes[0.95]) > sum(sizes[0.9])
        header, raw = split_binary(
            tiny.post(
                url, json=request(rows, ["prediction_set"], parameters={"coverage": 0.95, "binary_data_output": True})
            )
        )
        assert decoded(header, raw)["prediction_set"] == data_of(answer, "prediction_set")


def test_expected_accuracy_is_v1s_value(client: Client, rows: NDArray[np.float64]) -> None:
    answer = infer(client, request(rows, ["expected_accuracy", "confidence"]))
    predictions = v1_predictions(client, rows)
    assert_close(data_of(answer, "expected_accuracy"), [p["expected_accuracy"]["value"] for p in predictions])
    assert len(set(data_of(answer, "expected_accuracy"))) > 1  # the blurred rows fall in another band


def test_prediction_ids_are_logged_predictions_v1_feedback_accepts(client: Client, rows: NDArray[np.float64]) -> None:
    answer = infer(client, request(rows[:4], ["prediction_id", "label"]))
    ids, labels = data_of(answer, "prediction_id"), data_of(answer, "label")
    assert all(isinstance(uuid.UUID(i), uuid.UUID) for i in ids) and len(set(ids)) == 4
    items = [{"prediction_id": i, "label": label} for i, label in zip(ids, labels, strict=True)]
    items.append({"prediction_id": str(uuid.uuid4()), "label": "0"})  # never predicted: unknown
    response = client.post("/v1/feedback", json={"feedback": items})
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["recorded"] * 4 + ["unknown_id"]
    again = client.post("/v1/feedback", json={"feedback": [{"prediction_id": ids[0], "label": "0"}]})
    assert again.json()["results"][0]["status"] == ("duplicate" if labels[0] == "0" else "conflict")


# -- binary tensor data extension -------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/octet-stream", None, "application/json"])
def test_a_binary_input_gets_the_json_answer(
    client: Client, rows: NDArray[np.float64], content_type: str | None
) -> None:
    expected = json_values(infer(client, request(rows, id="b")))
    spec, raw = binary_input(rows)
    response = binary_post(client, {"id": "b", "inputs": [spec]}, raw, content_type=content_type)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")  # no binary output asked for
    answer = response.json()
    assert answer["id"] == "b"
    assert json_values(answer) == expected


@pytest.mark.parametrize(
    ("datatype", "dtype"), [("FP64", "<f8"), ("FP16", "<f2"), ("INT64", "<i8"), ("UINT8", "<u1"), ("INT32", "<i4")]
)
def test_binary_inputs_of_other_datatypes(
    client: Client, digits: NDArray[np.float64], datatype: str, dtype: str
) -> None:
    expected = json_values(infer(client, request(digits[:9])))
    spec, raw = binary_input(digits[:9], datatype, dtype)
    assert len(raw) == 9 * 64 * np.dtype(dtype).itemsize
    response = binary_post(client, {"inputs": [spec]}, raw)
    assert response.status_code == 200, response.text
    assert json_values(response.json()) == expected


def test_binary_data_output_makes_every_output_binary(client: Client, rows: NDArray[np.float64], version: str) -> None:
    body = request(rows, ALL_OUTPUTS, id="7", parameters={"binary_data_output": True})
    response = client.post(INFER, json=body)
    assert response.headers["content-type"] == "application/octet-stream"
    header, raw = split_binary(response)
    assert header["id"] == "7" and header["model_version"] == version
    for output in header["outputs"]:
        assert "data" not in output
        assert isinstance(output["parameters"]["binary_data_size"], int)
    sizes = {output["name"]: output["parameters"]["binary_data_size"] for output in header["outputs"]}
    assert sizes["probabilities"] == sizes["logits"] == len(rows) * 10 * 4
    assert sizes["confidence"] == sizes["expected_accuracy"] == len(rows) * 4
    assert sum(sizes.values()) == len(raw)
    values = decoded(header, raw)
    expected = json_values(infer(client, request(rows, ALL_OUTPUTS)))
    assert without_ids(values) == without_ids(expected)
    assert len(set(values["prediction_id"])) == len(rows)
    assert all(uuid.UUID(i) for i in values["prediction_id"])


def test_binary_data_output_without_requested_outputs_is_the_default_set(
    client: Client, rows: NDArray[np.float64]
) -> None:
    header, raw = split_binary(client.post(INFER, json=request(rows[:4], parameters={"binary_data_output": True})))
    assert [output["name"] for output in header["outputs"]] == DEFAULT_OUTPUTS
    probabilities = np.frombuffer(raw[: 4 * 10 * 4], dtype="<f4").reshape(4, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert decoded(header, raw) == json_values(infer(client, request(rows[:4])))


def test_binary_in_and_binary_out(client: Client, rows: NDArray[np.float64]) -> None:
    spec, raw_in = binary_input(rows)
    body = {"inputs": [spec], "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in DEFAULT_OUTPUTS]}
    header, raw = split_binary(binary_post(client, body, raw_in))
    assert decoded(header, raw) == json_values(infer(client, request(rows)))


def test_mixed_binary_and_json_outputs(client: Client, rows: NDArray[np.float64]) -> None:
    body = request(rows, parameters={"binary_data_output": True})
    body["outputs"] = [
        {"name": "label", "parameters": {"binary_data": False}},
        {"name": "probabilities"},  # binary, from binary_data_output
        {"name": "confidence", "parameters": {"binary_data": False}},
        {"name": "prediction_set", "parameters": {"binary_data": True}},
    ]
    header, raw = split_binary(client.post(INFER, json=body))
    kinds = {o["name"]: "data" in o for o in header["outputs"]}
    assert kinds == {"label": True, "probabilities": False, "confidence": True, "prediction_set": False}
    assert len(raw) == len(rows) * 10 * 4 + sum(4 + len(s.encode()) for s in decoded(header, raw)["prediction_set"])
    expected = json_values(infer(client, request(rows, ["label", "probabilities", "confidence", "prediction_set"])))
    assert decoded(header, raw) == expected

    one = request(rows[:3], ["label", "confidence"])
    one["outputs"][1]["parameters"] = {"binary_data": True}  # one binary output, without binary_data_output
    header, raw = split_binary(client.post(INFER, json=one))
    assert "data" in header["outputs"][0] and "data" not in header["outputs"][1]
    assert len(raw) == 3 * 4
    assert decoded(header, raw) == json_values(infer(client, request(rows[:3], ["label", "confidence"])))


def test_binary_bytes_outputs_are_length_prefixed_utf8(client: Client, rows: NDArray[np.float64]) -> None:
    body = request(rows[:3], ["label"], parameters={"binary_data_output": True})
    header, raw = split_binary(client.post(INFER, json=body))
    labels = json_values(infer(client, request(rows[:3], ["label"])))["label"]
    assert raw == b"".join(struct.pack("<I", len(s)) + s.encode() for s in labels)
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(raw) == 3 * 5


def test_a_header_length_larger_than_the_body_is_400(client: Client, rows: NDArray[np.float64]) -> None:
    spec, raw = binary_input(rows[:2])
    json_part = json.dumps({"inputs": [spec]}).encode()
    length = str(len(json_part) + len(raw) + 1)
    message = v2_error(binary_post(client, {"inputs": [spec]}, raw, length=length), 400)
    assert HEADER_LENGTH in message and length in message


@pytest.mark.parametrize("length", ["abc", "-5", "1.5", "", "0x10", "١٢"])
def test_a_header_length_that_is_not_a_byte_count_is_400(
    client: Client, rows: NDArray[np.float64], length: str
) -> None:
    spec, raw = binary_input(rows[:2])
    response = client.post(
        INFER,
        content=json.dumps({"inputs": [spec]}).encode() + raw,
        headers={HEADER_LENGTH.encode(): length.encode()},  # bytes: the Arabic-Indic digits go as UTF-8
    )
    assert HEADER_LENGTH in v2_error(response, 400)


def test_a_header_length_cutting_the_json_short_is_400(client: Client, rows: NDArray[np.float64]) -> None:
    spec, raw = binary_input(rows[:2])
    json_part = json.dumps({"inputs": [spec]}).encode()
    for length in (0, len(json_part) - 1, len(json_part) + 1):
        message = v2_error(binary_post(client, {"inputs": [spec]}, raw, length=str(length)), 400)
        assert "JSON" in message or "bytes" in message


@pytest.mark.parametrize("delta", [-4, 4, -1])
def test_binary_data_size_must_match_the_shape(client: Client, rows: NDArray[np.float64], delta: int) -> None:
    spec, raw = binary_input(rows[:2])
    spec["parameters"]["binary_data_size"] = len(raw) + delta
    message = v2_error(binary_post(client, {"inputs": [spec]}, raw + bytes(max(delta, 0))), 400)
    assert "binary_data_size" in message and str(len(raw)) in message


@pytest.mark.parametrize("size", [-1, "512", 1.5, True])
def test_binary_data_size_must_be_a_byte_count(client: Client, rows: NDArray[np.float64], size: Any) -> None:
    spec, raw = binary_input(rows[:1])
    spec["parameters"]["binary_data_size"] = size
    assert "binary_data_size" in v2_error(binary_post(client, {"inputs": [spec]}, raw), 400)


def test_trailing_bytes_no_input_declares_are_400(client: Client, rows: NDArray[np.float64]) -> None:
    message = v2_error(binary_post(client, request(rows[:2]), b"\x00" * 16), 400)
    assert "16 bytes" in message and "no input declares" in message
    spec, raw = binary_input(rows[:2])
    message = v2_error(binary_post(client, {"inputs": [spec]}, raw + b"\x00" * 8), 400)
    assert str(len(raw) + 8) in message and str(len(raw)) in message


def test_declared_binary_data_missing_from_the_body_is_400(client: Client, rows: NDArray[np.float64]) -> None:
    spec, raw = binary_input(rows[:2])
    message = v2_error(binary_post(client, {"inputs": [spec]}, raw[:-8]), 400)
    assert str(len(raw)) in message
    # no Inference-Header-Content-Length at all: the whole body is JSON, and the tensor is missing
    message = v2_error(client.post(INFER, json={"inputs": [spec]}), 400)
    assert "0 bytes" in message and str(len(raw)) in message


def test_both_data_and_binary_data_size_is_400(client: Client, rows: NDArray[np.float64]) -> None:
    spec, raw = binary_input(rows[:2])
    spec["data"] = rows[:2].ravel().tolist()
    message = v2_error(binary_post(client, {"inputs": [spec]}, raw), 400)
    assert "both binary_data_size and data" in message


def test_non_finite_binary_values_are_400_naming_the_cell(client: Client, rows: NDArray[np.float64]) -> None:
    for value in (np.nan, np.inf, -np.inf):
        values = rows[:3].astype(np.float32)
        values[2, 9] = value
        spec, raw = binary_input(values)
        message = v2_error(binary_post(client, {"inputs": [spec]}, raw), 400)
        assert "features[2][9]" in message and "float32" in message


def test_binary_integers_float32_cannot_hold_are_400(client: Client, digits: NDArray[np.float64]) -> None:
    values = digits[:2].astype(np.int64)
    values[0, 63] = 2**24 + 1
    spec, raw = binary_input(values, "INT64", "<i8")
    message = v2_error(binary_post(client, {"inputs": [spec]}, raw), 400)
    assert "features[0][63]" in message and "16777217" in message


def test_a_binary_bytes_or_bool_input_is_400(client: Client) -> None:
    for datatype in ("BYTES", "BOOL"):
        spec = {"name": "features", "shape": [1, 64], "datatype": datatype, "parameters": {"binary_data_size": 64}}
        message = v2_error(binary_post(client, {"inputs": [spec]}, bytes(64)), 400)
        assert repr(datatype) in message


# -- limits and media ---------------------------------------------------------------------------------------------


def test_the_instance_limit_is_413(digits: NDArray[np.float64]) -> None:
    with serve(settings_for(max_instances=5)) as limited:
        infer(limited, request(digits[:5]))
        message = v2_error(limited.post(INFER, json=request(digits[:6])), 413)
        assert "6 instances exceed the limit of 5" in message
        spec, raw = binary_input(digits[:6])
        assert "limit of 5" in v2_error(binary_post(limited, {"inputs": [spec]}, raw), 413)
        # a shape promising more rows than the limit is refused before its data is looked at
        huge = {"name": "features", "shape": [10**9, 64], "datatype": "FP32", "data": [0.0] * 64}
        assert "limit of 5" in v2_error(limited.post(INFER, json={"inputs": [huge]}), 413)
        # /v1 keeps its own error shape for the same limit
        error = error_of(limited.post("/v1/predict", json={"instances": digits[:6].tolist()}), 413)
        assert "limit of 5" in error["message"]


def test_the_body_limit_is_413(digits: NDArray[np.float64]) -> None:
    with serve(settings_for(max_body_bytes=2048)) as limited:
        small = request(digits[:1])
        assert len(json.dumps(small)) < 2048
        infer(limited, small)
        big = request(digits[:10])
        assert len(json.dumps(big)) > 2048
        message = v2_error(limited.post(INFER, json=big), 413)
        assert "2048 bytes" in message
        spec, raw = binary_input(digits[:10])
        assert "2048 bytes" in v2_error(binary_post(limited, {"inputs": [spec]}, raw), 413)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: cut off while it streams in
            payload = json.dumps(big).encode()
            for start in range(0, len(payload), 512):
                yield payload[start : start + 512]

        assert "2048 bytes" in v2_error(limited.post(INFER, content=chunks()), 413)
        error = error_of(limited.post("/v1/predict", json={"instances": digits[:10].tolist()}), 413)
        assert error["type"] == "payload_too_large"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_compressed_body_is_415(client: Client, rows: NDArray[np.float64], encoding: str) -> None:
    response = client.post(INFER, json=request(rows[:2]), headers={"content-encoding": encoding})
    assert repr(encoding) in v2_error(response, 415)


def test_identity_encoding_and_any_content_type_are_accepted(client: Client, rows: NDArray[np.float64]) -> None:
    expected = json_values(infer(client, request(rows[:2])))
    content = json.dumps(request(rows[:2])).encode()
    for headers in ({"content-encoding": "identity"}, {"content-type": "text/plain"}, {}):
        response = client.post(INFER, content=content, headers=headers)
        assert response.status_code == 200, (headers, response.text)
        assert json_values(response.json()) == expected


def test_v1_keeps_its_own_error_shape(client: Client) -> None:
    error = error_of(client.post("/v1/predict", json={"instances": []}), 422)
    assert error["type"] == "invalid_input"
    error = error_of(client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"}), 400)
    assert error["type"] == "malformed_request"
    error = error_of(client.post("/v1/predict", content=b"1,2", headers={"content-type": "text/csv"}), 415)
    assert error["type"] == "unsupported_media_type"
    error = error_of(client.post("/v1/models/cifar/predict", json={"instances": [[0.0] * 64]}), 404)
    assert "cifar" in error["message"]
    error_of(client.get("/v1/nothing"), 404)
    error_of(client.get("/v2x"), 404)  # not under /v2: the service's own shape


# -- shared batching ------------------------------------------------------------------------------------------------


def test_concurrent_requests_share_the_batcher_and_get_their_own_answers(digits: NDArray[np.float64]) -> None:
    with serve(settings_for(batch_max_wait_ms=20)) as batched:
        bodies = [request(digits[i * 13 : i * 13 + 1 + i % 4], ALL_OUTPUTS, id=f"req-{i}") for i in range(20)]
        v1_bodies = [{"instances": digits[500 + i : 503 + i].tolist()} for i in range(5)]
        singles = [infer(batched, body) for body in bodies]
        v1_singles = [batched.post("/v1/predict", json=body).json() for body in v1_bodies]
        batcher = batched.app.state.repository.resolve(None).predictor.batcher
        jobs_before = batcher.jobs

        def send(body: dict[str, Any]) -> httpx.Response:
            url = "/v1/predict" if "instances" in body else INFER
            return batched.post(url, json=body)

        with ThreadPoolExecutor(max_workers=25) as pool:
            answers = list(pool.map(send, [*bodies, *v1_bodies]))
        assert batcher.jobs - jobs_before == 25  # every request, either protocol, went through the one batcher

        ids: list[str] = []
        for i, (single, response) in enumerate(zip(singles, answers[:20], strict=True)):
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["id"] == f"req-{i}"
            assert [o["shape"][0] for o in answer["outputs"]] == [1 + i % 4] * len(ALL_OUTPUTS)
            got, expected = json_values(answer), json_values(single)
            assert got["label"] == expected["label"] and got["prediction_set"] == expected["prediction_set"]
            for name in ("probabilities", "logits", "confidence", "expected_accuracy"):
                assert_close(got[name], expected[name])
            ids += got["prediction_id"]
        for single, response in zip(v1_singles, answers[20:], strict=True):
            assert response.status_code == 200, response.text
            predictions = response.json()["predictions"]
            assert [p["label"] for p in predictions] == [p["label"] for p in single["predictions"]]
            ids += [p["prediction_id"] for p in predictions]
        assert len(ids) == len(set(ids)) == sum(1 + i % 4 for i in range(20)) + 15


def test_concurrent_requests_at_different_coverage_levels_keep_their_own_level(
    tiny_artifact_dir: Path, rows: NDArray[np.float64]
) -> None:
    """Jobs batched together may ask for different conformal levels (on the briefly trained model the levels
    give different sets, so a mix-up would show)."""
    with serve(settings_for(model_path=tiny_artifact_dir, batch_max_wait_ms=20)) as tiny:
        url = "/v2/models/tiny/infer"

        def body(i: int, level: float) -> dict[str, Any]:
            return request(rows[i : i + 6], ["prediction_set"], id=str(i), parameters={"coverage": level})

        def sets(i: int, level: float) -> list[str]:
            return data_of(infer(tiny, body(i, level), url=url), "prediction_set")

        levels = [0.9 if i % 2 else 0.95 for i in range(20)]
        singles = [sets(i, level) for i, level in enumerate(levels)]
        other_level = [sets(i, 0.95 if level == 0.9 else 0.9) for i, level in enumerate(levels)]
        assert sum(a != b for a, b in zip(singles, other_level, strict=True)) >= 10  # the level shows in the answer

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(lambda i: tiny.post(url, json=body(i, levels[i])), range(20)))
        for i, (response, single, level) in enumerate(zip(answers, singles, levels, strict=True)):
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["id"] == str(i) and answer["parameters"]["coverage"] == level
            assert data_of(answer, "prediction_set") == single
