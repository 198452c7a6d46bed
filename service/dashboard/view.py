"""What the dashboard shows of one model, gathered from the repository and the monitoring layer (never SQL).

One function, ``build_view``, reads everything a page needs at one moment: the model's health (status, every
reason, the live window's reliability and confidence histogram), its history over the chosen range, and the
shadow comparison when a challenger is configured. ``page.py`` turns it into HTML; nothing here knows HTML.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.card import CalibrationCard
from service.errors import InvalidInput, ModelNotFound, StoreUnavailable
from service.monitoring.comparison import ShadowComparison, compare_shadow
from service.monitoring.health import Reason
from service.monitoring.history import History, LabelledCache, calibration_history
from service.monitoring.live import LiveThresholds
from service.recalibration import Recalibrator
from service.repository import ModelRepository

# Range -> (length, bucket) in seconds: ~60-170 buckets each; from 7 days up the buckets are whole hours (rollup).
RANGES: dict[str, tuple[int, int]] = {
    "1h": (3600, 60),
    "6h": (6 * 3600, 300),
    "24h": (86400, 900),
    "7d": (7 * 86400, 3600),
    "30d": (30 * 86400, 6 * 3600),
}
AUTO = "auto"


@dataclass(frozen=True, slots=True)
class DashboardView:
    model: str
    version: str
    models: tuple[str, ...]
    status: str
    reasons: tuple[Reason, ...]
    live: dict[str, object] | None
    card: CalibrationCard
    thresholds: LiveThresholds
    range_key: str  # what was asked for ("auto" or a key of RANGES)
    shown_range: str  # the key of RANGES shown
    history: History | None  # None: prediction logging is off
    history_error: str | None  # the store could not be read now
    shadow: ShadowComparison | None
    shadow_error: str | None
    recalibrations: tuple[dict[str, object], ...]  # the closed loop's decisions for this model, oldest first
    generated: float


def choose_range(range_key: str, oldest: float | None, now: float) -> str:
    """``auto``: the shortest range that holds everything logged in the last 30 days (1 h on an empty log),
    so a new deployment shows its first minutes in minute buckets and a month-old one its month."""
    if range_key != AUTO:
        if range_key not in RANGES:
            raise InvalidInput(f"range {range_key!r} is not one of {', '.join([AUTO, *RANGES])}", {"range": range_key})
        return range_key
    if oldest is None:
        return "1h"
    span = now - oldest
    return next((key for key, (length, _) in RANGES.items() if length >= span), "30d")


def build_view(
    repository: ModelRepository,
    name: str | None,
    range_key: str,
    cache: LabelledCache,
    recalibrator: Recalibrator | None = None,
) -> DashboardView:
    """Everything one page shows of model ``name`` (None: the default model), read now. Blocking: run it in a
    thread. ``ModelNotFound`` for an unknown model, ``InvalidInput`` for an unknown range."""
    served = repository.resolve(name)
    now = time.time()
    card = served.engine.card
    thresholds = served.monitor.config.live_thresholds
    health = served.monitor.health()
    log = repository.log
    history: History | None = None
    history_error: str | None = None
    shown = choose_range(range_key, None, now)  # validates the range; "auto" without a log: 1 h
    if log is not None:
        try:
            oldest = log.first_prediction_time(served.name, now - RANGES["30d"][0]) if range_key == AUTO else None
            shown = choose_range(range_key, oldest, now)
            length, bucket = RANGES[shown]
            since = now - length
            if oldest is not None:  # fit to data: from the first prediction on, and at least ten buckets
                since = max(since, min(oldest, now - 10 * bucket))
            history = calibration_history(log, card, None, since, now, bucket, thresholds, cache)
        except StoreUnavailable as exc:
            history_error = exc.message
    shadow, shadow_error = _shadow(repository, served.name)
    return DashboardView(
        model=served.name,
        version=served.version,
        models=tuple(status.name for status in repository.statuses()),
        status=health.status,
        reasons=health.reasons,
        live=health.live,
        card=card,
        thresholds=thresholds,
        range_key=range_key,
        shown_range=shown,
        history=history,
        history_error=history_error,
        shadow=shadow,
        shadow_error=shadow_error,
        recalibrations=tuple(recalibrator.decisions.read(served.name)) if recalibrator is not None else (),
        generated=now,
    )


def _shadow(repository: ModelRepository, name: str) -> tuple[ShadowComparison | None, str | None]:
    scorer = repository.shadow_of(name)
    if scorer is None:
        return None, None
    try:
        champion, challenger = repository.resolve(name), repository.resolve(scorer.challenger)
        return compare_shadow(champion.monitor, challenger.monitor, repository.settings.shadow_window), None
    except (StoreUnavailable, ModelNotFound) as exc:
        return None, exc.message
