"""A model repository in one server: routing by name, isolation, OpenAPI per model, reload without a failed
request (API and poll), feedback and health per model version, and the repository API's auth.

Real artifacts (the bundled model and the same network served at T = 1 by ``calibserve calibrate``), the real
app with its lifespan, httpx over ASGI, real SQLite logs; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from sklearn.datasets import load_digits

from service.settings import Settings
from tests.api.conftest import Client, serve
from tests.conftest import ModelSources

pytestmark = pytest.mark.api


@pytest.fixture(scope="module")
def digits() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    features, labels = load_digits(return_X_y=True)
    return features.astype(np.float32), labels.astype(np.int64)


def repository_settings(root: Path, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(model_repository=root, data_dir=tmp_path / "data", **overrides)


def expected_probabilities(artifact: Path, rows: NDArray[np.float32]) -> NDArray[np.float32]:
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"features": rows})
    return np.asarray(probabilities)


@pytest.fixture
def two_models(model_sources: ModelSources, tmp_path: Path) -> Path:
    return model_sources.repository(
        tmp_path / "repo", digits=model_sources.digits, **{"digits-t1": model_sources.digits_t1}
    )


def test_requests_go_to_the_model_they_name(two_models: Path, tmp_path: Path, digits: Any) -> None:
    rows = digits[0][:3]
    with serve(repository_settings(two_models, tmp_path)) as client:
        listed = client.get("/v1/models").json()
        assert [(m["name"], m["state"]) for m in listed["models"]] == [("digits", "ready"), ("digits-t1", "ready")]
        assert listed["default"] is None
        versions = {m["name"]: m["version"] for m in listed["models"]}
        assert versions["digits"] != versions["digits-t1"]

        unnamed = client.predict({"instances": rows.tolist()})
        assert unnamed.status_code == 400
        assert unnamed.json()["error"]["details"]["available"] == ["digits", "digits-t1"]

        for name in ("digits", "digits-t1"):
            expected = expected_probabilities(two_models / name, rows)
            for response in (
                client.predict({"instances": rows.tolist()}, url=f"/v1/models/{name}/predict"),
                client.predict({"instances": rows.tolist(), "model": name}),
            ):
                assert response.status_code == 200, response.text
                body = response.json()
                assert (body["model"]["name"], body["model"]["version"]) == (name, versions[name])
                got = np.array([[p["probabilities"][str(k)] for k in range(10)] for p in body["predictions"]])
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
            v2 = client.post(
                f"/v2/models/{name}/infer",
                json={
                    "inputs": [
                        {"name": "features", "shape": [3, 64], "datatype": "FP32", "data": rows.ravel().tolist()}
                    ]
                },
            )
            assert v2.status_code == 200 and v2.json()["model_name"] == name
            assert client.get(f"/v2/models/{name}").json()["versions"] == [versions[name]]
            assert client.get(f"/v1/models/{name}").json()["version"] == versions[name]

        wrong = client.predict({"instances": rows.tolist(), "model": "digits"}, url="/v1/models/digits-t1/predict")
        assert wrong.status_code == 404 and "the path names 'digits-t1'" in wrong.json()["error"]["message"]
        missing = client.predict({"instances": rows.tolist()}, url="/v1/models/nope/predict")
        assert missing.status_code == 404 and missing.json()["error"]["details"]["available"] == ["digits", "digits-t1"]


def test_the_default_model_answers_unnamed_requests(two_models: Path, tmp_path: Path, digits: Any) -> None:
    with serve(repository_settings(two_models, tmp_path, default_model="digits-t1")) as client:
        response = client.predict({"instances": digits[0][:2].tolist()})
        assert response.status_code == 200 and response.json()["model"]["name"] == "digits-t1"
        assert client.get("/v1/models").json()["default"] == "digits-t1"


def test_a_broken_model_is_unavailable_with_its_reason_and_never_touches_the_others(
    two_models: Path, tmp_path: Path, digits: Any
) -> None:
    broken = two_models / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    with serve(repository_settings(two_models, tmp_path)) as client:
        index = client.post("/v2/repository/index").json()
        states = {m["name"]: m for m in index}
        assert states["broken"]["state"] == "UNAVAILABLE" and "not a loadable ONNX model" in states["broken"]["reason"]
        assert states["digits"]["state"] == "READY" and "reason" not in states["digits"]
        assert [m["name"] for m in client.post("/v2/repository/index", json={"ready": True}).json()] == [
            "digits",
            "digits-t1",
        ]
        assert client.predict({"instances": [[0.0]]}, url="/v1/models/broken/predict").status_code == 404
        assert client.get("/health/ready").status_code == 200

        async def mixed(http: httpx.AsyncClient) -> list[int]:
            good = [
                http.post("/v1/models/digits/predict", json={"instances": digits[0][i : i + 2].tolist()})
                for i in range(20)
            ]
            bad = [http.post("/v1/models/digits-t1/predict", json={"instances": [[1.0] * 63]}) for _ in range(20)]
            answers = await asyncio.gather(*good, *bad)
            return [answer.status_code for answer in answers]

        codes = client.run(mixed)
        assert codes[:20] == [200] * 20 and codes[20:] == [422] * 20


def test_openapi_describes_each_model(two_models: Path, tmp_path: Path) -> None:
    with serve(repository_settings(two_models, tmp_path)) as client:
        document = client.get("/openapi.json").json()
        components = document["components"]["schemas"]
        for name in ("digits", "digits-t1"):
            operation = document["paths"][f"/v1/models/{name}/predict"]["post"]
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            schema = components[ref.rsplit("/", 1)[1]]
            assert schema["properties"]["model"]["anyOf"][0]["enum"] == [name]
            items = schema["properties"]["instances"]["items"]
            assert (items["oneOf"][0] if "oneOf" in items else items)["maxItems"] == 64  # named features or not
        parameters = document["paths"]["/v2/models/{name}"]["get"]["parameters"]
        assert next(p for p in parameters if p["name"] == "name")["schema"]["enum"] == ["digits", "digits-t1"]
        # After an unload the cached document is rebuilt without the model.
        assert client.post("/v2/repository/models/digits-t1/unload").status_code == 200
        assert "/v1/models/digits-t1/predict" not in client.get("/openapi.json").json()["paths"]


def replace_artifact(target: Path, source: Path) -> None:
    """What an operator does: the new version's files, moved into place (each file replaced atomically)."""
    staging = target.parent / f".{target.name}.new"
    shutil.copytree(source, staging)
    for file in staging.iterdir():
        file.replace(target / file.name)
    staging.rmdir()


async def predict_until(
    http: httpx.AsyncClient, rows: NDArray[np.float32], stop: asyncio.Event
) -> list[httpx.Response]:
    answers = []
    i = 0
    while not stop.is_set():
        chunk = rows[i % 100 : i % 100 + 4]
        answers.append(await http.post("/v1/models/digits/predict", json={"instances": chunk.tolist(), "top_k": 1}))
        i += 1
    return answers


def check_every_answer(
    answers: list[httpx.Response], rows: NDArray[np.float32], expected: dict[str, NDArray[np.float32]]
) -> dict[str, int]:
    """Every answer 200, from a known version, each row's probabilities that version's: never a mix."""
    seen: dict[str, int] = {}
    for answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        version = body["model"]["version"]
        assert version in expected
        seen[version] = seen.get(version, 0) + 1
        got = np.array([[p["probabilities"][str(k)] for k in range(10)] for p in body["predictions"]])
        assert any(  # the rows' probabilities are the named version's (ids carry no row: find the chunk)
            np.allclose(got, expected[version][start : start + len(got)], rtol=1e-6, atol=1e-7)
            for start in range(0, 100)
        )
    return seen


def test_reload_through_the_api_under_load_never_fails_a_request(
    model_sources: ModelSources, tmp_path: Path, digits: Any
) -> None:
    root = model_sources.repository(tmp_path / "repo", digits=model_sources.digits)
    rows = digits[0][:104]
    old = expected_probabilities(model_sources.digits, rows)
    new = expected_probabilities(model_sources.digits_t1, rows)
    with serve(repository_settings(root, tmp_path)) as client:
        old_version = client.get("/v1/models/digits").json()["version"]

        async def scenario(http: httpx.AsyncClient) -> tuple[list[httpx.Response], list[httpx.Response]]:
            stop = asyncio.Event()
            load = asyncio.gather(*(predict_until(http, rows, stop) for _ in range(4)))
            await asyncio.sleep(0.3)
            replace_artifact(root / "digits", model_sources.digits_t1)
            swapped = await http.post("/v2/repository/models/digits/load")
            await asyncio.sleep(0.3)
            (root / "digits" / "model.onnx").write_bytes(b"broken on purpose")
            refused = await http.post("/v2/repository/models/digits/load")
            ready = await http.get("/health/ready")
            index = await http.post("/v2/repository/index")
            await asyncio.sleep(0.3)
            stop.set()
            streams = await load
            return [answer for stream in streams for answer in stream], [swapped, refused, ready, index]

        answers, (swapped, refused, ready, index) = client.run(scenario)
        new_version = swapped.json()["version"]
        assert swapped.status_code == 200 and new_version != old_version
        assert refused.status_code == 400 and "failed to load 'digits'" in refused.json()["error"]
        assert ready.status_code == 200
        (entry,) = index.json()
        assert entry["state"] == "READY" and entry["version"] == new_version and "not a loadable" in entry["reason"]
        seen = check_every_answer(answers, rows[:100], {old_version: old[:104], new_version: new[:104]})
        assert seen.get(old_version, 0) > 0 and seen.get(new_version, 0) > 0
        # The broken artifact left the new version serving.
        assert client.get("/v1/models/digits").json()["version"] == new_version
        metrics = client.get("/metrics").text
        assert 'calibserve_model_loads_total{model="digits",outcome="failed"} 1.0' in metrics
        assert f'calibserve_model_ready{{model="digits",version="{new_version[:12]}"}} 1.0' in metrics


def test_poll_mode_loads_new_changed_and_removed_models(
    model_sources: ModelSources, tmp_path: Path, digits: Any
) -> None:
    root = model_sources.repository(tmp_path / "repo", digits=model_sources.digits)
    rows = digits[0][:104]
    with serve(repository_settings(root, tmp_path, repository_poll_seconds=0.1, default_model="digits")) as client:
        old_version = client.get("/v1/models/digits").json()["version"]
        old = expected_probabilities(model_sources.digits, rows)
        new = expected_probabilities(model_sources.digits_t1, rows)

        async def scenario(http: httpx.AsyncClient) -> list[httpx.Response]:
            stop = asyncio.Event()
            load = asyncio.gather(*(predict_until(http, rows, stop) for _ in range(3)))
            await asyncio.sleep(0.2)
            replace_artifact(root / "digits", model_sources.digits_t1)
            shutil.copytree(model_sources.digits_copy, root / "second")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                models = {m["name"]: m for m in (await http.get("/v1/models")).json()["models"]}
                if "second" in models and models["digits"].get("version") != old_version:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            stop.set()
            return [answer for stream in await load for answer in stream]

        answers = client.run(scenario)
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        new_version = models["digits"]["version"]
        assert new_version != old_version and models["second"]["state"] == "ready"
        seen = check_every_answer(answers, rows[:100], {old_version: old, new_version: new})
        assert seen.get(new_version, 0) > 0

        shutil.rmtree(root / "second")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and client.get("/v1/models/second").status_code == 200:
            time.sleep(0.05)
        assert client.get("/v1/models/second").status_code == 404
        (entry,) = [m for m in client.post("/v2/repository/index").json() if m["name"] == "second"]
        assert entry["state"] == "UNAVAILABLE" and entry["reason"] == "unloaded"
        refused = client.post("/v2/repository/models/digits/unload")
        assert refused.status_code == 400 and "poll mode" in refused.json()["error"]


def test_feedback_and_health_are_per_model_version(two_models: Path, tmp_path: Path, digits: Any) -> None:
    features, labels = digits
    with serve(repository_settings(two_models, tmp_path, min_labels=20, min_predictions=20)) as client:
        ids: dict[str, list[str]] = {}
        for name in ("digits", "digits-t1"):
            body = client.predict({"instances": features[:60].tolist()}, url=f"/v1/models/{name}/predict").json()
            ids[name] = [p["prediction_id"] for p in body["predictions"]]
        items = [
            {"prediction_id": i, "label": str(y)} for name in ids for i, y in zip(ids[name], labels[:60], strict=True)
        ]
        feedback = client.post("/v1/feedback", json={"feedback": items})
        assert feedback.json()["counts"] == {"recorded": 120}

        overall = client.get("/health/calibration").json()
        blocks = {block["model"]["name"]: block for block in overall["models"]}
        assert set(blocks) == {"digits", "digits-t1"}
        for name, block in blocks.items():
            assert block["live"]["labelled"]["n"] == 60, name
        one = client.get("/health/calibration", params={"model": "digits-t1"}).json()
        assert one["model"]["name"] == "digits-t1" and one["live"]["labelled"]["n"] == 60
        # The T = 1 model is under-confident: its live ECE is far above the bundled model's.
        ece = {name: blocks[name]["live"]["labelled"]["ece"]["value"] for name in blocks}
        assert ece["digits-t1"] > ece["digits"] + 0.03
        assert client.get("/health/calibration", params={"model": "nope"}).status_code == 404

        unknown = client.post("/v1/feedback", json={"feedback": [{"prediction_id": ids["digits"][0], "label": "cat"}]})
        assert unknown.status_code == 422

        metrics = client.get("/metrics").text
        for name in ("digits", "digits-t1"):
            assert f'calibserve_predictions_total{{label="0",model="{name}"}}' in metrics
            assert f'calibserve_live_ece{{model="{name}",version=' in metrics


def test_repository_writes_need_the_api_key(two_models: Path, tmp_path: Path) -> None:
    with serve(repository_settings(two_models, tmp_path, api_key="s3cret")) as client:
        assert client.post("/v2/repository/index").status_code == 200  # a read
        for path in ("/v2/repository/models/digits/load", "/v2/repository/models/digits/unload"):
            refused = client.post(path)
            assert refused.status_code == 401 and set(refused.json()) == {"error", "request_id"}
        assert client.request("PUT", "/v1/models/digits/shadow", json={"challenger": "digits-t1"}).status_code == 401
        authorised = client.post("/v2/repository/models/digits/load", headers={"Authorization": "Bearer s3cret"})
        assert authorised.status_code == 200
        assert (
            client.post("/v2/repository/models/nope/load", headers={"Authorization": "Bearer s3cret"}).status_code
            == 404
        )
        refused_parameters = client.post(
            "/v2/repository/models/digits/load",
            headers={"Authorization": "Bearer s3cret"},
            json={"parameters": {"config": "{}"}},
        )
        assert refused_parameters.status_code == 400 and "not supported" in refused_parameters.json()["error"]


def test_a_single_model_path_is_a_repository_of_one(tmp_path: Path, digits: Any) -> None:
    client: Client
    with serve(Settings(data_dir=tmp_path / "data")) as client:
        assert [m["name"] for m in client.post("/v2/repository/index").json()] == ["digits"]
        first = client.get("/v1/models/digits").json()["version"]
        assert client.post("/v2/repository/models/digits/load").json()["version"] == first
        assert client.predict({"instances": digits[0][:1].tolist()}).status_code == 200


def test_adding_a_model_keeps_the_only_model_at_start_up_as_the_default(
    model_sources: ModelSources, tmp_path: Path, digits: Any
) -> None:
    root = model_sources.repository(tmp_path / "repo", digits=model_sources.digits)
    with serve(repository_settings(root, tmp_path)) as client:
        shutil.copytree(model_sources.digits_t1, root / "digits-v2")
        assert client.post("/v2/repository/models/digits-v2/load").json()["state"] == "READY"
        unnamed = client.predict({"instances": digits[0][:1].tolist()})
        assert unnamed.status_code == 200 and unnamed.json()["model"]["name"] == "digits"
        assert client.get("/v1/models").json()["default"] == "digits"


def test_hidden_directories_are_staging_never_models(model_sources: ModelSources, tmp_path: Path) -> None:
    root = model_sources.repository(
        tmp_path / "repo", digits=model_sources.digits, **{".digits.new": model_sources.digits_t1}
    )
    with serve(repository_settings(root, tmp_path)) as client:
        assert [m["name"] for m in client.post("/v2/repository/index").json()] == ["digits"]
