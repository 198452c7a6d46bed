"""What `pip install` gives a user: the fast server, every package, and a wheel that serves its own default model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from service.api.schemas import DIGIT_ZERO
from service.settings import default_model_path
from tests.conftest import DEFAULT_MODEL_DIR, REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
BUNDLED_PACKAGE = "service.bundled_models.digits"


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # never called: Config needs an app
    raise AssertionError("not served")


@pytest.mark.unit
def test_uvicorn_auto_picks_uvloop_and_httptools() -> None:
    """The default install runs uvicorn on uvloop + httptools (about 1.6x plain uvicorn's req/s, README)."""
    import asyncio

    import httptools  # noqa: F401  (an ImportError here: uvicorn[standard] left the dependencies)
    import uvicorn
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    config = uvicorn.Config(_asgi_app, loop="auto", http="auto", log_config=None)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    if hasattr(config, "get_loop_factory"):  # uvicorn >= 0.36: a loop factory instead of an event loop policy
        factory = config.get_loop_factory()
        assert factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop), type(loop)
        finally:
            loop.close()
    else:  # pragma: no cover - older uvicorn
        previous = asyncio.get_event_loop_policy()
        try:
            config.setup_event_loop()
            assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
        finally:
            asyncio.set_event_loop_policy(previous)


@pytest.mark.unit
def test_runtime_dependencies_ask_for_uvicorn_standard() -> None:
    """Declared, not just present in this virtualenv: an image or a fresh install gets them too."""
    declared = PYPROJECT["project"]["dependencies"]
    assert any(dep.replace(" ", "").startswith("uvicorn[standard]") for dep in declared), declared
    installed = metadata.requires("calibserve") or []
    assert any(dep.replace(" ", "").startswith("uvicorn[standard]") for dep in installed), (
        "the installed calibserve's metadata is stale: reinstall with `pip install -e .`"
    )


@pytest.mark.unit
def test_every_service_package_is_listed_for_the_wheel() -> None:
    """pyproject lists the packages (the bundled model is a mapped package, so no auto-discovery)."""
    on_disk = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for init in (REPO_ROOT / "service").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    listed = set(SETUPTOOLS["packages"])
    missing = sorted(on_disk - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml, or the wheel lacks them"
    assert SETUPTOOLS["package-dir"] == {"service.bundled_models": "models"}
    for name in listed - on_disk:
        assert name.startswith("service.bundled_models"), f"{name} is listed but has no service/.../__init__.py"


@pytest.mark.unit
def test_bundled_model_files_exist_and_the_default_finds_them() -> None:
    shipped = SETUPTOOLS["package-data"][BUNDLED_PACKAGE]
    assert sorted(path.name for path in DEFAULT_MODEL_DIR.iterdir() if path.is_file()) == sorted(shipped)
    # In a checkout or an editable install the default is models/digits itself (an installed wheel: package data).
    assert default_model_path() == DEFAULT_MODEL_DIR.resolve()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _run(argv: list[str], cwd: Path, timeout: float) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr}"
    return result.stdout


@pytest.mark.packaging
@pytest.mark.e2e
@pytest.mark.slow
def test_installed_wheel_serves_its_bundled_model_from_any_directory(tmp_path: Path) -> None:
    """Build the wheel, install it into a fresh virtualenv, serve from an empty directory: the default model."""
    started = time.monotonic()
    # Build from a copy of what the wheel is made of (as the Dockerfile does): setuptools' build/ never lands
    # in the working tree, and no stale file from an earlier build/ can slip into the wheel.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "service", source / "service", ignore=ignore)
    shutil.copytree(DEFAULT_MODEL_DIR, source / "models" / "digits", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w", str(wheels)], tmp_path, 300)
    (wheel,) = wheels.glob("calibserve-*.whl")
    built = time.monotonic()

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, 600)
    installed = time.monotonic()

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALIBSERVE_", "PROMETHEUS_", "PYTHON"))}
    probe = "import uvloop, httptools; from service.settings import default_model_path as d; print(d())"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], cwd=empty, env=env, capture_output=True, text=True, check=False
    )
    assert where.returncode == 0, where.stderr
    model_dir = Path(where.stdout.strip())
    assert model_dir.is_relative_to(venv) and (model_dir / "model.onnx").is_file(), model_dir

    port = _free_port()
    argv = [str(venv / "bin" / "calibserve"), "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(argv, cwd=empty, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"calibserve serve exited {server.returncode}:\n{log_path.read_text()}"
            try:
                if _request(base + "/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not ready after 60 s:\n{log_path.read_text()}"
            time.sleep(0.1)
        status, body = _request(base + "/v1/predict", {"instances": [DIGIT_ZERO]})
        assert status == 200, body
        answer = json.loads(body)
        assert answer["predictions"][0]["label"] == "0"
        assert answer["model"]["name"] == "digits"
        # the dashboard's script and stylesheet are package data of the wheel, not files of the checkout
        for path in ("/dashboard", "/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css"):
            assert _request(base + path)[0] == 200, path
        # recalibration runs on the runtime dependencies alone (no torch, no onnx): fainter digits, refit, shadow
        from sklearn.datasets import load_digits

        features, labels = load_digits(return_X_y=True)
        for start in range(0, 600, 100):
            status, body = _request(
                base + "/v1/predict", {"instances": (features[start : start + 100] * 0.45).tolist()}
            )
            ids = [p["prediction_id"] for p in json.loads(body)["predictions"]]
            items = [
                {"prediction_id": i, "label": str(y)} for i, y in zip(ids, labels[start : start + 100], strict=True)
            ]
            assert _request(base + "/v1/feedback", {"feedback": items})[0] == 200
        status, body = _request(base + "/v1/models/digits/recalibrate", {})
        assert status == 200 and json.loads(body)["kind"] == "proposal", body
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0, log_path.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    print(
        f"wheel built in {built - started:.1f} s, installed into a fresh venv in {installed - built:.1f} s, "
        f"served and stopped in {time.monotonic() - installed:.1f} s"
    )
