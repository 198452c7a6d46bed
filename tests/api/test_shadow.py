"""Shadow scoring end to end: the challenger scores the champion's traffic off the request path, both are
logged under one id, feedback labels both, and ``GET /v1/models/{name}/shadow`` says which is better
calibrated: the T = 1 copy of the bundled network (under-confident) is detected, an identical copy is not.

Real artifacts, the real app with its lifespan over httpx/ASGI, a real SQLite log.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.datasets import load_digits

from service.monitoring.monitor import LOG_FILE
from service.settings import Settings
from tests.api.conftest import Client, serve
from tests.conftest import ModelSources

pytestmark = pytest.mark.api


@pytest.fixture(scope="module")
def digits() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    features, labels = load_digits(return_X_y=True)
    return features.astype(np.float32), labels.astype(np.int64)


def predict_and_label(client: Client, features: NDArray[np.float32], labels: NDArray[np.int64]) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(features), 100):
        body = {"instances": features[start : start + 100].tolist()}
        response = client.predict(body, url="/v1/models/digits/predict")
        assert response.status_code == 200 and response.json()["model"]["name"] == "digits"
        ids += [p["prediction_id"] for p in response.json()["predictions"]]
    items = [{"prediction_id": i, "label": str(y)} for i, y in zip(ids, labels, strict=True)]
    for start in range(0, len(items), 1000):
        assert client.post("/v1/feedback", json={"feedback": items[start : start + 1000]}).status_code == 200
    return ids


def settings(root: Path, tmp_path: Path, shadow: str, **overrides: Any) -> Settings:
    return Settings(model_repository=root, data_dir=tmp_path / "data", shadow=shadow, **overrides)


def test_a_worse_calibrated_challenger_is_detected_on_shared_traffic(
    model_sources: ModelSources, tmp_path: Path, digits: Any
) -> None:
    root = model_sources.repository(
        tmp_path / "repo", digits=model_sources.digits, **{"digits-t1": model_sources.digits_t1}
    )
    features, labels = digits
    with serve(settings(root, tmp_path, "digits:digits-t1")) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert listed["digits"]["shadow"] == "digits-t1" and listed["digits-t1"]["shadow"] is None
        ids = predict_and_label(client, features[:600], labels[:600])
        report = client.get("/v1/models/digits/shadow").json()
        assert report["verdict"] == "champion better calibrated", report["labelled"]["reason"]
        assert report["outcome"] == "champion_better"
        assert report["shadow"] == {"scored_rows": 600, "skipped_rows": 0, "queued_rows": 0}
        labelled = report["labelled"]
        assert labelled["n"] == 600
        ece = labelled["ece"]
        assert ece["challenger"]["value"] > ece["champion"]["value"] + 0.05
        assert ece["difference"]["lower"] > 0 and ece["difference"]["better"] == "champion"
        # Same network, another temperature: the same top label on every request.
        assert report["unlabelled"]["n"] == 600 and report["unlabelled"]["agreement"] == 1.0

        # Both predictions under each id, one served and one shadow, and one label for both.
        with closing(sqlite3.connect(tmp_path / "data" / LOG_FILE)) as connection:
            rows = connection.execute(
                "SELECT model, served, COUNT(*) FROM predictions GROUP BY model, served"
            ).fetchall()
            shared = connection.execute(
                "SELECT COUNT(*) FROM predictions c JOIN predictions s ON s.id = c.id "
                "WHERE c.model = 'digits' AND s.model = 'digits-t1'"
            ).fetchone()[0]
        assert sorted(rows) == [("digits", 1, 600), ("digits-t1", 0, 600)]
        assert shared == 600
        # The challenger's own window (its shadow scores, labelled through the champion's ids) is judged too.
        health = client.get("/health/calibration", params={"model": "digits-t1"}).json()
        assert health["live"]["labelled"]["n"] == Settings().window_labels  # 500 of the 600: its window's size
        assert len(ids) == 600


def test_identical_models_show_no_significant_difference(
    model_sources: ModelSources, tmp_path: Path, digits: Any
) -> None:
    root = model_sources.repository(tmp_path / "repo", digits=model_sources.digits, copy=model_sources.digits_copy)
    features, labels = digits
    with serve(settings(root, tmp_path, "digits:copy")) as client:
        predict_and_label(client, features[:400], labels[:400])
        report = client.get("/v1/models/digits/shadow").json()
        assert report["verdict"] == "no significant difference"
        for metric in ("accuracy", "nll", "brier", "ece"):
            difference = report["labelled"][metric]["difference"]
            assert difference["value"] == 0.0 and difference["lower"] == 0.0 and difference["upper"] == 0.0


def test_shadow_pairs_are_set_and_cleared_through_the_api(
    model_sources: ModelSources, tmp_path: Path, digits: Any
) -> None:
    root = model_sources.repository(
        tmp_path / "repo", digits=model_sources.digits, **{"digits-t1": model_sources.digits_t1}
    )
    features, labels = digits
    with serve(Settings(model_repository=root, data_dir=tmp_path / "data")) as client:
        none = client.get("/v1/models/digits/shadow")
        assert none.status_code == 404 and "has no shadow challenger" in none.json()["error"]["message"]
        assert client.request("PUT", "/v1/models/digits/shadow", json={"challenger": "digits-t1"}).status_code == 200
        empty = client.get("/v1/models/digits/shadow").json()
        assert empty["verdict"] == "insufficient data" and empty["labelled"] is None
        predict_and_label(client, features[:30], labels[:30])
        few = client.get("/v1/models/digits/shadow").json()
        assert few["outcome"] == "insufficient_data" and few["labelled"]["n"] == 30
        for bad, status in (({"challenger": "nope"}, 404), ({"challenger": "digits"}, 400), ({"other": 1}, 422)):
            assert client.request("PUT", "/v1/models/digits/shadow", json=bad).status_code == status, bad
        assert client.request("DELETE", "/v1/models/digits/shadow").status_code == 200
        assert client.get("/v1/models/digits/shadow").status_code == 404


def test_a_challenger_that_falls_behind_is_skipped_and_counted_never_queued(
    model_sources: ModelSources, tmp_path: Path, digits: Any
) -> None:
    root = model_sources.repository(
        tmp_path / "repo", digits=model_sources.digits, **{"digits-t1": model_sources.digits_t1}
    )
    features, _ = digits
    # Room for 1 row: a 100-row batch never fits, so every row is skipped; the answers are the champion's.
    with serve(settings(root, tmp_path, "digits:digits-t1", shadow_queue_rows=1)) as client:
        for start in range(0, 300, 100):
            response = client.predict(
                {"instances": features[start : start + 100].tolist()}, url="/v1/models/digits/predict"
            )
            assert response.status_code == 200 and response.json()["model"]["name"] == "digits"
        report = client.get("/v1/models/digits/shadow").json()
        assert report["shadow"]["skipped_rows"] == 300 and report["shadow"]["scored_rows"] == 0
        metrics = client.get("/metrics").text
        assert (
            'calibserve_shadow_rows_total{challenger="digits-t1",champion="digits",outcome="skipped"} 300.0' in metrics
        )
