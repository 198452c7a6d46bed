"""The closed recalibration loop over HTTP: trigger, list the decisions, promote a proposal, roll back."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request

from service.api.deps import get_repository, require_api_key
from service.api.schemas import ErrorResponse
from service.errors import ModelNotReady
from service.recalibration import Recalibrator

router = APIRouter(tags=["recalibration"])
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (401, 404, 409, 503)}


def _recalibrator(request: Request) -> Recalibrator:
    get_repository(request)  # 503 until the models are loaded
    recalibrator: Recalibrator | None = request.app.state.recalibrator
    if recalibrator is None:
        raise ModelNotReady("the models are not loaded yet", {"retry": True})
    return recalibrator


@router.post("/v1/models/{name}/recalibrate", responses=ERRORS, dependencies=[Depends(require_api_key)])
async def recalibrate(name: str, request: Request) -> dict[str, Any]:
    """Refit ``name``'s temperature on its live labels (older ones fit, newer ones check), build the new
    version and let it shadow ``name``; or say why not (too few labels, a drift a temperature cannot repair).
    The decision, with its evidence. 409 while another recalibration of ``name`` is in flight."""
    recalibrator = _recalibrator(request)
    get_repository(request).resolve(name)
    return asdict(await recalibrator.recalibrate(name, trigger="api"))


@router.get("/v1/models/{name}/recalibrations", responses=ERRORS)
async def recalibrations(name: str, request: Request) -> dict[str, Any]:
    """Every decision of the loop for ``name`` (fit, proposal, promotion, rejection, rollback, refusal) with
    its evidence, the proposal in shadow if any, and the version a rollback would restore."""
    recalibrator = _recalibrator(request)
    get_repository(request).resolve(name)  # a served model's name only: it names a directory
    return recalibrator.state(name)


@router.post("/v1/models/{name}/recalibrations/promote", responses=ERRORS, dependencies=[Depends(require_api_key)])
async def promote(name: str, request: Request) -> dict[str, Any]:
    """Promote the recalibrated version in shadow now (CALIBSERVE_RECALIBRATION=propose leaves this to you)."""
    recalibrator = _recalibrator(request)
    get_repository(request).resolve(name)
    return asdict(await recalibrator.promote(name))


@router.post("/v1/models/{name}/rollback", responses=ERRORS, dependencies=[Depends(require_api_key)])
async def rollback(name: str, request: Request) -> dict[str, Any]:
    """Serve the version from before the last promotion again, at once (in-flight requests finish on theirs)."""
    recalibrator = _recalibrator(request)
    get_repository(request).resolve(name)
    return asdict(await recalibrator.rollback(name))
