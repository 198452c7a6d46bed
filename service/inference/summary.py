"""The trust figures every answer carries, built once per engine and conformal level.

Why one place: ``/v1`` (``api/render.model_summary``) and ``/v2`` (``api/oip.calibration_parameters``) state the
same facts about the model (temperature, label smoothing, the card's ECE with its interval and noise floor, the
abstain threshold, what the conformal sets promise for this card). Built separately they drifted (a field
added to one and not the other); now each protocol only formats this.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.calibration.conformal import CoverageGivenCard
from service.calibration.uncertainty import MetricEstimate
from service.card import CalibrationCard


@dataclass(frozen=True, slots=True)
class TrustSummary:
    name: str
    version: str
    temperature: float
    label_smoothing: float | None
    smoothing_prior: str | None
    ece: MetricEstimate
    ece_noise_floor: float
    coverage: float
    abstain_threshold: float
    guarantee: str
    delta: float | None
    conformal: CoverageGivenCard


def trust_summary(
    name: str,
    card: CalibrationCard,
    coverage: float,
    given: CoverageGivenCard,
    abstain_threshold: float,
    guarantee: str,
    delta: float | None,
) -> TrustSummary:
    after = card.test.after_temperature
    return TrustSummary(
        name=name,
        version=card.version,
        temperature=card.temperature.value,
        label_smoothing=card.label_smoothing,
        smoothing_prior=card.smoothing_prior,
        ece=after.ece,
        ece_noise_floor=after.ece_noise_floor.mean,
        coverage=coverage,
        abstain_threshold=abstain_threshold,
        guarantee=guarantee,
        delta=delta,
        conformal=given,
    )
