"""GET /v1/models/{name}/calibration/history: calibration over time, per bucket, from the prediction log."""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from service.api.deps import get_repository
from service.api.schemas import ErrorResponse
from service.card import CalibrationCard
from service.errors import FeatureOff, InvalidInput
from service.monitoring.history import MAX_BUCKETS, History, LabelledCache, aligned_range, calibration_history
from service.monitoring.live import LiveThresholds
from service.repository import ModelRepository

router = APIRouter(tags=["health"])
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (404, 422, 503)}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+)\s*([smhd])")
MIN_BUCKET_S = 60
MAX_BUCKET_S = 31 * 86400
# Times a history may ask about: from the Unix epoch to 2100 (prediction ids hold milliseconds since 1970).
EARLIEST, LATEST = 0.0, 4_102_444_800.0


def parse_bucket(text: str) -> float:
    """``30m``, ``1h``, ``6h``, ``1d`` (or seconds, ``900s``) as seconds, at least a minute."""
    match = DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidInput(f"bucket {text!r} is not a duration such as 15m, 1h or 1d", {"bucket": text})
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds < MIN_BUCKET_S:
        raise InvalidInput(f"bucket {text!r} is shorter than a minute", {"bucket": text})
    if seconds > MAX_BUCKET_S:
        raise InvalidInput(f"bucket {text!r} is longer than 31 days", {"bucket": text})
    return float(seconds)


def parse_time(text: str | None, default: float, name: str) -> float:
    """An ISO 8601 time (``2026-12-01T00:00:00Z``; no zone: UTC) or Unix seconds."""
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise InvalidInput(f"{name} {text!r} is not a finite time", {name: text})
        return _within_range(value, text, name)
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name} {text!r} is neither an ISO 8601 time nor Unix seconds", {name: text}) from None
    return _within_range((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp(), text, name)


def _within_range(value: float, text: str, name: str) -> float:
    if not EARLIEST <= value < LATEST:
        raise InvalidInput(f"{name} {text!r} is outside 1970-2100", {name: text})
    return value


def iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat().replace("+00:00", "Z")


@router.get("/v1/models/{name}/calibration/history", responses=ERRORS)
async def history(
    name: str,
    request: Request,
    since: str | None = Query(None, description="start (ISO 8601 or Unix seconds; default: 24 h before until)"),
    until: str | None = Query(None, description="end (ISO 8601 or Unix seconds; default: now)"),
    bucket: str = Query("1h", description="bucket length: 15m, 1h, 1d..."),
    version: str | None = Query(None, description="only this model version (default: every version)"),
    repository: ModelRepository = Depends(get_repository),
) -> dict[str, Any]:
    """Per time bucket, what ``/health/calibration`` would say of a window made of that bucket's predictions:
    predictions, labelled predictions, accuracy and ECE with their intervals and the ECE noise floor, NLL,
    Brier, the label-free estimate of accuracy (mean confidence), PSI against the card's confidences, class
    shift, each check's verdict and the bucket's status. A bucket without enough labels or predictions says
    so instead of showing a number. Buckets are whole UTC buckets (``since`` rounded down, ``until`` up);
    every version is judged against the card of the version serving now."""
    served = repository.resolve(name)
    if repository.log is None:
        raise FeatureOff("prediction logging is off (CALIBSERVE_LOG_PREDICTIONS=false): there is no history")
    bucket_s = parse_bucket(bucket)
    end = parse_time(until, time.time(), "until")
    start = parse_time(since, end - 86400.0, "since")
    if not end > start:
        raise InvalidInput(f"since ({iso(start)}) must be before until ({iso(end)})", {"since": since, "until": until})
    first, last = aligned_range(start, end, bucket_s)  # the buckets the history will have
    if (last - first) / bucket_s > MAX_BUCKETS:
        raise InvalidInput(
            f"{(last - first) / bucket_s:.0f} buckets asked for, at most {MAX_BUCKETS}: a shorter range or longer "
            "buckets",
            {"bucket": bucket},
        )
    cache: LabelledCache = request.app.state.history_cache
    thresholds = served.monitor.config.live_thresholds
    found = await asyncio.to_thread(
        calibration_history, repository.log, served.engine.card, version, start, end, bucket_s, thresholds, cache
    )
    return history_body(found, served.version, thresholds, served.engine.card)


def history_body(
    found: History, serving_version: str, thresholds: LiveThresholds, card: CalibrationCard
) -> dict[str, Any]:
    buckets = []
    for bucket in found.buckets:
        entry = asdict(bucket)
        entry["start_iso"], entry["end_iso"] = iso(bucket.start), iso(bucket.end)
        entry["estimated_accuracy"] = bucket.mean_confidence
        buckets.append(entry)
    return {
        "model": found.model,
        "version": found.version,
        "serving_version": serving_version,
        "since": found.since,
        "until": found.until,
        "since_iso": iso(found.since),
        "until_iso": iso(found.until),
        "bucket_seconds": found.bucket_seconds,
        "source": found.source,
        "thresholds": asdict(thresholds),
        "reference": {
            "source": "card: test split after temperature scaling",
            "accuracy": card.test.after_temperature.accuracy.value,
            "ece": card.test.after_temperature.ece.value,
            "mean_confidence": card.reference.mean_confidence,
            "confidence_histogram": list(card.reference.confidence_histogram),
        },
        "buckets": buckets,
    }
