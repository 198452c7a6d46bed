"""What the model-serving peers share: the model files, an onnxruntime session, the response fields.

Every peer answers per instance with the part of calibserve's /v1/predict response that comes from the
probabilities: ``label``, ``confidence`` and ``probabilities`` (class label -> probability).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

MODEL_DIR = Path(os.environ.get("BENCH_MODEL_DIR", Path(__file__).resolve().parents[2] / "models" / "digits"))
CLASSES: list[str] = json.loads((MODEL_DIR / "card.json").read_text())["classes"]


def make_session() -> ort.InferenceSession:
    """One intra-op thread, as calibserve's engine uses."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])


def render(probabilities: NDArray[np.float32]) -> list[dict[str, Any]]:
    """Rows of class probabilities -> one dict per row."""
    rows = probabilities.tolist()
    return [
        {"label": CLASSES[index], "confidence": row[index], "probabilities": dict(zip(CLASSES, row, strict=True))}
        for index, row in zip(probabilities.argmax(axis=1).tolist(), rows, strict=True)
    ]
