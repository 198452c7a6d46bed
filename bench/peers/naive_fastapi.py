"""Peer 2, the naive baseline: FastAPI + pydantic body + a plain ``def`` handler running onnxruntime per request.

    uvicorn --app-dir bench/peers naive_fastapi:app --workers N

What a first attempt at serving the same ONNX model looks like: no batching across requests, no trust
metadata, no prediction log. Each response carries, per instance, the fields of calibserve's /v1/predict
that come from the probabilities: ``label``, ``confidence`` and ``probabilities`` (class -> probability).
FastAPI serialises the returned dict itself (no response_model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from common import make_session, render
from fastapi import FastAPI
from pydantic import BaseModel

SESSION = make_session()


class PredictRequest(BaseModel):
    instances: list[list[float]]


app = FastAPI()


@app.get("/health/ready")
def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/v1/predict")
def predict(request: PredictRequest) -> dict[str, Any]:
    features = np.asarray(request.instances, dtype=np.float32)
    (probabilities,) = SESSION.run(["probabilities"], {"features": features})
    return {"predictions": render(probabilities)}
