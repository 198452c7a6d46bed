"""``calibserve calibrate`` on models nobody here trained: a scikit-learn classifier exported by skl2onnx, as a
user would, then served; and every way the model or the data can be wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

pytest.importorskip("onnx", reason="needs the 'calibrate' extra: pip install -e '.[calibrate]'")
pytest.importorskip("skl2onnx", reason="needs skl2onnx (the dev extra) to export a scikit-learn model")

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression

from service.calibration.metrics import nll
from service.calibration.temperature import softmax
from service.card import CalibrationCard
from service.cli import main
from service.inference.artifact import load_artifact
from tests.api.conftest import serve, settings_for

pytestmark = pytest.mark.unit


class Digits:
    """Digits split three ways: the user's training data, their held-out calibration data and a test set."""

    def __init__(self) -> None:
        features, labels = load_digits(return_X_y=True)
        rng = np.random.default_rng(0)
        order = rng.permutation(len(labels))
        features, labels = features[order].astype(np.float32), labels[order]
        self.train = features[:900], labels[:900]
        self.calibration = features[900:1350], labels[900:1350]
        self.test = features[1350:], labels[1350:]


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits()


@pytest.fixture(scope="module")
def sklearn_model(digits: Digits) -> LogisticRegression:
    # Weak regularisation: an over-confident model, so the temperature has something to fix (T > 1).
    return LogisticRegression(C=50.0, max_iter=5000).fit(*digits.train)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, digits: Digits, sklearn_model: LogisticRegression) -> Path:
    root = tmp_path_factory.mktemp("calibrate")
    model = to_onnx(sklearn_model, digits.train[0][:1], options={"zipmap": False})
    (root / "logreg.onnx").write_bytes(model.SerializeToString())
    (root / "logreg_zipmap.onnx").write_bytes(to_onnx(sklearn_model, digits.train[0][:1]).SerializeToString())
    np.savez(root / "calibration.npz", X=digits.calibration[0], y=digits.calibration[1])
    np.savez(root / "test.npz", X=digits.test[0], y=digits.test[1])
    return root


@pytest.fixture(scope="module")
def calibrated(files: Path) -> Path:
    out = files / "out"
    code = main(
        [
            "calibrate",
            str(files / "logreg.onnx"),
            "--data",
            str(files / "calibration.npz"),
            "--test-data",
            str(files / "test.npz"),
            "--name",
            "logreg",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_temperature_matches_scikit_learns_own(
    calibrated: Path, digits: Digits, sklearn_model: LogisticRegression
) -> None:
    card = CalibrationCard.from_json((calibrated / "card.json").read_text())
    reference = CalibratedClassifierCV(FrozenEstimator(sklearn_model), method="temperature").fit(*digits.calibration)
    beta = reference.calibrated_classifiers_[0].calibrators[0].beta_  # scikit-learn scales logits by beta = 1 / T
    assert card.temperature.value == pytest.approx(1.0 / beta, rel=2e-3)
    assert card.temperature.value > 1.0  # the weakly regularised model was over-confident
    # Test NLL after temperature equals scikit-learn's calibrated classifier on the same test rows.
    ours = card.test.after_temperature.nll.value
    theirs = nll(reference.predict_proba(digits.test[0]), digits.test[1])
    assert ours == pytest.approx(theirs, rel=5e-3)
    assert ours < card.test.before_temperature.nll.value


def test_card_says_where_the_model_came_from(calibrated: Path, files: Path) -> None:
    card = CalibrationCard.from_json((calibrated / "card.json").read_text())
    assert card.training is None and card.source is not None
    assert card.source.file_name == "logreg.onnx" and card.source.output == "probabilities"
    assert card.source.scores == "probabilities" and card.source.scores_detected
    assert card.source.label_smoothing is None
    import hashlib

    assert card.source.sha256 == hashlib.sha256((files / "logreg.onnx").read_bytes()).hexdigest()
    assert card.io.input == "X" and card.io.input_shape == (-1, 64) and card.io.input_dtype == "float32"
    assert card.dataset.n_calibration == 450 and card.dataset.n_test == len(load_digits().target) - 1350
    for name in ("model.onnx", "card.json", "reliability.png", "REPORT.md"):
        assert (calibrated / name).stat().st_size > 0
    assert "imported model" in (calibrated / "REPORT.md").read_text()
    load_artifact(calibrated)  # verifies like any artifact: digest, input, outputs, classes


def test_served_probabilities_are_softmax_of_log_probabilities_over_t(
    calibrated: Path, files: Path, digits: Digits
) -> None:
    card = CalibrationCard.from_json((calibrated / "card.json").read_text())
    rows = digits.test[0][:50]
    # The original model's float32 probabilities, run independently of calibserve, then log and divide by T.
    original = ort.InferenceSession(str(files / "logreg.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = original.run(["probabilities"], {"X": rows})
    floor = float(np.finfo(np.float32).tiny)
    expected = softmax(np.log(np.maximum(probabilities.astype(np.float64), floor)), card.temperature.value)
    with serve(settings_for(model_path=calibrated)) as client:
        response = client.predict({"instances": rows.tolist()})
        assert response.status_code == 200, response.text
        body = response.json()
        served = np.array([[p["probabilities"][c] for c in card.classes] for p in body["predictions"]])
        assert np.max(np.abs(served - expected)) < 1e-4
        assert body["model"]["label_smoothing"] is None and body["model"]["temperature"] == card.temperature.value
        metadata = client.get("/v2/models/logreg").json()
        assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
        infer = client.post(
            "/v2/models/logreg/infer",
            json={"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 64], "data": rows[:2].tolist()}]},
        )
        assert infer.status_code == 200, infer.text
        assert "label_smoothing" not in infer.json()["parameters"]  # unknown: left out, not a made-up number


# ---------------------------------------------------------------------------------------------- errors


def _calibrate(files: Path, model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["calibrate", str(model), "--data", str(data), "--name", "m", "--output-dir", str(out), *extra])


def _fails(capsys: pytest.CaptureFixture[str], files: Path, model: Path, data: Path, *extra: str) -> str:
    out = files / f"never-{np.random.default_rng().integers(1 << 30)}"
    assert _calibrate(files, model, data, out, *extra) == 1
    assert not out.exists(), "nothing is written when calibrate fails"
    return capsys.readouterr().err


def test_zipmap_output_is_refused_with_how_to_export_without_it(
    capsys: pytest.CaptureFixture[str], files: Path
) -> None:
    err = _fails(capsys, files, files / "logreg_zipmap.onnx", files / "calibration.npz")
    assert "ZipMap" in err and "zipmap': False" in err


def _write_model(path: Path, inputs: list[Any], outputs: list[Any], nodes: list[Any]) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_multi_input_model_is_refused(capsys: pytest.CaptureFixture[str], files: Path) -> None:
    model = _write_model(
        files / "two_inputs.onnx",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", 8]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", 8]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["N", 8])],
        [helper.make_node("Add", ["input_ids", "attention_mask"], ["out"])],
    )
    err = _fails(capsys, files, model, files / "calibration.npz")
    assert "2 inputs" in err and "'input_ids'" in err and "single-input" in err


def test_non_classifier_output_is_refused(capsys: pytest.CaptureFixture[str], files: Path) -> None:
    model = _write_model(
        files / "regressor.onnx",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0, noop_with_empty_axes=0)],
    )
    err = _fails(capsys, files, model, files / "calibration.npz")
    assert "[N, K] float scores" in err


def test_labels_outside_the_outputs_k_are_refused(capsys: pytest.CaptureFixture[str], files: Path) -> None:
    features, labels = np.load(files / "calibration.npz")["X"], np.load(files / "calibration.npz")["y"]
    bad = files / "labels11.npz"
    np.savez(bad, X=features, y=np.where(np.arange(len(labels)) == 3, 11, labels))
    err = _fails(capsys, files, files / "logreg.onnx", bad)
    assert "K = 10" in err or "'11'" in err


def test_inputs_of_the_wrong_shape_are_refused(capsys: pytest.CaptureFixture[str], files: Path) -> None:
    data = np.load(files / "calibration.npz")
    bad = files / "wide.npz"
    np.savez(bad, X=np.hstack([data["X"], data["X"][:, :1]]), y=data["y"])
    err = _fails(capsys, files, files / "logreg.onnx", bad)
    assert "[450, 65]" in err and "'X'" in err and "[-1, 64]" in err


def test_too_few_rows_per_class_are_refused(capsys: pytest.CaptureFixture[str], files: Path) -> None:
    data = np.load(files / "calibration.npz")
    keep = np.flatnonzero(data["y"] != 7)
    sparse_rows = np.concatenate([keep, np.flatnonzero(data["y"] == 7)[:3]])
    bad = files / "few7.npz"
    np.savez(bad, X=data["X"][sparse_rows], y=data["y"][sparse_rows])
    err = _fails(capsys, files, files / "logreg.onnx", bad)
    assert "too few rows per class" in err and "'7' (3)" in err


def test_given_scores_kind_is_checked(capsys: pytest.CaptureFixture[str], files: Path) -> None:
    # Calling probabilities logits is allowed (log-softmax differs by a row constant); the opposite is refused.
    model = _write_model(
        files / "logits.onnx",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
        [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["scores"])],
    )
    m = onnx.load(str(model))
    for name, value in (("starts", 0), ("ends", 10), ("axes", 1)):
        m.graph.initializer.append(onnx.numpy_helper.from_array(np.array([value], dtype=np.int64), name))
    onnx.save(m, str(model))
    err = _fails(capsys, files, model, files / "calibration.npz", "--scores", "probabilities")
    assert "not probability vectors" in err


# ---------------------------------------------------------------------------------------------- logits models


def _linear_logits_model(path: Path, input_shape: list[Any], weights: NDArray[np.float32]) -> Path:
    """A linear classifier whose output is named ``logits`` (the name calibserve's own output takes)."""
    nodes = [helper.make_node("MatMul", ["flat", "W"], ["logits"])]
    if len(input_shape) > 2:
        nodes.insert(0, helper.make_node("Flatten", ["image"], ["flat"], axis=1))
        name = "image"
    else:
        nodes[0].input[0] = name = "x"
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [onnx.numpy_helper.from_array(weights, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def weights(digits: Digits) -> NDArray[np.float32]:
    # Least-squares one-hot regression, scaled up: a decent, over-confident linear classifier.
    features, labels = digits.train
    onehot = np.eye(10)[labels]
    w, *_ = np.linalg.lstsq(np.c_[features], onehot, rcond=None)
    return (w * 40.0).astype(np.float32)


def test_logits_output_named_logits_is_calibrated_and_served(
    files: Path, digits: Digits, weights: NDArray[np.float32]
) -> None:
    model = _linear_logits_model(files / "linear.onnx", ["N", 64], weights)
    out = files / "linear_out"
    assert _calibrate(files, model, files / "calibration.npz", out) == 0
    card = CalibrationCard.from_json((out / "card.json").read_text())
    assert card.source is not None and card.source.scores == "logits" and card.source.output == "logits"
    rows = digits.test[0][:40]
    expected = softmax(rows.astype(np.float64) @ weights.astype(np.float64), card.temperature.value)
    with serve(settings_for(model_path=out)) as client:
        response = client.predict({"instances": rows.tolist()})
        assert response.status_code == 200, response.text
        served = np.array([[p["probabilities"][c] for c in card.classes] for p in response.json()["predictions"]])
    assert np.max(np.abs(served - expected)) < 1e-4


def test_image_input_is_calibrated_and_its_signature_recorded(
    files: Path, digits: Digits, weights: NDArray[np.float32]
) -> None:
    model = _linear_logits_model(files / "image.onnx", ["N", 1, 8, 8], weights)
    data = files / "images.npz"
    np.savez(data, X=digits.calibration[0].reshape(-1, 1, 8, 8), y=digits.calibration[1])
    out = files / "image_out"
    assert _calibrate(files, model, data, out) == 0
    card = CalibrationCard.from_json((out / "card.json").read_text())
    assert card.io.input == "image" and card.io.input_shape == (-1, 1, 8, 8) and card.io.n_features == 64
    assert load_artifact(out).card.io.input_shape == (-1, 1, 8, 8)  # served: the graph's input checked against the card


def test_csv_data_with_a_label_column_gives_the_same_card_as_npz(files: Path, calibrated: Path) -> None:
    calibration, test = np.load(files / "calibration.npz"), np.load(files / "test.npz")
    for name, data in (("calibration", calibration), ("test", test)):
        header = ",".join(["label"] + [f"p{i}" for i in range(64)])  # the class first: any column works
        lines = [header] + [
            ",".join([str(int(y))] + [repr(float(v)) for v in x]) for x, y in zip(data["X"], data["y"], strict=True)
        ]
        (files / f"{name}.csv").write_text("\n".join(lines) + "\n")
    out = files / "from_csv"
    code = main(
        [
            "calibrate",
            str(files / "logreg.onnx"),
            "--data",
            str(files / "calibration.csv"),
            "--test-data",
            str(files / "test.csv"),
            "--name",
            "logreg",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    from_csv = CalibrationCard.from_json((out / "card.json").read_text())
    from_npz = CalibrationCard.from_json((calibrated / "card.json").read_text())
    assert from_csv.temperature.value == pytest.approx(from_npz.temperature.value, rel=1e-9)
    assert from_csv.test.after_temperature.nll == from_npz.test.after_temperature.nll


def test_calibrate_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, service.cli, service.training.calibrate, service.training.files\nprint('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
