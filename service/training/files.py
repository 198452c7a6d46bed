"""Writing an artifact directory: the ONNX file with its card embedded, card.json, reliability.png and REPORT.md.

Shared by ``train`` and ``calibrate``; torch-free, so that ``calibrate`` needs only the ``onnx`` package.
The directory is written beside its destination and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import onnx

from service.card import CARD_METADATA_KEY, CalibrationCard
from service.training.report import write_reliability_png, write_report


def embed_card(model_bytes: bytes, card: CalibrationCard) -> bytes:
    """The model with ``card`` as its only metadata property (the graph, and so the version, unchanged)."""
    model = onnx.load_from_string(model_bytes)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {CARD_METADATA_KEY: card.to_json()})
    return bytes(model.SerializeToString(deterministic=True))


def write_artifact_files(output_dir: Path, model_bytes: bytes, card: CalibrationCard) -> None:
    """model.onnx, card.json, reliability.png and REPORT.md in ``output_dir``, replacing what was there."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{card.name}-", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; a container user must be able to read the model
    try:
        (staging / "model.onnx").write_bytes(model_bytes)
        (staging / "card.json").write_text(card.to_json() + "\n", encoding="utf-8")
        write_reliability_png(card, staging / "reliability.png")
        write_report(card, staging / "REPORT.md")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
