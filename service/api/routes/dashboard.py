"""GET /dashboard[/{model}]: the read-only calibration dashboard (HTML), and its content for self-refresh."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.api.deps import get_repository
from service.dashboard import page
from service.dashboard.view import AUTO, build_view
from service.errors import FeatureOff

STATIC_DIR = Path(str(files("service.dashboard") / "static"))
# No script or style but calibserve's own files; nothing may frame the page; no referrer leaves it.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
RANGE = Query(AUTO, alias="range", description="auto (fit to data), 1h, 6h, 24h, 7d or 30d")

router = APIRouter(include_in_schema=False)


async def _render(request: Request, model: str | None, range_key: str, whole: bool) -> HTMLResponse:
    settings = request.app.state.settings
    if not settings.dashboard:
        raise FeatureOff("the dashboard is off (CALIBSERVE_DASHBOARD=false)")
    repository = get_repository(request)
    state = request.app.state
    view = await asyncio.to_thread(build_view, repository, model, range_key, state.history_cache, state.recalibrator)
    body = page.page(view, settings.dashboard_refresh_seconds) if whole else page.content(view)
    return HTMLResponse(body, headers=HEADERS)


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard_default(request: Request, range_key: str = RANGE) -> HTMLResponse:
    """The default model's dashboard."""
    return await _render(request, None, range_key, whole=True)


@router.get("/dashboard/{model}", response_class=HTMLResponse)
async def dashboard(model: str, request: Request, range_key: str = RANGE) -> HTMLResponse:
    return await _render(request, model, range_key, whole=True)


@router.get("/dashboard/{model}/content", response_class=HTMLResponse)
async def dashboard_content(model: str, request: Request, range_key: str = RANGE) -> HTMLResponse:
    """What the page's script fetches to refresh itself in place."""
    return await _render(request, model, range_key, whole=False)


def install_dashboard(app: FastAPI) -> None:
    """The pages and their static files (the files only when the dashboard is on)."""
    if app.state.settings.dashboard:
        app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.include_router(router)
