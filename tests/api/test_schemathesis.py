"""Property-based conformance: schemathesis generates requests from the app's own OpenAPI document.

Every operation gets a bounded, derandomized batch of generated requests (valid and invalid), sent over
ASGI to the real app with its lifespan running (schemathesis' ASGI client starts the lifespan before
the first request, and its pytest plugin ends it after each test). The default checks apply: no 5xx,
status codes and content types the document declares, bodies that match the declared schemas, invalid
data rejected with a 4xx. The document describes the loaded model (feature count and names, conformal
levels, top_k <= K, float32 range), so schema-valid predict requests must be accepted, with one documented
exception: features within float32 range can still overflow inside the graph (e.g. 3e38 times a weight),
which the service answers with a 422 naming the rows rather than returning NaN probabilities.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance, unsupported_method

from service.main import create_app
from service.settings import Settings
from tests.api.conftest import Client, error_of, settings_for
from tests.conftest import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.api

app = create_app(settings_for())
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
bounded = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    print_blob=True,
)


@schema.parametrize()
@bounded
def test_every_operation_conforms_to_its_schema(case: schemathesis.Case[Any]) -> None:
    response = case.call_and_validate(excluded_checks=[unsupported_method, positive_data_acceptance])
    assert response.status_code < 500, response.text
    assert app.state.repository is not None, "the lifespan must be running: requests would only see 503"


def undeclared_method_requests(openapi: dict[str, Any]) -> list[tuple[str, str, set[str]]]:
    """(path with parameters filled in, a method the document does not declare for it, declared methods)."""
    requests = []
    for path, operations in openapi["paths"].items():
        declared = {method.upper() for method in operations}
        method = "DELETE" if "DELETE" not in declared else "PATCH"
        requests.append((path.replace("{name}", "digits"), method, declared))
    return requests


def test_undeclared_method_is_405_with_an_allow_header(client: Client) -> None:
    openapi = client.get("/openapi.json").json()
    for path, method, declared in undeclared_method_requests(openapi):
        response = client.request(method, path)
        if path.startswith("/v2"):  # the Open Inference Protocol's error shape
            assert response.status_code == 405 and set(response.json()) == {"error", "request_id"}, (
                method,
                path,
                response.text,
            )
        else:
            assert error_of(response, 405)["type"] == "method_not_allowed"
        allowed = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
        assert declared <= allowed, (method, path, response.headers)


@schema.include(path="/v1/predict", method="POST").parametrize()
@bounded
def test_schema_valid_predict_requests_are_accepted(case: schemathesis.Case[Any]) -> None:
    response = case.call()
    if response.status_code == 422 and "drive the model's output to NaN or infinity" in response.text:
        return  # the documented exception above: a model-dependent overflow, not a schema gap
    case.validate_response(response, checks=[positive_data_acceptance])


# -- a repository of two models: each with its own /v1/models/<name>/predict path and request schema, the path
# parameters' enums listing both. (Built at import, as the schema above: schemathesis' fixture-based loading
# fails under this pytest. Both are the bundled artifact: different input shapes are covered by the
# repository tests in test_repository.py.)
_repository_root = Path(tempfile.mkdtemp(prefix="calibserve-schemathesis-"))
for _name in ("digits", "second"):
    shutil.copytree(DEFAULT_MODEL_DIR, _repository_root / "models" / _name)
repository_app = create_app(Settings(model_repository=_repository_root / "models", data_dir=_repository_root / "data"))
repository_schema = schemathesis.openapi.from_asgi("/openapi.json", repository_app)


@repository_schema.include(path_regex="^/v1/models/").parametrize()
@bounded
def test_every_model_operation_of_a_repository_conforms_to_its_schema(case: schemathesis.Case[Any]) -> None:
    response = case.call_and_validate(excluded_checks=[unsupported_method, positive_data_acceptance])
    assert response.status_code < 500, response.text
    assert repository_app.state.repository is not None, "the lifespan must be running"
