"""The interactive API documentation, served without the internet.

FastAPI's own ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a CDN: in an air-gapped deployment
(common for model serving) they render as a blank page. The same pages here load their JavaScript and CSS
from calibserve itself, from the files the ``fastapi-offline`` package ships (Swagger UI 5 and ReDoc 2,
MIT-licensed, pinned by that package's version): a well-kept source of the assets rather than a copy of
our own to keep up to date.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_PATH = "/docs/static"
ASSETS = Path(str(files("fastapi_offline") / "static"))
# The one thing ReDoc fetches from the internet by itself: the Redocly logo in its sidebar (it hides the image
# when the fetch fails, but an air-gapped browser still tries). Pointed at the local favicon instead.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_JS_PATH = "/docs/redoc.standalone.js"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    app: FastAPI = request.app
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}{STATIC_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{STATIC_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
    )


@router.get("/docs/oauth2-redirect")
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    app: FastAPI = request.app
    return get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{REDOC_JS_PATH}",
        redoc_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
        with_google_fonts=False,  # fonts from Google are the internet too: the system's fonts instead
    )


@cache
def _redoc_js() -> bytes:
    script = (ASSETS / "redoc.standalone.js").read_bytes()
    return script.replace(REDOC_LOGO.encode(), f"{STATIC_PATH}/favicon.png".encode())


@router.get(REDOC_JS_PATH)
def redoc_js() -> Response:
    return Response(_redoc_js(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


def install_docs(app: FastAPI) -> None:
    """The pages and their assets (call with ``docs_url=None, redoc_url=None`` on the app)."""
    app.mount(STATIC_PATH, StaticFiles(directory=ASSETS), name="docs-static")
    app.include_router(router)
