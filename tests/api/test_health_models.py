"""Liveness, readiness, calibration health, the model cards, the OpenAPI document, and start-up failures."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.errors import ArtifactError
from service.main import create_app
from tests.api.conftest import BASE_URL, Client, error_of, serve, settings_for
from tests.conftest import DEFAULT_MODEL_DIR, REPO_ROOT

pytestmark = pytest.mark.api


def test_live_is_200(client: Client) -> None:
    response = client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.anyio
async def test_ready_is_503_before_the_lifespan_has_loaded_the_model() -> None:
    app = create_app(settings_for())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "loading"
        assert (await client.get("/health/live")).status_code == 200
        # Everything that needs the model says so with the error shape, retryably.
        for path in ("/v1/models", "/v1/models/digits", "/health/calibration"):
            error = error_of(await client.get(path), 503)
            assert error["type"] == "model_not_ready" and error["details"] == {"retry": True}
        predict = await client.post("/v1/predict", json={"instances": [[0.0] * 64]})
        assert error_of(predict, 503)["type"] == "model_not_ready"


@pytest.mark.anyio
async def test_ready_is_200_inside_the_lifespan_and_503_after_it(card: dict[str, Any]) -> None:
    app = create_app(settings_for())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
        async with app.router.lifespan_context(app):
            ready = await client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ready",
                "model": "digits",
                "version": card["version"],
                "models": [{"name": "digits", "version": card["version"]}],
            }
        assert (await client.get("/health/ready")).status_code == 503


def test_calibration_health_on_a_fresh_log(card: dict[str, Any]) -> None:
    """The card is fine, but with no live traffic yet the honest answer is insufficient_data, not ok. (Its own
    app: the session's shared client has whatever traffic earlier tests sent.)"""
    with serve() as fresh:
        response = fresh.get("/health/calibration")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "insufficient_data"
    reasons = {reason["code"]: reason for reason in health["reasons"]}
    ece = card["test"]["after_temperature"]["ece"]["value"]
    assert reasons["card_ece"]["status"] == "ok"
    assert reasons["card_ece"]["value"] == ece < 0.05
    assert reasons["card_ece"]["threshold"] == 0.05
    assert f"{ece:.4f}" in reasons["card_ece"]["message"]
    assert {"labels_insufficient", "predictions_insufficient"} <= set(reasons)
    assert health["model"] == {"name": "digits", "version": card["version"]}
    assert health["reference"]["n"] == card["test"]["after_temperature"]["n"]
    assert health["reference"]["reliability"] == card["test"]["after_temperature"]["reliability"]


@pytest.mark.parametrize(
    ("warning", "critical", "status", "threshold"),
    [(0.001, 0.002, "critical", 0.002), (0.001, 0.5, "warning", 0.001), (0.5, 0.6, "insufficient_data", 0.5)],
)
def test_calibration_status_follows_the_thresholds_and_never_changes_readiness(
    warning: float, critical: float, status: str, threshold: float
) -> None:
    with serve(settings_for(ece_warning=warning, ece_critical=critical)) as client:
        health = client.get("/health/calibration").json()
        assert client.get("/health/ready").status_code == 200
        assert client.get("/health/live").status_code == 200
        assert client.predict({"instances": [[0.0] * 64]}).status_code == 200
    assert health["status"] == status  # a fresh log: with the card ok, the live checks say insufficient_data
    card_ece = next(reason for reason in health["reasons"] if reason["code"] == "card_ece")
    assert card_ece["status"] == (status if status != "insufficient_data" else "ok")
    assert card_ece["threshold"] == threshold
    assert str(threshold) in card_ece["message"]


def test_models_lists_digits(client: Client, card: dict[str, Any]) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    models = response.json()["models"]
    assert [m["name"] for m in models] == ["digits"]
    assert models[0]["version"] == card["version"]
    assert models[0]["temperature"] == card["temperature"]["value"]
    # The lowest level (0.9) at n = 360: below 0.9 for 47% of calibration sets, 5% quantile 0.873.
    assert models[0]["coverage"] == 0.9
    assert models[0]["conformal"]["p_coverage_below_nominal"] == pytest.approx(0.4743, abs=1e-4)
    assert models[0]["conformal"]["coverage_quantile_05"] == pytest.approx(0.8732, abs=1e-4)


def test_model_card_is_card_json(client: Client, card: dict[str, Any]) -> None:
    response = client.get("/v1/models/digits")
    assert response.status_code == 200
    assert response.json() == card


def test_unknown_model_card_is_404(client: Client) -> None:
    error = error_of(client.get("/v1/models/nope"), 404)
    assert error["type"] == "model_not_found"
    assert "'nope'" in error["message"]
    assert error["details"] == {"model": "nope", "available": ["digits"]}


def request_schema(openapi: dict[str, Any], path: str) -> dict[str, Any]:
    body = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = body["$ref"].rsplit("/", 1)[-1]
    schema: dict[str, Any] = openapi["components"]["schemas"][name]
    return schema


def test_openapi_documents_predict_with_examples_that_work(client: Client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    openapi = response.json()
    assert {"/v1/predict", "/v1/models/{name}/predict", "/v1/models", "/health/ready"} <= set(openapi["paths"])
    predict = openapi["paths"]["/v1/predict"]["post"]
    assert {"200", "400", "404", "413", "415", "422", "503"} <= set(predict["responses"])
    examples = request_schema(openapi, "/v1/predict")["examples"]
    assert len(examples) >= 2
    for example in examples:
        answer = client.predict(example)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == len(example["instances"])


def test_docs_page_is_html(client: Client) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_calibserve_itself(client: Client, page: str) -> None:
    """No CDN: every script, stylesheet and icon the page names is served here (the browser test renders it)."""
    html = client.get(page).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 1000, asset
    assert "cdn." not in html and "fonts.googleapis" not in html
    if page == "/redoc":
        script = client.get("/docs/redoc.standalone.js").text
        assert "cdn.redoc.ly" not in script  # its logo, pointed at the local favicon


def enter_lifespan(app: FastAPI) -> None:
    async def run() -> None:
        async with app.router.lifespan_context(app):
            pass

    asyncio.run(run())


def test_start_up_fails_fast_on_a_missing_model(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    app = create_app(settings_for(model_path=missing))
    with pytest.raises(ArtifactError, match="model file not found") as raised:
        enter_lifespan(app)
    assert str(missing) in raised.value.message
    assert app.state.repository is None


@pytest.mark.parametrize("name", ["model.onnx", "notes.txt"])
def test_start_up_fails_fast_on_a_file_that_is_not_onnx(tmp_path: Path, name: str) -> None:
    bogus = tmp_path / name
    bogus.write_text("this is not an ONNX model\n", encoding="utf-8")
    # Both spellings of the path: the file itself, and the directory that holds model.onnx.
    target = tmp_path if name == "model.onnx" else bogus
    app = create_app(settings_for(model_path=target))
    with pytest.raises(ArtifactError, match="not a loadable ONNX model") as raised:
        enter_lifespan(app)
    assert str(bogus) in raised.value.message


def test_start_up_fails_on_a_card_json_that_disagrees_with_the_model(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes((DEFAULT_MODEL_DIR / "model.onnx").read_bytes())
    card = json.loads((DEFAULT_MODEL_DIR / "card.json").read_text(encoding="utf-8"))
    card["temperature"]["value"] = 2.0
    (tmp_path / "card.json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ArtifactError, match="does not match") as raised:
        enter_lifespan(create_app(settings_for(model_path=tmp_path)))
    assert str(tmp_path / "card.json") in raised.value.message


def test_environment_picks_the_model_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = tmp_path / "model.txt"
    text.write_text("not onnx", encoding="utf-8")
    monkeypatch.setenv("CALIBSERVE_MODEL_PATH", str(text))
    with pytest.raises(ArtifactError, match="not a loadable ONNX model"):
        enter_lifespan(create_app())


def test_importing_the_app_loads_no_training_libraries() -> None:
    code = (
        "import sys, service.main\n"
        "service.main.create_app\n"
        "heavy = sorted(m for m in ('torch', 'sklearn', 'onnx', 'scipy', 'matplotlib') if m in sys.modules)\n"
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_metrics_answer_before_the_model_is_ready() -> None:
    with serve(lifespan=False) as client:
        assert client.get("/health/ready").status_code == 503
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "calibserve_requests_total" in response.text
