"""An ASGI shortcut for the inference routes, the only ones on the hot path.

FastAPI's router, dependency solver and exception middleware cost about as much per request as all of
calibserve's own work for a single-instance prediction (bench/RESULTS.md: one worker at 32 connections went
from about 4,000 to about 6,000 req/s). ``HotRoutes`` sits inside the body guard and the request metrics and
answers ``POST`` on the templates of ``HOT_PATHS`` by calling the declared endpoint itself; errors go through
the app's own exception handlers (one status table). FastAPI declares the routes, publishes them in the
OpenAPI document, and serves every other request.

The shortcut holds no route of its own: its table is built from the app's declared routes, once, when the
server starts (or on the first request, where nothing ran the lifespan through the middleware):

- each entry is the ``APIRoute`` FastAPI would pick for ``POST`` on the template, matched with that route's
  own ``path_regex`` and ``param_convertors``; ``scope["route"]`` is that route object (the request metrics
  read its template) and ``scope["path_params"]`` its converted parameters, as the router would set them;
- the endpoint is called by keyword: the ``Request`` under the name it declares, each path parameter under
  its own name, so the shortcut does not depend on how a handler orders its arguments or what it does;
- a hot route is refused at build time, with a ``RuntimeError`` naming it, when serving it without FastAPI
  could differ from serving it with FastAPI: dependencies (its own or its router's: auth, say), any parameter
  but the request and plain ``str`` path parameters, a synchronous endpoint, a return type that is not a
  ``Response``, a body size limit of its own, or an earlier declared route that answers the same paths. A
  template of ``HOT_PATHS`` that no route declares is refused too. Nothing is ever skipped silently: a route
  that needs FastAPI's machinery stops the server, and the fix is to take it off ``HOT_PATHS``.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.convertors import Convertor, StringConvertor
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The one list of hot routes: path templates as declared, answered for POST.
HOT_PATHS = (
    "/v1/predict",
    "/v1/models/{name}/predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
)
METHOD = "POST"
# Dependant fields that would each make FastAPI do something the shortcut does not.
_PARAMETER_LISTS = ("query_params", "header_params", "cookie_params", "body_params")
_SPECIAL_PARAMETERS = (
    "websocket_param_name",
    "http_connection_param_name",
    "response_param_name",
    "background_tasks_param_name",
    "security_scopes_param_name",
)


@dataclass(frozen=True, slots=True)
class HotRoute:
    """One declared route, as the shortcut serves it."""

    route: APIRoute  # what FastAPI puts in scope["route"]
    path: str  # the template as served (with an included router's prefix)
    path_regex: re.Pattern[str]
    param_convertors: dict[str, Convertor[Any]]
    call: Callable[..., Awaitable[Any]]
    request_param: str | None  # the name the endpoint takes the Request under


class HotRoutes:
    def __init__(self, app: ASGIApp, fastapi: FastAPI, paths: Sequence[str] = HOT_PATHS) -> None:
        self.app = app
        self.fastapi = fastapi
        self.paths = tuple(paths)
        self._table: tuple[HotRoute, ...] | None = None

    def table(self) -> tuple[HotRoute, ...]:
        """The hot routes, built from the app's routes on first use (routers are included after the
        middleware is added); raises RuntimeError naming every route the shortcut cannot serve as FastAPI would."""
        if self._table is None:
            self._table = build_table(self.fastapi, self.paths)
        return self._table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == METHOD:
            route_path = get_route_path(scope)
            for hot in self.table():
                match = hot.path_regex.match(route_path)
                if match is not None:
                    await self._answer(hot, match.groupdict(), scope, receive, send)
                    return
        elif scope["type"] == "lifespan" and self._table is None:
            send = self._checked_at_startup(send)
        await self.app(scope, receive, send)

    def _checked_at_startup(self, send: Send) -> Send:
        """Build the table when the app reports its start-up complete: a refusal raised there, inside the
        app's lifespan, becomes ``lifespan.startup.failed`` and the server does not start."""

        async def send_checked(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.table()
            await send(message)

        return send_checked

    async def _answer(self, hot: HotRoute, matched: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
        params: dict[str, Any] = {name: hot.param_convertors[name].convert(value) for name, value in matched.items()}
        scope["app"] = self.fastapi
        scope["route"] = hot.route
        scope["endpoint"] = hot.route.endpoint
        scope["path_params"] = {**scope.get("path_params", {}), **params}
        request = Request(scope, receive, send)
        if hot.request_param is not None:
            params[hot.request_param] = request
        try:
            response = await hot.call(**params)
            if not isinstance(response, Response):
                raise TypeError(f"the endpoint of POST {hot.path} returned {type(response).__name__}, not a Response")
        except Exception as error:
            handlers = self.fastapi.exception_handlers
            handle = next((handlers[cls] for cls in type(error).__mro__ if cls in handlers), None)
            if handle is None:
                raise
            result = handle(request, error)
            response = await result if inspect.isawaitable(result) else result
        await response(scope, receive, send)


def build_table(app: FastAPI, paths: Sequence[str]) -> tuple[HotRoute, ...]:
    """The declared route for POST on each of ``paths``; RuntimeError listing every one that cannot be hot."""
    declared = declared_routes(app)
    table: list[HotRoute] = []
    problems: list[str] = []
    for path in paths:
        index = next(
            (
                i
                for i, (route, view) in enumerate(declared)
                if isinstance(route, APIRoute) and view.path == path and METHOD in (view.methods or ())
            ),
            None,
        )
        if index is None:
            problems.append(f"{METHOD} {path}: no route declares it")
            continue
        route, view = declared[index]
        assert isinstance(route, APIRoute)
        refusals = [*refusals_of(view, app), *shadowing(view, declared[:index])]
        if refusals:
            problems.append(f"{METHOD} {path} ({route.name}): " + "; ".join(refusals))
            continue
        table.append(
            HotRoute(
                route=route,
                path=view.path,
                path_regex=view.path_regex,
                param_convertors=dict(view.param_convertors),
                call=view.dependant.call,
                request_param=view.dependant.request_param_name,
            )
        )
    if problems:
        raise RuntimeError(
            "HotRoutes would answer these routes without FastAPI and skip what they declare; make them plain "
            "(async def, Request and str path parameters only, returning a Response, no dependencies) or take "
            "them off service.api.shortcut.HOT_PATHS:\n  " + "\n  ".join(problems)
        )
    return tuple(table)


def declared_routes(app: FastAPI) -> list[tuple[Any, Any]]:
    """``(route, view)`` for every route of the app, in the router's matching order. ``view`` is the route as the
    app serves it (an included router's prefix and dependencies applied), or the route itself on FastAPI
    versions whose ``include_router`` copies the routes into the app."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before nested routers: app.routes is already flat
        return [(route, route) for route in app.routes]
    return [(context.original_route, context) for context in iter_route_contexts(app.routes)]


def refusals_of(view: Any, app: FastAPI) -> list[str]:
    """Why FastAPI would serve this route differently from a direct call of its endpoint (empty: it would not)."""
    dependant = view.dependant
    refusals: list[str] = []
    if dependant.dependencies:
        names = ", ".join(getattr(d.call, "__name__", repr(d.call)) for d in dependant.dependencies)
        refusals.append(f"it declares dependencies ({names})")
    for kind in _PARAMETER_LISTS:
        fields = getattr(dependant, kind, None) or []
        if fields:
            refusals.append(f"it takes {kind.replace('_', ' ')} ({', '.join(field.name for field in fields)})")
    for kind in _SPECIAL_PARAMETERS:
        name = getattr(dependant, kind, None)
        if name is not None:
            refusals.append(f"it takes a {kind.removesuffix('_param_name').replace('_', ' ')} parameter {name!r}")
    convertors = view.param_convertors
    for field in dependant.path_params:
        info = field.field_info
        plain = info.annotation is str and not info.metadata and field.alias == field.name
        if not plain or not isinstance(convertors.get(field.name), StringConvertor):
            refusals.append(f"its path parameter {field.name!r} is not a plain str (FastAPI would validate it)")
    missing = set(convertors) - {field.name for field in dependant.path_params}
    if missing:
        refusals.append(f"its endpoint does not take the path parameters {sorted(missing)}")
    call = dependant.call
    if not inspect.iscoroutinefunction(call):
        refusals.append("its endpoint is not async def (FastAPI would run it in a thread)")
    else:
        try:
            returns = typing.get_type_hints(call).get("return")
        except Exception as error:
            refusals.append(f"its return annotation cannot be resolved ({error})")
        else:
            if not (isinstance(returns, type) and issubclass(returns, Response)):
                refusals.append(f"its endpoint returns {returns!r}, not a Response (FastAPI would serialize it)")
    limit = getattr(view, "max_body_size", None)
    if limit is not None and limit != getattr(app, "max_body_size", None):
        refusals.append(f"it declares its own max_body_size ({limit})")
    return refusals


def shadowing(view: Any, earlier: Sequence[tuple[Any, Any]]) -> list[str]:
    """Routes declared before this one that answer POST on its paths: the router would pick them, not it."""
    probes = [view.path_format.format_map(dict.fromkeys(view.param_convertors, value)) for value in ("p", "1")]
    refusals = []
    for _, other in earlier:
        methods = getattr(other, "methods", None)
        regex = getattr(other, "path_regex", None)
        if regex is None or (methods is not None and METHOD not in methods):
            continue
        if any(regex.match(probe) for probe in probes):
            refusals.append(f"{getattr(other, 'path', other)!s} is declared before it and answers its paths")
    return refusals
