"""The calibration card: the one schema that the trainer writes and the service reads.

Train and serve cannot drift apart because both sides import these models. The card travels
inside the ONNX file (``metadata_props[CARD_METADATA_KEY]``) and beside it as ``card.json``.

This module uses pydantic (a runtime dependency of the service anyway) because the card is a
file-format boundary: a card written by another version or edited by hand must fail with a
message naming the field, not deep inside the service. It lives outside ``service.calibration`` so
that the math stays numpy-only; the figures the math computes (``MetricEstimate``, ``NoiseFloor``,
``ReliabilityBin``, ``SelectiveRow``) are its dataclasses, which pydantic validates and writes as they
are, so each of those types has one definition.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.calibration.conformal import coverage_given_card
from service.calibration.metrics import ReliabilityBin
from service.calibration.reference import SelectiveRow
from service.calibration.uncertainty import MetricEstimate, NoiseFloor

CARD_METADATA_KEY = "calibserve.card"
CARD_SCHEMA_VERSION = 1
INPUT_NAME = "features"
LOGITS_OUTPUT = "logits"
PROBABILITIES_OUTPUT = "probabilities"

# Top-level field number of ModelProto.metadata_props (onnx.proto3: `repeated StringStringEntryProto
# metadata_props = 14;`). Everything else in the file is what the card's version hashes.
_METADATA_PROPS_FIELD = 14


class _Frozen(BaseModel):
    # Unknown keys are ignored so that a newer trainer's card still loads in an older service.
    model_config = ConfigDict(frozen=True, extra="ignore")


class SplitMetrics(_Frozen):
    """Calibration of one set of probabilities on the test split."""

    n: int
    n_bins: int
    interval_level: float
    accuracy: MetricEstimate
    nll: MetricEstimate
    brier: MetricEstimate
    ece: MetricEstimate
    adaptive_ece: MetricEstimate
    classwise_ece: MetricEstimate
    mce: float | None
    mce_min_count: int
    mean_confidence: float
    ece_noise_floor: NoiseFloor
    reliability: tuple[ReliabilityBin, ...]


class EvaluationMetrics(_Frozen):
    """Test-split calibration with and without the fitted temperature."""

    before_temperature: SplitMetrics
    after_temperature: SplitMetrics


class TemperatureInfo(_Frozen):
    value: float = Field(gt=0)
    log_value: float
    fitted_on: Literal["calibration", "live_labels"] = "calibration"
    n: int
    nll_before: float
    nll_after: float
    at_bound: bool


class PacThreshold(_Frozen):
    """A training-conditional (PAC) threshold for one level: with probability >= 1 - ``delta`` over
    calibration sets, the long-run coverage of its sets is at least the level's nominal ``coverage``
    (Vovk 2012; taken at ``rank`` instead of the plain ``ceil((n + 1) * coverage)``)."""

    delta: float = Field(gt=0, lt=1)
    rank: int
    threshold: float
    p_coverage_below_nominal: float
    test_coverage: float
    test_mean_set_size: float


class ConformalSummary(_Frozen):
    """One conformal level as the card states it: the LAC split-conformal threshold (the set is every class
    with p >= threshold) fitted on ``n_calibration`` samples, and how it did on the test split.

    ``coverage`` holds on average over calibration sets; for this card's threshold the long-run coverage is
    below it with probability ``p_coverage_below_nominal`` and above ``coverage_quantile_05`` with probability
    0.95. ``pac`` is the threshold that keeps the nominal coverage for this card with probability 1 - delta.
    The three are None in cards written before they existed (the service then computes the first two)."""

    coverage: float
    threshold: float
    n_calibration: int
    test_coverage: float
    test_mean_set_size: float
    p_coverage_below_nominal: float | None = None
    coverage_quantile_05: float | None = None
    pac: PacThreshold | None = None


class ReferenceDistribution(_Frozen):
    """What the test split looked like after temperature scaling: the baseline for drift checks."""

    n: int
    confidence_bin_edges: tuple[float, ...]
    confidence_histogram: tuple[int, ...]
    predicted_class_fraction: tuple[float, ...]
    mean_confidence: float
    # Raw top-label confidences (rounded to 6 decimals): lets monitoring run a two-sample KS test, which
    # the histogram alone cannot. Optional so that cards written before it still load.
    confidences: tuple[float, ...] | None = None


class DatasetInfo(_Frozen):
    name: str
    n_samples: int
    n_train: int
    n_calibration: int
    n_test: int
    class_counts: tuple[int, ...]
    split_seed: int


class TrainingConfigInfo(_Frozen):
    label_smoothing: float
    smoothing_prior: Literal["uniform", "empirical"]
    prior: tuple[float, ...]
    seed: int
    architecture: str
    hidden_sizes: tuple[int, ...]
    dropout: float
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    optimizer: Literal["adam"] = "adam"


InputDtype = Literal["float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32"]


class SourceInfo(_Frozen):
    """Where an imported model came from (``calibserve calibrate``): it replaces ``training`` on its card."""

    file_name: str
    sha256: str = Field(description="sha256 of the original ONNX file, as given to calibrate")
    output: str = Field(description="the original graph output whose scores were calibrated")
    scores: Literal["logits", "probabilities"]
    scores_detected: bool = Field(description="True when calibrate detected the kind; False when it was given")
    label_smoothing: float | None = Field(description="label smoothing declared at calibrate time; None: unknown")


class RecalibrationInfo(_Frozen):
    """What a recalibrated version is (calibserve's closed loop): the same graph as ``from_version`` with a new
    temperature, refitted on live labels. The older labels fitted it, the newer ones checked it: ``check_*``
    are measured on labels the fit never saw, at the served and at the new temperature."""

    from_version: str
    served_temperature: float = Field(gt=0)
    factor: float = Field(gt=0, description="new temperature / served temperature, fitted on log probabilities")
    n_fit: int
    n_check: int
    fit_from: datetime
    fit_until: datetime
    check_from: datetime
    check_until: datetime
    fit_nll_before: float
    fit_nll_after: float
    check_before: SplitMetrics
    check_after: SplitMetrics


class IOInfo(_Frozen):
    """The model's single input and its outputs.

    ``input_shape`` is the input's full shape with -1 for free dimensions (the first is the batch), e.g.
    ``(-1, 64)`` or ``(-1, 1, 8, 8)``; None in cards written before it, which all took ``(-1, n_features)``
    float32. ``n_features`` is the number of values in one instance (the product of the instance dimensions).
    """

    input: str = INPUT_NAME
    n_features: int
    feature_names: tuple[str, ...] | None
    outputs: tuple[str, ...] = (LOGITS_OUTPUT, PROBABILITIES_OUTPUT)
    input_dtype: InputDtype = "float32"
    input_shape: tuple[int, ...] | None = None

    @property
    def instance_shape(self) -> tuple[int, ...]:
        """One instance's shape: the input shape without its batch dimension."""
        return self.input_shape[1:] if self.input_shape is not None else (self.n_features,)


class CalibrationCard(_Frozen):
    """Everything a caller needs to decide how far to trust this model's probabilities."""

    schema_version: int = CARD_SCHEMA_VERSION
    name: str
    version: str = Field(description="sha256 of the ONNX model without its metadata_props")
    created: datetime
    producer: str
    classes: tuple[str, ...]
    io: IOInfo
    dataset: DatasetInfo
    training: TrainingConfigInfo | None = None
    source: SourceInfo | None = None
    recalibration: RecalibrationInfo | None = None
    temperature: TemperatureInfo
    test: EvaluationMetrics
    conformal: tuple[ConformalSummary, ...]
    selective: tuple[SelectiveRow, ...]
    reference: ReferenceDistribution

    @model_validator(mode="after")
    def _trained_or_imported(self) -> CalibrationCard:
        if (self.training is None) == (self.source is None):
            raise ValueError("a card has exactly one of 'training' (trained here) and 'source' (imported)")
        return self

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def label_smoothing(self) -> float | None:
        """The label smoothing the model was trained with; None when an imported model did not declare it."""
        if self.training is not None:
            return self.training.label_smoothing
        return self.source.label_smoothing if self.source is not None else None

    @property
    def smoothing_prior(self) -> str | None:
        return self.training.smoothing_prior if self.training is not None else None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> CalibrationCard:
        return cls.model_validate_json(text)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint in ONNX protobuf")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long in ONNX protobuf")


def _top_level_fields(data: bytes) -> list[tuple[int, int, int]]:
    """Split a serialized protobuf message into (field_number, start, end) spans of its raw bytes."""
    spans: list[tuple[int, int, int]] = []
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 0x7
        if wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}: not an ONNX model")
        if pos > len(data) or field == 0:
            raise ValueError("malformed protobuf: not an ONNX model")
        spans.append((field, start, pos))
    return spans


def model_digest(model_bytes: bytes) -> str:
    """sha256 of a serialized ONNX ModelProto with its ``metadata_props`` left out.

    The card is stored in ``metadata_props`` and names this digest as its ``version``, so the digest
    must cover everything except the card: graph, weights, opsets and local functions. Walking the
    protobuf wire format directly keeps the ``onnx`` package out of the service's dependencies.
    """
    digest = hashlib.sha256()
    for field, start, end in _top_level_fields(model_bytes):
        if field != _METADATA_PROPS_FIELD:
            digest.update(model_bytes[start:end])
    return digest.hexdigest()


def provenance(card: CalibrationCard) -> str:
    """One line on where the model came from: the training config, or the imported file and its scores."""
    if card.training is not None:
        t = card.training
        return (
            f"{t.architecture}, label smoothing {t.label_smoothing} ({t.smoothing_prior} prior), {t.epochs} epochs, "
            f"seed {t.seed}"
        )
    assert card.source is not None  # the validator guarantees one of the two
    src = card.source
    smoothing = "unknown" if src.label_smoothing is None else f"{src.label_smoothing:g} (declared)"
    how = "detected" if src.scores_detected else "given"
    return (
        f"{src.file_name} (sha256 {src.sha256[:16]}…), output {src.output!r} holds {src.scores} ({how}), "
        f"label smoothing {smoothing}"
    )


def summary_lines(card: CalibrationCard) -> list[str]:
    """A short, readable account of the card for terminals (``calibserve inspect``, ``train``)."""
    after, before = card.test.after_temperature, card.test.before_temperature
    level = int(after.interval_level * 100)

    def metric(estimate: MetricEstimate) -> str:
        return f"{estimate.value:.4f} [{estimate.lower:.4f}, {estimate.upper:.4f}]"

    lines = [
        f"model      {card.name}  version {card.version[:16]}…  created {card.created:%Y-%m-%d %H:%M} UTC",
        f"data       {card.dataset.name}: {card.dataset.n_samples} samples, {card.io.n_features} features, "
        f"{card.n_classes} classes ({', '.join(card.classes[:12])}{', …' if card.n_classes > 12 else ''})",
        f"split      train {card.dataset.n_train} / calibration {card.dataset.n_calibration} / "
        f"test {card.dataset.n_test}  (seed {card.dataset.split_seed})",
        f"{'training' if card.training is not None else 'imported':<10} {provenance(card)}",
        f"temperature T = {card.temperature.value:.4f} (calibration NLL {card.temperature.nll_before:.4f} -> "
        f"{card.temperature.nll_after:.4f})"
        + (
            " AT THE SEARCH BOUND: the calibration split is separable or too small" if card.temperature.at_bound else ""
        ),
        f"test (n = {after.n}, {level}% intervals)      before T                  after T",
    ]
    for label, key in (("accuracy", "accuracy"), ("NLL", "nll"), ("Brier", "brier"), ("ECE", "ece")):
        lines.append(f"  {label:<10} {metric(getattr(before, key)):>28}  {metric(getattr(after, key)):>28}")
    floor = after.ece_noise_floor
    lines.append(f"  ECE noise floor at n = {floor.n}: {floor.mean:.4f} (upper {floor.upper:.4f})")
    if after.ece.interval == "basic_bootstrap_noise_floor":
        lines.append("  ECE intervals: basic bootstrap clipped at 0, lower end 0 while within the noise floor")
    else:
        lines.append("  ECE intervals: percentile bootstrap (this card predates the fix: they sit above the true ECE)")

    for level_ in card.conformal:
        given = coverage_given_card(level_.n_calibration, level_.coverage)
        lines.append(
            f"conformal  {level_.coverage:.0%} sets: p >= {level_.threshold:.4f}, test coverage "
            f"{level_.test_coverage:.3f}, mean size {level_.test_mean_set_size:.2f}; for this card "
            f"P(coverage < {level_.coverage:.0%}) = {given.p_below_nominal:.2f}, 5% quantile {given.quantile:.3f} "
            "(the nominal level holds on average over calibration sets)"
        )
        if level_.pac is not None:
            pac = level_.pac
            lines.append(
                f"conformal  {level_.coverage:.0%} PAC sets (delta {pac.delta:g}): p >= {pac.threshold:.4f}, test "
                f"coverage {pac.test_coverage:.3f}, mean size {pac.test_mean_set_size:.2f}; P(coverage < "
                f"{level_.coverage:.0%}) = {pac.p_coverage_below_nominal:.3f} (CALIBSERVE_CONFORMAL_GUARANTEE=pac)"
            )
    return lines
