"""/v1/models: the served models (state, summary, full card) and their shadow challengers."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.api.deps import get_repository, get_settings, require_api_key
from service.api.render import model_summary
from service.api.schemas import ErrorResponse, ModelList
from service.errors import InvalidInput, ModelNotFound
from service.monitoring.comparison import compare_shadow
from service.repository import ModelRepository
from service.settings import Settings

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
    default = repository.settings.default_model
    if default is None and len(repository.ready_names()) == 1:
        default = repository.ready_names()[0]
    return {"models": models, "default": default}


@router.get("/v1/models/{name}", responses=ERRORS)
def get_model(name: str, repository: ModelRepository = Depends(get_repository)) -> dict[str, Any]:
    """The full calibration card of model ``name``."""
    return repository.resolve(name).engine.card.model_dump(mode="json")


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    challenger: str = Field(min_length=1, max_length=200, description="the model that shadows this one")


@router.api_route(
    "/v1/models/{name}/shadow",
    methods=["GET", "PUT", "DELETE"],
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": ShadowRequest.model_json_schema()}},
            "description": "PUT only: the challenger",
        }
    },
)
async def shadow(name: str, request: Request, settings: Settings = Depends(get_settings)) -> dict[str, Any]:
    """GET: which of ``name`` and its shadow challenger is better calibrated on the traffic ``name`` served
    (paired over the same requests: accuracy, NLL, Brier, ECE with intervals, the paired differences and a
    verdict; label-free: agreement and confidences). PUT ``{"challenger": ...}``: from now on every request
    ``name`` answers is also scored by the challenger, off the request path. DELETE: stop (the log keeps
    what was scored). PUT and DELETE need the API key when one is set."""
    repository = get_repository(request)
    if request.method != "GET":
        require_api_key(request, settings)
        if request.method == "PUT":
            body = await _shadow_request(request)
            repository.set_shadow(name, body.challenger)
            return {"champion": name, "challenger": body.challenger}
        repository.resolve(name)
        repository.clear_shadow(name)
        return {"champion": name, "challenger": None}
    champion = repository.resolve(name)
    scorer = repository.shadow_of(name)
    if scorer is None:
        raise ModelNotFound(
            f"model {name!r} has no shadow challenger: set one with CALIBSERVE_SHADOW={name}:<challenger> or "
            f"PUT /v1/models/{name}/shadow",
            {"model": name},
        )
    challenger = repository.resolve(scorer.challenger)
    await asyncio.to_thread(scorer.drain, 2.0)
    comparison = await asyncio.to_thread(
        compare_shadow, champion.monitor, challenger.monitor, repository.settings.shadow_window
    )
    labelled = comparison.labelled
    return {
        "champion": {"name": champion.name, "version": champion.version},
        "challenger": {"name": challenger.name, "version": challenger.version},
        "verdict": "insufficient data" if labelled is None else labelled.verdict,
        "outcome": "insufficient_data" if labelled is None else labelled.outcome,
        "labelled": None if labelled is None else asdict(labelled),
        "unlabelled": None if comparison.unlabelled is None else asdict(comparison.unlabelled),
        "shadow": {"scored_rows": scorer.scored, "skipped_rows": scorer.skipped, "queued_rows": scorer.pending_rows()},
        "window": repository.settings.shadow_window,
    }


async def _shadow_request(request: Request) -> ShadowRequest:
    try:
        return ShadowRequest.model_validate_json(await request.body())
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(f"{where}: {first['msg']}", {"field": where}) from None
