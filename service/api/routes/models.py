"""/v1/models: the served models (state, summary, full card) and their shadow challengers."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import get_repository, require_api_key
from service.api.render import model_summary
from service.api.schemas import ErrorResponse, ModelList
from service.errors import ModelNotFound
from service.monitoring.comparison import compare_shadow
from service.repository import ModelRepository

router = APIRouter(tags=["models"])
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (400, 401, 404, 422, 503)}


@router.get("/v1/models", response_model=ModelList)
def list_models(repository: ModelRepository = Depends(get_repository)) -> dict[str, Any]:
    """Every model of the repository: its state, and for a model that serves, the summary of its card."""
    models = []
    for status in repository.statuses():
        served = repository.current(status.name)
        entry: dict[str, Any] = {"name": status.name, "state": status.state, "reason": status.reason}
        if served is not None:
            entry |= model_summary(served.engine, served.engine.default_coverage)
            shadow = repository.shadow_of(status.name)
            entry["shadow"] = None if shadow is None else shadow.challenger
        models.append(entry)
    return {"models": models, "default": repository.default_or_none()}


@router.get("/v1/models/{name}", responses=ERRORS)
def get_model(name: str, repository: ModelRepository = Depends(get_repository)) -> dict[str, Any]:
    """The full calibration card of model ``name``."""
    return repository.resolve(name).engine.card.model_dump(mode="json")


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    challenger: str = Field(min_length=1, max_length=200, description="the model that shadows this one")


@router.get("/v1/models/{name}/shadow", responses=ERRORS)
async def shadow_comparison(name: str, request: Request) -> dict[str, Any]:
    """Which of ``name`` and its shadow challenger is better calibrated on the traffic ``name`` served: paired
    over the same requests, accuracy, NLL, Brier and ECE of each with intervals, the paired differences with
    theirs, and a verdict that names a winner only when ECE and NLL agree; label-free, the agreement rate and
    both models' confidences."""
    repository = get_repository(request)
    champion = repository.resolve(name)
    scorer = repository.shadow_of(name)
    if scorer is None:
        raise ModelNotFound(
            f"model {name!r} has no shadow challenger: set one with CALIBSERVE_SHADOW={name}:<challenger> or "
            f"PUT /v1/models/{name}/shadow",
            {"model": name},
        )
    challenger = repository.resolve(scorer.challenger)
    await asyncio.to_thread(scorer.drain, 2.0)  # what was answered before this request is compared
    window = repository.settings.shadow_window
    comparison = await asyncio.to_thread(compare_shadow, champion.monitor, challenger.monitor, window)
    labelled = comparison.labelled
    return {
        "champion": {"name": champion.name, "version": champion.version},
        "challenger": {"name": challenger.name, "version": challenger.version},
        "verdict": "insufficient data" if labelled is None else labelled.verdict,
        "outcome": "insufficient_data" if labelled is None else labelled.outcome,
        "labelled": None if labelled is None else asdict(labelled),
        "unlabelled": None if comparison.unlabelled is None else asdict(comparison.unlabelled),
        "shadow": {"scored_rows": scorer.scored, "skipped_rows": scorer.skipped, "queued_rows": scorer.pending_rows()},
        "window": window,
    }


@router.put("/v1/models/{name}/shadow", responses=ERRORS, dependencies=[Depends(require_api_key)])
async def set_shadow(name: str, body: ShadowRequest, request: Request) -> dict[str, Any]:
    """From now on every request ``name`` answers is also scored by ``challenger``, off the request path."""
    get_repository(request).set_shadow(name, body.challenger)
    return {"champion": name, "challenger": body.challenger}


@router.delete("/v1/models/{name}/shadow", responses=ERRORS, dependencies=[Depends(require_api_key)])
async def clear_shadow(name: str, request: Request) -> dict[str, Any]:
    """Stop scoring ``name``'s traffic with its challenger (the log keeps what was scored)."""
    repository = get_repository(request)
    repository.resolve(name)
    repository.clear_shadow(name)
    return {"champion": name, "challenger": None}
