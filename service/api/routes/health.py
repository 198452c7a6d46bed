"""Liveness, readiness, and calibration health (advisory: it never changes the other two)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import get_repository, get_settings
from service.api.schemas import ErrorResponse
from service.monitoring import prometheus
from service.monitoring.health import worst
from service.repository import ModelRepository, ServedVersion
from service.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/health/live")
def live() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/health/ready")
def ready(request: Request) -> JSONResponse:
    """200 once the models are loaded and verified (and throughout a reload: the old version serves until the
    new one is ready), 503 before."""
    repository: ModelRepository | None = request.app.state.repository
    if repository is None or not repository.started:
        return JSONResponse({"status": "loading"}, status_code=503)
    serving = repository.serving()
    body: dict[str, Any] = {"status": "ready", "models": [{"name": s.name, "version": s.version} for s in serving]}
    if len(serving) == 1:
        body |= {"model": serving[0].name, "version": serving[0].version}
    return JSONResponse(body)


@router.get("/health/calibration", responses={404: {"model": ErrorResponse}})
def calibration(
    model: str | None = Query(None, description="one model's health (default: every model, status the worst)"),
    repository: ModelRepository = Depends(get_repository),
    settings: Settings = Depends(get_settings),
) -> dict[str, Any]:
    """Is each model still calibrated on live traffic? ``status`` with every reason, its value and threshold.

    Each model version is judged on its own live window against its own card; ``status`` is the worst of
    the models reported. Label checks need feedback (POST /v1/feedback); label-free checks (confidence
    drift, estimated accuracy, class shift) need only predictions. Too little of either gives
    ``insufficient_data``, not an alarm. A prediction log that cannot be read or written is a reason
    (``log_store_unavailable``), not an error. Advisory: this status never changes liveness or readiness.
    With one model (or ``?model=``) that model's fields are also at the top level.
    """
    chosen = [repository.resolve(model)] if model is not None else repository.serving()
    blocks = [_model_health(served) for served in chosen]
    stats = repository.log.stats() if repository.log is not None else None
    body: dict[str, Any] = {
        "status": worst([block["status"] for block in blocks]),
        "models": blocks,
        "log": None if stats is None else asdict(stats),
        "window": {
            "labels": settings.window_labels,
            "predictions": settings.window_predictions,
            "hours": settings.window_hours,
        },
    }
    if len(blocks) == 1:
        body = blocks[0] | body
    return body


def _model_health(served: ServedVersion) -> dict[str, Any]:
    card = served.engine.card
    health = served.monitor.health()
    after = card.test.after_temperature
    return {
        "status": health.status,
        "reasons": [asdict(reason) for reason in health.reasons],
        "model": {"name": served.name, "version": card.version},
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
    }


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics (all workers), also before the model is ready. Refreshes the live-window gauges."""
    repository: ModelRepository | None = request.app.state.repository
    for served in repository.serving() if repository is not None else ():
        served.monitor.refresh_metrics()  # never raises: the scrape renders even when the log cannot be read
    body, content_type = prometheus.render()
    return Response(body, media_type=content_type)
