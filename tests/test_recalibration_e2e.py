"""A real ``calibserve serve`` left alone with CALIBSERVE_RECALIBRATION=auto: on drift a temperature repairs it
fits, shadows and promotes by itself (its background policy, not a test calling it), and the version serving
afterwards is calibrated on later traffic. bench/recalibration_demo.py is the long form of this."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.test_serve_e2e import call_json as call
from tests.test_serve_e2e import serving

pytestmark = pytest.mark.e2e


def send(base: str, rows: np.ndarray, labels: np.ndarray) -> None:
    for start in range(0, len(rows), 50):
        answer = call(base, "/v1/predict", {"instances": rows[start : start + 50].round(3).tolist()})
        items = [{"prediction_id": p["prediction_id"], "label": str(y)}
                 for p, y in zip(answer["predictions"], labels[start : start + 50], strict=True)]  # fmt: skip
        call(base, "/v1/feedback", {"feedback": items})


def wait_for(base: str, kind: str, seconds: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        decisions: list[dict[str, Any]] = call(base, "/v1/models/digits/recalibrations")["decisions"]
        if any(d["kind"] == kind for d in decisions):
            return decisions
        time.sleep(0.5)
    raise AssertionError(f"no {kind} within {seconds} s: {call(base, '/v1/models/digits/recalibrations')}")


def test_a_server_left_alone_repairs_its_calibration(tmp_path: Path) -> None:
    features, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(5).permutation(len(labels))
    faint, labels = features[order] * 0.45, labels[order]
    env = {"CALIBSERVE_RECALIBRATION": "auto", "CALIBSERVE_RECALIBRATION_INTERVAL_SECONDS": "1"}
    with serving(tmp_path / "data", tmp_path / "serve.log", extra_env=env) as base:
        original = call(base, "/health/ready")["version"]
        send(base, faint[:600], labels[:600])
        fitted = wait_for(base, "proposal")
        assert [d["kind"] for d in fitted][-2:] == ["fit", "proposal"]
        send(base, faint[600:1200], labels[600:1200])  # the shadow's evidence
        decisions = wait_for(base, "promotion")
        promoted = next(d for d in decisions if d["kind"] == "promotion")
        assert call(base, "/health/calibration?model=digits")["model"]["version"] == promoted["to_version"] != original
        send(base, faint[1200:1797], labels[1200:1797])  # later traffic, the new version alone
        health = call(base, "/health/calibration?model=digits")
        ece = next(r for r in health["reasons"] if r["code"] == "live_ece")
        assert ece["status"] == "ok" and ece["value"] < 0.05, ece
