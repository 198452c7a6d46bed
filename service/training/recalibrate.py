"""A served model refitted on its live labels: one new temperature, folded into a new artifact version.

The most common drift is one temperature scaling repairs: the same ranking, another confidence scale. The
prediction log holds what the model served, ``p = softmax(z / T)`` in float32, and the labels feedback
brought; a scale on ``log p`` is a new temperature for ``z``
(:func:`service.calibration.temperature.refit_from_probabilities`, which bounds what float32 storage costs).

The labels are split by label time: the older ``1 - check_fraction`` fit the factor, the newer ones check it,
so the check is honest about the future. The new artifact is the served graph with only its temperature
replaced (``probabilities = softmax(logits / T_new)``), and a card that says what it is
(:class:`service.card.RecalibrationInfo`); its test
figures, reference distribution, conformal thresholds and selective table are measured on the live labels
(conformal thresholds fitted on the fit part, checked on the check part). The argmax cannot change (a positive
temperature keeps it): asserted on every labelled row.

Runs in the server: numpy and onnxruntime only (no torch, no ``onnx`` package: the temperature is replaced at
the protobuf wire level, ``service.inference.wire``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service import __version__
from service import card as c
from service.calibration.metrics import ece
from service.calibration.reference import selective_prediction_table
from service.calibration.temperature import logits_from_probabilities, refit_from_probabilities, softmax
from service.errors import ArtifactError, DataError
from service.inference import wire
from service.training.evaluate import conformal_summaries, reference_distribution, split_metrics

SEED = 0


@dataclass(frozen=True, slots=True)
class LiveLabels:
    """Labelled predictions of one model version, oldest label first: served probabilities [n, K], labels
    [n] (class indices), label times [n] (Unix seconds)."""

    probabilities: NDArray[np.float64]
    labels: NDArray[np.int64]
    times: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Refit:
    """The fitted temperature and everything the card and the decision need to know about it."""

    served_version: str
    served_temperature: float
    temperature: float
    factor: float
    at_bound: bool
    fit_rows: slice
    check_rows: slice
    fit_nll_before: float
    fit_nll_after: float
    fit_ece_before: float  # the fit part's ECE as served: below the warning threshold, it saw no drift to fit
    check_before: c.SplitMetrics
    check_after: c.SplitMetrics
    check_probabilities: NDArray[np.float64]  # the check part at the new temperature


def check_enough(live: LiveLabels, n_classes: int, min_labels: int, min_per_class: int) -> str | None:
    """Why these labels are too few to fit on (None: enough): at least ``min_labels``, and at least
    ``min_per_class`` of every class that was labelled."""
    n = int(live.labels.size)
    if n < min_labels:
        return f"{n} labelled prediction(s) of this version; a recalibration needs at least {min_labels}"
    counts = np.bincount(live.labels, minlength=n_classes)
    seen = counts[counts > 0]
    if seen.size and int(seen.min()) < min_per_class:
        return f"a labelled class has {int(seen.min())} label(s); every class seen needs at least {min_per_class}"
    return None


def refit(card: c.CalibrationCard, live: LiveLabels, check_fraction: float) -> Refit:
    """Fit the factor on the older labels, measure both temperatures on the newer ones."""
    n = int(live.labels.size)
    n_check = max(1, round(n * check_fraction))
    fit_rows, check_rows = slice(0, n - n_check), slice(n - n_check, n)
    served_t = card.temperature.value
    temperature, fit = refit_from_probabilities(live.probabilities[fit_rows], live.labels[fit_rows], served_t)
    check_logits = logits_from_probabilities(live.probabilities[check_rows])
    before = softmax(check_logits, 1.0)
    after = softmax(check_logits, fit.temperature)
    if not np.array_equal(before.argmax(axis=1), after.argmax(axis=1)):
        raise ArtifactError("a temperature changed a prediction's class: refusing the refit")
    labels = live.labels[check_rows]
    return Refit(
        served_version=card.version,
        served_temperature=served_t,
        temperature=temperature,
        factor=fit.temperature,
        at_bound=fit.at_bound,
        fit_rows=fit_rows,
        check_rows=check_rows,
        fit_nll_before=fit.nll_before,
        fit_nll_after=fit.nll_after,
        fit_ece_before=ece(live.probabilities[fit_rows], live.labels[fit_rows]),
        check_before=split_metrics(before, labels, SEED),
        check_after=split_metrics(after, labels, SEED),
        check_probabilities=after,
    )


def _moment(unix_seconds: float) -> datetime:
    return datetime.fromtimestamp(unix_seconds, UTC)


def recalibrated_card(card: c.CalibrationCard, live: LiveLabels, found: Refit, version: str) -> c.CalibrationCard:
    fit_probs = softmax(logits_from_probabilities(live.probabilities[found.fit_rows]), found.factor)
    fit_labels, check_labels = live.labels[found.fit_rows], live.labels[found.check_rows]
    after = found.check_probabilities
    fit_times, check_times = live.times[found.fit_rows], live.times[found.check_rows]
    return card.model_copy(
        update={
            "version": version,
            "created": datetime.now(UTC),
            "producer": f"calibserve {__version__} recalibrate",
            "recalibration": c.RecalibrationInfo(
                from_version=card.version,
                served_temperature=found.served_temperature,
                factor=found.factor,
                n_fit=int(fit_labels.size),
                n_check=int(check_labels.size),
                fit_from=_moment(float(fit_times.min())),
                fit_until=_moment(float(fit_times.max())),
                check_from=_moment(float(check_times.min())),
                check_until=_moment(float(check_times.max())),
                fit_nll_before=found.fit_nll_before,
                fit_nll_after=found.fit_nll_after,
                check_before=found.check_before,
                check_after=found.check_after,
            ),
            "temperature": c.TemperatureInfo(
                value=found.temperature,
                log_value=math.log(found.temperature),
                fitted_on="live_labels",
                n=int(fit_labels.size),
                nll_before=found.fit_nll_before,
                nll_after=found.fit_nll_after,
                at_bound=found.at_bound,
            ),
            "test": c.EvaluationMetrics(before_temperature=found.check_before, after_temperature=found.check_after),
            "conformal": conformal_summaries(fit_probs, fit_labels, after, check_labels),
            "selective": selective_prediction_table(after, check_labels),
            "reference": reference_distribution(after, card.n_classes),
        }
    )


def build_artifact(
    model_bytes: bytes, card: c.CalibrationCard, live: LiveLabels, found: Refit
) -> tuple[bytes, c.CalibrationCard]:
    """The new model (card embedded) and its card: the served graph with only its temperature replaced
    (``service.inference.wire``: no ``onnx`` package), verified against the served graph on a probe input."""
    if not math.isclose(wire.served_temperature(model_bytes), card.temperature.value, rel_tol=1e-5):
        raise ArtifactError("the graph's temperature is not the one its card states")
    bare = wire.with_temperature(model_bytes, found.temperature)
    new_card = recalibrated_card(card, live, found, c.model_digest(bare))
    new_bytes = wire.with_card(bare, new_card.to_json())
    if c.model_digest(new_bytes) != new_card.version:
        raise ArtifactError("embedding the card changed the graph digest; refusing the recalibrated artifact")
    _verify(model_bytes, new_bytes, card, found.temperature)
    return new_bytes, new_card


def _verify(old: bytes, new: bytes, card: c.CalibrationCard, temperature: float) -> None:
    """The new graph's probabilities are softmax(old logits / T_new) on a probe input, its classes the old ones."""
    shape = [card.io.n_features] if card.io.input_shape is None else [max(d, 1) for d in card.io.input_shape[1:]]
    dtype = np.dtype(card.io.input_dtype)
    probe = np.random.default_rng(SEED).uniform(0.0, 1.0, size=(8, *shape)).astype(dtype)
    feeds = {card.io.input: probe}
    old_logits, old_probs = ort.InferenceSession(old).run([c.LOGITS_OUTPUT, c.PROBABILITIES_OUTPUT], feeds)
    new_logits, new_probs = ort.InferenceSession(new).run([c.LOGITS_OUTPUT, c.PROBABILITIES_OUTPUT], feeds)
    expected = softmax(np.asarray(old_logits, dtype=np.float64), temperature)
    if not np.array_equal(old_logits, new_logits) or not np.allclose(new_probs, expected, atol=1e-5):
        raise ArtifactError("the recalibrated graph does not compute softmax(logits / T) of the served graph")
    if not np.array_equal(np.argmax(old_probs, axis=1), np.argmax(new_probs, axis=1)):
        raise ArtifactError("the recalibrated graph changed a prediction's class")


def write_artifact(directory: Path, model_bytes: bytes, card: c.CalibrationCard) -> Path:
    """model.onnx and card.json in ``directory`` (written beside and renamed in: a reader never sees half)."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.staging")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "model.onnx").write_bytes(model_bytes)
    (staging / "card.json").write_text(card.to_json() + "\n", encoding="utf-8")
    for name in ("model.onnx", "card.json"):
        (staging / name).replace(directory / name)
    staging.rmdir()
    return directory / "model.onnx"


def live_labels(
    probabilities: NDArray[np.float64], labels: NDArray[np.int64], times: NDArray[np.float64]
) -> LiveLabels:
    """The log's newest-first rows, oldest first; ``DataError`` for rows that do not line up."""
    if not (probabilities.shape[0] == labels.shape[0] == times.shape[0]):
        raise DataError("probabilities, labels and times must have one row each")
    order = np.argsort(times, kind="stable")
    return LiveLabels(probabilities[order], labels[order], times[order])
