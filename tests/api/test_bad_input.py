"""Requests the service must refuse: each case names its status, error type, and what the message must say.

Bodies are sent as raw text where JSON itself is the point (NaN, Infinity, 1e400 are not JSON that
httpx would write), so the service sees exactly the bytes a careless client sends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from service.api.schemas import DIGIT_ONE, DIGIT_ZERO
from tests.api.conftest import Client, error_of, serve, settings_for

pytestmark = pytest.mark.api

JSON = {"content-type": "application/json"}
ROW = json.dumps(DIGIT_ZERO)
TAIL = ROW[ROW.index(",") :]  # the row without its first value: "[X" + TAIL is a 64-value row


def with_first(value: str) -> str:
    """A body whose one row starts with the literal ``value`` (JSON or not) followed by 63 real pixels."""
    return '{"instances": [[' + value + TAIL + "]}"


def with_options(**options: Any) -> str:
    return json.dumps({"instances": [DIGIT_ZERO], **options})


@dataclass(frozen=True)
class Case:
    id: str
    content: str | bytes | None
    status: int
    kind: str
    mentions: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


CASES = [
    Case("wrong feature count", '{"instances": [[1, 2, 3]]}', 422, "invalid_input", ("instances[0]", "3", "64")),
    Case(
        "ragged rows",
        json.dumps({"instances": [DIGIT_ZERO, DIGIT_ONE[:40]]}),
        422,
        "invalid_input",
        ("instances[1]", "40", "64"),
    ),
    Case("NaN literal", with_first("NaN"), 422, "invalid_input", ("instances[0][0]", "finite")),
    Case("Infinity literal", with_first("Infinity"), 422, "invalid_input", ("instances[0][0]", "finite")),
    Case("-Infinity literal", with_first("-Infinity"), 422, "invalid_input", ("instances[0][0]", "finite")),
    Case("1e400 parses to inf", with_first("1e400"), 422, "invalid_input", ("instances[0][0]", "finite")),
    Case("1e39 overflows float32", with_first("1e39"), 422, "invalid_input", ("instances[0][0]", "float32")),
    Case("-1e39 overflows float32", with_first("-1e39"), 422, "invalid_input", ("instances[0][0]", "float32")),
    Case("string number", with_first('"1.0"'), 422, "invalid_input", ("instances[0][0]", "number")),
    Case("boolean", with_first("true"), 422, "invalid_input", ("instances[0][0]", "number")),
    Case("nested lists", '{"instances": [[[1]]]}', 422, "invalid_input", ("instances[0][0]", "number")),
    Case("null element", with_first("null"), 422, "invalid_input", ("instances[0][0]", "number")),
    Case("instance is a number", '{"instances": [5]}', 422, "invalid_input", ("instances[0]", "list of numbers")),
    Case("instance is a string", '{"instances": ["abc"]}', 422, "invalid_input", ("instances[0]", "list of numbers")),
    Case("instances is an object", '{"instances": {"a": 1}}', 422, "invalid_input", ("instances", "list")),
    Case("empty instances", '{"instances": []}', 422, "invalid_input", ("instances", "at least 1")),
    Case("missing instances", '{"coverage": 0.9}', 422, "invalid_input", ("instances", "required")),
    Case(
        "unknown top-level key", with_options(temperature=2.0), 422, "invalid_input", ("temperature", "not permitted")
    ),
    Case("missing body", None, 400, "malformed_request", ("body", "required")),
    Case("missing body, no headers", None, 400, "malformed_request", ("body", "required"), {}),
    Case("empty body with JSON type", b"", 400, "malformed_request", ("body", "required")),
    Case("invalid JSON", '{"instances": [[1, 2', 400, "malformed_request", ("not valid JSON",)),
    Case("trailing garbage", '{"instances": []} x', 400, "malformed_request", ("not valid JSON",)),
    Case("JSON list, not an object", "[[1, 2, 3]]", 422, "invalid_input", ("body", "object")),
    Case("JSON null", "null", 422, "invalid_input", ("body", "object")),
    Case(
        "text/plain",
        with_options(),
        415,
        "unsupported_media_type",
        ("application/json", "text/plain"),
        {"content-type": "text/plain"},
    ),
    Case(
        "form encoded",
        "instances=1",
        415,
        "unsupported_media_type",
        ("application/json", "application/x-www-form-urlencoded"),
        {"content-type": "application/x-www-form-urlencoded"},
    ),
    Case("no content-type", with_options(), 415, "unsupported_media_type", ("no Content-Type",), {}),
    Case("coverage not in card", with_options(coverage=0.8), 422, "invalid_input", ("coverage", "0.8", "0.9", "0.95")),
    Case("coverage as string", with_options(coverage="0.9"), 422, "invalid_input", ("coverage",)),
    Case(
        "coverage NaN",
        '{"instances": [' + ROW + '], "coverage": NaN}',
        422,
        "invalid_input",
        ("coverage", "finite"),
    ),
    Case("top_k 0", with_options(top_k=0), 422, "invalid_input", ("top_k", "greater than or equal to 1")),
    Case("top_k 11", with_options(top_k=11), 422, "invalid_input", ("top_k", "11", "10 classes")),
    Case("top_k string", with_options(top_k="3"), 422, "invalid_input", ("top_k", "integer")),
    Case("top_k float", with_options(top_k=3.5), 422, "invalid_input", ("top_k", "integer")),
    Case("top_k boolean", with_options(top_k=True), 422, "invalid_input", ("top_k", "integer")),
    Case("include_logits string", with_options(include_logits="yes"), 422, "invalid_input", ("include_logits",)),
    Case("include_logits number", with_options(include_logits=1), 422, "invalid_input", ("include_logits",)),
    Case("model not a string", with_options(model=3), 422, "invalid_input", ("model", "string")),
    Case("unknown model name", with_options(model="mnist"), 404, "model_not_found", ("mnist", "digits")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_is_refused_with_a_named_problem(client: Client, case: Case) -> None:
    response = client.post("/v1/predict", content=case.content, headers=case.headers)
    error = error_of(response, case.status)
    assert error["type"] == case.kind
    for mention in case.mentions:
        assert mention in error["message"], (mention, error["message"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_named_model_route_refuses_the_same_way(client: Client, case: Case) -> None:
    response = client.post("/v1/models/digits/predict", content=case.content, headers=case.headers)
    assert response.status_code == case.status, response.text
    assert error_of(response, case.status)["type"] == case.kind


def test_validation_errors_list_every_field_at_fault(client: Client) -> None:
    body = '{"instances": [[NaN' + TAIL + ', [1, "x"]], "top_k": 0}'
    error = error_of(client.post("/v1/predict", content=body, headers=JSON), 422)
    fields = {problem["field"] for problem in error["details"]["errors"]}
    assert {"instances[0][0]", "instances[1][1]", "top_k"} <= fields


def test_object_row_with_an_overflowing_value_is_refused(client: Client) -> None:
    names = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
    row: dict[str, float] = dict.fromkeys(names, 0.0)
    row["pixel_0_3"] = 1e39
    error = error_of(client.predict({"instances": [row]}), 422)
    assert error["type"] == "invalid_input"
    assert "instances[0]" in error["message"] and "float32" in error["message"]


def test_object_row_with_a_nan_names_the_feature(client: Client) -> None:
    body = '{"instances": [{"pixel_0_0": NaN}]}'
    error = error_of(client.post("/v1/predict", content=body, headers=JSON), 422)
    assert "instances[0].pixel_0_0" in error["message"]


def test_more_instances_than_max_instances_is_413() -> None:
    with serve(settings_for(max_instances=5)) as client:
        assert client.predict({"instances": [DIGIT_ZERO] * 5}).status_code == 200
        error = error_of(client.predict({"instances": [DIGIT_ZERO] * 6}), 413)
    assert error["type"] == "payload_too_large"
    assert "6 instances" in error["message"] and "5" in error["message"]
    assert error["details"]["limit"] == 5


@pytest.fixture(scope="module")
def small_body_client() -> Iterator[Client]:
    with serve(settings_for(max_body_bytes=2048)) as client:
        yield client


BIG_BODY = json.dumps({"instances": [DIGIT_ZERO] * 20}).encode()
SMALL_BODY = json.dumps({"instances": [DIGIT_ZERO]}).encode()


def test_body_over_max_body_bytes_is_413(small_body_client: Client) -> None:
    assert len(SMALL_BODY) < 2048 < len(BIG_BODY)
    assert small_body_client.post("/v1/predict", content=SMALL_BODY, headers=JSON).status_code == 200
    error = error_of(small_body_client.post("/v1/predict", content=BIG_BODY, headers=JSON), 413)
    assert error["type"] == "payload_too_large"
    assert "2048" in error["message"]
    assert error["details"]["limit_bytes"] == 2048


async def chunks(body: bytes, size: int = 500) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_streamed_body_without_content_length_is_cut_off_at_the_limit(small_body_client: Client) -> None:
    ok = small_body_client.post("/v1/predict", content=chunks(SMALL_BODY), headers=JSON)
    assert ok.status_code == 200, ok.text
    assert "content-length" not in ok.request.headers and ok.request.headers["transfer-encoding"] == "chunked"
    response = small_body_client.post("/v1/predict", content=chunks(BIG_BODY), headers=JSON)
    assert "content-length" not in response.request.headers
    error = error_of(response, 413)
    assert error["type"] == "payload_too_large"
    assert "2048" in error["message"]


def test_streamed_413_carries_the_same_details_as_a_declared_one(small_body_client: Client) -> None:
    response = small_body_client.post("/v1/predict", content=chunks(BIG_BODY), headers=JSON)
    assert error_of(response, 413)["details"].get("limit_bytes") == 2048


def test_streamed_body_without_content_type_is_415(small_body_client: Client) -> None:
    error = error_of(small_body_client.post("/v1/predict", content=chunks(SMALL_BODY)), 415)
    assert error["type"] == "unsupported_media_type"


def test_unknown_model_in_path_is_404(client: Client) -> None:
    error = error_of(client.predict({"instances": [DIGIT_ZERO]}, "/v1/models/nope/predict"), 404)
    assert error["type"] == "model_not_found"
    assert "'nope'" in error["message"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/v3/predict"), ("POST", "/predict"), ("GET", "/")])
def test_unknown_route_is_404_with_the_error_shape(client: Client, method: str, path: str) -> None:
    error = error_of(client.request(method, path, json={} if method == "POST" else None), 404)
    assert error["type"] == "not_found"


def test_wrong_method_is_405_with_the_error_shape(client: Client) -> None:
    error = error_of(client.get("/v1/predict"), 405)
    assert error["type"] == "method_not_allowed"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"instances": [[\xff\xfe]]}', id="invalid UTF-8"),
        pytest.param(b'{"instances": ' + b"[" * 20000 + b"]" * 20000 + b"}", id="nested past the recursion limit"),
    ],
)
def test_undecodable_body_is_a_malformed_request(client: Client, content: bytes) -> None:
    response = client.post("/v1/predict", content=content, headers=JSON)
    error = error_of(response, 400)
    assert error["type"] == "malformed_request"
    assert error["details"] == {"field": "body"}


@pytest.mark.parametrize(
    "content",
    [b'{"instances": [[\xff\xfe]]}', b'{"instances": ' + b"[" * 20000 + b"]" * 20000 + b"}"],
    ids=["invalid UTF-8", "nested past the recursion limit"],
)
def test_undecodable_body_is_a_400_not_a_500(client: Client, content: bytes) -> None:
    error_of(client.post("/v1/predict", content=content, headers=JSON), 400)
