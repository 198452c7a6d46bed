"""The `calibserve` command as a user runs it: a real subprocess, on the committed default model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_MODEL_DIR, REPO_ROOT

pytestmark = pytest.mark.e2e


def calibserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_inspect_verifies_and_summarises_the_default_model() -> None:
    result = calibserve("inspect", str(DEFAULT_MODEL_DIR))
    assert result.returncode == 0, result.stderr
    card = json.loads((DEFAULT_MODEL_DIR / "card.json").read_text())
    assert "verified" in result.stdout
    assert card["version"][:16] in result.stdout
    assert f"T = {card['temperature']['value']:.4f}" in result.stdout
    assert "ECE noise floor at n = 360" in result.stdout
    # The conformal guarantee given this card, not only the nominal level (Beta(k, n + 1 - k), Vovk 2012).
    assert "P(coverage < 90%) = 0.47, 5% quantile 0.873" in result.stdout


def test_inspect_json_is_the_card() -> None:
    result = calibserve("inspect", str(DEFAULT_MODEL_DIR / "model.onnx"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads((DEFAULT_MODEL_DIR / "card.json").read_text())


def test_inspect_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    result = calibserve("inspect", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "error:" in result.stderr and "model file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_commands() -> None:
    result = calibserve("--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "inspect" in result.stdout
    train_help = calibserve("train", "--help")
    assert "--label-smoothing" in train_help.stdout and "--smoothing-prior" in train_help.stdout


def test_service_side_modules_do_not_import_torch() -> None:
    """The service runs with onnxruntime + numpy only; torch, sklearn and onnx are trainer-only."""
    code = (
        "import sys, service.cli, service.inference.artifact, service.card, "
        "service.calibration.metrics, service.calibration.temperature, service.calibration.conformal\n"
        "service.cli.build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'sklearn', 'onnx', 'scipy', 'matplotlib') if m in sys.modules)\n"
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_serve_help_lists_every_setting_including_ones_with_a_percent_sign() -> None:
    """argparse %-formats help text: target_accuracy's "95% confidence" once broke `serve --help`."""
    result = calibserve("serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "--database-url" in result.stdout and "95% confidence" in " ".join(result.stdout.split())
