"""Calibration health from the card: reasons with values and thresholds, and how statuses combine.

Each check yields a ``Reason`` with its value and threshold, so a caller (or an alert) can see why the
status is what it is. Calibration status is advisory: it never changes liveness or readiness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.calibration.uncertainty import MetricEstimate
from service.card import CalibrationCard

Status = Literal["ok", "warning", "critical", "insufficient_data"]
_SEVERITY: dict[Status, int] = {"ok": 0, "insufficient_data": 1, "warning": 2, "critical": 3}


@dataclass(frozen=True, slots=True)
class Reason:
    """One check's verdict. ``gate`` names the sampling-noise gate a live check also had to pass before it
    may alarm (e.g. ``"ece_noise_floor"``, ``"psi_null"``, ``"ks_pvalue"``), with ``noise`` the value the
    statistic had to exceed; both None for checks without one."""

    code: str
    status: Status
    message: str
    value: float | None = None
    threshold: float | None = None
    gate: str | None = None
    noise: float | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    ece_warning: float = 0.05
    ece_critical: float = 0.10


def _interval_words(estimate: MetricEstimate) -> str:
    if estimate.interval == "basic_bootstrap_noise_floor":
        return "basic bootstrap, 0 while within noise"
    return "percentile bootstrap, which sits above the true ECE: this card predates the fix"


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=_SEVERITY.__getitem__, default="ok")


def card_reasons(card: CalibrationCard, thresholds: Thresholds) -> list[Reason]:
    """Checks on the card's own test-split calibration (after temperature scaling)."""
    after = card.test.after_temperature
    ece = after.ece.value
    floor = after.ece_noise_floor
    if ece > thresholds.ece_critical:
        status: Status = "critical"
    elif ece > thresholds.ece_warning:
        status = "warning"
    else:
        status = "ok"
    limit = thresholds.ece_critical if status == "critical" else thresholds.ece_warning
    comparison = "above" if status != "ok" else "within"
    reasons = [
        Reason(
            "card_ece",
            status,
            f"test ECE after temperature scaling is {ece:.4f} (n = {after.n}, {int(after.interval_level * 100)}% "
            f"interval for the true ECE [{after.ece.lower:.4f}, {after.ece.upper:.4f}], {_interval_words(after.ece)}), "
            f"{comparison} the threshold {limit}; the "
            f"noise floor at this n is {floor.mean:.4f}",
            ece,
            limit,
        )
    ]
    if card.temperature.at_bound:
        reasons.append(
            Reason(
                "temperature_at_bound",
                "warning",
                f"the fitted temperature {card.temperature.value:.4g} sits at its search bound: the calibration "
                "split may be too small or separable",
                card.temperature.value,
            )
        )
    return reasons
