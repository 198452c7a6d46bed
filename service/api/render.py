"""Domain results -> JSON-ready dicts (the translation half of the routers, kept out of the handlers)."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.inference.engine import BatchPrediction, InferenceEngine


def model_summary(engine: InferenceEngine, coverage: float) -> dict[str, Any]:
    card = engine.card
    after = card.test.after_temperature
    return {
        "name": card.name,
        "version": card.version,
        "temperature": card.temperature.value,
        "label_smoothing": card.training.label_smoothing,
        "smoothing_prior": card.training.smoothing_prior,
        "ece": {
            "value": after.ece.value,
            "lower": after.ece.lower,
            "upper": after.ece.upper,
            "n": after.ece.n,
            "noise_floor": after.ece_noise_floor.mean,
        },
        "coverage": coverage,
        "abstain_threshold": engine.abstain_threshold,
    }


def render_predictions(
    engine: InferenceEngine, batch: BatchPrediction, ids: list[str], top_k: int | None, include_logits: bool
) -> list[dict[str, Any]]:
    classes: list[str] = list(engine.card.classes)
    bands = [
        {
            "value": band.accuracy,
            "interval": None if band.accuracy_low is None else [band.accuracy_low, band.accuracy_high],
            "confidence_lower": band.lower,
            "confidence_upper": band.upper,
            "support": band.support,
        }
        for band in engine.bands
    ]
    probabilities = batch.probabilities.tolist()
    sets = batch.prediction_set
    class_array = np.asarray(classes, dtype=object)
    k = min(top_k, len(classes)) if top_k else 0
    top = np.argsort(-batch.probabilities, axis=1, kind="stable")[:, :k].tolist() if k else None
    logits = batch.logits.astype(np.float64).tolist() if include_logits else None
    rows = zip(
        batch.class_index.tolist(),
        batch.confidence.tolist(),
        batch.band_index.tolist(),
        batch.entropy.tolist(),
        batch.margin.tolist(),
        batch.abstain.tolist(),
        strict=True,
    )
    predictions = []
    for i, (index, confidence, band, entropy, margin, abstain) in enumerate(rows):
        prediction: dict[str, Any] = {
            "prediction_id": ids[i],
            "label": classes[index],
            "class_index": index,
            "confidence": confidence,
            "probabilities": dict(zip(classes, probabilities[i], strict=True)),
            "prediction_set": class_array[sets[i]].tolist(),
            "expected_accuracy": bands[band],
            "entropy": entropy,
            "margin": margin,
            "abstain": abstain,
        }
        if top is not None:
            prediction["top_k"] = [{"label": classes[j], "probability": probabilities[i][j]} for j in top[i]]
        if logits is not None:
            prediction["logits"] = logits[i]
        predictions.append(prediction)
    return predictions
