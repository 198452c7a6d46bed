"""The real image and the real compose stack: build, run, probe, predict, stop.

Generic on purpose: the engine comes from CONTAINER_ENGINE (default ``docker``), compose from
COMPOSE_COMMAND (default ``docker compose``), extra build flags from CONTAINER_BUILD_FLAGS. Without a
working engine the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.schemas import DIGIT_ONE, DIGIT_ZERO
from tests.conftest import REPO_ROOT, ModelSources

pytestmark = [pytest.mark.container, pytest.mark.slow]

ENGINE = os.environ.get("CONTAINER_ENGINE", "docker")
COMPOSE = shlex.split(os.environ.get("COMPOSE_COMMAND", f"{ENGINE} compose"))
BUILD_FLAGS = shlex.split(os.environ.get("CONTAINER_BUILD_FLAGS", ""))
IMAGE = f"calibserve:test-{uuid.uuid4().hex[:8]}"
# Target for python:3.11-slim (about 130 MB) plus our layers; the layers alone must stay within this budget.
IMAGE_TARGET_MB = 350
SLIM_BASE_MB = 130
STOP_SECONDS = 10


def run(*args: str, check: bool = True, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def engine_problem() -> str | None:
    if shutil.which(ENGINE) is None:
        return f"no container engine: {ENGINE!r} is not on PATH (set CONTAINER_ENGINE)"
    info = subprocess.run([ENGINE, "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"container engine {ENGINE!r} does not answer `{ENGINE} info`: {info.stderr.strip()[:200]}"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, container: str | None = None, timeout: float = 90) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if container and not json.loads(run(ENGINE, "inspect", container).stdout)[0]["State"]["Running"]:
            logs = run(ENGINE, "logs", container, check=False)
            raise AssertionError(f"container {container} exited:\n{logs.stdout}\n{logs.stderr}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready on port {port} after {timeout} s")


def predict(port: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/predict",
        data=json.dumps({"instances": [DIGIT_ZERO, DIGIT_ONE]}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[tuple[str, int, float]]:
    name, port = f"calibserve-test-{uuid.uuid4().hex[:8]}", free_port()
    started = time.monotonic()
    run(ENGINE, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", image)
    try:
        wait_ready(port, name)
        yield name, port, time.monotonic() - started
    finally:
        run(ENGINE, "rm", "-f", "-v", name, check=False)  # -v: its anonymous volumes too


def test_container_serves_calibrated_predictions(container: tuple[str, int, float]) -> None:
    name, port, ready_after = container
    body = predict(port)
    assert [p["label"] for p in body["predictions"]] == ["0", "1"]
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-9 for p in body["predictions"])
    assert body["model"]["name"] == "digits"
    card = json.loads((REPO_ROOT / "models" / "digits" / "card.json").read_text())
    assert body["model"]["version"] == card["version"]
    print(f"container start to ready: {ready_after:.2f} s")
    # The prediction log lands in the /data volume, written by the non-root user.
    ids = [p["prediction_id"] for p in body["predictions"]]
    count = (
        "import sqlite3, sys; c = sqlite3.connect('/data/predictions.sqlite'); print(c.execute("
        "'SELECT COUNT(*) FROM predictions WHERE id IN (?, ?)', sys.argv[1:]).fetchone()[0])"
    )
    deadline = time.monotonic() + 10
    while run(ENGINE, "exec", name, "python", "-c", count, *ids, check=False).stdout.strip() != "2":
        assert time.monotonic() < deadline, "predictions were not logged to /data/predictions.sqlite"
        time.sleep(0.2)


def test_default_model_is_the_packaged_one(container: tuple[str, int, float]) -> None:
    """No CALIBSERVE_MODEL_PATH in the image: the default is the wheel's package data, not a copied directory."""
    name, _, _ = container
    probe = "import os; from service.settings import Settings; print(os.environ.get('CALIBSERVE_MODEL_PATH'), "
    probe += "Settings().model_path)"
    unset, path = run(ENGINE, "exec", name, "python", "-c", probe).stdout.split()
    assert unset == "None"
    assert path.startswith("/opt/venv/") and path.endswith("/service/bundled_models/digits"), path
    assert run(ENGINE, "exec", name, "ls", "/app/models").stdout.strip() == ""  # a mount point for your own


def test_image_healthcheck_command_reports_ready(container: tuple[str, int, float]) -> None:
    name, _, _ = container
    assert run(ENGINE, "exec", name, "calibserve", "healthcheck").returncode == 0
    declared = json.loads(run(ENGINE, "image", "inspect", IMAGE).stdout)[0]
    healthcheck = (declared.get("Config") or {}).get("Healthcheck") or declared.get("Healthcheck") or {}
    assert healthcheck.get("Test", [])[-2:] == ["calibserve", "healthcheck"], declared.get("Config")


def test_server_runs_as_non_root(container: tuple[str, int, float]) -> None:
    name, _, _ = container
    status = run(ENGINE, "exec", name, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {"10001"}, status
    cmdline = run(ENGINE, "exec", name, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
    assert "calibserve serve" in cmdline  # the server itself is PID 1 and receives SIGTERM


def test_image_has_no_torch_and_fits_the_size_target(image: str) -> None:
    probe = run(ENGINE, "run", "--rm", "--entrypoint", "python", image, "-c", "import importlib.util as u; "
                "print([m for m in ('torch', 'sklearn', 'pip', 'gcc') if u.find_spec(m)])").stdout  # fmt: skip
    assert probe.strip() == "[]"
    assert run(ENGINE, "run", "--rm", "--entrypoint", "sh", image, "-c", "command -v gcc cc", check=False).stdout == ""
    size_mb = int(json.loads(run(ENGINE, "image", "inspect", image).stdout)[0]["Size"]) / 1e6
    base = next((flag.split("=", 1)[1] for flag in BUILD_FLAGS if flag.startswith("PYTHON_IMAGE=")), None)
    base_mb = int(json.loads(run(ENGINE, "image", "inspect", base).stdout)[0]["Size"]) / 1e6 if base else 0.0
    ours_mb = size_mb - base_mb
    print(f"image {size_mb:.0f} MB = base {base_mb:.0f} MB + calibserve layers {ours_mb:.0f} MB")
    if base:
        assert ours_mb + SLIM_BASE_MB <= IMAGE_TARGET_MB
    else:
        assert size_mb <= IMAGE_TARGET_MB


def test_sigterm_finishes_and_exits_cleanly(image: str) -> None:
    name, port = f"calibserve-stop-{uuid.uuid4().hex[:8]}", free_port()
    run(ENGINE, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", image)
    try:
        wait_ready(port, name)
        predict(port)
        started = time.monotonic()
        run(ENGINE, "stop", "-t", str(STOP_SECONDS + 5), name, timeout=60)  # SIGTERM, then SIGKILL only after 15 s
        stopped_after = time.monotonic() - started
        state = json.loads(run(ENGINE, "inspect", name).stdout)[0]["State"]
        logs = run(ENGINE, "logs", name).stderr + run(ENGINE, "logs", name).stdout
        assert state["ExitCode"] == 0, logs
        assert stopped_after < STOP_SECONDS, stopped_after
        assert "Application shutdown complete" in logs
    finally:
        run(ENGINE, "rm", "-f", "-v", name, check=False)  # -v: its anonymous volumes too


def test_mounted_models_and_model_path_replace_the_default(image: str, tiny_artifact_dir: Path) -> None:
    name, port = f"calibserve-mount-{uuid.uuid4().hex[:8]}", free_port()
    with tempfile.TemporaryDirectory() as models:  # pytest's own tmp dirs are 0700: unreadable for uid 10001
        Path(models).chmod(0o755)
        shutil.copytree(tiny_artifact_dir, Path(models) / "tiny")
        run(ENGINE, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "-v", f"{models}:/models:ro",
            "-e", "CALIBSERVE_MODEL_PATH=/models/tiny", image)  # fmt: skip
        try:
            wait_ready(port, name)
            assert predict(port)["model"]["name"] == "tiny"
        finally:
            run(ENGINE, "rm", "-f", "-v", name, check=False)  # -v: its anonymous volumes too


def test_compose_up_serves_the_default_model(image: str) -> None:
    project, port = f"calibserve{uuid.uuid4().hex[:8]}", free_port()
    env = {**os.environ, "CALIBSERVE_IMAGE": image, "CALIBSERVE_PUBLISHED_PORT": str(port)}
    compose = [*COMPOSE, "-p", project, "-f", "docker-compose.yml"]
    try:
        run(*compose, "up", "-d", env=env, timeout=300)
        wait_ready(port)
        body = predict(port)
        assert [p["label"] for p in body["predictions"]] == ["0", "1"]
    finally:
        down = run(*compose, "down", "-v", env=env, check=False, timeout=120)
        run(ENGINE, "network", "rm", "-f", f"{project}_default", check=False)  # podman-compose 1.0 leaves it
    assert down.returncode == 0, down.stderr


def test_a_mounted_repository_serves_every_model_and_picks_up_a_new_one(
    image: str, model_sources: ModelSources
) -> None:
    """The image with a repository of models: the bundled one and one imported by ``calibserve calibrate``, a
    shadow pair between them, and poll mode picking up a third directory copied in while serving."""
    name, port = f"calibserve-repo-{uuid.uuid4().hex[:8]}", free_port()
    with tempfile.TemporaryDirectory() as models:  # pytest's own tmp dirs are 0700: unreadable for uid 10001
        root = Path(models)
        root.chmod(0o755)
        model_sources.repository(root, digits=model_sources.digits, imported=model_sources.digits_t1)
        readable(root)
        settings = {
            "CALIBSERVE_MODEL_REPOSITORY": "/models",
            "CALIBSERVE_DEFAULT_MODEL": "digits",
            "CALIBSERVE_REPOSITORY_POLL_SECONDS": "0.5",
            "CALIBSERVE_SHADOW": "digits:imported",
        }
        environment = [arg for key, value in settings.items() for arg in ("-e", f"{key}={value}")]
        run(ENGINE, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "-v", f"{models}:/models:ro",
            *environment, image)  # fmt: skip
        try:
            wait_ready(port, name)
            assert predict(port)["model"]["name"] == "digits"
            listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
            assert [(m["name"], m["state"]) for m in listed["models"]] == [("digits", "ready"), ("imported", "ready")]
            shadow = httpx.get(f"http://127.0.0.1:{port}/v1/models/digits/shadow", timeout=30).json()
            assert shadow["unlabelled"]["n"] == 2 and shadow["shadow"]["skipped_rows"] == 0
            shutil.copytree(model_sources.digits_copy, root / "third")
            readable(root / "third")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if httpx.get(f"http://127.0.0.1:{port}/v2/models/third/ready", timeout=10).status_code == 200:
                    break
                time.sleep(0.5)
            assert httpx.get(f"http://127.0.0.1:{port}/v2/models/third/ready", timeout=10).status_code == 200
        finally:
            run(ENGINE, "rm", "-f", "-v", name, check=False)  # -v: its anonymous volumes too


def readable(path: Path) -> None:
    """World-readable files and directories: the image's user (uid 10001) reads the mount."""
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)


def build_image() -> Iterator[str]:
    """The calibserve image, built once for the session (tests/container/conftest.py's ``image``)."""
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    # podman writes OCI images by default, which drop HEALTHCHECK; the docker format keeps it.
    fmt = ["--format", "docker"] if Path(ENGINE).name == "podman" else []
    run(ENGINE, "build", *fmt, *BUILD_FLAGS, "-t", IMAGE, ".", timeout=900)
    yield IMAGE
    run(ENGINE, "rmi", "-f", IMAGE, check=False)
