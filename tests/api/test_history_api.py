"""GET /v1/models/{name}/calibration/history through the real app (httpx over ASGI, real onnxruntime, real
SQLite or PostgreSQL store): a bucket holding exactly the rows of the live window says what
``/health/calibration`` says of that window; bad parameters are 4xx JSON errors that say what was wrong."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.api.conftest import serve, settings_for
from tests.monitoring.test_feedback_api import (
    calibration,
    digits_test_split,
    noisy,
    on_store,
    predict_ids,
    send_feedback,
    served_name,
)

pytestmark = pytest.mark.api

DAY = 86400


def away_from_midnight() -> None:
    """Every row of a test in one UTC day bucket: start no later than 60 s before midnight."""
    left = DAY - time.time() % DAY
    if left < 60:
        time.sleep(left + 1)


def history(client: Any, name: str, **params: str) -> dict[str, Any]:
    response = client.get(f"/v1/models/{name}/calibration/history", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_bucket_of_the_live_windows_rows_says_what_health_says(store_target: Path | str) -> None:
    away_from_midnight()
    features, labels = digits_test_split()
    drifted = noisy(features, 6.0, seed=1)
    with serve(on_store(store_target, window_labels=1000)) as client:
        name = served_name(client)
        ids = predict_ids(client, np.concatenate([features, drifted]))
        send_feedback(client, ids, [str(y) for y in np.concatenate([labels, labels])])
        health = calibration(client)
        body = history(client, name, since=str(time.time() - 60), bucket="1d")
        hourly = history(client, name, since=str(time.time() - 3 * 3600), bucket="1h")
        fine = history(client, name, since=str(time.time() - 600), bucket="15m")
    assert body["source"] == hourly["source"] == "rollup" and fine["source"] == "rows"
    assert sum(b["predictions"] for b in hourly["buckets"]) == sum(b["predictions"] for b in fine["buckets"]) == 720
    (bucket,) = [b for b in body["buckets"] if b["predictions"]]
    live = health["live"]
    assert bucket["predictions"] == live["unlabelled"]["n"] == 720
    assert bucket["labelled"] == live["labelled"]["n"] == 720
    assert bucket["versions"] == {health["model"]["version"]: 720}
    for key in ("accuracy", "nll", "brier"):
        expected = live["labelled"][key]
        assert (bucket[key]["value"] if key == "accuracy" else bucket[key]) == pytest.approx(expected, abs=1e-9)
    assert bucket["ece"]["value"] == pytest.approx(live["labelled"]["ece"]["value"], abs=1e-9)
    assert bucket["confidence_psi"] == pytest.approx(live["unlabelled"]["psi"], abs=1e-6)
    assert bucket["class_shift"] == pytest.approx(live["unlabelled"]["class_shift_tv"], abs=1e-6)
    assert bucket["estimated_accuracy"] == pytest.approx(live["unlabelled"]["estimated_accuracy"], abs=1e-6)
    reasons = {r["code"]: r["status"] for r in health["reasons"]}
    checks = {c["code"]: c["status"] for c in bucket["checks"]}
    assert checks == {code: reasons[code] for code in checks}
    assert set(checks) == {"live_ece", "live_accuracy_drop", "confidence_psi", "estimated_accuracy_drop", "class_shift"}
    assert bucket["status"] == "critical"  # half of the traffic under noise sd 6: miscalibrated, and said so
    assert bucket["start_iso"].endswith("T00:00:00Z") and body["thresholds"]["ece_warning"] == 0.05
    assert len(body["reference"]["confidence_histogram"]) == len(bucket["confidence_histogram"])


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"bucket": "5x"}, 422, "not a duration"),
        ({"bucket": "30s"}, 422, "shorter than a minute"),
        ({"bucket": ""}, 422, "not a duration"),
        ({"since": "yesterday"}, 422, "neither an ISO 8601 time"),
        ({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, 422, "must be before"),
        ({"since": "0", "bucket": "1h"}, 422, "at most 2000"),
        ({"since": "nan"}, 422, "not a finite time"),
        ({"until": "inf"}, 422, "not a finite time"),
        ({"until": "9999-12-31T00:00:00Z"}, 422, "outside 1970-2100"),
        ({"since": "-5"}, 422, "outside 1970-2100"),
        ({"bucket": "400d"}, 422, "longer than 31 days"),
    ],
)
def test_bad_parameters_are_4xx_that_say_what_was_wrong(params: dict[str, str], status: int, words: str) -> None:
    with serve() as client:
        response = client.get(f"/v1/models/{served_name(client)}/calibration/history", params=params)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_an_unknown_model_is_404_and_no_log_means_no_history(tmp_path: Path) -> None:
    with serve() as client:
        response = client.get("/v1/models/nope/calibration/history")
        assert response.status_code == 404 and "nope" in response.json()["error"]["message"]
    with serve(settings_for(log_predictions=False, data_dir=tmp_path)) as client:
        response = client.get(f"/v1/models/{served_name(client)}/calibration/history")
    assert response.status_code == 404
    assert "CALIBSERVE_LOG_PREDICTIONS" in response.json()["error"]["message"]


def test_an_empty_log_gives_buckets_that_say_they_lack_data() -> None:
    with serve() as client:
        body = history(client, served_name(client), bucket="1h")
    assert len(body["buckets"]) in (24, 25)
    assert all(b["status"] == "insufficient_data" and b["ece"] is None for b in body["buckets"])
    assert all(len(b["insufficient"]) == 2 for b in body["buckets"])
