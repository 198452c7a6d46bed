"""Domain results -> JSON-ready dicts (the translation half of the routers, kept out of the handlers)."""

from __future__ import annotations

import io
import math
import weakref
from typing import Any

import msgspec
import numpy as np

from service.inference.engine import BatchPrediction, InferenceEngine
from service.inference.rows import RowValues


def model_summary(engine: InferenceEngine, coverage: float) -> dict[str, Any]:
    """/v1's ``model`` block: the engine's trust summary for this level, as JSON."""
    summary = engine.summaries[coverage]
    given = summary.conformal
    return {
        "name": summary.name,
        "version": summary.version,
        "temperature": summary.temperature,
        "label_smoothing": summary.label_smoothing,
        "smoothing_prior": summary.smoothing_prior,
        "ece": {
            "value": summary.ece.value,
            "lower": summary.ece.lower,
            "upper": summary.ece.upper,
            "n": summary.ece.n,
            "noise_floor": summary.ece_noise_floor,
        },
        "coverage": summary.coverage,
        "abstain_threshold": summary.abstain_threshold,
        "conformal": {
            "guarantee": summary.guarantee,
            "delta": summary.delta,
            "n_calibration": given.n_calibration,
            "p_coverage_below_nominal": given.p_below_nominal,
            "coverage_quantile_05": given.quantile,
        },
    }


def render_predictions(
    engine: InferenceEngine,
    batch: BatchPrediction,
    ids: list[str],
    top_k: int | None,
    include_logits: bool,
    values: RowValues | None = None,
) -> list[dict[str, Any]]:
    """One dict per row from the batch's Python values (``values``: made with its micro-batch's, as
    ``Scored.values``; None: converted here); the loop only assembles."""
    classes: list[str] = list(engine.card.classes)
    bands = band_dicts(engine)
    if values is None:
        values = RowValues.of(batch)
    expected = values.expected_accuracy
    k = min(top_k, len(classes)) if top_k else 0
    top = np.argsort(-batch.probabilities, axis=1, kind="stable")[:, :k].tolist() if k else None
    logits = batch.logits.astype(np.float64).tolist() if include_logits else None
    rows = zip(
        ids,
        values.class_index,
        values.confidence,
        values.probabilities,
        values.prediction_set,
        values.band_index,
        values.entropy,
        values.margin,
        values.abstain,
        strict=True,
    )
    predictions = []
    for i, (prediction_id, index, confidence, probs, members, band, entropy, margin, abstain) in enumerate(rows):
        prediction: dict[str, Any] = {
            "prediction_id": prediction_id,
            "label": classes[index],
            "class_index": index,
            "confidence": confidence,
            "probabilities": dict(zip(classes, probs, strict=True)),
            "prediction_set": [classes[j] for j in members],
            "expected_accuracy": _expected(expected[i], bands[band]),
            "entropy": entropy,
            "margin": margin,
            "abstain": abstain,
        }
        if top is not None:
            prediction["top_k"] = [{"label": classes[j], "probability": probs[j]} for j in top[i]]
        if logits is not None:
            prediction["logits"] = logits[i]
        predictions.append(prediction)
    return predictions


# Per-engine caches, weakly keyed: a replaced model version's engine (and its onnxruntime session) is freed
# once its last request is answered, not kept alive by a cache of what its answers looked like.
_BANDS: weakref.WeakKeyDictionary[InferenceEngine, list[dict[str, Any]]] = weakref.WeakKeyDictionary()
_SUMMARIES: weakref.WeakKeyDictionary[InferenceEngine, dict[float, msgspec.Raw]] = weakref.WeakKeyDictionary()


def band_dicts(engine: InferenceEngine) -> list[dict[str, Any]]:
    """The band part of each row's ``expected_accuracy`` (its confidence range and test support), once per
    engine; rows copy it into their own dict, never modify it."""
    bands = _BANDS.get(engine)
    if bands is None:
        bands = _BANDS[engine] = [
            {"confidence_lower": band.lower, "confidence_upper": band.upper, "support": band.support}
            for band in engine.bands
        ]
    return bands


def _expected(row: list[float], band: dict[str, Any]) -> dict[str, Any]:
    value, low, high = row
    if math.isnan(value):
        return {"value": None, "interval": None, **band}
    return {"value": value, "interval": [low, high], **band}


def model_summary_json(engine: InferenceEngine, coverage: float) -> msgspec.Raw:
    """``model_summary`` encoded once per engine and coverage (it is the same in every response)."""
    encoded = _SUMMARIES.setdefault(engine, {})
    if coverage not in encoded:
        encoded[coverage] = msgspec.Raw(encode_json(model_summary(engine, coverage)))
    return encoded[coverage]


def encode_json(content: Any) -> bytes:
    """msgspec's encoder: the same JSON as ``json.dumps`` for these types, several times faster."""
    return msgspec.json.encode(content)


def render_npz(
    engine: InferenceEngine, batch: BatchPrediction, ids: list[str], include_logits: bool, model: dict[str, Any]
) -> bytes:
    """The bulk response as named arrays (``numpy.load`` reads it): no per-row Python at all.

    ``expected_accuracy`` holds each row's expected accuracy (NaN where its band had no test samples)
    and ``expected_accuracy_interval`` its [low, high]; ``model`` is the JSON of the ``model`` object.
    """
    table = batch.expected_accuracy
    arrays: dict[str, Any] = {
        "prediction_id": np.array(ids, dtype="U36"),
        "label": engine.classes[batch.class_index],
        "class_index": batch.class_index.astype(np.int64),
        "confidence": batch.confidence,
        "probabilities": batch.probabilities,
        "prediction_set": batch.prediction_set,
        "classes": engine.classes,
        "expected_accuracy": table[:, 0],
        "expected_accuracy_interval": table[:, 1:],
        "entropy": batch.entropy,
        "margin": batch.margin,
        "abstain": batch.abstain,
        "model": np.array(encode_json(model).decode()),
    }
    if include_logits:
        arrays["logits"] = batch.logits
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
