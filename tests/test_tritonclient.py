"""Triton's own client, ``tritonclient.http``, against a live ``calibserve serve`` over TCP.

One real server for the module, started on a free port with its prediction log in a temporary directory and
stopped with SIGTERM (exit code 0). Every answer is checked against /v1 of the same server and the card.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient  # type: ignore[import-untyped]
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from service import __version__
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
TOLERANCE = 1e-6


@dataclass
class Server:
    address: str  # host:port, as tritonclient takes it
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = server.log.read_text(errors="replace")
            pytest.fail(f"serve exited with {server.process.returncode} before ready:\n{log}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"not ready after {READY_TIMEOUT_S} s:\n{server.log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`calibserve serve --port P` on the bundled model; SIGTERM at the end must exit 0."""
    port = free_port()
    directory = tmp_path_factory.mktemp("tritonclient")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIBSERVE_")}
    env["CALIBSERVE_DATA_DIR"] = str(directory / "data")
    log = directory / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    served = Server(f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until_ready(served)
        yield served
        process.send_signal(signal.SIGTERM)
        try:
            exit_code: int | None = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            exit_code = None
        output = log.read_text(errors="replace")
        assert exit_code == 0, f"exit code {exit_code} after SIGTERM:\n{output}"
        assert "Traceback" not in output, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Any]:
    triton = httpclient.InferenceServerClient(server.address)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def card(server: Server) -> dict[str, Any]:
    """The loaded model's card, as the live server's /v1 shows it."""
    response = httpx.get(f"{server.url}/v1/models/digits", timeout=10.0)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def digits() -> NDArray[np.float64]:
    """scikit-learn's digits (8x8 pixels, 0..16), the data the bundled model was trained on."""
    from sklearn.datasets import load_digits

    data: NDArray[np.float64] = load_digits().data
    return data


@pytest.fixture(scope="module")
def rows(digits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Real digits plus a few blurred ones (less confident answers)."""
    return np.concatenate([digits[::150], (digits[:4] + digits[600:604]) / 2])


def v1_predictions(server: Server, rows: NDArray[Any], coverage: float = 0.9) -> list[dict[str, Any]]:
    body = {"instances": np.asarray(rows, dtype=np.float64).tolist(), "coverage": coverage}
    response = httpx.post(f"{server.url}/v1/predict", json=body, timeout=10.0)
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


def features_input(rows: NDArray[Any], datatype: str, *, binary: bool) -> Any:
    dtype = {"FP32": np.float32, "FP64": np.float64}[datatype]
    tensor = httpclient.InferInput("features", list(rows.shape), datatype)
    tensor.set_data_from_numpy(np.ascontiguousarray(rows, dtype=dtype), binary_data=binary)
    return tensor


def text(values: NDArray[Any]) -> list[str]:
    """BYTES outputs: str from JSON, bytes from the binary extension."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.ravel().tolist()]


def error_of(info: pytest.ExceptionInfo[Any], status: str) -> str:
    error = info.value
    assert error.status() == status, (error.status(), error.message())
    message: str = error.message()
    assert message and "exception occurred in the client" not in message, message
    return message


# -- health and metadata ----------------------------------------------------------------------------------------


def test_server_and_model_are_live_and_ready(client: Any, card: dict[str, Any]) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert client.is_model_ready("digits") is True
    assert client.is_model_ready("digits", card["version"]) is True
    assert client.is_model_ready("digits", "1") is False
    assert client.is_model_ready("cifar") is False


def test_server_metadata(client: Any) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "calibserve"
    assert metadata["version"] == __version__
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata(client: Any, card: dict[str, Any]) -> None:
    metadata = client.get_model_metadata("digits")
    assert metadata["name"] == "digits"
    assert metadata["versions"] == [card["version"]]
    assert metadata["platform"] == "onnx_onnxv1"
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}]
    shapes = {output["name"]: (output["datatype"], output["shape"]) for output in metadata["outputs"]}
    assert shapes["probabilities"] == ("FP32", [-1, 10])
    assert shapes["label"] == ("BYTES", [-1])
    assert client.get_model_metadata("digits", model_version=card["version"]) == metadata


# -- inference ----------------------------------------------------------------------------------------------------


def check_answer(result: Any, server: Server, rows: NDArray[np.float64], card: dict[str, Any], request_id: str) -> None:
    """Calibrated probabilities as /v1 has them, the labels, and the card's figures in ``parameters``."""
    predictions = v1_predictions(server, rows)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(rows), 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    expected = np.array([[p["probabilities"][c] for c in card["classes"]] for p in predictions])
    assert np.abs(probabilities.astype(np.float64) - expected).max() <= TOLERANCE
    labels = [p["label"] for p in predictions]
    assert text(result.as_numpy("label")) == labels
    assert [card["classes"][i] for i in probabilities.argmax(axis=1)] == labels
    response = result.get_response()
    assert response["id"] == request_id
    assert response["model_name"] == "digits" and response["model_version"] == card["version"]
    assert response["parameters"]["temperature"] == card["temperature"]["value"]
    assert response["parameters"]["ece"] == card["test"]["after_temperature"]["ece"]["value"]


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("requested", [True, False], ids=["with-outputs", "default-outputs"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer(
    client: Any,
    server: Server,
    rows: NDArray[np.float64],
    card: dict[str, Any],
    datatype: str,
    requested: bool,
    binary: bool,
) -> None:
    request_id = f"{datatype}-{requested}-{binary}"
    outputs = None
    if requested:
        names = ["probabilities", "label", "confidence"]
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in names]
    result = client.infer(
        "digits", [features_input(rows, datatype, binary=binary)], outputs=outputs, request_id=request_id
    )
    check_answer(result, server, rows, card, request_id)
    answered = {output["name"]: output for output in result.get_response()["outputs"]}
    assert list(answered) == ["probabilities", "label", "confidence"]
    # binary outputs where asked for: per output, or for all (tritonclient's binary_data_output) with none named
    as_binary = binary or not requested
    for output in answered.values():
        assert ("data" in output) is not as_binary, output
        assert ("binary_data_size" in (output.get("parameters") or {})) is as_binary, output
    confidence = result.as_numpy("confidence")
    assert confidence.tolist() == result.as_numpy("probabilities").max(axis=1).tolist()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_under_the_version(
    client: Any, server: Server, rows: NDArray[np.float64], card: dict[str, Any], binary: bool
) -> None:
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    result = client.infer(
        "digits",
        [features_input(rows, "FP32", binary=binary)],
        model_version=card["version"],
        outputs=outputs,
        request_id="versioned",
    )
    check_answer(result, server, rows, card, "versioned")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_output(
    client: Any, server: Server, rows: NDArray[np.float64], card: dict[str, Any], binary: bool
) -> None:
    names = ["probabilities", "logits", "label", "confidence", "prediction_set", "expected_accuracy", "prediction_id"]
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in names]
    result = client.infer(
        "digits", [features_input(rows, "FP32", binary=binary)], outputs=outputs, parameters={"coverage": 0.95}
    )
    assert result.get_response()["parameters"]["coverage"] == 0.95
    predictions = v1_predictions(server, rows, 0.95)
    assert text(result.as_numpy("prediction_set")) == [",".join(p["prediction_set"]) for p in predictions]
    accuracy = result.as_numpy("expected_accuracy")
    assert np.abs(accuracy - [p["expected_accuracy"]["value"] for p in predictions]).max() <= TOLERANCE
    assert result.as_numpy("logits").shape == (len(rows), 10)
    assert (result.as_numpy("logits").argmax(axis=1) == result.as_numpy("probabilities").argmax(axis=1)).all()
    ids = text(result.as_numpy("prediction_id"))
    assert len(set(ids)) == len(rows) and all(uuid.UUID(i) for i in ids)
    feedback = [
        {"prediction_id": i, "label": label} for i, label in zip(ids, text(result.as_numpy("label")), strict=True)
    ]
    response = httpx.post(f"{server.url}/v1/feedback", json={"feedback": feedback}, timeout=10.0)
    assert response.status_code == 200, response.text
    assert {r["status"] for r in response.json()["results"]} == {"recorded"}


# -- errors -------------------------------------------------------------------------------------------------------


def test_an_unknown_model_is_404(client: Any, rows: NDArray[np.float64]) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("cifar", [features_input(rows, "FP32", binary=True)])
    assert "'cifar'" in error_of(info, "404")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("cifar")
    assert "'cifar'" in error_of(info, "404")


def test_an_unknown_version_is_404(client: Any, rows: NDArray[np.float64]) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits", [features_input(rows, "FP32", binary=False)], model_version="2")
    assert "'2'" in error_of(info, "404")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("digits", model_version="2")
    assert "'2'" in error_of(info, "404")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_an_unknown_output_is_400(client: Any, rows: NDArray[np.float64], binary: bool) -> None:
    outputs = [httpclient.InferRequestedOutput("output0", binary_data=binary)]
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits", [features_input(rows, "FP32", binary=binary)], outputs=outputs)
    assert "'output0'" in error_of(info, "400")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_wrong_shape_is_400(client: Any, binary: bool) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits", [features_input(np.zeros((2, 63)), "FP32", binary=binary)])
    message = error_of(info, "400")
    assert "[2, 63]" in message and "[N, 64]" in message


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_bytes_input_is_400(client: Any, binary: bool) -> None:
    tensor = httpclient.InferInput("features", [1, 64], "BYTES")
    tensor.set_data_from_numpy(np.full((1, 64), b"1", dtype=np.object_), binary_data=binary)
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits", [tensor])
    assert "'BYTES'" in error_of(info, "400")


def test_a_coverage_the_card_lacks_is_400(client: Any, rows: NDArray[np.float64]) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits", [features_input(rows, "FP32", binary=True)], parameters={"coverage": 0.8})
    assert "0.9, 0.95" in error_of(info, "400")


# -- the "done when" ------------------------------------------------------------------------------------


def test_a_new_user_gets_calibrated_probabilities_in_json_and_binary_mode(
    server: Server, digits: NDArray[np.float64], card: dict[str, Any]
) -> None:
    """Done when: tritonclient.http.InferenceServerClient run as a new user would run it gets calibrated
    probabilities from calibserve in both JSON and binary mode."""
    client = httpclient.InferenceServerClient(server.address)
    try:
        assert client.is_server_ready() and client.is_model_ready("digits")
        row = digits[0]  # a handwritten 0
        answers = {}
        for binary in (False, True):
            features = httpclient.InferInput("features", [1, 64], "FP32")
            features.set_data_from_numpy(np.asarray([row], dtype=np.float32), binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "label")]
            result = client.infer("digits", [features], outputs=outputs)
            probabilities = result.as_numpy("probabilities")
            assert probabilities.shape == (1, 10)
            assert abs(float(probabilities.sum()) - 1.0) < 1e-5
            assert text(result.as_numpy("label")) == ["0"]
            parameters = result.get_response()["parameters"]
            assert parameters["temperature"] == card["temperature"]["value"] != 1.0  # calibrated, not raw softmax
            assert parameters["ece"] == card["test"]["after_temperature"]["ece"]["value"]
            answers[binary] = probabilities
        assert answers[False].tolist() == answers[True].tolist()
        expected = v1_predictions(server, digits[:1])[0]["probabilities"]
        assert np.abs(answers[True][0] - [expected[c] for c in card["classes"]]).max() <= TOLERANCE
        # and the README's snippet as written: binary by default, no outputs named
        features = httpclient.InferInput("features", [1, 64], "FP32")
        features.set_data_from_numpy(np.asarray([row], dtype=np.float32))
        result = client.infer("digits", [features])
        assert result.as_numpy("probabilities").tolist() == answers[True].tolist()
        assert text(result.as_numpy("label")) == ["0"]
        assert result.get_response()["parameters"]["ece"] == card["test"]["after_temperature"]["ece"]["value"]
    finally:
        client.close()
