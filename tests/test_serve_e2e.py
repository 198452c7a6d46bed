"""`calibserve serve` as an operator runs it: a real uvicorn process on a real port, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.schemas import DIGIT_ONE, DIGIT_ZERO
from tests.conftest import DEFAULT_MODEL_DIR, REPO_ROOT

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """The caller's environment without CALIBSERVE_* settings, so the command line alone configures the server
    (except the data directory: the prediction log goes to the session's temporary one, never ./data)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIBSERVE_")}
    env["CALIBSERVE_DATA_DIR"] = os.environ["CALIBSERVE_DATA_DIR"]
    return env


def calibserve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=clean_env(),
        timeout=timeout,
        check=False,
    )


@dataclass
class Lifecycle:
    """What one `calibserve serve` process did: ready, two answers, then SIGTERM."""

    ready: httpx.Response
    prediction: httpx.Response
    malformed: httpx.Response
    exit_code: int | None
    stop_seconds: float
    output: str


def wait_until_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> httpx.Response:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode} before ready:\n{log.read_text(errors='replace')}")
        try:
            response = httpx.get(f"{url}/health/ready", timeout=2.0)
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 200:
            return response
        time.sleep(0.1)
    pytest.fail(f"not ready after {READY_TIMEOUT_S} s:\n{log.read_text(errors='replace')}")


def call_json(base: str, path: str, body: Any = None) -> Any:
    """GET ``path`` (or POST ``body`` as JSON) on a live server; the decoded answer (urllib: no client library)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def serving(
    data_dir: Path, log: Path, model_path: Path | None = None, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """``calibserve serve`` on a free port (the bundled model, or ``model_path``, or what ``extra_env`` says)
    until the block ends; yields its base URL once ready, then SIGTERM."""
    port = free_port()
    env = clean_env()
    env["CALIBSERVE_DATA_DIR"] = str(data_dir)
    if model_path is not None:
        env["CALIBSERVE_MODEL_PATH"] = str(model_path)
    env.update(extra_env or {})
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(process, url, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    """Start the server on a free port, use it, SIGTERM it, and record everything once for the tests below."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=REPO_ROOT,
            env=clean_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = wait_until_ready(process, url, log)
        body = {"instances": [DIGIT_ZERO, DIGIT_ONE]}
        prediction = httpx.post(f"{url}/v1/predict", json=body, timeout=10.0)
        malformed = httpx.post(f"{url}/v1/predict", content=b"{", headers={"content-type": "application/json"})
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            exit_code: int | None = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            exit_code = None
        stopped = time.monotonic() - signalled
        yield Lifecycle(ready, prediction, malformed, exit_code, stopped, log.read_text(errors="replace"))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_serve_becomes_ready_with_the_bundled_model(lifecycle: Lifecycle) -> None:
    card = json.loads((DEFAULT_MODEL_DIR / "card.json").read_text(encoding="utf-8"))
    assert lifecycle.ready.json() == {
        "status": "ready",
        "model": "digits",
        "version": card["version"],
        "models": [{"name": "digits", "version": card["version"]}],
    }
    assert "model digits: serving version" in lifecycle.output


def test_serve_answers_a_prediction_over_tcp(lifecycle: Lifecycle) -> None:
    card = json.loads((DEFAULT_MODEL_DIR / "card.json").read_text(encoding="utf-8"))
    assert lifecycle.prediction.status_code == 200, lifecycle.prediction.text
    body = lifecycle.prediction.json()
    assert [p["label"] for p in body["predictions"]] == ["0", "1"]
    for prediction in body["predictions"]:
        assert list(prediction["probabilities"]) == card["classes"]
        assert abs(sum(prediction["probabilities"].values()) - 1.0) < 1e-9
        assert prediction["confidence"] == max(prediction["probabilities"].values())
        assert prediction["label"] in prediction["prediction_set"]
    assert body["model"]["version"] == card["version"]
    assert lifecycle.malformed.status_code == 400
    assert lifecycle.malformed.json()["error"]["type"] == "malformed_request"


def test_sigterm_shuts_down_gracefully_within_10_s(lifecycle: Lifecycle) -> None:
    assert lifecycle.exit_code is not None, f"still running {STOP_TIMEOUT_S} s after SIGTERM:\n{lifecycle.output}"
    assert lifecycle.stop_seconds < STOP_TIMEOUT_S
    assert "Application shutdown complete" in lifecycle.output
    assert "Traceback" not in lifecycle.output


def test_sigterm_exit_code_is_zero(lifecycle: Lifecycle) -> None:
    assert lifecycle.exit_code == 0, lifecycle.output


def test_serve_with_a_missing_model_fails_fast_naming_the_path() -> None:
    started = time.monotonic()
    result = calibserve("serve", "--model-path", "/nonexistent", "--port", str(free_port()))
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    assert "/nonexistent" in result.stderr
    assert "model file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_non_onnx_file_fails_fast_naming_it(tmp_path: Path) -> None:
    bogus = tmp_path / "model.txt"
    bogus.write_text("not a model", encoding="utf-8")
    result = calibserve("serve", "--model-path", str(bogus), "--port", str(free_port()))
    assert result.returncode != 0
    assert str(bogus) in result.stderr and "not a loadable ONNX model" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_an_invalid_port_exits_2_naming_port() -> None:
    result = calibserve("serve", "--port", "0x")
    assert result.returncode == 2
    assert "port" in result.stderr
    assert "Traceback" not in result.stderr
