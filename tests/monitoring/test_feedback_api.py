"""Live monitoring through the HTTP API: prediction ids, feedback, auth, /health/calibration, /metrics, shutdown.

Every test serves the real app (bundled digits model, real onnxruntime) with its own prediction log in
``tmp_path``; assertions about what was logged read the SQLite file itself.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families

from service.api.schemas import DIGIT_ONE, DIGIT_ZERO
from service.card import CalibrationCard
from service.monitoring.monitor import LOG_FILE
from service.settings import Settings
from service.training.data import load_dataset, stratified_split
from tests.api.conftest import Client, error_of, serve, settings_for
from tests.conftest import DEFAULT_MODEL_DIR
from tests.monitoring.test_log import rows, write_lock

pytestmark = pytest.mark.api

CLASSES = [str(i) for i in range(10)]
BATCH = 60


@functools.cache
def card() -> CalibrationCard:
    return CalibrationCard.from_json((DEFAULT_MODEL_DIR / "card.json").read_bytes())


@functools.cache
def digits_test_split() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The card's own test split (360 rows): the rows its reference metrics were measured on."""
    dataset = load_dataset("digits")
    split = stratified_split(dataset, 0.2, 0.2, seed=card().dataset.split_seed)
    assert len(split.test) == card().dataset.n_test == 360
    return dataset.features[split.test], dataset.labels[split.test]


def noisy(rows: NDArray[np.float64], sd: float, seed: int = 0) -> NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return np.clip(rows + rng.normal(0.0, sd, size=rows.shape), 0.0, 16.0)


def predict_all(client: Client, rows: NDArray[np.float64], batch: int = BATCH) -> list[dict[str, Any]]:
    predictions: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch):
        response = client.predict({"instances": rows[start : start + batch].tolist()})
        assert response.status_code == 200, response.text
        predictions += response.json()["predictions"]
    assert len(predictions) == len(rows)
    return predictions


def predict_ids(client: Client, rows: NDArray[np.float64], batch: int = BATCH) -> list[str]:
    return [p["prediction_id"] for p in predict_all(client, rows, batch)]


def send_feedback(
    client: Client, ids: list[str], labels: list[str], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for start in range(0, len(ids), 200):
        items = [
            {"prediction_id": i, "label": label}
            for i, label in zip(ids[start : start + 200], labels[start : start + 200], strict=True)
        ]
        response = client.post("/v1/feedback", json={"feedback": items}, headers=headers or {})
        assert response.status_code == 200, response.text
        for key, value in response.json()["counts"].items():
            counts[key] = counts.get(key, 0) + value
    return counts


def calibration(client: Client) -> dict[str, Any]:
    response = client.get("/health/calibration")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def reasons_by_code(health: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["code"]: r for r in health["reasons"]}


def not_ok(health: dict[str, Any]) -> set[str]:
    return {r["code"] for r in health["reasons"] if r["status"] != "ok"}


def on_store(target: Path | str, **overrides: Any) -> Settings:
    """Settings whose prediction log is ``target`` (the ``store_target`` fixture: SQLite or PostgreSQL)."""
    if isinstance(target, str):
        return settings_for(database_url=target, **overrides)
    return settings_for(data_dir=target.parent, **overrides)


def log_target(target: Path | str) -> Path | str:
    return target if isinstance(target, str) else target.parent / LOG_FILE


def stored_rows(target: Path | str, query: str) -> list[tuple[Any, ...]]:
    """Rows read from the log's own database, whichever backend it is."""
    return rows(target if isinstance(target, str) else target.parent / LOG_FILE, query)


def is_uuid7(text: str) -> bool:
    parsed = uuid.UUID(text)
    return str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122


def served_name(client: Client) -> str:
    """The name the app serves its (one) model under: the ``model`` of its log rows and metric series."""
    name: str = client.app.state.repository.resolve(None).name
    return name


def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


@pytest.fixture
def client(store_target: Path | str) -> Iterator[Client]:
    with serve(on_store(store_target)) as served:
        yield served


# -- prediction ids and feedback ----------------------------------------------------------------------------


def test_every_prediction_has_a_distinct_uuid7_id_that_is_logged(client: Client, store_target: Path | str) -> None:
    body = client.predict({"instances": [DIGIT_ZERO, DIGIT_ONE, DIGIT_ZERO]}).json()
    ids = [p["prediction_id"] for p in body["predictions"]]
    assert len(set(ids)) == 3 and all(is_uuid7(i) for i in ids)
    more = predict_ids(client, np.asarray([DIGIT_ONE] * 5, dtype=np.float64))
    assert len(set(ids + more)) == 8
    assert sorted(ids + more) == ids + more  # time-sortable: later requests sort after earlier ones
    assert client.post("/v1/feedback", json={"feedback": [{"prediction_id": ids[0], "label": "0"}]}).json()[
        "counts"
    ] == {"recorded": 1}  # flushes the log: everything below is committed
    logged = stored_rows(
        store_target, "SELECT id, model, model_version, served, class_index, confidence FROM predictions ORDER BY id"
    )
    assert [r[0] for r in logged] == ids + more
    assert {(r[1], r[3]) for r in logged} == {(served_name(client), 1)}  # one model, every row its answer
    for (_, _, version, _, index, confidence), prediction in zip(logged[:3], body["predictions"], strict=True):
        assert version == card().version
        assert index == prediction["class_index"]
        assert confidence == pytest.approx(prediction["confidence"], abs=1e-9)


def test_feedback_recorded_duplicate_conflict_unknown(client: Client, store_target: Path | str) -> None:
    ids = predict_ids(client, np.asarray([DIGIT_ZERO, DIGIT_ONE], dtype=np.float64))
    items = [{"prediction_id": ids[0], "label": "0"}, {"prediction_id": ids[1], "label": "1"}]
    first = client.post("/v1/feedback", json={"feedback": items})
    assert first.status_code == 200, first.text
    assert first.json() == {
        "results": [{"prediction_id": ids[0], "status": "recorded"}, {"prediction_id": ids[1], "status": "recorded"}],
        "counts": {"recorded": 2},
    }
    again = client.post("/v1/feedback", json={"feedback": items}).json()
    assert [r["status"] for r in again["results"]] == ["duplicate", "duplicate"]
    assert again["counts"] == {"duplicate": 2}
    other = client.post("/v1/feedback", json={"feedback": [{"prediction_id": ids[0], "label": "7"}]}).json()
    assert other["results"] == [{"prediction_id": ids[0], "status": "conflict"}]
    stranger = str(uuid.uuid4())
    unknown = client.post("/v1/feedback", json={"feedback": [{"prediction_id": stranger, "label": "3"}]}).json()
    assert unknown == {"results": [{"prediction_id": stranger, "status": "unknown_id"}], "counts": {"unknown_id": 1}}
    # the first label stands, stored as the class name; nothing was written for the unknown id
    assert sorted(stored_rows(store_target, "SELECT prediction_id, label FROM feedback")) == sorted(
        [(ids[0], "0"), (ids[1], "1")]
    )


def test_feedback_with_an_unknown_label_is_422_naming_it_and_records_nothing(
    client: Client, store_target: Path | str
) -> None:
    ids = predict_ids(client, np.asarray([DIGIT_ZERO, DIGIT_ONE], dtype=np.float64))
    items = [{"prediction_id": ids[0], "label": "0"}, {"prediction_id": ids[1], "label": "eleven"}]
    error = error_of(client.post("/v1/feedback", json={"feedback": items}), 422)
    assert "eleven" in error["message"]
    assert error["details"]["unknown"] == ["eleven"]
    assert stored_rows(store_target, "SELECT COUNT(*) FROM feedback") == [(0,)]
    # the valid item of the rejected request was not recorded either
    retry = client.post("/v1/feedback", json={"feedback": items[:1]}).json()
    assert retry["counts"] == {"recorded": 1}


def test_feedback_needs_at_least_one_item(client: Client) -> None:
    error = error_of(client.post("/v1/feedback", json={"feedback": []}), 422)
    assert "feedback" in error["message"]
    error_of(client.post("/v1/feedback", json={}), 422)


def test_more_feedback_items_than_the_limit_is_413(store_target: Path | str) -> None:
    with serve(on_store(store_target, max_feedback_items=3)) as client:
        ids = predict_ids(client, np.asarray([DIGIT_ZERO] * 4, dtype=np.float64))
        items = [{"prediction_id": i, "label": "0"} for i in ids]
        error = error_of(client.post("/v1/feedback", json={"feedback": items}), 413)
        assert error["details"]["limit"] == 3
        assert stored_rows(store_target, "SELECT COUNT(*) FROM feedback") == [(0,)]
        assert client.post("/v1/feedback", json={"feedback": items[:3]}).json()["counts"] == {"recorded": 3}


def test_feedback_needs_the_api_key_when_one_is_set(store_target: Path | str) -> None:
    with serve(on_store(store_target, api_key="s3cret-key")) as client:
        # predictions stay open
        ids = predict_ids(client, np.asarray([DIGIT_ZERO], dtype=np.float64))
        body = {"feedback": [{"prediction_id": ids[0], "label": "0"}]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            response = client.post("/v1/feedback", json=body, headers=headers)
            error = error_of(response, 401)
            assert error["type"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
            assert "s3cret-key" not in response.text
        assert stored_rows(store_target, "SELECT COUNT(*) FROM feedback") == [(0,)]
        ok = client.post("/v1/feedback", json=body, headers={"Authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["counts"] == {"recorded": 1}


def test_the_bearer_scheme_is_case_insensitive(tmp_path: Path) -> None:
    with serve(settings_for(data_dir=tmp_path, api_key="s3cret-key")) as client:
        ids = predict_ids(client, np.asarray([DIGIT_ZERO], dtype=np.float64))
        body = {"feedback": [{"prediction_id": ids[0], "label": "0"}]}
        response = client.post("/v1/feedback", json=body, headers={"Authorization": "bearer s3cret-key"})
        assert response.status_code == 200, response.text


def test_without_an_api_key_feedback_is_open(client: Client) -> None:
    ids = predict_ids(client, np.asarray([DIGIT_ONE], dtype=np.float64))
    response = client.post("/v1/feedback", json={"feedback": [{"prediction_id": ids[0], "label": "1"}]})
    assert response.status_code == 200, response.text


# -- what is logged -----------------------------------------------------------------------------------------


def test_inputs_are_not_logged_by_default(client: Client, store_target: Path | str) -> None:
    predict_ids(client, np.asarray([DIGIT_ZERO, DIGIT_ONE], dtype=np.float64))
    client.post("/v1/feedback", json={"feedback": [{"prediction_id": str(uuid.uuid4()), "label": "0"}]})  # flush
    assert stored_rows(store_target, "SELECT COUNT(*), COUNT(features) FROM predictions") == [(2, 0)]


def test_log_inputs_stores_the_features(store_target: Path | str) -> None:
    rows = np.asarray([DIGIT_ZERO, DIGIT_ONE, [16.0] * 64], dtype=np.float64)
    with serve(on_store(store_target, log_inputs=True)) as client:
        ids = predict_ids(client, rows)
    stored = dict(stored_rows(store_target, "SELECT id, features FROM predictions"))
    assert set(stored) == set(ids)
    for prediction_id, row in zip(ids, rows, strict=True):
        np.testing.assert_array_equal(np.frombuffer(stored[prediction_id], dtype=np.float32), row.astype(np.float32))


def test_with_logging_off_nothing_is_written_and_feedback_finds_nothing(tmp_path: Path) -> None:
    with serve(settings_for(data_dir=tmp_path, log_predictions=False)) as client:
        ids = predict_ids(client, np.asarray([DIGIT_ZERO], dtype=np.float64))
        assert is_uuid7(ids[0])
        response = client.post("/v1/feedback", json={"feedback": [{"prediction_id": ids[0], "label": "0"}]})
        assert response.json()["counts"] == {"unknown_id": 1}
        health = calibration(client)
        assert reasons_by_code(health)["live_monitoring_off"]["status"] == "ok"
        assert health["log"] is None
    assert not (tmp_path / LOG_FILE).exists()


def test_dropped_rows_are_counted_in_health_and_metrics_never_silent(store_target: Path | str) -> None:
    """A tiny queue with on_full=drop while the writer is held up: predictions still answer, and every row is
    either in the file or counted as dropped (in /health/calibration and in /metrics)."""
    rows, _ = digits_test_split()
    with serve(on_store(store_target, log_queue_size=2, log_queue_full="drop")) as client:
        before = scrape(client)
        with write_lock(log_target(store_target)) as lock:
            acknowledged = predict_ids(client, rows[:200], batch=50)
            health = calibration(client)
            dropped = health["log"]["dropped"]
            assert 150 <= dropped <= 198, health["log"]
            reason = reasons_by_code(health)["log_dropped_rows"]
            assert reason["status"] == "warning" and reason["value"] == dropped
            assert health["status"] in ("warning", "critical")
            assert (
                total(scrape(client), "calibserve_log_dropped_rows_total")
                - total(before, "calibserve_log_dropped_rows_total")
                == dropped
            )
            lock.execute("ROLLBACK")
        client.post("/v1/feedback", json={"feedback": [{"prediction_id": str(uuid.uuid4()), "label": "0"}]})  # flush
        logged = {r[0] for r in stored_rows(store_target, "SELECT id FROM predictions")}
        assert logged <= set(acknowledged)
        assert len(logged) + dropped == len(acknowledged) == 200


def test_shutdown_commits_every_acknowledged_prediction(store_target: Path | str) -> None:
    """The writer is held up (another connection holds the write lock) while the last predictions are answered,
    so at shutdown they are only queued; leaving serve() must still leave every one of them in the store."""
    rows, _ = digits_test_split()
    with ExitStack() as held:
        with serve(on_store(store_target)) as client:
            acknowledged = predict_ids(client, rows, batch=48)
            client.post("/v1/feedback", json={"feedback": [{"prediction_id": acknowledged[0], "label": "0"}]})
            lock = held.enter_context(write_lock(log_target(store_target)))
            queued = predict_ids(client, np.concatenate([rows] * 3), batch=48)
            assert stored_rows(store_target, "SELECT COUNT(*) FROM predictions") == [(360,)]  # the rest is queued
            release = threading.Timer(0.5, lambda: lock.execute("ROLLBACK"))
            release.start()
            held.callback(release.join)
        # leaving serve() ran the lifespan's shutdown: it waited for the writer to drain its queue
        logged = [r[0] for r in stored_rows(store_target, "SELECT id FROM predictions ORDER BY id")]
    assert logged == sorted(acknowledged + queued)
    if isinstance(store_target, Path):
        assert stored_rows(store_target, "PRAGMA integrity_check") == [("ok",)]


# -- /health/calibration ------------------------------------------------------------------------------------


def test_a_fresh_log_has_insufficient_data_not_an_alarm(client: Client) -> None:
    health = calibration(client)
    reasons = reasons_by_code(health)
    assert health["status"] == "insufficient_data"
    assert reasons["card_ece"]["status"] == "ok"
    assert reasons["labels_insufficient"]["status"] == "insufficient_data"
    assert reasons["predictions_insufficient"]["status"] == "insufficient_data"
    assert not_ok(health) == {"labels_insufficient", "predictions_insufficient"}
    assert health["log"]["dropped"] == 0


def test_the_test_split_with_its_true_labels_is_ok(client: Client) -> None:
    rows, labels = digits_test_split()
    ids = predict_ids(client, rows)
    assert send_feedback(client, ids, [CLASSES[i] for i in labels]) == {"recorded": 360}
    health = calibration(client)
    assert health["status"] == "ok", health["reasons"]
    reasons = reasons_by_code(health)
    assert "labels_insufficient" not in reasons and "predictions_insufficient" not in reasons
    assert live_labelled_n(health) == 360
    # the same rows the card was measured on: the live ECE is the card's (up to float32 storage)
    assert reasons["live_ece"]["value"] == pytest.approx(card().test.after_temperature.ece.value, abs=2e-3)


def test_swapped_labels_raise_live_accuracy_or_ece(client: Client) -> None:
    rows, labels = digits_test_split()
    rng = np.random.default_rng(7)
    swapped = labels.copy()
    flip = rng.random(len(labels)) < 0.4
    swapped[flip] = (swapped[flip] + 1) % 10
    ids = predict_ids(client, rows)
    assert send_feedback(client, ids, [CLASSES[i] for i in swapped]) == {"recorded": 360}
    health = calibration(client)
    assert health["status"] in ("warning", "critical"), health["reasons"]
    assert not_ok(health) & {"live_accuracy_drop", "live_ece"}, health["reasons"]


def test_noisy_inputs_raise_label_free_drift(client: Client) -> None:
    rows, _ = digits_test_split()
    predict_ids(client, noisy(rows, 6.0))
    health = calibration(client)
    assert health["status"] in ("warning", "critical"), health["reasons"]
    assert not_ok(health) & {"confidence_psi", "estimated_accuracy_drop"}, health["reasons"]


def live_labelled_n(health: dict[str, Any]) -> int:
    """Number of labelled predictions in the live summary."""
    live = health["live"]
    assert isinstance(live, dict), health
    labelled = live["labelled"]
    n = labelled["n"]
    assert isinstance(n, int)
    return n


# -- /metrics -----------------------------------------------------------------------------------------------


def test_metrics_count_predictions_feedback_requests_and_show_live_ece(client: Client) -> None:
    rows, labels = digits_test_split()
    before = scrape(client)
    predictions = predict_all(client, rows)
    ids = [p["prediction_id"] for p in predictions]
    send_feedback(client, ids[:300], [CLASSES[i] for i in labels[:300]])
    send_feedback(client, ids[:5], [CLASSES[i] for i in labels[:5]])  # duplicates
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    model = served_name(client)
    assert delta("calibserve_predictions_total") == 360
    assert delta("calibserve_predictions_total", model=model) == 360
    for c in CLASSES:
        assert delta("calibserve_predictions_total", model=model, label=c) == sum(p["label"] == c for p in predictions)
    assert delta("calibserve_feedback_total", status="recorded") == 300
    assert delta("calibserve_feedback_total", status="duplicate") == 5
    assert delta("calibserve_requests_total", route="/v1/predict", method="POST", status="200") == 6
    assert delta("calibserve_requests_total", route="/v1/feedback", method="POST", status="200") == 3
    assert delta("calibserve_prediction_confidence_count") == 360
    assert delta("calibserve_prediction_confidence_count", model=model) == 360
    live_ece = reasons_by_code(calibration(client))["live_ece"]["value"]
    assert live_ece > 0
    series = {"model": model, "version": card().version[:12]}
    assert total(after, "calibserve_live_ece", **series) == pytest.approx(live_ece, rel=1e-9)
    text = client.get("/metrics").text
    for name in (
        "calibserve_predictions_total",
        'calibserve_feedback_total{status="recorded"}',
        'route="/v1/predict"',
        "calibserve_live_ece",
    ):
        assert name in text
