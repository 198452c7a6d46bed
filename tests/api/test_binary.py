"""Binary predict: ``application/x-npy`` bodies and ``application/x-npz`` answers, through the real HTTP stack.

Every binary answer is checked against the JSON answer for the same rows (the JSON path is covered
against onnxruntime and the card in test_predict.py), and every refusal for its status, error type
and what the message names.
"""

from __future__ import annotations

import io
import json
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.lib import format as npy_format
from numpy.typing import NDArray

from tests.api.conftest import Client, error_of, serve, settings_for

pytestmark = pytest.mark.api

NPY = "application/x-npy"
NPZ = "application/x-npz"
NPZ_ARRAYS = {
    "prediction_id",
    "label",
    "class_index",
    "confidence",
    "probabilities",
    "prediction_set",
    "classes",
    "expected_accuracy",
    "expected_accuracy_interval",
    "entropy",
    "margin",
    "abstain",
    "model",
}


def npy_bytes(array: NDArray[Any], *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def post_npy(
    client: Client,
    content: bytes,
    params: dict[str, str] | None = None,
    *,
    accept: str | None = None,
    url: str = "/v1/predict",
) -> httpx.Response:
    headers = {"content-type": NPY}
    if accept is not None:
        headers["accept"] = accept
    return client.post(url, content=content, params=params, headers=headers)


def without_ids(payload: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The response minus its fresh UUIDv7s (which must be distinct), so two answers compare equal."""
    ids = [prediction.pop("prediction_id") for prediction in payload["predictions"]]
    assert len(set(ids)) == len(ids)
    return payload, ids


def json_answer(client: Client, rows: NDArray[Any], **options: Any) -> dict[str, Any]:
    response = client.predict({"instances": rows.tolist(), **options})
    assert response.status_code == 200, response.text
    return without_ids(response.json())[0]


def npy_answer(client: Client, array: NDArray[Any], params: dict[str, str] | None = None) -> dict[str, Any]:
    response = post_npy(client, npy_bytes(array), params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return without_ids(response.json())[0]


def npz_answer(client: Client, response: httpx.Response) -> dict[str, NDArray[Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == NPZ
    with np.load(io.BytesIO(response.content)) as archive:  # allow_pickle=False: no object arrays inside
        return {name: archive[name] for name in archive.files}


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """This module's own app: its many predictions must stay out of the shared app's log, which the health
    tests expect to be fresh."""
    with serve() as served:
        yield served


@pytest.fixture(scope="module")
def rows(digits: NDArray[np.float64]) -> NDArray[np.float64]:
    """A spread of real digits plus a few blurred ones (lower confidence, so not every answer is alike)."""
    blurred = (digits[:6] + digits[600:606]) / 2
    return np.concatenate([digits[::97], blurred])


# -- the same answers as JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8, ">f8"], ids=str)
def test_npy_rows_get_the_json_answer(client: Client, digits: NDArray[np.float64], dtype: Any) -> None:
    rows = digits[:25]  # 0..16 integers: every dtype holds them exactly
    expected = json_answer(client, rows)
    got = npy_answer(client, rows.astype(dtype))
    assert got == expected
    assert len(got["predictions"]) == 25


def test_npy_float64_values_that_are_not_integers(client: Client, rows: NDArray[np.float64]) -> None:
    expected, got = json_answer(client, rows), npy_answer(client, rows)
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expected["predictions"]]
    for a, b in zip(got["predictions"], expected["predictions"], strict=True):
        assert a["probabilities"].keys() == b["probabilities"].keys()
        assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"]) <= 1e-12
    assert got == expected


def test_npy_on_the_named_route(client: Client, rows: NDArray[np.float64]) -> None:
    response = post_npy(client, npy_bytes(rows[:3]), url="/v1/models/digits/predict")
    assert response.status_code == 200, response.text
    assert without_ids(response.json())[0] == json_answer(client, rows[:3])


@pytest.mark.parametrize(
    ("params", "options"),
    [
        ({"coverage": "0.95"}, {"coverage": 0.95}),
        ({"top_k": "3"}, {"top_k": 3}),
        ({"include_logits": "true"}, {"include_logits": True}),
        ({"include_logits": "FALSE"}, {"include_logits": False}),
        ({"model": "digits"}, {"model": "digits"}),
        (
            {"coverage": "0.95", "top_k": "10", "include_logits": "true", "model": "digits"},
            {"coverage": 0.95, "top_k": 10, "include_logits": True, "model": "digits"},
        ),
    ],
)
def test_query_options_act_like_the_json_options(
    client: Client, rows: NDArray[np.float64], params: dict[str, str], options: dict[str, Any]
) -> None:
    got = npy_answer(client, rows, params)
    assert got == json_answer(client, rows, **options)
    first = got["predictions"][0]
    assert ("logits" in first) == bool(options.get("include_logits"))
    assert ("top_k" in first) == ("top_k" in options)
    assert got["model"]["coverage"] == options.get("coverage", 0.9)


# -- .npz answers ---------------------------------------------------------------------------------------------


def assert_npz_matches_json(npz: dict[str, NDArray[Any]], answer: dict[str, Any], card: dict[str, Any]) -> None:
    predictions = answer["predictions"]
    n, classes = len(predictions), card["classes"]
    assert npz["classes"].tolist() == classes
    assert npz["label"].tolist() == [p["label"] for p in predictions]
    assert npz["class_index"].dtype == np.int64
    assert npz["class_index"].tolist() == [p["class_index"] for p in predictions]
    assert npz["probabilities"].shape == (n, len(classes))
    assert npz["probabilities"].tolist() == [[p["probabilities"][c] for c in classes] for p in predictions]
    assert npz["confidence"].tolist() == [p["confidence"] for p in predictions]
    assert npz["prediction_set"].dtype == np.bool_
    assert [[classes[j] for j in np.flatnonzero(mask)] for mask in npz["prediction_set"]] == [
        p["prediction_set"] for p in predictions
    ]
    accuracy = [p["expected_accuracy"]["value"] for p in predictions]
    assert [None if np.isnan(v) else v for v in npz["expected_accuracy"].tolist()] == accuracy
    intervals = [p["expected_accuracy"]["interval"] for p in predictions]
    assert [None if np.isnan(pair).all() else pair.tolist() for pair in npz["expected_accuracy_interval"]] == intervals
    assert npz["entropy"].tolist() == [p["entropy"] for p in predictions]
    assert npz["margin"].tolist() == [p["margin"] for p in predictions]
    assert npz["abstain"].tolist() == [p["abstain"] for p in predictions]
    model = json.loads(str(npz["model"]))
    assert model == answer["model"]
    assert model["name"] == card["name"] and model["version"] == card["version"]
    ids = npz["prediction_id"].tolist()
    assert len(set(ids)) == n and all(uuid.UUID(i).version == 7 for i in ids)


def test_npz_answer_to_a_json_request(client: Client, rows: NDArray[np.float64], card: dict[str, Any]) -> None:
    response = client.post("/v1/predict", json={"instances": rows.tolist()}, headers={"accept": NPZ})
    npz = npz_answer(client, response)
    assert set(npz) == NPZ_ARRAYS
    assert_npz_matches_json(npz, json_answer(client, rows), card)


def test_npz_answer_to_an_npy_request_with_logits(
    client: Client, rows: NDArray[np.float64], card: dict[str, Any]
) -> None:
    params = {"coverage": "0.95", "include_logits": "true"}
    response = post_npy(client, npy_bytes(rows.astype(np.float32)), params, accept=NPZ)
    npz = npz_answer(client, response)
    assert set(npz) == NPZ_ARRAYS | {"logits"}
    answer = json_answer(client, rows, coverage=0.95, include_logits=True)
    assert_npz_matches_json(npz, answer, card)
    assert npz["logits"].dtype == np.float32
    assert npz["logits"].astype(np.float64).tolist() == [p["logits"] for p in answer["predictions"]]
    assert json.loads(str(npz["model"]))["coverage"] == 0.95


def test_npz_ids_are_logged_predictions(client: Client, rows: NDArray[np.float64]) -> None:
    """The ids in an .npz answer are the logged ones: feedback on them is recorded, not unknown."""
    npz = npz_answer(client, post_npy(client, npy_bytes(rows[:2]), accept=NPZ))
    ids, labels = npz["prediction_id"].tolist(), npz["label"].tolist()
    items = [{"prediction_id": i, "label": label} for i, label in zip(ids, labels, strict=True)]
    response = client.post("/v1/feedback", json={"feedback": items})
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["recorded", "recorded"]


# -- refusals ----------------------------------------------------------------------------------------------------


class _OpensAFile:
    """Unpickling this creates ``path``: proof that a payload was (or was not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_pickles_are_refused_and_never_unpickled(client: Client, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    payload = np.empty((1, 64), dtype=object)
    payload[0, :] = [_OpensAFile(str(tmp_path / "armed"))] * 64
    np.load(io.BytesIO(npy_bytes(payload, allow_pickle=True)), allow_pickle=True)
    assert (tmp_path / "armed").exists()  # the payload is live: unpickling it does create a file

    payload[0, :] = [_OpensAFile(str(canary))] * 64
    for body in (npy_bytes(payload, allow_pickle=True), pickle.dumps(payload), pickle.dumps(_OpensAFile(str(canary)))):
        error = error_of(post_npy(client, body), 400)
        assert error["type"] == "malformed_request"
        assert ".npy" in error["message"]
    assert not canary.exists()


def test_garbage_empty_truncated_and_npz_bodies_are_400(client: Client, digits: NDArray[np.float64]) -> None:
    whole = npy_bytes(digits[:3])
    archive = io.BytesIO()
    np.savez(archive, features=digits[:3])
    cases = {
        b"this is not numpy at all": ".npy",
        b"\x93NUMPY\x01\x00garbage": ".npy",
        whole[: len(whole) - 100]: ".npy",  # the header promises more data than came
        b"": "body is required",
        archive.getvalue(): ".npz archive",
    }
    for body, says in cases.items():
        error = error_of(post_npy(client, body), 400)
        assert error["type"] == "malformed_request"
        assert says in error["message"], error
        assert error["details"]["field"] == "body"


@pytest.mark.parametrize(
    ("array", "dtype_name"),
    [
        (np.ones((2, 64), dtype=bool), "bool"),
        (np.ones((2, 64), dtype=np.complex128), "complex128"),
        (np.full((2, 64), "1", dtype="<U3"), "<U3"),
        (np.ones((2, 64), dtype=np.longdouble), str(np.dtype(np.longdouble))),
        (np.zeros((2, 64), dtype="datetime64[s]"), "datetime64[s]"),
        (np.zeros(2, dtype=[("a", "<f8")]), "('a', '<f8')"),
    ],
    ids=["bool", "complex", "string", "longdouble", "datetime", "structured"],
)
def test_unsupported_dtypes_are_422_naming_the_dtype(client: Client, array: NDArray[Any], dtype_name: str) -> None:
    if array.dtype == np.float64:  # platforms where longdouble is float64 have nothing to refuse
        pytest.skip("longdouble is float64 here")
    error = error_of(post_npy(client, npy_bytes(array)), 422)
    assert error["type"] == "invalid_input"
    assert dtype_name in error["message"] and "float32" in error["message"]


@pytest.mark.parametrize(
    ("shape", "named"),
    [
        ((64,), "[64]"),
        ((2, 8, 8), "[2, 8, 8]"),
        ((3, 63), "[3, 63]"),
        ((3, 65), "[3, 65]"),
        ((0, 64), "[0, 64]"),
        ((), "[]"),
    ],
)
def test_wrong_shapes_are_422_naming_the_shape(client: Client, shape: tuple[int, ...], named: str) -> None:
    error = error_of(post_npy(client, npy_bytes(np.zeros(shape))), 422)
    assert error["type"] == "invalid_input"
    assert f"got {named}" in error["message"] and "[N, 64]" in error["message"]
    assert error["details"]["shape"] == list(shape)


@pytest.mark.parametrize(
    ("value", "dtype", "mentions"),
    [
        (np.nan, np.float64, "nan"),
        (np.inf, np.float64, "inf"),
        (-np.inf, np.float32, "inf"),
        (1e39, np.float64, "1e+39"),
        (-1e39, np.float64, "-1e+39"),
    ],
)
def test_non_finite_and_out_of_range_values_are_422_naming_the_cell(
    client: Client, digits: NDArray[np.float64], value: float, dtype: Any, mentions: str
) -> None:
    array = digits[:4].astype(dtype)
    array[2, 37] = value
    error = error_of(post_npy(client, npy_bytes(array)), 422)
    assert error["type"] == "invalid_input"
    assert "instances[2][37]" in error["message"] and "pixel_4_5" in error["message"]
    assert mentions in error["message"]
    assert error["details"]["field"] == "instances[2][37]"


def test_values_the_graph_overflows_on_are_422(client: Client, digits: NDArray[np.float64]) -> None:
    array = digits[:3].astype(np.float32)
    array[1] = 3e38  # every value is a finite float32, yet the graph's output is not
    error = error_of(post_npy(client, npy_bytes(array)), 422)
    assert "instances[1]" in error["message"] and error["details"]["rows"] == [1]


def test_instance_and_byte_limits_are_413(digits: NDArray[np.float64]) -> None:
    with serve(settings_for(max_instances=5, max_body_bytes=2048)) as client:
        assert post_npy(client, npy_bytes(digits[:5].astype(np.uint8))).status_code == 200
        error = error_of(post_npy(client, npy_bytes(digits[:6].astype(np.uint8))), 413)
        assert "6 instances exceed the limit of 5" in error["message"]
        assert error["details"] == {"field": "instances", "limit": 5}
        too_big = npy_bytes(digits[:5])  # 5 x 64 float64 = 2560 bytes of data
        assert len(too_big) > 2048
        error = error_of(post_npy(client, too_big), 413)
        assert error["type"] == "payload_too_large" and "2048 bytes" in error["message"]


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"temperature": "2"}, "query", "unknown query parameter(s) temperature"),
        ({"coverage": "0.9", "covrage": "0.95"}, "query", "covrage"),
        ({"coverage": "abc"}, "coverage", "'abc'"),
        ({"coverage": "nan"}, "coverage", "finite"),
        ({"coverage": "inf"}, "coverage", "finite"),
        ({"coverage": "0.5"}, "coverage", "0.9, 0.95"),
        ({"top_k": "0"}, "top_k", "'0'"),
        ({"top_k": "-1"}, "top_k", "'-1'"),
        ({"top_k": "1.5"}, "top_k", "'1.5'"),
        ({"top_k": "three"}, "top_k", "'three'"),
        ({"top_k": ""}, "top_k", "''"),
        ({"top_k": "11"}, "top_k", "10 classes"),
        ({"include_logits": "yes"}, "include_logits", "'yes'"),
        ({"include_logits": "1"}, "include_logits", "'1'"),
    ],
)
def test_bad_query_options_are_422(
    client: Client, digits: NDArray[np.float64], params: dict[str, str], field: str, says: str
) -> None:
    error = error_of(post_npy(client, npy_bytes(digits[:2]), params), 422)
    assert error["type"] == "invalid_input"
    assert error["details"]["field"] == field
    assert says in error["message"], error["message"]


def test_an_unknown_model_in_the_query_is_404(client: Client, digits: NDArray[np.float64]) -> None:
    error = error_of(post_npy(client, npy_bytes(digits[:2]), {"model": "cifar"}), 404)
    assert "cifar" in error["message"]


def test_a_superscript_top_k_is_422() -> None:
    with serve() as client:  # its own app: the unhandled error reaches the test as an exception
        response = post_npy(client, npy_bytes(np.zeros((1, 64))), {"top_k": "²"})
    error = error_of(response, 422)
    assert error["details"]["field"] == "top_k"


def test_a_header_declaring_a_huge_shape_is_refused_from_the_header() -> None:
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 64)})
    with serve() as client:  # its own app: the unhandled error reaches the test as an exception
        response = post_npy(client, header.getvalue() + bytes(64))
    assert response.status_code in (400, 413), response.text
    error_of(response, response.status_code)


def test_a_header_declaring_more_rows_than_sent_is_400(client: Client) -> None:
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (3, 64)})
    error = error_of(post_npy(client, header.getvalue() + bytes(64)), 400)
    assert ".npy" in error["message"]


def test_query_options_on_a_json_body_are_422(client: Client, digits: NDArray[np.float64]) -> None:
    response = client.post("/v1/predict", json={"instances": digits[:1].tolist()}, params={"coverage": "0.95"})
    error = error_of(response, 422)
    assert error["details"] == {"field": "query", "got": ["coverage"]}
    assert "application/x-npy" in error["message"]


def test_npy_is_only_for_predict(client: Client, digits: NDArray[np.float64]) -> None:
    error = error_of(post_npy(client, npy_bytes(digits[:1]), url="/v1/feedback"), 415)
    assert error["type"] == "unsupported_media_type"
    assert "application/x-npy" in error["message"] and "application/json" in error["message"]
    # where it is accepted, the 415 for another type says so
    response = client.post("/v1/predict", content=b"1,2,3", headers={"content-type": "text/csv"})
    error = error_of(response, 415)
    assert "application/x-npy" in error["message"]


def test_npy_with_content_type_parameters_is_still_npy(client: Client, digits: NDArray[np.float64]) -> None:
    response = client.post(
        "/v1/predict", content=npy_bytes(digits[:2]), headers={"content-type": "Application/X-NPY; version=1.0"}
    )
    assert response.status_code == 200, response.text
    assert without_ids(response.json())[0] == json_answer(client, digits[:2])


# -- the OpenAPI document ------------------------------------------------------------------------------------------


def test_openapi_describes_the_binary_media_types(client: Client) -> None:
    document = client.get("/openapi.json").json()
    assert "PredictRequest" in document["components"]["schemas"]
    for path in ("/v1/predict", "/v1/models/{name}/predict"):
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]["content"]
        assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
        assert body[NPY]["schema"] == {"type": "string", "format": "binary"}
        answers = operation["responses"]["200"]["content"]
        assert answers["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictResponse"}
        assert answers[NPZ]["schema"] == {"type": "string", "format": "binary"}
        assert {"400", "413", "415", "422"} <= set(operation["responses"])
