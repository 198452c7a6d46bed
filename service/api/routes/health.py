"""Liveness, readiness, and calibration health (advisory: it never changes the other two)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import get_engine, get_monitor, get_settings
from service.inference.engine import InferenceEngine
from service.monitoring import prometheus
from service.monitoring.monitor import Monitor
from service.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/health/live")
def live() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/health/ready")
def ready(request: Request) -> JSONResponse:
    """200 once the model is loaded and verified, 503 before."""
    engine = request.app.state.engine
    if engine is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ready", "model": engine.card.name, "version": engine.card.version})


@router.get("/health/calibration")
def calibration(
    engine: InferenceEngine = Depends(get_engine),
    monitor: Monitor = Depends(get_monitor),
    settings: Settings = Depends(get_settings),
) -> dict[str, Any]:
    """Is the model still calibrated on live traffic? ``status`` with every reason, its value and threshold.

    Label checks need feedback (POST /v1/feedback); label-free checks (confidence drift, estimated accuracy,
    class shift) need only predictions. Too little of either gives ``insufficient_data``, not an alarm.
    A prediction log that cannot be read or written is a reason (``log_store_unavailable``), not an error.
    Advisory: this status never changes liveness or readiness.
    """
    card = engine.card
    health = monitor.health()
    after = card.test.after_temperature
    return {
        "status": health.status,
        "reasons": [asdict(reason) for reason in health.reasons],
        "model": {"name": card.name, "version": card.version},
        "reference": {
            "source": "card: test split after temperature scaling",
            "n": after.n,
            "temperature": card.temperature.value,
            "accuracy": asdict(after.accuracy),
            "ece": asdict(after.ece),
            "ece_noise_floor": asdict(after.ece_noise_floor),
            "adaptive_ece": asdict(after.adaptive_ece),
            "nll": asdict(after.nll),
            "brier": asdict(after.brier),
            "mean_confidence": after.mean_confidence,
            "reliability": [asdict(b) for b in after.reliability],
        },
        "live": health.live,
        "log": None if health.log is None else asdict(health.log),
        "window": {
            "labels": settings.window_labels,
            "predictions": settings.window_predictions,
            "hours": settings.window_hours,
        },
    }


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics (all workers), also before the model is ready. Refreshes the live-window gauges."""
    monitor: Monitor | None = request.app.state.monitor
    if monitor is not None:
        monitor.refresh_metrics()  # never raises: the scrape renders even when the log cannot be read
    body, content_type = prometheus.render()
    return Response(body, media_type=content_type)
