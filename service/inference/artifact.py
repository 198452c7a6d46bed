"""Load a model artifact and prove that its card describes the graph it sits in.

Every check failure is an ``ArtifactError`` naming the file and the problem, raised at start-up: a
service that cannot trust its card must not serve probabilities with trust metadata attached. The card's
input (name, dtype, shape: any single numeric input) must be the graph's, because every request is
decoded into what the card declares (``service.inference.inputs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# onnxruntime's name for each input dtype a card can declare.
ONNX_TYPES = {
    "float32": "tensor(float)",
    "float64": "tensor(double)",
    "float16": "tensor(float16)",
    "int64": "tensor(int64)",
    "int32": "tensor(int32)",
    "int16": "tensor(int16)",
    "int8": "tensor(int8)",
    "uint8": "tensor(uint8)",
    "uint16": "tensor(uint16)",
    "uint32": "tensor(uint32)",
}


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
    else:
        problems += _input_problems(card, inputs[0].type, list(inputs[0].shape))
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


def _input_problems(card: CalibrationCard, onnx_type: str, graph_shape: list[Any]) -> list[str]:
    """The graph's input against the card's: dtype, rank, every fixed dimension, and free ones free.

    The batch dimension must be free in the graph (serving stacks requests); a card's free dimension (-1)
    must be free in the graph (a name or unknown), a fixed one equal. A card without ``input_shape`` (written
    before it existed) declares float32 ``[-1, n_features]``."""
    io = card.io
    declared = (-1, *io.instance_shape)
    expected_type = ONNX_TYPES[io.input_dtype]
    problems = []
    if onnx_type != expected_type:
        problems.append(f"input {io.input!r} is {onnx_type}, card says {io.input_dtype} ({expected_type})")
    fixed = [dim if isinstance(dim, int) and dim > 0 else -1 for dim in graph_shape]
    if fixed != list(declared):
        problems.append(
            f"input {io.input!r} has shape {graph_shape} in the graph, card says {list(declared)} (-1: free)"
            + ("; the batch dimension must be free (serving stacks requests)" if fixed[:1] not in ([-1], []) else "")
        )
    if io.n_features != (math.prod(io.instance_shape) if -1 not in io.instance_shape else -1):
        problems.append(f"card says {io.n_features} features for instances of shape {list(io.instance_shape)}")
    return problems


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
