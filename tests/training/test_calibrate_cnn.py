"""A model nobody here trained, as a PyTorch user brings it: a small CNN trained in the test with
``CrossEntropyLoss(label_smoothing=0.1)`` on digits as ``[N, 1, 8, 8]`` images, exported by ``torch.onnx`` with
its own input and output names; then ``calibserve calibrate`` and ``calibserve serve`` over /v1 JSON, ``.npy``
and Triton's own client."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from tests.conftest import TRAIN_EXTRA

pytest.importorskip("torch", reason=f"torch is missing; {TRAIN_EXTRA}")
pytest.importorskip("onnxscript", reason=f"onnxscript is missing; {TRAIN_EXTRA}")
pytest.importorskip("scipy", reason="scipy is missing; needs the dev extra")

import onnxruntime as ort
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax as scipy_log_softmax
from sklearn.datasets import load_digits
from torch import nn

from service.calibration.temperature import softmax
from service.card import CalibrationCard
from service.cli import main
from tests.test_serve_e2e import serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image / 16.0)


@dataclass(frozen=True)
class Imported:
    onnx_path: Path
    artifact: Path
    card: CalibrationCard
    calibration: tuple[NDArray[np.float32], NDArray[np.int64]]
    test: tuple[NDArray[np.float32], NDArray[np.int64]]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    root = tmp_path_factory.mktemp("cnn")
    features, labels = load_digits(return_X_y=True)
    images = features.reshape(-1, 1, 8, 8).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order].astype(np.int64)
    train, calibration, test = slice(0, 1000), slice(1000, 1400), slice(1400, None)

    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    x, y = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    for _ in range(30):
        for batch in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    onnx_path = root / "cnn.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x[:2],),
            str(onnx_path),
            input_names=["pixels"],
            output_names=["class_scores"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            external_data=False,
        )
    np.savez(root / "calibration.npz", X=images[calibration], y=labels[calibration])
    np.savez(root / "test.npz", X=images[test], y=labels[test])
    artifact = root / "artifact"
    code = main(
        [
            "calibrate",
            str(onnx_path),
            "--data",
            str(root / "calibration.npz"),
            "--test-data",
            str(root / "test.npz"),
            "--name",
            "cnn",
            "--label-smoothing",
            "0.1",
            "--output-dir",
            str(artifact),
        ]
    )
    assert code == 0
    card = CalibrationCard.from_json((artifact / "card.json").read_text())
    return Imported(onnx_path, artifact, card, (images[calibration], labels[calibration]), (images[test], labels[test]))


def original_logits(imported: Imported, images: NDArray[np.float32]) -> NDArray[np.float64]:
    session = ort.InferenceSession(str(imported.onnx_path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(["class_scores"], {"pixels": images})
    return np.asarray(scores, dtype=np.float64)


def test_temperature_equals_an_independent_scipy_fit(imported: Imported) -> None:
    logits = original_logits(imported, imported.calibration[0])
    labels = imported.calibration[1]

    def nll(log_t: float) -> float:
        return float(-np.mean(scipy_log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels]))

    best = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-10})
    assert imported.card.temperature.value == pytest.approx(float(np.exp(best.x)), abs=1e-4)
    # Label smoothing on digits leaves a network under-confident: the fit sharpens it (T < 1).
    assert imported.card.temperature.value < 1.0
    assert imported.card.source is not None and imported.card.source.label_smoothing == 0.1
    assert imported.card.source.scores == "logits" and imported.card.source.output == "class_scores"
    assert imported.card.io.input == "pixels" and imported.card.io.input_shape == (-1, 1, 8, 8)


@pytest.fixture(scope="module")
def server(imported: Imported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data, log = tmp_path_factory.mktemp("cnn-data"), tmp_path_factory.mktemp("cnn-log") / "serve.log"
    with serving(data, log, imported.artifact) as url:
        yield url


def expected_probabilities(imported: Imported, images: NDArray[np.float32]) -> NDArray[np.float64]:
    return softmax(original_logits(imported, images), imported.card.temperature.value)


def test_served_over_v1_json_with_nested_instances(imported: Imported, server: str) -> None:
    images = imported.test[0][:20]
    response = httpx.post(f"{server}/v1/predict", json={"instances": images.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    served = np.array([[p["probabilities"][c] for c in imported.card.classes] for p in body["predictions"]])
    assert np.max(np.abs(served - expected_probabilities(imported, images))) < 1e-5
    assert body["model"]["label_smoothing"] == 0.1
    assert all(p["prediction_set"] and "expected_accuracy" in p for p in body["predictions"])


def test_served_over_npy(imported: Imported, server: str) -> None:
    images = imported.test[0][:30]
    buffer = io.BytesIO()
    np.save(buffer, images)
    response = httpx.post(
        f"{server}/v1/predict", content=buffer.getvalue(), headers={"content-type": "application/x-npy"}, timeout=30
    )
    assert response.status_code == 200, response.text
    served = np.array([[p["probabilities"][c] for c in imported.card.classes] for p in response.json()["predictions"]])
    assert np.max(np.abs(served - expected_probabilities(imported, images))) < 1e-5


def test_served_to_tritonclient(imported: Imported, server: str) -> None:
    import tritonclient.http as httpclient  # type: ignore[import-untyped]

    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    metadata = client.get_model_metadata("cnn")
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    images = imported.test[0][:16]
    tensor = httpclient.InferInput("pixels", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=True)
    result = client.infer("cnn", [tensor], outputs=[httpclient.InferRequestedOutput("probabilities")])
    served = result.as_numpy("probabilities")
    assert np.max(np.abs(served - expected_probabilities(imported, images))) < 1e-5


def test_wrong_instance_shape_is_a_422_naming_the_shape(imported: Imported, server: str) -> None:
    flat = imported.test[0][:2].reshape(2, 64).tolist()
    response = httpx.post(f"{server}/v1/predict", json={"instances": flat}, timeout=30)
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "instances[0]" in message and "[1, 8, 8]" in message
