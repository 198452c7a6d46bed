"""End to end: train a few epochs, export, check the artifact with independent tools (onnx, onnxruntime)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.conftest import TRAIN_EXTRA

pytest.importorskip("onnx", reason=f"onnx is missing; {TRAIN_EXTRA}")
pytest.importorskip("torch", reason=f"torch is missing; {TRAIN_EXTRA}")
pytest.importorskip("tqdm", reason=f"tqdm is missing; {TRAIN_EXTRA}")

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F  # noqa: N812

from service.calibration.metrics import accuracy, brier, ece, nll
from service.card import CARD_METADATA_KEY, CalibrationCard, model_digest
from service.cli import main
from service.training.config import TrainConfig
from service.training.data import load_dataset, stratified_split
from service.training.evaluate import build_card
from service.training.export import embed_card, export_onnx
from service.training.train import run_training, soft_cross_entropy

pytestmark = pytest.mark.slow


def independent_digest(model_path: Path) -> str:
    """The card's version recomputed with the onnx package: the model with metadata_props cleared."""
    model = onnx.load(str(model_path))
    del model.metadata_props[:]
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def test_cli_train_writes_a_verified_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    code = main(["train", "--epochs", "3", "--hidden-sizes", "32", "--no-progress", "--output-dir", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "REPORT.md",
        "card.json",
        "model.onnx",
        "reliability.png",
    ]
    assert "temperature T =" in capsys.readouterr().out

    model = onnx.load(str(out / "model.onnx"))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    embedded = dict((p.key, p.value) for p in model.metadata_props)[CARD_METADATA_KEY]
    card = CalibrationCard.from_json(embedded)
    assert card == CalibrationCard.from_json((out / "card.json").read_text())
    assert card.version == independent_digest(out / "model.onnx")

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]

    dataset = load_dataset("digits")
    split = stratified_split(dataset, 0.2, 0.2, seed=card.dataset.split_seed)
    logits, probs = session.run(None, {"features": dataset.features[split.test].astype(np.float32)})
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # The temperature really is folded into the graph: probabilities == softmax(logits / T).
    expected = torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / card.temperature.value, dim=1)
    assert np.abs(probs - expected.numpy()).max() < 1e-5
    # The card's after-T metrics describe exactly what the file serves.
    labels = dataset.labels[split.test]
    after = card.test.after_temperature
    served = probs.astype(np.float64)
    assert after.n == len(labels) == card.dataset.n_test
    assert after.accuracy.value == pytest.approx(accuracy(served, labels), abs=1e-9)
    assert after.nll.value == pytest.approx(nll(served, labels), abs=1e-4)
    assert after.brier.value == pytest.approx(brier(served, labels), abs=1e-4)
    assert after.ece.value == pytest.approx(ece(served, labels), abs=1e-3)
    assert after.ece.lower <= after.ece.value <= after.ece.upper
    assert sum(b.count for b in after.reliability) == after.n
    report = (out / "REPORT.md").read_text()
    assert card.version in report and "Conformal prediction sets" in report


def test_same_seed_gives_identical_card_metrics() -> None:
    dataset = load_dataset("digits")
    config = TrainConfig(epochs=2, hidden_sizes=(16,), seed=7)
    first, second = (
        run_training(dataset, config, progress=False),
        run_training(dataset, config, progress=False),
    )
    assert np.array_equal(first.test_logits, second.test_logits)
    assert first.temperature == second.temperature
    other = run_training(dataset, TrainConfig(epochs=2, hidden_sizes=(16,), seed=8), progress=False)
    assert not np.array_equal(first.test_logits, other.test_logits)


def test_graph_digest_is_stable_and_excludes_only_the_card() -> None:
    dataset = load_dataset("digits")
    run = run_training(dataset, TrainConfig(epochs=1, hidden_sizes=(8,), seed=0), progress=False)
    bare = export_onnx(run)
    assert bare == export_onnx(run)  # deterministic export: same weights, same bytes, same version
    card = build_card(run, "digest", model_digest(bare))
    with_card = embed_card(bare, card)
    assert model_digest(with_card) == model_digest(bare)
    tampered = onnx.load_from_string(with_card)
    tampered.graph.initializer[0].raw_data = b"\x00" * len(tampered.graph.initializer[0].raw_data)
    assert model_digest(tampered.SerializeToString(deterministic=True)) != model_digest(bare)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.3])
def test_soft_cross_entropy_matches_torch_label_smoothing(alpha: float) -> None:
    """torch's built-in label_smoothing is (1-a)*onehot + a/K: an independent check of our uniform loss."""
    from service.calibration.smoothing import smoothed_targets

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 7, (64,), generator=generator)
    targets = torch.as_tensor(smoothed_targets(labels.numpy(), 7, alpha))
    ours = soft_cross_entropy(logits, targets)
    reference = F.cross_entropy(logits, labels, label_smoothing=alpha)
    assert float(ours) == pytest.approx(float(reference), rel=1e-12)


def test_empirical_prior_is_recorded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    features = rng.normal(size=(100, 4)) + labels[:, None]
    np.savez(tmp_path / "skewed.npz", X=features, y=labels)
    out = tmp_path / "skewed"
    code = main(
        ["train", "--data", str(tmp_path / "skewed.npz"), "--smoothing-prior", "empirical", "--epochs", "2",
         "--hidden-sizes", "8", "--no-progress", "--output-dir", str(out)]
    )  # fmt: skip
    assert code == 0
    card = CalibrationCard.from_json((out / "card.json").read_text())
    assert card.training.smoothing_prior == "empirical"
    assert card.training.prior[0] > card.training.prior[1] > card.training.prior[2]
    assert sum(card.training.prior) == pytest.approx(1.0)
    assert card.io.feature_names is None and card.classes == ("0", "1", "2")


def test_train_reports_bad_data_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d.csv").write_text("x,y\n1,a\n2,a\n")
    assert main(["train", "--data", str(tmp_path / "d.csv"), "--label-column", "y", "--no-progress"]) == 1
    assert "only one class ('a')" in capsys.readouterr().err
    assert main(["train", "--label-smoothing", "1.5", "--no-progress"]) == 2


def test_refuses_to_overwrite_with_a_mismatching_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If onnxruntime disagrees with torch, nothing is written (and an existing artifact is kept)."""
    from service.errors import ArtifactError
    from service.training import export

    out = tmp_path / "keep"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous")
    run = run_training(load_dataset("digits"), TrainConfig(epochs=1, hidden_sizes=(8,)), progress=False)
    real = export.onnx_probabilities
    monkeypatch.setattr(export, "onnx_probabilities", lambda b, x: real(b, x) + 1e-3)
    with pytest.raises(ArtifactError, match="differ from torch by 1.00e-03"):
        export.write_artifact(run, out, "keep")
    assert (out / "model.onnx").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]
    shutil.rmtree(out)
