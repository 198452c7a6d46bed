"""An ASGI shortcut for the two inference routes, the only ones on the hot path.

FastAPI's router, dependency solver and exception middleware cost about as much per request as all of
calibserve's own work for a single-instance prediction (bench/RESULTS.md: one worker at 32 connections went
from about 4,000 to about 6,000 req/s). ``HotRoutes`` sits inside the body guard and the request metrics and
answers ``POST /v1/predict`` and ``POST /v2/models/{name}[/versions/{version}]/infer`` by calling the same
handler functions the FastAPI routes call; errors go through the app's own exception handlers (one status
table). FastAPI still declares the routes, for the OpenAPI document, and serves every other request.
"""

from __future__ import annotations

import inspect
import re
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.routes.predict import predict_response
from service.api.routes.v2 import infer_response

_V2_INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
# What the request metrics read from a matched route: its path template.
_PREDICT_ROUTE = SimpleNamespace(path="/v1/predict")
_INFER_ROUTE = SimpleNamespace(path="/v2/models/{name}/infer")
_INFER_VERSION_ROUTE = SimpleNamespace(path="/v2/models/{name}/versions/{version}/infer")


class HotRoutes:
    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self.fastapi = fastapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == "/v1/predict":
            scope["route"] = _PREDICT_ROUTE
            await self._answer(scope, receive, send, predict_response, None)
            return
        match = _V2_INFER.match(path) if path.startswith("/v2/") else None
        if match is None:
            await self.app(scope, receive, send)
            return
        name, version = match["name"], match["version"]
        scope["route"] = _INFER_ROUTE if version is None else _INFER_VERSION_ROUTE
        scope["path_params"] = {"name": name} | ({} if version is None else {"version": version})
        await self._answer(scope, receive, send, infer_response, name, version)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, handler: Any, *args: Any) -> None:
        scope["app"] = self.fastapi
        request = Request(scope, receive)
        try:
            response: Response = await handler(request, *args)
        except Exception as error:
            handlers = self.fastapi.exception_handlers
            handle = next(handlers[cls] for cls in type(error).__mro__ if cls in handlers)
            result = handle(request, error)
            response = await result if inspect.isawaitable(result) else result
        await response(scope, receive, send)
