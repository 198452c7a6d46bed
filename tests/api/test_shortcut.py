"""HotRoutes, the ASGI shortcut for the inference routes: it serves the routes the app declares, as FastAPI would.

Through the real app (bundled model, every middleware): each hot route is answered without FastAPI's router
(the router marks every scope it sees with ``scope["router"]``; a hot request's scope has none), with
``scope["route"]`` the declared ``APIRoute`` and the request metrics counting its template; errors keep
each protocol's shape; 404, 405 and every other route still go through FastAPI. Through small FastAPI apps:
a hot route that FastAPI would serve differently (a dependency, its own or its router's; any parameter but
the request and plain ``str`` path parameters; a synchronous endpoint; ...) or that is not declared at all is
refused with a RuntimeError naming it, on the first request and at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from anyio.from_thread import start_blocking_portal
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Header, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.routes import predict as predict_routes
from service.api.routes import v2 as v2_routes
from service.api.shortcut import HOT_PATHS, HotRoutes
from service.main import create_app
from tests.api.conftest import BASE_URL, Client, error_of, settings_for

pytestmark = pytest.mark.api

MODEL = "digits"


# -- the real app ----------------------------------------------------------------------------------------------


@contextmanager
def recorded() -> Iterator[tuple[Client, list[Scope]]]:
    """The real app with its lifespan, and the scope of every HTTP request it answered (as it left the app)."""
    app = create_app(settings_for())
    scopes: list[Scope] = []

    async def recorder(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scopes.append(scope)
        await app(scope, receive, send)

    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal("asyncio"))
        stack.enter_context(portal.wrap_async_context_manager(app.router.lifespan_context(app)))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=recorder), base_url=BASE_URL)
        stack.callback(portal.call, client.aclose)
        yield Client(app, portal, client), scopes


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Client, list[Scope]]]:
    with recorded() as pair:
        yield pair


def scope_of(scopes: list[Scope], path: str) -> Scope:
    """The scope of the latest request on ``path``."""
    return next(scope for scope in reversed(scopes) if scope["path"] == path)


def requests_counted(client: Client, route: str, status: int) -> float:
    """calibserve_requests_total for ``POST route status`` as /metrics publishes it (0 before the first)."""
    wanted = {"route": route, "method": "POST", "status": str(status)}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "calibserve_requests_total" and sample.labels == wanted:
                return float(sample.value)
    return 0.0


def declared(template: str) -> APIRoute:
    """The route the service's routers declare for POST on ``template``."""
    routes = [*predict_routes.router.routes, *v2_routes.router.routes]
    return next(r for r in routes if isinstance(r, APIRoute) and r.path == template and "POST" in (r.methods or ()))


def v1_body(rows: NDArray[np.float64]) -> dict[str, Any]:
    return {"instances": rows.tolist()}


def v2_body(rows: NDArray[np.float64]) -> dict[str, Any]:
    data = rows.astype(np.float32)
    return {
        "inputs": [{"name": "features", "shape": list(data.shape), "datatype": "FP32", "data": data.ravel().tolist()}]
    }


def test_hot_paths_are_the_inference_routes() -> None:
    assert HOT_PATHS == (
        "/v1/predict",
        "/v1/models/{name}/predict",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    )


@pytest.mark.parametrize(
    ("template", "url", "params", "body"),
    [
        ("/v1/predict", "/v1/predict", {}, v1_body),
        ("/v1/models/{name}/predict", f"/v1/models/{MODEL}/predict", {"name": MODEL}, v1_body),
        ("/v2/models/{name}/infer", f"/v2/models/{MODEL}/infer", {"name": MODEL}, v2_body),
        (
            "/v2/models/{name}/versions/{version}/infer",
            f"/v2/models/{MODEL}/versions/{{version}}/infer",
            {"name": MODEL, "version": "{version}"},
            v2_body,
        ),
    ],
)
def test_the_shortcut_serves_each_hot_route_as_the_declared_route(
    served: tuple[Client, list[Scope]],
    card: dict[str, Any],
    digits: NDArray[np.float64],
    template: str,
    url: str,
    params: dict[str, str],
    body: Callable[[NDArray[np.float64]], dict[str, Any]],
) -> None:
    client, scopes = served
    version = card["version"]
    url = url.format(version=version)
    params = {name: value.format(version=version) for name, value in params.items()}
    before = requests_counted(client, template, 200)

    response = client.post(url, json=body(digits[:3]))

    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["predictions"] if "predictions" in answer else answer["outputs"][0]["data"]) >= 3
    scope = scope_of(scopes, url)
    assert "router" not in scope, "FastAPI's router saw a hot request: the shortcut did not answer it"
    assert scope["route"] is declared(template), "scope['route'] must be the declared APIRoute, not a stand-in"
    assert scope["path_params"] == params
    assert requests_counted(client, template, 200) == before + 1, "the request metrics count the route's template"


def test_path_parameters_reach_the_endpoint_by_name(served: tuple[Client, list[Scope]], card: dict[str, Any]) -> None:
    # /v1/models/{name}/predict declares (name, request), /v2 (request, name): both get the name, not the request.
    client, _ = served
    v1 = error_of(client.post("/v1/models/no-such-model/predict", json={"instances": [[0.0] * 64]}), 404)
    assert "no-such-model" in v1["message"]
    v2 = client.post(f"/v2/models/{MODEL}/versions/no-such-version/infer", json={"inputs": []})
    assert v2.status_code == 404, v2.text
    assert "no-such-version" in v2.json()["error"] and card["version"] in v2.json()["error"]


def test_errors_go_through_the_apps_exception_handlers(served: tuple[Client, list[Scope]]) -> None:
    client, scopes = served
    before = requests_counted(client, "/v1/predict", 422)
    refused = error_of(client.post("/v1/predict", json={"instances": [[0.0] * 3]}), 422)
    assert refused["type"] == "invalid_input"
    assert requests_counted(client, "/v1/predict", 422) == before + 1
    malformed = client.post(f"/v2/models/{MODEL}/infer", content=b"{not json")
    assert malformed.status_code == 400, malformed.text
    assert set(malformed.json()) == {"error", "request_id"}, "the /v2 shape: the protocol's clients read a string"
    assert "router" not in scope_of(scopes, "/v1/predict")
    assert "router" not in scope_of(scopes, f"/v2/models/{MODEL}/infer")


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", "/v1/predict", 405),  # a hot path, not the hot method
        ("PUT", f"/v2/models/{MODEL}/infer", 405),
        ("POST", "/v1/predict/more", 404),  # the route's own regex is anchored
        ("POST", "/v1/models/a/b/predict", 404),  # {name} is one path segment
        ("POST", "/v2/models/x/y/z/infer", 404),
        ("POST", "/v1/no-such-route", 404),
        ("GET", "/v1/models", 200),
        ("GET", f"/v2/models/{MODEL}", 200),
    ],
)
def test_other_requests_go_through_fastapi(
    served: tuple[Client, list[Scope]], method: str, url: str, status: int
) -> None:
    client, scopes = served
    response = client.request(method, url, json={"instances": [[0.0] * 64]} if method in ("POST", "PUT") else None)
    assert response.status_code == status, response.text
    assert scope_of(scopes, url)["router"] is client.app.router


def test_a_non_hot_post_goes_through_fastapi(served: tuple[Client, list[Scope]]) -> None:
    client, scopes = served
    response = client.post("/v1/feedback", json={})
    assert response.status_code in (400, 404, 422), response.text
    assert scope_of(scopes, "/v1/feedback")["router"] is client.app.router


def test_the_real_app_starts_with_its_hot_routes_checked() -> None:
    app = create_app(settings_for())
    messages = anyio.run(run_lifespan, app)
    assert [m["type"] for m in messages] == ["lifespan.startup.complete", "lifespan.shutdown.complete"], messages


# -- small apps: what the shortcut refuses -----------------------------------------------------------------------


async def allow() -> None:
    """A dependency (think auth) that the shortcut must never skip."""


async def plain(request: Request) -> Response:
    return Response(b"plain", media_type="text/plain")


def hot_app(declare: Callable[[FastAPI], None], paths: tuple[str, ...] = ("/v1/predict",), **include: Any) -> FastAPI:
    """A FastAPI app with HotRoutes (added before the routes, as service.main does) and what ``declare`` adds."""
    app = FastAPI()
    app.add_middleware(HotRoutes, fastapi=app, paths=paths)
    declare(app)
    return app


def route_dependency(app: FastAPI) -> None:
    app.post("/v1/predict", dependencies=[Depends(allow)])(plain)


def router_dependency(app: FastAPI) -> None:
    router = APIRouter()
    router.post("/v1/predict")(plain)
    app.include_router(router, dependencies=[Depends(allow)])


def parameter_dependency(app: FastAPI) -> None:
    @app.post("/v1/predict")
    async def predict(request: Request, user: None = Depends(allow)) -> Response:
        return Response(b"")


def query_parameter(app: FastAPI) -> None:
    @app.post("/v1/predict")
    async def predict(request: Request, coverage: float = 0.9) -> Response:
        return Response(b"")


class Body(BaseModel):
    instances: list[list[float]]


def body_parameter(app: FastAPI) -> None:
    @app.post("/v1/predict")
    async def predict(request: Request, body: Body) -> Response:
        return Response(b"")


def header_parameter(app: FastAPI) -> None:
    @app.post("/v1/predict")
    async def predict(request: Request, x_token: str = Header()) -> Response:
        return Response(b"")


def background_tasks(app: FastAPI) -> None:
    @app.post("/v1/predict")
    async def predict(request: Request, tasks: BackgroundTasks) -> Response:
        return Response(b"")


def synchronous(app: FastAPI) -> None:
    @app.post("/v1/predict")
    def predict(request: Request) -> Response:
        return Response(b"")


def not_a_response(app: FastAPI) -> None:
    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, str]:
        return {}


def int_path_parameter(app: FastAPI) -> None:
    @app.post("/v1/predict/{name}")
    async def predict(request: Request, name: int) -> Response:
        return Response(b"")


def shadowed(app: FastAPI) -> None:
    @app.post("/v1/{anything}")
    async def anything(request: Request, anything: str) -> Response:
        return Response(b"")

    app.post("/v1/predict")(plain)


def get_only(app: FastAPI) -> None:
    app.get("/v1/predict")(plain)


def nothing(app: FastAPI) -> None:
    app.post("/v1/other")(plain)


REFUSED = [
    pytest.param(route_dependency, "/v1/predict", r"dependencies \(allow\)", id="route-dependency"),
    pytest.param(router_dependency, "/v1/predict", r"dependencies \(allow\)", id="include_router-dependency"),
    pytest.param(parameter_dependency, "/v1/predict", r"dependencies \(allow\)", id="Depends-parameter"),
    pytest.param(query_parameter, "/v1/predict", r"query params \(coverage\)", id="query"),
    pytest.param(body_parameter, "/v1/predict", r"body params \(body\)", id="body"),
    pytest.param(header_parameter, "/v1/predict", r"header params \(x_token\)", id="header"),
    pytest.param(background_tasks, "/v1/predict", r"background tasks parameter 'tasks'", id="background-tasks"),
    pytest.param(synchronous, "/v1/predict", r"not async def", id="sync"),
    pytest.param(not_a_response, "/v1/predict", r"not a Response", id="returns-dict"),
    pytest.param(int_path_parameter, "/v1/predict/{name}", r"'name' is not a plain str", id="int-path-parameter"),
    pytest.param(shadowed, "/v1/predict", r"/v1/\{anything\} is declared before it", id="shadowed"),
    pytest.param(get_only, "/v1/predict", r"no route declares it", id="GET-only"),
    pytest.param(nothing, "/v1/predict", r"no route declares it", id="undeclared"),
]


def post(app: ASGIApp, url: str = "/v1/predict") -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
            return await client.post(url, content=b"{}")

    return anyio.run(call)


async def run_lifespan(app: ASGIApp) -> list[Message]:
    """Drive the ASGI lifespan protocol as a server does: the messages the app sent (startup, then shutdown)."""
    inbox: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    except RuntimeError as error:
        sent.append({"type": "raised", "message": str(error)})
    return sent


@pytest.mark.parametrize(("declare", "path", "why"), REFUSED)
def test_a_hot_route_fastapi_would_serve_differently_is_refused_on_the_first_request(
    declare: Callable[[FastAPI], None], path: str, why: str
) -> None:
    app = hot_app(declare, paths=(path,))
    with pytest.raises(RuntimeError, match=rf"POST {re.escape(path)}[ :].*{why}"):
        post(app, path.replace("{name}", "x"))


@pytest.mark.parametrize(("declare", "path", "why"), REFUSED)
def test_a_hot_route_fastapi_would_serve_differently_stops_the_start_up(
    declare: Callable[[FastAPI], None], path: str, why: str
) -> None:
    messages = anyio.run(run_lifespan, hot_app(declare, paths=(path,)))
    assert [m["type"] for m in messages] == ["lifespan.startup.failed", "raised"], messages
    assert re.search(rf"POST {re.escape(path)}[ :].*{why}", messages[0]["message"]), messages[0]["message"]


def test_every_refusal_is_named_at_once() -> None:
    app = hot_app(route_dependency, paths=HOT_PATHS)
    with pytest.raises(RuntimeError) as refused:
        post(app)
    message = str(refused.value)
    assert "POST /v1/predict (plain): it declares dependencies (allow)" in message
    for path in HOT_PATHS[1:]:
        assert f"POST {path}: no route declares it" in message


def test_a_plain_hot_route_is_served_without_fastapi_and_with_its_path_parameters() -> None:
    seen: list[Scope] = []

    def declare(app: FastAPI) -> None:
        @app.post("/v2/models/{name}/versions/{version}/infer")
        async def infer(version: str, request: Request, name: str) -> Response:  # any order: called by keyword
            seen.append(request.scope)
            return Response(f"{name}@{version}".encode(), media_type="text/plain")

    app = hot_app(declare, paths=("/v2/models/{name}/versions/{version}/infer",))
    response = post(app, "/v2/models/m/versions/7/infer")
    assert response.status_code == 200 and response.text == "m@7"
    (scope,) = seen
    assert "router" not in scope
    route = scope["route"]
    assert isinstance(route, APIRoute) and route.path == "/v2/models/{name}/versions/{version}/infer"
    assert scope["path_params"] == {"name": "m", "version": "7"}
    assert post(app, "/v2/models/m/versions/7/infer/x").status_code == 404


def test_a_plain_route_under_an_included_router_is_served() -> None:
    def declare(app: FastAPI) -> None:
        router = APIRouter()
        router.post("/predict")(plain)
        app.include_router(router, prefix="/v1")

    response = post(hot_app(declare))
    assert response.status_code == 200 and response.text == "plain"
