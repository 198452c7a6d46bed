"""POST /v1/predict: every number checked against onnxruntime on the file and the card (bundled + tiny)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi import FastAPI
from numpy.typing import NDArray

from service.api.schemas import DIGIT_ONE, DIGIT_ZERO
from service.errors import ConfigurationError
from service.main import create_app
from tests.api.conftest import Client, error_of, serve, settings_for
from tests.conftest import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.api

MAX_ROWS_PER_REQUEST = 900


def ort_outputs(session: ort.InferenceSession, rows: NDArray[np.float64]) -> tuple[NDArray[Any], NDArray[Any]]:
    logits, probabilities = session.run(["logits", "probabilities"], {"features": rows.astype(np.float32)})
    return np.asarray(logits, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)


def predict_ok(client: Client, body: dict[str, Any], url: str = "/v1/predict") -> dict[str, Any]:
    """The response without its per-call prediction ids (fresh UUIDv7s), so that answers compare equal."""
    response = client.predict(body, url)
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    assert len(payload["predictions"]) == len(body["instances"])
    ids = [prediction.pop("prediction_id") for prediction in payload["predictions"]]
    assert len(set(ids)) == len(ids)
    return payload


def predict_all(client: Client, rows: NDArray[np.float64], **options: Any) -> list[dict[str, Any]]:
    predictions: list[dict[str, Any]] = []
    for start in range(0, len(rows), MAX_ROWS_PER_REQUEST):
        chunk = rows[start : start + MAX_ROWS_PER_REQUEST].tolist()
        predictions += predict_ok(client, {"instances": chunk, **options})["predictions"]
    return predictions


@dataclass(frozen=True)
class ModelRun:
    """One served model, its card and onnxruntime session, and its answers for every digits row."""

    name: str
    card: dict[str, Any]
    session: ort.InferenceSession
    predictions: dict[float, list[dict[str, Any]]]

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])


def model_run(name: str, directory: Path, client: Client, digits: NDArray[np.float64]) -> ModelRun:
    card = json.loads((directory / "card.json").read_text(encoding="utf-8"))
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    predictions = {c: predict_all(client, digits, coverage=c) for c in (0.9, 0.95)}
    return ModelRun(name, card, session, predictions)


@pytest.fixture(scope="module")
def bundled_run(client: Client, digits: NDArray[np.float64]) -> ModelRun:
    return model_run("bundled", DEFAULT_MODEL_DIR, client, digits)


@pytest.fixture(scope="module")
def tiny_run(tiny_artifact_dir: Path, digits: NDArray[np.float64]) -> ModelRun:
    with serve(settings_for(model_path=tiny_artifact_dir)) as client:
        return model_run("tiny", tiny_artifact_dir, client, digits)


@pytest.fixture(params=["bundled", "tiny"])
def run(request: pytest.FixtureRequest) -> ModelRun:
    """Every digits row at both coverage levels, on the bundled model and on a barely trained one.

    The bundled model is so confident that its conformal thresholds exceed 0.5 (every set is a single
    class); the tiny model's thresholds are low, so multi-class sets and non-monotone bins get exercised.
    """
    selected: ModelRun = request.getfixturevalue(f"{request.param}_run")
    return selected


def probability_matrix(predictions: list[dict[str, Any]], classes: list[str]) -> NDArray[np.float64]:
    return np.array([[p["probabilities"][c] for c in classes] for p in predictions], dtype=np.float64)


def test_predictions_come_back_in_order_one_per_instance(client: Client, card: dict[str, Any]) -> None:
    rows = [DIGIT_ZERO, DIGIT_ONE, DIGIT_ZERO, DIGIT_ONE, DIGIT_ONE]
    predictions = predict_ok(client, {"instances": rows})["predictions"]
    assert [p["label"] for p in predictions] == ["0", "1", "0", "1", "1"]
    assert [list(p["probabilities"]) for p in predictions] == [card["classes"]] * len(rows)


def test_probabilities_equal_onnxruntime_on_the_file(run: ModelRun, digits: NDArray[np.float64]) -> None:
    _, expected = ort_outputs(run.session, digits)
    got = probability_matrix(run.predictions[0.9], run.classes)
    assert got.shape == expected.shape == (len(digits), len(run.classes))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    assert (got >= 0).all()


def test_label_index_and_confidence_are_the_argmax(run: ModelRun) -> None:
    for prediction in run.predictions[0.9]:
        probs = np.array([prediction["probabilities"][c] for c in run.classes])
        index = int(np.argmax(probs))
        assert prediction["class_index"] == index
        assert prediction["label"] == run.classes[index]
        assert prediction["confidence"] == probs.max()


def test_prediction_set_is_the_conformal_set_plus_the_label(run: ModelRun) -> None:
    thresholds = {level["coverage"]: level["threshold"] for level in run.card["conformal"]}
    assert set(thresholds) == {0.9, 0.95}
    below_threshold = 0
    for coverage, predictions in run.predictions.items():
        for prediction in predictions:
            expected = {c for c in run.classes if prediction["probabilities"][c] >= thresholds[coverage]}
            below_threshold += not expected
            expected.add(prediction["label"])
            got = prediction["prediction_set"]
            assert got, "a prediction set is never empty"
            assert prediction["label"] in got
            assert set(got) == expected
            assert got == sorted(got, key=run.classes.index), "sets list classes in the card's order"
    if run.name == "bundled":
        assert below_threshold > 0, "no row below the conformal threshold: the label-is-added rule was not hit"


def test_higher_coverage_sets_contain_lower_coverage_sets(run: ModelRun) -> None:
    for narrow, wide in zip(run.predictions[0.9], run.predictions[0.95], strict=True):
        assert set(narrow["prediction_set"]) <= set(wide["prediction_set"])


def test_the_tiny_model_gives_multi_class_sets_that_grow_with_coverage(tiny_run: ModelRun) -> None:
    """Guards the two tests above against passing on singleton sets only (the bundled model's are)."""
    run = tiny_run
    sizes = {c: np.array([len(p["prediction_set"]) for p in run.predictions[c]]) for c in (0.9, 0.95)}
    assert sizes[0.9].max() > 1
    assert (sizes[0.95] > sizes[0.9]).any()


def bands_of(run: ModelRun) -> dict[float, dict[str, Any]]:
    return {p["expected_accuracy"]["confidence_lower"]: p["expected_accuracy"] for p in run.predictions[0.9]}


def card_bins_in(card: dict[str, Any], band: dict[str, Any]) -> list[dict[str, Any]]:
    bins = card["test"]["after_temperature"]["reliability"]
    lower, upper = band["confidence_lower"], band["confidence_upper"]
    return [b for b in bins if b["lower"] >= lower - 1e-12 and b["upper"] <= upper + 1e-12]


def test_expected_accuracy_is_the_confidence_corrected_by_its_card_bands_gap(run: ModelRun) -> None:
    min_support = 10  # Settings().min_bin_support
    for prediction in run.predictions[0.9]:
        band = prediction["expected_accuracy"]
        confidence = prediction["confidence"]
        lower, upper = band["confidence_lower"], band["confidence_upper"]
        assert lower <= confidence < upper or confidence == upper == 1.0
        members = card_bins_in(run.card, band)
        assert members and members[0]["lower"] == lower and members[-1]["upper"] == upper
        support = sum(b["count"] for b in members)
        assert band["support"] == support >= min_support
        correct = sum((b["accuracy"] or 0.0) * b["count"] for b in members)
        mean_confidence = sum((b["mean_confidence"] or 0.0) * b["count"] for b in members) / support
        # The row's own confidence corrected by its band's gap on the test split (accuracy - mean confidence).
        expected = min(1.0, max(0.0, confidence + correct / support - mean_confidence))
        assert band["value"] == pytest.approx(expected, abs=1e-12)
        assert band["interval"][0] <= band["value"] <= band["interval"][1]
        if upper < 1.0:
            # Bins are merged left to right only until the band has enough support.
            last = [b for b in members if b["count"]][-1]
            assert support - last["count"] < min_support
    bands = [bands_of(run)[k] for k in sorted(bands_of(run))]
    assert len(bands) >= 2, "every digits row fell in one band: the lookup was not exercised"
    for below, above in itertools.pairwise(bands):
        assert below["confidence_upper"] <= above["confidence_lower"] + 1e-12


def test_expected_accuracy_is_monotone_where_the_card_bins_are(run: ModelRun) -> None:
    """Between two bands, if the card's non-empty bins from the first to the last are monotone, so are the bands."""
    bins = run.card["test"]["after_temperature"]["reliability"]
    bands = [bands_of(run)[k] for k in sorted(bands_of(run))]
    compared = 0
    for i, low in enumerate(bands):
        for high in bands[i + 1 :]:
            span = [
                b["accuracy"]
                for b in bins
                if b["count"] and b["lower"] >= low["confidence_lower"] - 1e-12
                if b["upper"] <= high["confidence_upper"] + 1e-12
            ]
            if all(a <= b for a, b in itertools.pairwise(span)):
                compared += 1
                assert low["value"] <= high["value"], (low, high)
    if run.name == "bundled":
        # Its merged bands happen to be monotone (0.5, 0.82, 0.997); per row, confidence plus the band's gap is
        # monotone within a band but may step down where bands meet, so only the band values are compared here.
        by_confidence = sorted(run.predictions[0.9], key=lambda p: p["confidence"])
        for lower in {p["expected_accuracy"]["confidence_lower"] for p in by_confidence}:
            values = [
                p["expected_accuracy"]["value"]
                for p in by_confidence
                if p["expected_accuracy"]["confidence_lower"] == lower
            ]
            assert all(a <= b for a, b in itertools.pairwise(values))
    else:
        assert compared > 0, "no pair of bands over a monotone run of card bins: nothing was compared"


def test_min_bin_support_one_quotes_each_card_bin(card: dict[str, Any], digits: NDArray[np.float64]) -> None:
    with serve(settings_for(min_bin_support=1)) as client:
        predictions = predict_all(client, digits[::3])
    bins = {b["lower"]: b for b in card["test"]["after_temperature"]["reliability"]}
    for prediction in predictions:
        band = prediction["expected_accuracy"]
        card_bin = bins[band["confidence_lower"]]
        assert band["support"] == card_bin["count"] >= 1
        gap = card_bin["accuracy"] - card_bin["mean_confidence"]
        assert band["value"] == pytest.approx(min(1.0, max(0.0, prediction["confidence"] + gap)), abs=1e-12)


def test_entropy_and_margin_follow_from_the_probabilities(run: ModelRun) -> None:
    probs = probability_matrix(run.predictions[0.9], run.classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=1)
    top_two = np.sort(probs, axis=1)[:, -2:]
    got_entropy = np.array([p["entropy"] for p in run.predictions[0.9]])
    got_margin = np.array([p["margin"] for p in run.predictions[0.9]])
    np.testing.assert_allclose(got_entropy, entropy, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got_margin, top_two[:, 1] - top_two[:, 0], rtol=0, atol=1e-12)
    assert (got_entropy >= 0).all() and (got_entropy <= math.log(len(run.classes)) + 1e-9).all()


def test_default_settings_never_abstain(run: ModelRun) -> None:
    assert not any(p["abstain"] for p in run.predictions[0.9])


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_lists_the_k_most_probable_classes(client: Client, digits: NDArray[np.float64], k: int) -> None:
    rows = digits[:40].tolist()
    for prediction in predict_ok(client, {"instances": rows, "top_k": k})["predictions"]:
        top = prediction["top_k"]
        assert len(top) == k
        probabilities = [entry["probability"] for entry in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(prediction["probabilities"][entry["label"]] == entry["probability"] for entry in top)
        assert top[0]["label"] == prediction["label"]
        # Nothing left out is more probable than the last one listed.
        listed = {entry["label"] for entry in top}
        assert all(p <= probabilities[-1] for c, p in prediction["probabilities"].items() if c not in listed)


def test_optional_blocks_are_absent_unless_asked(client: Client) -> None:
    prediction = predict_ok(client, {"instances": [DIGIT_ZERO]})["predictions"][0]
    assert prediction.get("top_k") is None
    assert prediction.get("logits") is None


def test_include_logits_returns_the_graph_logits(
    client: Client, digits: NDArray[np.float64], ort_session: ort.InferenceSession
) -> None:
    rows = digits[::37]
    predictions = predict_ok(client, {"instances": rows.tolist(), "include_logits": True})["predictions"]
    logits, _ = ort_outputs(ort_session, rows)
    np.testing.assert_allclose(np.array([p["logits"] for p in predictions]), logits, rtol=0, atol=1e-5)


def test_model_block_describes_the_card(client: Client, card: dict[str, Any]) -> None:
    model = predict_ok(client, {"instances": [DIGIT_ZERO], "coverage": 0.95})["model"]
    after = card["test"]["after_temperature"]
    assert model["name"] == card["name"] == "digits"
    assert model["version"] == card["version"]
    assert model["temperature"] == card["temperature"]["value"]
    assert model["label_smoothing"] == card["training"]["label_smoothing"]
    assert model["smoothing_prior"] == card["training"]["smoothing_prior"]
    assert model["ece"] == {
        "value": after["ece"]["value"],
        "lower": after["ece"]["lower"],
        "upper": after["ece"]["upper"],
        "n": after["ece"]["n"],
        "noise_floor": after["ece_noise_floor"]["mean"],
    }
    assert model["coverage"] == 0.95
    assert model["abstain_threshold"] == 0.0
    # Coverage given this card's 360 calibration samples: Beta(343, 18) (tests/calibration checks the law).
    conformal = model["conformal"]
    assert conformal["n_calibration"] == card["conformal"][1]["n_calibration"] == 360
    assert conformal["p_coverage_below_nominal"] == pytest.approx(0.4662, abs=1e-4)
    assert conformal["coverage_quantile_05"] == pytest.approx(0.9300, abs=1e-4)


def named(row: list[float] | list[int], names: list[str]) -> dict[str, float]:
    return dict(zip(names, map(float, row), strict=True))


def test_object_rows_give_the_same_answer_as_lists(
    client: Client, card: dict[str, Any], digits: NDArray[np.float64]
) -> None:
    names = card["io"]["feature_names"]
    assert names[:2] == ["pixel_0_0", "pixel_0_1"] and len(names) == 64
    rows = digits[:6].tolist()
    as_lists = predict_ok(client, {"instances": rows, "top_k": 2})
    # Key order must not matter: send the names reversed.
    objects = [dict(reversed(list(named(row, names).items()))) for row in rows]
    as_objects = predict_ok(client, {"instances": objects, "top_k": 2})
    assert as_objects == as_lists
    mixed = predict_ok(client, {"instances": [rows[0], objects[1]], "top_k": 2})
    assert mixed["predictions"] == as_lists["predictions"][:2]


def test_object_row_missing_a_feature_is_named(client: Client, card: dict[str, Any]) -> None:
    row = named(DIGIT_ZERO, card["io"]["feature_names"])
    del row["pixel_3_4"]
    error = error_of(client.predict({"instances": [named(DIGIT_ONE, card["io"]["feature_names"]), row]}), 422)
    assert error["type"] == "invalid_input"
    assert "instances[1]" in error["message"] and "pixel_3_4" in error["message"]
    assert error["details"]["missing"] == ["pixel_3_4"]


def test_object_row_with_an_unknown_feature_is_named(client: Client, card: dict[str, Any]) -> None:
    row = named(DIGIT_ZERO, card["io"]["feature_names"])
    row["pixel_8_0"] = 1.0
    error = error_of(client.predict({"instances": [row]}), 422)
    assert error["type"] == "invalid_input"
    assert "instances[0]" in error["message"] and "pixel_8_0" in error["message"]
    assert error["details"]["unknown"] == ["pixel_8_0"]


def test_abstain_below_flags_low_confidence_rows(digits: NDArray[np.float64]) -> None:
    with serve(settings_for(abstain_below=0.999)) as client:
        payload = predict_ok(client, {"instances": digits[:300].tolist()})
    assert payload["model"]["abstain_threshold"] == 0.999
    flags = [(p["confidence"] < 0.999, p["abstain"]) for p in payload["predictions"]]
    assert all(expected == got for expected, got in flags)
    assert {got for _, got in flags} == {True, False}, "need rows on both sides of the threshold"


def test_target_accuracy_picks_the_lowest_threshold_whose_lower_bound_reaches_it(
    card: dict[str, Any], digits: NDArray[np.float64]
) -> None:
    # Clopper–Pearson lower bounds of the bundled card's rows reach 0.98 from 0.99 down to 0.9 (0.9862), not
    # at 0.8 (0.9778); tests/inference/test_engine.py checks the bounds.
    target, threshold = 0.98, 0.9
    with serve(settings_for(target_accuracy=target)) as client:
        payload = predict_ok(client, {"instances": digits[:300].tolist()})
    assert payload["model"]["abstain_threshold"] == threshold
    assert all(p["abstain"] == (p["confidence"] < threshold) for p in payload["predictions"])


def enter_lifespan(app: FastAPI) -> None:
    async def run() -> None:
        async with app.router.lifespan_context(app):
            pass

    asyncio.run(run())


def test_unreachable_target_accuracy_fails_start_up(card: dict[str, Any]) -> None:
    # Below the best measured accuracy (0.9971) but not shown at 95% confidence with 360 test samples.
    target = 0.995
    app = create_app(settings_for(target_accuracy=target))
    with pytest.raises(ConfigurationError, match=f"target accuracy {target} .* at least 598 kept test samples"):
        enter_lifespan(app)
    assert app.state.repository is None


def test_named_model_route_answers_like_v1_predict(client: Client) -> None:
    body = {"instances": [DIGIT_ZERO, DIGIT_ONE], "top_k": 2}
    assert predict_ok(client, body, "/v1/models/digits/predict") == predict_ok(client, body)


def test_named_model_route_404s_for_other_names(client: Client) -> None:
    error = error_of(client.predict({"instances": [DIGIT_ZERO]}, "/v1/models/mnist/predict"), 404)
    assert error["type"] == "model_not_found"
    assert "mnist" in error["message"]
    assert error["details"]["available"] == ["digits"]


@pytest.mark.parametrize("url", ["/v1/predict", "/v1/models/digits/predict"])
def test_body_model_field_must_name_the_loaded_model(client: Client, url: str) -> None:
    assert predict_ok(client, {"instances": [DIGIT_ZERO], "model": "digits"}, url)["predictions"][0]["label"] == "0"
    error = error_of(client.predict({"instances": [DIGIT_ZERO], "model": "other"}, url), 404)
    assert error["type"] == "model_not_found"
    assert "'other'" in error["message"]
