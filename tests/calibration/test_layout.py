"""The calibration package is numpy-only math; the card (pydantic) is built on its dataclasses, not beside them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from service import card
from service.calibration.metrics import ReliabilityBin
from service.calibration.reference import SelectiveRow
from service.calibration.uncertainty import MetricEstimate, NoiseFloor


def test_calibration_package_imports_numpy_and_nothing_heavier() -> None:
    code = (
        "import sys, pkgutil, importlib, service.calibration as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('service.calibration.' + m.name)\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'fastapi', 'onnxruntime', "
        "'torch', 'scipy', 'sklearn', 'onnx'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"service.calibration imported {out}"


def test_card_figures_are_the_math_dataclasses() -> None:
    # One home per type: the card's fields are the very dataclasses the math returns.
    after = card.SplitMetrics.model_fields
    assert after["ece"].annotation is MetricEstimate
    assert after["ece_noise_floor"].annotation is NoiseFloor
    assert after["reliability"].annotation == tuple[ReliabilityBin, ...]
    assert card.CalibrationCard.model_fields["selective"].annotation == tuple[SelectiveRow, ...]
    for name in ("MetricEstimate", "NoiseFloor", "ReliabilityBin", "SelectiveRow", "ConformalLevel"):
        assert not hasattr(card, name) or dataclasses.is_dataclass(getattr(card, name)), name
