"""HTTP request and response shapes (pydantic at the boundary; frozen dataclasses inside)."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, create_model

from service.inference.inputs import InputSignature

# Two real digits (a "0" and a "1") so the examples in /docs can be pasted as they are.
DIGIT_ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0]
DIGIT_ZERO += [0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
DIGIT_ONE = [0, 0, 0, 12, 13, 5, 0, 0, 0, 0, 0, 11, 16, 9, 0, 0, 0, 0, 3, 15, 16, 6, 0, 0, 0, 7, 15, 16, 16, 2, 0, 0]
DIGIT_ONE += [0, 0, 1, 16, 16, 3, 0, 0, 0, 0, 1, 16, 16, 6, 0, 0, 0, 0, 1, 16, 16, 6, 0, 0, 0, 0, 0, 11, 16, 10, 0, 0]


def _row_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return None


def _integral_number(value: Any) -> Any:
    """JSON has one number type: 3.0 is the integer 3 (as JSON Schema says), 3.5 and "3" stay errors."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


PositiveIntegral = Annotated[int, Field(ge=1), BeforeValidator(_integral_number)]
# A value of an integer input: 3 or 3.0 (JSON's one number type), never 3.5, "3" or true.
IntegralNumber = Annotated[int, BeforeValidator(_integral_number)]

Instance = Annotated[
    Annotated[list[float], Tag("list")] | Annotated[dict[str, float], Tag("object")],
    Discriminator(
        _row_kind,
        custom_error_type="instance_type",
        custom_error_message="each instance must be a list of numbers or an object mapping feature name to number",
    ),
]


class PredictRequest(BaseModel):
    """Rows of raw features; strict: no strings, booleans, NaN or Infinity where numbers belong."""

    model_config = ConfigDict(
        strict=True,
        allow_inf_nan=False,
        extra="forbid",
        json_schema_extra={
            "examples": [
                cast(dict[str, Any], {"instances": [DIGIT_ZERO, DIGIT_ONE]}),
                cast(dict[str, Any], {"instances": [DIGIT_ZERO], "coverage": 0.95, "top_k": 3, "include_logits": True}),
            ]
        },
    )

    instances: list[Instance] = Field(
        min_length=1,
        description="feature rows: lists in the card's feature order, or objects keyed by feature name",
    )
    coverage: float | None = Field(
        None,
        description="conformal coverage level of the prediction set (one of the card's; default: the card's lowest, "
        "0.9 for the bundled model): the true label is in the "
        "set this often on average over calibration sets; for this card's own calibration set it may be a little "
        "less (see the response's model.conformal)",
    )
    top_k: PositiveIntegral | None = Field(None, description="also return the k most probable classes")
    include_logits: bool = Field(False, description="also return the uncalibrated logits")
    model: str | None = Field(None, description="model name to check against the loaded one (404 if different)")


@functools.lru_cache(maxsize=16)
def request_model(signature: InputSignature) -> type[PredictRequest]:
    """The strict request model for this input: ``PredictRequest`` itself for a flat float input; otherwise
    its subclass whose instances are lists nested to the instance's rank (objects keyed by feature name only
    for a flat input), of integers for an integer input. It names bad values exactly as ``PredictRequest``
    does (``instances[3][0][5][2]: Input should be a valid number``); shapes and ranges are the signature's
    to check once the values are numbers."""
    if signature.is_flat and not signature.integral:
        return PredictRequest
    element: Any = IntegralNumber if signature.integral else float
    instance: Any
    if signature.is_flat:
        instance = Annotated[
            Annotated[list[element], Tag("list")] | Annotated[dict[str, element], Tag("object")],
            Discriminator(
                _row_kind,
                custom_error_type="instance_type",
                custom_error_message="each instance must be a list of integers or an object mapping feature name "
                "to integer",
            ),
        ]
    else:
        instance = element
        for _ in signature.instance_shape:
            instance = list[instance]
    description = f"instances of shape {signature.instance_text}, {signature.dtype.name}"
    model: type[PredictRequest] = create_model(
        "PredictRequest",
        __base__=PredictRequest,
        instances=(list[instance], Field(min_length=1, description=description)),
    )
    return model


class ExpectedAccuracy(BaseModel):
    value: float | None = Field(
        description="accuracy to expect at this confidence: the confidence plus its card band's calibration gap "
        "(test accuracy minus mean confidence in the band)"
    )
    interval: tuple[float, float] | None = Field(
        description="the confidence plus the 95% Wilson interval of the band's gap; held the true accuracy for "
        "0.95-0.97 of a calibrated model's predictions in simulation"
    )
    confidence_lower: float = Field(description="band's lower confidence bound (inclusive)")
    confidence_upper: float = Field(description="band's upper confidence bound")
    support: int = Field(description="test samples in the band")


class ClassProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    prediction_id: str = Field(
        description="time-sortable id (UUIDv7): send it back with the true label to /v1/feedback"
    )
    label: str
    class_index: int
    confidence: float = Field(description="calibrated probability of the predicted class")
    probabilities: dict[str, float] = Field(description="calibrated probability per class (sums to 1)")
    prediction_set: list[str] = Field(description="conformal set at the requested coverage; never empty")
    expected_accuracy: ExpectedAccuracy
    entropy: float = Field(description="entropy of the calibrated distribution, nats")
    margin: float = Field(description="top-1 minus top-2 probability")
    abstain: bool = Field(description="confidence below the configured abstain threshold")
    top_k: list[ClassProbability] | None = None
    logits: list[float] | None = None


class EceSummary(BaseModel):
    value: float
    lower: float
    upper: float
    n: int
    noise_floor: float = Field(description="mean ECE a perfectly calibrated model would show at this n")


class ConformalSummary(BaseModel):
    """What the split-conformal sets promise for this one card (Vovk 2012): the long-run coverage given the
    card's calibration set is Beta(k, n + 1 - k), k = ceil((n + 1) * coverage) for the plain threshold."""

    guarantee: Literal["marginal", "pac"] = Field(
        description="'marginal': the plain threshold, whose nominal coverage holds on average over calibration sets; "
        "'pac': the training-conditional threshold (CALIBSERVE_CONFORMAL_GUARANTEE=pac), whose nominal coverage "
        "holds for this card with probability 1 - delta"
    )
    delta: float | None = Field(description="the PAC threshold's delta; null for 'marginal'")
    n_calibration: int = Field(description="calibration samples the conformal threshold was fitted on")
    p_coverage_below_nominal: float = Field(
        description="probability, over calibration sets, that this card's long-run coverage is below `coverage` "
        "(plain threshold: about 0.47 at n = 360, the nominal coverage holds on average over calibration sets, not "
        "for every card; PAC threshold: at most delta)"
    )
    coverage_quantile_05: float = Field(
        description="with probability 0.95 over calibration sets, this card's long-run coverage is at least this"
    )


class ModelSummary(BaseModel):
    name: str
    version: str
    temperature: float
    label_smoothing: float | None = Field(
        description="label smoothing the model was trained with; null for an imported model that did not declare it"
    )
    smoothing_prior: str | None = Field(description="the smoothing prior (uniform or empirical); null when imported")
    ece: EceSummary = Field(description="card's test ECE after temperature scaling (15 bins)")
    coverage: float = Field(
        description="nominal coverage of the prediction sets: met on average over calibration sets (see `conformal`)"
    )
    abstain_threshold: float
    conformal: ConformalSummary | None = Field(
        None, description="what the prediction sets at `coverage` promise for this card, given its calibration set"
    )


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: ModelSummary


class ErrorDetail(BaseModel):
    type: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthStatus(BaseModel):
    status: Literal["ok", "loading"]


class ModelList(BaseModel):
    models: list[dict[str, Any]] = Field(
        description="every model of the repository: name, state (loading, ready, unavailable), reason, and for a "
        "model that serves, its summary and its shadow challenger"
    )
    default: str | None = Field(description="the model a request that names none goes to (null: name one)")


class FeedbackItem(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    prediction_id: str = Field(min_length=1, max_length=64, description="the id /v1/predict returned")
    label: str = Field(description="the true class label (one of the card's classes)")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [{"feedback": [{"prediction_id": "01a20a5f-69fe-7000-b9a6-0524f33134ad", "label": "0"}]}]
        },
    )

    feedback: list[FeedbackItem] = Field(min_length=1, description="true labels for earlier predictions")


class FeedbackResult(BaseModel):
    prediction_id: str
    status: Literal["recorded", "pending", "duplicate", "conflict", "unknown_id"] = Field(
        description="recorded: attached to its prediction; pending: kept for a recent id whose prediction is "
        "not logged yet (it counts once that lands; do not resend); duplicate: same label as before; "
        "conflict: a different label was recorded first (it stands); unknown_id: not an id of this service "
        "(malformed, or older than the pending window and not logged): nothing was kept"
    )


class FeedbackResponse(BaseModel):
    results: list[FeedbackResult]
    counts: dict[str, int]
