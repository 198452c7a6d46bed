"""CALIBSERVE_CONFORMAL_GUARANTEE=pac: the sets use the card's PAC thresholds, and the answer says so."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from service.errors import ConfigurationError
from service.inference.artifact import load_artifact
from service.inference.engine import InferenceEngine
from tests.api.conftest import serve, settings_for
from tests.conftest import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.api


def test_pac_sets_use_the_cards_pac_thresholds(digits: NDArray[np.float64], card: dict[str, Any]) -> None:
    pac = {level["coverage"]: level["pac"] for level in card["conformal"]}
    assert all(p is not None and p["delta"] == 0.05 for p in pac.values())
    rows = digits[:300].astype(np.float32)
    with serve(settings_for(conformal_guarantee="pac")) as client:
        for coverage, figures in pac.items():
            response = client.predict({"instances": rows.tolist(), "coverage": coverage})
            assert response.status_code == 200, response.text
            body = response.json()
            conformal = body["model"]["conformal"]
            assert conformal["guarantee"] == "pac" and conformal["delta"] == 0.05
            # What the PAC threshold promises for this card: coverage below nominal with probability <= delta.
            assert conformal["p_coverage_below_nominal"] == pytest.approx(figures["p_coverage_below_nominal"])
            assert conformal["p_coverage_below_nominal"] <= 0.05
            classes = card["classes"]
            for prediction in body["predictions"]:
                expected = {c for c in classes if prediction["probabilities"][c] >= figures["threshold"]}
                expected.add(prediction["label"])
                assert set(prediction["prediction_set"]) == expected


def test_marginal_is_the_default_and_pac_sets_contain_marginal_sets(card: dict[str, Any]) -> None:
    artifact = load_artifact(DEFAULT_MODEL_DIR)
    marginal = InferenceEngine(artifact)
    pac = InferenceEngine(artifact, conformal_guarantee="pac")
    assert marginal.conformal_guarantee == "marginal" and marginal.pac_delta is None
    for level in card["conformal"]:
        # A higher order statistic: a lower probability threshold, so every marginal set is inside the PAC set.
        assert pac.conformal_threshold(level["coverage"]) == level["pac"]["threshold"]
        assert pac.conformal_threshold(level["coverage"]) <= marginal.conformal_threshold(level["coverage"])
        assert marginal.coverage_given_card[level["coverage"]].p_below_nominal > 0.4
        assert pac.coverage_given_card[level["coverage"]].p_below_nominal <= 0.05


def test_pac_refused_at_start_up_for_a_card_without_pac_thresholds() -> None:
    artifact = load_artifact(DEFAULT_MODEL_DIR)
    old_levels = tuple(level.model_copy(update={"pac": None}) for level in artifact.card.conformal)
    old = dataclasses.replace(artifact, card=artifact.card.model_copy(update={"conformal": old_levels}))
    with pytest.raises(ConfigurationError, match="no PAC conformal thresholds"):
        InferenceEngine(old, conformal_guarantee="pac")
    InferenceEngine(old)  # the default still serves it
