"""The dashboard over the real app (httpx over ASGI, real onnxruntime and store): its figures are the history
API's and the health endpoint's, it holds no secret, it can be turned off, and bad parameters are 4xx."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.dashboard.charts import time_ticks
from tests.api.conftest import serve, settings_for
from tests.api.test_history_api import away_from_midnight
from tests.monitoring.test_feedback_api import (
    calibration,
    digits_test_split,
    noisy,
    predict_ids,
    send_feedback,
    served_name,
)

pytestmark = pytest.mark.api

SECRET = "s3cret-key-never-shown"


def table_rows(html: str) -> list[dict[str, Any]]:
    """The history table's rows: bucket start, predictions, labelled, ECE text, status."""
    found = []
    for start, status, cells in re.findall(r'<tr data-start="(\d+)" data-status="(\w+)">(.*?)</tr>', html):
        values = re.findall(r"<td>(.*?)</td>", cells)
        found.append({"start": int(start), "status": status, "predictions": int(values[0]),
                      "labelled": int(values[1]), "ece": values[2]})  # fmt: skip
    return found


@pytest.fixture(scope="module")
def drifted_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    away_from_midnight()
    features, labels = digits_test_split()
    settings = settings_for(api_key=SECRET, data_dir=tmp_path_factory.mktemp("dashboard"), window_labels=1000)
    with serve(settings) as client:
        headers = {"authorization": f"Bearer {SECRET}"}
        ids = predict_ids(client, np.concatenate([features, noisy(features, 6.0, seed=2)]))
        send_feedback(client, ids, [str(y) for y in np.concatenate([labels, labels])], headers)
        yield client


def test_the_page_shows_the_health_status_and_the_history_apis_figures(drifted_client: Any) -> None:
    client = drifted_client
    name = served_name(client)
    response = client.get(f"/dashboard/{name}?range=24h")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    health = calibration(client)
    assert f'<h2 id="status-heading">Status now: <span class="badge status-{health["status"]}"' in html
    for reason in health["reasons"]:
        assert f'<tr data-code="{reason["code"]}">' in html
    rows = table_rows(html)
    assert len(rows) >= 96  # 24 h of 15-minute buckets
    history = client.get(
        f"/v1/models/{name}/calibration/history",
        params={"since": str(rows[0]["start"]), "until": str(rows[-1]["start"] + 900), "bucket": "15m"},
    ).json()
    assert [b["start"] for b in history["buckets"]] == [r["start"] for r in rows]
    for row, bucket in zip(rows, history["buckets"], strict=True):
        assert (row["predictions"], row["labelled"], row["status"]) == (
            bucket["predictions"], bucket["labelled"], bucket["status"]
        )  # fmt: skip
        if bucket["ece"] is not None:
            ece = bucket["ece"]
            assert row["ece"] == f"{ece['value']:.3f} [{ece['lower']:.3f}, {ece['upper']:.3f}]"
    assert sum(r["predictions"] for r in rows) == 720
    # the charts: axis labels in text, thresholds labelled, statuses told apart by shape as well as colour
    for chart in ("chart-ece", "chart-accuracy", "chart-psi", "reliability-live", "reliability-card"):
        assert f'id="{chart}"' in html
    assert html.count(">time (UTC)</text>") == 3 and ">confidence</text>" in html and ">accuracy</text>" in html
    assert "warning 0.05" in html and "critical 0.1" in html and "PSI warning 0.1" in html
    assert '<rect class="marker status-critical"' in html  # squares: critical


def test_fit_to_data_shows_when_calibration_broke(drifted_client: Any) -> None:
    html = drifted_client.get("/dashboard").text
    assert 'aria-current="true">fit to data</a>' in html
    assert "last 1 hour, 1-minute buckets" in html
    assert 'id="breaking-point"' in html  # clean and drifted rows share a minute here: "not ok since" or "broke"


def test_no_secret_and_a_strict_content_security_policy(drifted_client: Any) -> None:
    response = drifted_client.get("/dashboard")
    assert SECRET not in response.text
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "<script>" not in response.text and " style=" not in response.text and "http://" not in response.text
    assert response.headers["cache-control"] == "no-store"
    script = drifted_client.get("/dashboard/static/dashboard.js")
    assert script.status_code == 200 and "visibilitychange" in script.text


def test_the_content_fragment_is_what_the_page_refreshes(drifted_client: Any) -> None:
    name = served_name(drifted_client)
    fragment = drifted_client.get(f"/dashboard/{name}/content?range=6h")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text and 'id="status-heading"' in fragment.text
    assert (
        f'data-content="/dashboard/{name}/content?range=6h"' in drifted_client.get(f"/dashboard/{name}?range=6h").text
    )


@pytest.mark.parametrize(
    ("url", "status", "words"),
    [("/dashboard?range=2y", 422, "range '2y'"), ("/dashboard/nope", 404, "nope")],
)
def test_bad_requests_are_4xx_that_say_what_was_wrong(drifted_client: Any, url: str, status: int, words: str) -> None:
    response = drifted_client.get(url)
    assert response.status_code == status
    assert words in response.json()["error"]["message"]


def test_it_can_be_turned_off(tmp_path: Path) -> None:
    with serve(settings_for(dashboard=False, data_dir=tmp_path)) as client:
        for url in ("/dashboard", f"/dashboard/{served_name(client)}", "/dashboard/static/dashboard.js"):
            response = client.get(url)
            assert response.status_code == 404, url
        assert "CALIBSERVE_DASHBOARD=false" in client.get("/dashboard").json()["error"]["message"]


def test_without_a_log_the_page_says_there_is_no_history(tmp_path: Path) -> None:
    with serve(settings_for(log_predictions=False, data_dir=tmp_path)) as client:
        response = client.get("/dashboard")
    assert response.status_code == 200
    assert "CALIBSERVE_LOG_PREDICTIONS=false" in response.text


def test_time_ticks_fall_on_round_utc_times() -> None:
    now = 1_796_000_000.0
    ticks = time_ticks(now - 3600, now)
    assert 4 <= len(ticks) <= 7 and all(t % 600 == 0 for t, _ in ticks)
    assert all(re.fullmatch(r"\d\d:\d\d", label) for _, label in ticks)
    assert all(re.fullmatch(r"\d\d-\d\d \d\d:\d\d", label) for _, label in time_ticks(now - 7 * 86400, now))
    assert time.time() > 0


def test_the_shadow_comparison_is_shown_as_the_shadow_api_gives_it(model_sources: Any, tmp_path: Path) -> None:
    from tests.api.test_shadow import predict_and_label, settings

    root = model_sources.repository(
        tmp_path / "repo", digits=model_sources.digits, **{"digits-t1": model_sources.digits_t1}
    )
    features, labels = digits_test_split()
    with serve(settings(root, tmp_path, "digits:digits-t1")) as client:
        predict_and_label(client, features.astype(np.float32), labels)
        shadow = client.get("/v1/models/digits/shadow").json()
        html = client.get("/dashboard/digits").text
    assert shadow["verdict"] == "champion better calibrated"
    verdict = re.search(r'<p id="shadow-verdict"><strong>(.*?)</strong> \((\d+) labelled', html)
    assert verdict is not None and verdict.groups() == (shadow["verdict"], str(shadow["labelled"]["n"]))
    nll = shadow["labelled"]["nll"]
    assert f"<td>{nll['champion']['value']:.4f}</td><td>{nll['challenger']['value']:.4f}</td>" in html
    assert "Champion <strong>digits</strong> against challenger <strong>digits-t1</strong>" in html
