"""The compose scale stack (docker-compose.scale.yml): PostgreSQL, three calibserve replicas, nginx in front.

Started with the README's command (plus a project name of its own and a free port), once for the module: the
load balancer spreads predictions over the replicas, and since they share one prediction store, feedback sent
to any replica finds every prediction, and every replica reports the same live calibration window. The
replicas are not published: the tests reach them by name from inside replica-1 (``ENGINE exec``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.api.schemas import DIGIT_ONE, DIGIT_ZERO
from tests.conftest import REPO_ROOT
from tests.container import test_container as single
from tests.container.test_container import BUILD_FLAGS, COMPOSE, ENGINE, free_port, run, wait_ready

pytestmark = [pytest.mark.container, pytest.mark.slow]

COMPOSE_FILE = "docker-compose.scale.yml"
REPLICAS = ("replica-1", "replica-2", "replica-3")
SIDECARS = {"postgres": "CALIBSERVE_POSTGRES_IMAGE", "nginx": "CALIBSERVE_NGINX_IMAGE"}  # deploy/compose/<name>
READY_SECONDS = 120

# Runs inside replica-1 (the calibserve image has python): a list of [host, method, path, body] requests to
# replicas by their compose names, answered as a list of [status, body] (status 0: no connection).
PROBE = """
import json, sys, urllib.error, urllib.request
answers = []
for host, method, path, body in json.loads(sys.argv[1]):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{host}:8000{path}", data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answers.append([response.status, json.loads(response.read())])
    except urllib.error.HTTPError as error:
        answers.append([error.code, error.read().decode(errors="replace")])
    except OSError as error:
        answers.append([0, repr(error)])
print(json.dumps(answers))
"""


@dataclass
class Stack:
    project: str
    port: int
    ready_after: float

    def container(self, service: str) -> str:
        names = run(ENGINE, "ps", "--filter", f"label=com.docker.compose.project={self.project}",
                    "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}")  # fmt: skip
        assert len(names.stdout.split()) == 1, f"{service}: {names.stdout!r}"
        return names.stdout.split()[0]

    def ask(self, *requests: tuple[str, str, str, Any]) -> list[tuple[int, Any]]:
        """The replicas' own answers, bypassing the load balancer."""
        probe = run(ENGINE, "exec", self.container("replica-1"), "python", "-c", PROBE, json.dumps(requests))
        return [(status, body) for status, body in json.loads(probe.stdout)]

    def live(self, replica: str) -> dict[str, Any]:
        [(status, body)] = self.ask((replica, "GET", "/health/calibration?model=digits", None))
        assert status == 200, (replica, status, body)
        live: dict[str, Any] = body["live"]
        return live

    def logs(self, service: str) -> str:
        logs = run(ENGINE, "logs", "--tail", "60", self.container(service), check=False)
        return logs.stdout + logs.stderr


@pytest.fixture(scope="module")
def sidecar_builds() -> Iterator[dict[str, tuple[str, subprocess.Popen[str]]]]:
    """PostgreSQL and nginx images, built in the background while the calibserve image builds."""
    problem = single.engine_problem()
    if problem:
        pytest.skip(problem)
    fmt = ["--format", "docker"] if Path(ENGINE).name == "podman" else []  # keeps HEALTHCHECK
    builds = {}
    for name in SIDECARS:
        tag = f"calibserve-{name}:test-{uuid.uuid4().hex[:8]}"
        command = [ENGINE, "build", *fmt, *BUILD_FLAGS, "-t", tag, f"deploy/compose/{name}"]
        builds[name] = (tag, subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True))  # fmt: skip
    try:
        yield builds
    finally:
        for tag, build in builds.values():
            build.kill()
            build.communicate()
            run(ENGINE, "rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def stack(sidecar_builds: dict[str, tuple[str, subprocess.Popen[str]]], image: str) -> Iterator[Stack]:
    images = {"CALIBSERVE_IMAGE": image}
    for name, (tag, build) in sidecar_builds.items():
        output, _ = build.communicate(timeout=900)
        assert build.returncode == 0, f"building deploy/compose/{name} failed:\n{output[-3000:]}"
        images[SIDECARS[name]] = tag
    project, port = f"calibscale{uuid.uuid4().hex[:8]}", free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CALIBSERVE_")}  # no API key
    env |= images | {"CALIBSERVE_SCALE_PORT": str(port), "CALIBSERVE_POSTGRES_PASSWORD": uuid.uuid4().hex}
    compose = [*COMPOSE, "-p", project, "-f", COMPOSE_FILE]
    started = time.monotonic()
    try:
        run(*compose, "up", "-d", env=env, timeout=300)
        stack = Stack(project, port, 0.0)
        wait_ready(port, timeout=READY_SECONDS)  # the load balancer answers: at least one replica is ready
        while True:
            answers = stack.ask(*((replica, "GET", "/health/ready", None) for replica in REPLICAS))
            if all(status == 200 for status, _ in answers):
                break
            if time.monotonic() - started > READY_SECONDS:
                logs = "\n".join(f"--- {service}\n{stack.logs(service)}" for service in ("postgres", *REPLICAS))
                raise AssertionError(f"replicas not ready after {READY_SECONDS} s: {answers}\n{logs}")
            time.sleep(0.5)
        stack.ready_after = time.monotonic() - started
        yield stack
    finally:
        down = run(*compose, "down", "-v", env=env, check=False, timeout=180)
        run(ENGINE, "network", "rm", "-f", f"{project}_default", check=False)  # podman-compose 1.0 leaves it
    assert down.returncode == 0, down.stderr


def predict_through_lb(port: int, instances: list[list[float]], request_id: str | None = None) -> tuple[str, Any]:
    headers = {"content-type": "application/json"} | ({"x-request-id": request_id} if request_id else {})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/predict", data=json.dumps({"instances": instances}).encode(), headers=headers
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["x-request-id"], json.loads(response.read())


def test_the_load_balancer_spreads_predictions_over_every_replica(stack: Stack) -> None:
    print(f"scale stack: compose up to every replica ready {stack.ready_after:.1f} s")
    for i in range(6):
        echoed, body = predict_through_lb(stack.port, [DIGIT_ZERO, DIGIT_ONE], request_id=f"scale-{i}")
        assert echoed == f"scale-{i}"  # the client's X-Request-ID reaches the replica and comes back
        assert [p["label"] for p in body["predictions"]] == ["0", "1"]
        assert body["model"]["name"] == "digits"
    made, _ = predict_through_lb(stack.port, [DIGIT_ZERO])  # none sent: nginx makes one, the replica keeps it
    assert re.fullmatch(r"[0-9a-f]{32}", made), made
    access = [line for line in stack.logs("lb").splitlines() if '"POST /v1/predict' in line]
    assert any(f"request_id={made}" in line for line in access), access
    upstreams = {match for line in access for match in re.findall(r"upstream=(\S+)", line)}
    assert len(upstreams) == len(REPLICAS), access  # round-robin: every replica served some


def test_feedback_to_any_replica_and_one_shared_live_window(stack: Stack) -> None:
    # Each replica's health call first commits what that replica acknowledged (the earlier test's predictions may
    # still sit in a writer's queue): asked of all three, the count taken next is final.
    for replica in REPLICAS:
        stack.live(replica)
    before = stack.live("replica-1")
    rows = [DIGIT_ZERO if i % 2 == 0 else DIGIT_ONE for i in range(10)]
    ids = []
    for _ in range(6):  # 60 predictions (above min_labels, 50), spread by the load balancer
        _, body = predict_through_lb(stack.port, rows)
        ids += [p["prediction_id"] for p in body["predictions"]]
    # The log is written off the request path: wait until the shared store holds them all (then no `pending`).
    deadline, expected = time.monotonic() + 15, before["unlabelled"]["n"] + len(ids)
    while (seen := stack.live("replica-2")["unlabelled"]["n"]) < expected:
        assert time.monotonic() < deadline, f"replica-2 sees {seen} of {expected} predictions: no shared store?"
        time.sleep(0.3)
    # Every replica gets a third of the labels, most of them for predictions another replica served; the rows
    # alternate 0, 1 and every seventh label is the other digit (the live figures are not all perfect).
    labels = {pid: str((i + (i % 7 == 0)) % 2) for i, pid in enumerate(ids)}
    requests = [
        (replica, "POST", "/v1/feedback", {"feedback": [{"prediction_id": p, "label": labels[p]} for p in ids[k::3]]})
        for k, replica in enumerate(REPLICAS)
    ]
    for (replica, *_), (status, body) in zip(requests, stack.ask(*requests), strict=True):
        assert status == 200, (replica, status, body)
        assert {item["status"] for item in body["results"]} == {"recorded"}, (replica, body)
    deadline, expected = time.monotonic() + 10, before["labelled"]["n"] + len(ids)
    while (seen := stack.live("replica-3")["labelled"]["n"]) < expected:
        assert time.monotonic() < deadline, f"replica-3 sees {seen} of {expected} labels"
        time.sleep(0.3)
    windows = {replica: stack.live(replica) for replica in REPLICAS}
    assert windows["replica-1"]["labelled"]["n"] == before["labelled"]["n"] + len(ids), windows["replica-1"]
    assert windows["replica-1"]["unlabelled"]["n"] == before["unlabelled"]["n"] + len(ids), windows["replica-1"]
    assert windows["replica-2"] == windows["replica-1"], windows
    assert windows["replica-3"] == windows["replica-1"], windows
