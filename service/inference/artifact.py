"""Load a model artifact and prove that its card describes the graph it sits in.

Every check failure is an ``ArtifactError`` naming the file and the problem, raised at start-up: a
service that cannot trust its card must not serve probabilities with trust metadata attached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from pydantic import ValidationError

from service.card import (
    CARD_METADATA_KEY,
    LOGITS_OUTPUT,
    PROBABILITIES_OUTPUT,
    CalibrationCard,
    model_digest,
)
from service.errors import ArtifactError

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"


@dataclass(frozen=True, slots=True)
class LoadedArtifact:
    """A verified model: the bytes onnxruntime runs and the card that describes them."""

    model_path: Path
    model_bytes: bytes
    card: CalibrationCard


def resolve_model_path(path: Path) -> Path:
    """Accept the artifact directory or the .onnx file itself."""
    model_path = path / MODEL_FILE if path.is_dir() else path
    if not model_path.is_file():
        raise ArtifactError(
            f"{model_path}: model file not found (expected a directory holding {MODEL_FILE}, or a .onnx file)",
            {"path": str(model_path)},
        )
    return model_path


def load_artifact(path: Path, session_options: ort.SessionOptions | None = None) -> LoadedArtifact:
    """Read model.onnx, parse its embedded card, and check hash, I/O and class count against it."""
    model_path = resolve_model_path(path)
    model_bytes = model_path.read_bytes()
    try:
        digest = model_digest(model_bytes)
        session = ort.InferenceSession(model_bytes, session_options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for anything unparsable
        raise ArtifactError(f"{model_path}: not a loadable ONNX model ({exc})", {"path": str(model_path)}) from None
    card = _embedded_card(model_path, session)
    _check_card_matches(model_path, card, digest, session)
    _check_card_file(model_path, card)
    return LoadedArtifact(model_path, model_bytes, card)


def _embedded_card(model_path: Path, session: ort.InferenceSession) -> CalibrationCard:
    metadata = session.get_modelmeta().custom_metadata_map
    if CARD_METADATA_KEY not in metadata:
        raise ArtifactError(
            f"{model_path}: no calibration card in the ONNX metadata (key {CARD_METADATA_KEY!r}); "
            "export the model with `calibserve train`"
        )
    try:
        return CalibrationCard.from_json(metadata[CARD_METADATA_KEY])
    except ValidationError as exc:
        raise ArtifactError(f"{model_path}: the embedded calibration card is invalid: {exc}") from None


def _check_card_matches(model_path: Path, card: CalibrationCard, digest: str, session: ort.InferenceSession) -> None:
    problems: list[str] = []
    if card.version != digest:
        problems.append(f"card version {card.version[:12]}… does not match the model's sha256 {digest[:12]}…")
    inputs = session.get_inputs()
    name = card.io.input
    if [i.name for i in inputs] != [name]:
        problems.append(f"inputs are {[i.name for i in inputs]}, expected [{name!r}]")
    elif inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 2 or inputs[0].shape[1] != card.io.n_features:
        problems.append(
            f"input {name!r} is {inputs[0].type} {inputs[0].shape}, card says float [N, {card.io.n_features}]"
        )
    if card.io.input_dtype != "float32" or len(card.io.instance_shape) != 1:
        # calibrate writes any single input; serving reads flat float32 rows so far (issue 13 continues).
        problems.append(
            f"input {name!r} is {card.io.input_dtype} {list(card.io.input_shape or ())}: serving takes a flat "
            "float32 [N, F] input so far; other shapes and dtypes are not served yet"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    for name in (LOGITS_OUTPUT, PROBABILITIES_OUTPUT):
        output = outputs.get(name)
        if output is None:
            problems.append(f"output {name!r} is missing (outputs: {sorted(outputs)})")
        elif len(output.shape) != 2 or output.shape[1] != card.n_classes:
            problems.append(f"output {name!r} has shape {output.shape}, card has {card.n_classes} classes")
    if card.io.feature_names is not None and len(card.io.feature_names) != card.io.n_features:
        problems.append(f"card lists {len(card.io.feature_names)} feature names for {card.io.n_features} features")
    if problems:
        raise ArtifactError(f"{model_path}: " + "; ".join(problems), {"problems": problems})


def _check_card_file(model_path: Path, card: CalibrationCard) -> None:
    """card.json beside the model is for people; if present it must say the same as the embedded card."""
    card_path = model_path.parent / CARD_FILE
    if not card_path.exists():
        return
    try:
        beside = CalibrationCard.from_json(card_path.read_bytes())
    except ValidationError as exc:
        raise ArtifactError(f"{card_path}: invalid calibration card: {exc}") from None
    if beside != card:
        raise ArtifactError(
            f"{card_path}: does not match the card embedded in {model_path.name} "
            f"(versions {beside.version[:12]}… and {card.version[:12]}…)"
        )
