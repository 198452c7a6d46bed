"""HTTP fixtures: the real app with its lifespan, reached through httpx over ASGI; nothing is mocked.

``serve(settings)`` builds ``create_app(settings)``, runs its lifespan (the real onnxruntime session) on
an event loop in a background thread, and hands back a synchronous facade over
``httpx.AsyncClient(transport=httpx.ASGITransport(app))``, so fixtures can be shared across tests
without an async test runner.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from numpy.typing import NDArray

from service.main import create_app
from service.settings import Settings
from tests.conftest import DEFAULT_MODEL_DIR

BASE_URL = "http://testserver"
T = TypeVar("T")


class Client:
    """Synchronous calls into an ``httpx.AsyncClient`` that runs on the portal's event loop."""

    def __init__(self, app: FastAPI, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self.app = app
        self._portal = portal
        self._client = client

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(functools.partial(self._client.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def predict(self, body: Any, url: str = "/v1/predict") -> httpx.Response:
        return self.post(url, json=body)

    def run(self, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        """``scenario(client)`` on the app's event loop: for tests that need concurrent requests."""
        return self._portal.call(scenario, self._client)


def settings_for(**overrides: Any) -> Settings:
    """Settings on the bundled model, whatever CALIBSERVE_MODEL_PATH the environment holds."""
    overrides.setdefault("model_path", DEFAULT_MODEL_DIR)
    # A fresh prediction log per app (some apps are built at import time, before any fixture runs).
    overrides.setdefault("data_dir", Path(tempfile.mkdtemp(prefix="calibserve-test-")))
    return Settings(**overrides)


@contextmanager
def serve(settings: Settings | None = None, *, lifespan: bool = True) -> Iterator[Client]:
    """The app for ``settings``, its lifespan entered (unless ``lifespan=False``), and a client on it."""
    app = create_app(settings or settings_for())
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal("asyncio"))
        if lifespan:
            stack.enter_context(portal.wrap_async_context_manager(app.router.lifespan_context(app)))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)
        stack.callback(portal.call, client.aclose)
        yield Client(app, portal, client)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``status`` and the one error shape; return the ``error`` object."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"type", "message", "details", "request_id"}, error
    assert error["request_id"] == response.headers["x-request-id"], "every error names the request it answers"
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    return dict(error)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def client() -> Iterator[Client]:
    """The default app (bundled digits model, default settings) with its lifespan running."""
    with serve() as served:
        yield served


@pytest.fixture(scope="session")
def card() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads((DEFAULT_MODEL_DIR / "card.json").read_text(encoding="utf-8"))
    return parsed


@pytest.fixture(scope="session")
def ort_session() -> ort.InferenceSession:
    """onnxruntime straight on the bundled file: the reference the HTTP answers are checked against."""
    return ort.InferenceSession(str(DEFAULT_MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def digits() -> NDArray[np.float64]:
    """All 1797 rows of scikit-learn's digits (8x8 pixels, 0..16), the data the bundled model was trained on."""
    from sklearn.datasets import load_digits

    data: NDArray[np.float64] = load_digits().data
    return data
