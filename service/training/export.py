"""Export a training run as one self-contained ONNX file with its calibration card embedded.

The file is the contract: input ``features`` float32 [N, F] of raw features, outputs ``logits`` and
``probabilities`` (temperature folded in). A plain onnxruntime or Triton serving just this file gets
calibrated probabilities. Nothing is written unless onnxruntime reproduces torch on the test split.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray

from service.card import (
    INPUT_NAME,
    LOGITS_OUTPUT,
    PROBABILITIES_OUTPUT,
    CalibrationCard,
    model_digest,
)
from service.errors import ArtifactError
from service.training.evaluate import build_card
from service.training.files import embed_card, write_artifact_files
from service.training.model import CalibratedClassifier
from service.training.train import TrainingRun

PARITY_TOLERANCE = 1e-5
OPSET = 18


@dataclass(frozen=True, slots=True)
class Artifact:
    directory: Path
    model_path: Path
    card: CalibrationCard
    max_probability_difference: float


def export_onnx(run: TrainingRun) -> bytes:
    """The exported graph without the card, serialized deterministically."""
    module = CalibratedClassifier(run.model, run.temperature.temperature).eval()
    example = torch.as_tensor(run.dataset.features[run.split.test[:2]], dtype=torch.float32)
    batch = torch.export.Dim("batch")
    # The exporter reports progress on stdout and warns about its own internals; neither is ours to show.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[LOGITS_OUTPUT, PROBABILITIES_OUTPUT],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    assert program is not None
    model = program.model_proto
    model.producer_name = "calibserve"
    model.doc_string = "calibserve classifier: raw features in; logits and temperature-scaled probabilities out"
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString(deterministic=True))


def onnx_probabilities(model_bytes: bytes, features: NDArray[np.float64]) -> NDArray[np.float32]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([PROBABILITIES_OUTPUT], {INPUT_NAME: features.astype(np.float32)})
    return np.asarray(probabilities)


def write_artifact(run: TrainingRun, output_dir: Path, name: str, created: datetime | None = None) -> Artifact:
    """Export, verify against torch, then write model.onnx, card.json, reliability.png and REPORT.md."""
    bare = export_onnx(run)
    card = build_card(run, name, model_digest(bare), created)
    model_bytes = embed_card(bare, card)
    if model_digest(model_bytes) != card.version:
        raise ArtifactError("embedding the card changed the graph digest; refusing to write the artifact")

    test_features = run.dataset.features[run.split.test]
    module = CalibratedClassifier(run.model, run.temperature.temperature).eval()
    with torch.no_grad():
        _, torch_probs = module(torch.as_tensor(test_features, dtype=torch.float32))
    difference = float(np.abs(onnx_probabilities(model_bytes, test_features) - torch_probs.numpy()).max())
    if not difference <= PARITY_TOLERANCE:
        raise ArtifactError(
            f"onnxruntime probabilities differ from torch by {difference:.2e} on the test split "
            f"(tolerance {PARITY_TOLERANCE:.0e}); refusing to write the artifact",
            {"max_abs_difference": difference},
        )

    write_artifact_files(output_dir, model_bytes, card)
    return Artifact(output_dir, output_dir / "model.onnx", card, difference)
