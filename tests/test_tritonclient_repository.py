"""Triton's model repository extension, driven by ``tritonclient.http`` against a live ``calibserve serve``.

Real processes on real ports (``tests.test_serve_e2e.serving``), real artifacts (``model_sources``: the
bundled model and the same network at T = 1, a different version), nothing mocked:

* the index, ``is_model_ready``, unload, load back, load of a name the repository lacks, and inference
  on each model answering that model's name and version;
* a reload under load: clients keep predicting (small bodies, and a large one whose parse holds its lease
  across an await) while the artifact is replaced and loaded, reloaded a few times, then broken and loaded
  (refused, 400): no failed request, every answer from the old or the new version with exactly that
  version's probabilities (onnxruntime on the artifacts), none sent after the swap from the old one, and
  ``/health/ready`` 200 throughout;
* poll mode: a model directory added while serving becomes READY, removed becomes UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient  # type: ignore[import-untyped]
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from tests.conftest import ModelSources
from tests.test_serve_e2e import serving

pytestmark = pytest.mark.e2e

POLL_DEADLINE_S = 20.0
# The load test's prediction threads, each with one request in flight: rows per request. Small bodies are
# parsed on the event loop; a large one (> 64 KiB) in a worker thread, so its request holds a lease on the
# version it resolved across an await, and a swap can land between its lease and its batch.
REQUEST_ROWS = (4, 4, 4, 256)
RELOADS = 8  # loads of the unchanged new artifact after the swap: each one more swap under load


@pytest.fixture(scope="module")
def rows() -> NDArray[np.float32]:
    from sklearn.datasets import load_digits

    features: NDArray[np.float32] = load_digits().data.astype(np.float32)
    return features


def card_version(artifact: Path) -> str:
    version: str = json.loads((artifact / "card.json").read_text(encoding="utf-8"))["version"]
    return version


def expected_probabilities(artifact: Path, rows: NDArray[np.float32]) -> NDArray[np.float32]:
    """The artifact's own graph, run by onnxruntime directly: what the server must answer for it."""
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"features": rows})
    return np.asarray(probabilities)


def assert_probabilities(got: Any, expected: NDArray[np.float32], context: str = "") -> None:
    """Equal up to float32 rounding (onnxruntime, batched with other rows or not)."""
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=context)


def stage(source: Path, staging: Path) -> Path:
    """A copy of ``source`` outside the repository, ready to be moved or swapped into it."""
    copy = staging / f"{source.name}-{time.monotonic_ns()}"
    shutil.copytree(source, copy)
    return copy


def replace_artifact(target: Path, source: Path, staging: Path) -> None:
    """What an operator does: the new version's files, moved into place (each file replaced atomically)."""
    copy = stage(source, staging)
    for file in copy.iterdir():
        file.replace(target / file.name)
    copy.rmdir()


@contextlib.contextmanager
def repository_server(tmp_path: Path, root: Path, **env: str) -> Iterator[tuple[str, Any]]:
    """``calibserve serve`` on the repository ``root``; yields its URL and a tritonclient for it. A clean exit
    of the block also checks that the server logged no traceback."""
    log = tmp_path / "serve.log"
    extra = {"CALIBSERVE_MODEL_REPOSITORY": str(root), **env}
    with serving(tmp_path / "data", log, extra_env=extra) as url:
        triton = httpclient.InferenceServerClient(url.removeprefix("http://"))
        try:
            yield url, triton
        finally:
            triton.close()
    output = log.read_text(errors="replace")
    assert "Traceback" not in output, output


def index_of(triton: Any) -> dict[str, dict[str, Any]]:
    index: list[dict[str, Any]] = triton.get_model_repository_index()
    return {entry["name"]: entry for entry in index}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + POLL_DEADLINE_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {POLL_DEADLINE_S} s: {what}")


def server_error(info: pytest.ExceptionInfo[Any], status: str) -> str:
    error = info.value
    assert error.status() == status, (error.status(), error.message())
    message: str = error.message()
    return message


def infer(triton: Any, name: str, rows: NDArray[np.float32]) -> Any:
    features = httpclient.InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows)
    return triton.infer(name, [features], outputs=[httpclient.InferRequestedOutput("probabilities")])


# -- index, ready, unload, load -----------------------------------------------------------------------------------


def test_tritonclient_lists_unloads_and_loads_repository_models(
    model_sources: ModelSources, tmp_path: Path, rows: NDArray[np.float32]
) -> None:
    sources = {"digits": model_sources.digits, "digits-t1": model_sources.digits_t1}
    versions = {name: card_version(source) for name, source in sources.items()}
    assert versions["digits"] != versions["digits-t1"]
    root = model_sources.repository(tmp_path / "repo", **sources)
    with repository_server(tmp_path, root) as (url, triton):
        assert triton.is_server_ready() is True
        index = triton.get_model_repository_index()
        assert index == [
            {"name": "digits", "version": versions["digits"], "state": "READY"},
            {"name": "digits-t1", "version": versions["digits-t1"], "state": "READY"},
        ]
        for name, version in versions.items():
            assert triton.is_model_ready(name) is True
            assert triton.is_model_ready(name, version) is True

        # Each model answers its own name, version and probabilities.
        for name, source in sources.items():
            result = infer(triton, name, rows[:5])
            response = result.get_response()
            assert (response["model_name"], response["model_version"]) == (name, versions[name])
            assert_probabilities(result.as_numpy("probabilities"), expected_probabilities(source, rows[:5]))

        triton.unload_model("digits-t1")
        assert triton.is_model_ready("digits-t1") is False
        assert index_of(triton)["digits-t1"] == {"name": "digits-t1", "state": "UNAVAILABLE", "reason": "unloaded"}
        ready_only = httpx.post(f"{url}/v2/repository/index", json={"ready": True}, timeout=10.0)
        assert ready_only.status_code == 200 and [m["name"] for m in ready_only.json()] == ["digits"]
        with pytest.raises(InferenceServerException) as refused:
            infer(triton, "digits-t1", rows[:1])
        assert "'digits-t1'" in server_error(refused, "404")
        assert triton.is_model_ready("digits") is True  # the other model never noticed
        assert infer(triton, "digits", rows[:1]).get_response()["model_name"] == "digits"

        triton.load_model("digits-t1")
        assert triton.is_model_ready("digits-t1", versions["digits-t1"]) is True
        assert index_of(triton)["digits-t1"] == {
            "name": "digits-t1",
            "version": versions["digits-t1"],
            "state": "READY",
        }
        back = infer(triton, "digits-t1", rows[:5])
        assert back.get_response()["model_version"] == versions["digits-t1"]
        assert_probabilities(back.as_numpy("probabilities"), expected_probabilities(model_sources.digits_t1, rows[:5]))

        with pytest.raises(InferenceServerException) as missing:
            triton.load_model("nope")
        assert "'nope'" in server_error(missing, "404")
        with pytest.raises(InferenceServerException) as missing:
            triton.unload_model("nope")
        assert "'nope'" in server_error(missing, "404")
        assert set(index_of(triton)) == {"digits", "digits-t1"}  # a failed load of an unknown name adds nothing


# -- reload under load ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    start: int  # the request's first row
    size: int  # and its number of rows
    sent: float  # time.monotonic() before the request was sent
    response: httpx.Response


@dataclass
class Traffic:
    """Prediction and readiness requests kept going from threads until ``stop`` is set."""

    url: str
    rows: NDArray[np.float32]
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[Answer] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # transport errors: a failed request as much as a 5xx
    lock: threading.Lock = field(default_factory=threading.Lock)

    def predict(self, offset: int, size: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as http:
            start = offset
            while not self.stop.is_set():
                start = (start + size) % (len(self.rows) - size)
                body = {"instances": self.rows[start : start + size].tolist(), "top_k": 1}
                sent = time.monotonic()
                try:
                    answer = http.post("/v1/models/digits/predict", json=body)
                except httpx.TransportError as error:
                    with self.lock:
                        self.errors.append(f"predict: {error!r}")
                    continue
                with self.lock:
                    self.answers.append(Answer(start, size, sent, answer))

    def poll_ready(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as http:
            while not self.stop.is_set():
                try:
                    status = http.get("/health/ready").status_code
                except httpx.TransportError as error:
                    with self.lock:
                        self.errors.append(f"ready: {error!r}")
                    continue
                with self.lock:
                    self.ready.append(status)
                time.sleep(0.02)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        threads = [threading.Thread(target=self.predict, args=(i * 97, n)) for i, n in enumerate(REQUEST_ROWS)]
        threads.append(threading.Thread(target=self.poll_ready))
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=60)

    def wait_for_answers(self, count: int) -> None:
        wait_for(lambda: len(self.answers) >= count, f"{count} predictions answered")


def test_reload_under_load_through_tritonclient_never_fails_a_request(
    model_sources: ModelSources, tmp_path: Path, rows: NDArray[np.float32]
) -> None:
    root = model_sources.repository(tmp_path / "repo", digits=model_sources.digits)
    staging = tmp_path / "staging"
    staging.mkdir()
    old_version, new_version = card_version(model_sources.digits), card_version(model_sources.digits_t1)
    expected = {
        old_version: expected_probabilities(model_sources.digits, rows),
        new_version: expected_probabilities(model_sources.digits_t1, rows),
    }
    with repository_server(tmp_path, root) as (url, triton):
        assert index_of(triton)["digits"]["version"] == old_version
        traffic = Traffic(url, rows)
        with traffic.running():
            traffic.wait_for_answers(20)
            # (a) the new version's files moved in, then loaded: verified beside the old one, swapped in.
            replace_artifact(root / "digits", model_sources.digits_t1, staging)
            triton.load_model("digits")
            swapped = time.monotonic()
            assert index_of(triton)["digits"] == {"name": "digits", "version": new_version, "state": "READY"}
            traffic.wait_for_answers(len(traffic.answers) + 20)
            for _ in range(RELOADS):  # the same artifact again: a fresh copy of the version swapped in
                triton.load_model("digits")
                traffic.wait_for_answers(len(traffic.answers) + 8)
            # (b) a broken graph: the load is refused and the new version keeps serving.
            (root / "digits" / "model.onnx").write_bytes(b"broken on purpose")
            with pytest.raises(InferenceServerException) as refused:
                triton.load_model("digits")
            traffic.wait_for_answers(len(traffic.answers) + 20)

        assert traffic.errors == []
        assert "failed to load 'digits'" in server_error(refused, "400")
        assert traffic.ready and set(traffic.ready) == {200}, traffic.ready
        failed = [(a.response.status_code, a.response.text) for a in traffic.answers if a.response.status_code >= 300]
        assert failed == [], failed[:5]
        seen: dict[str, int] = {}
        for answer in traffic.answers:
            start, size, body = answer.start, answer.size, answer.response.json()
            version = body["model"]["version"]
            assert body["model"]["name"] == "digits" and version in expected, body["model"]
            seen[version] = seen.get(version, 0) + 1
            got = np.array([[p["probabilities"][str(k)] for k in range(10)] for p in body["predictions"]])
            assert_probabilities(got, expected[version][start : start + size], f"rows {start}+{size}: {version}")
        assert seen.get(old_version, 0) > 0 and seen.get(new_version, 0) > 0, seen
        # A request sent once the load had returned is the new version's.
        late = [
            (round(a.sent - swapped, 4), a.size, a.response.headers.get("x-request-id"))
            for a in traffic.answers
            if a.sent > swapped and a.response.json()["model"]["version"] != new_version
        ]
        assert late == [], f"sent after the swap (s), rows, request id; answered by the old version: {late}"

        (entry,) = triton.get_model_repository_index()
        assert entry["state"] == "READY" and entry["version"] == new_version
        assert "not a loadable ONNX model" in entry["reason"]
        assert triton.is_model_ready("digits", new_version) is True
        assert triton.is_model_ready("digits", old_version) is False
        result = infer(triton, "digits", rows[:5])
        assert result.get_response()["model_version"] == new_version
        assert_probabilities(result.as_numpy("probabilities"), expected[new_version][:5])


# -- poll mode ------------------------------------------------------------------------------------------------------


def test_poll_mode_follows_a_model_directory_added_and_removed(
    model_sources: ModelSources, tmp_path: Path, rows: NDArray[np.float32]
) -> None:
    root = model_sources.repository(tmp_path / "repo", digits=model_sources.digits)
    staging = tmp_path / "staging"
    staging.mkdir()
    version = card_version(model_sources.digits_copy)
    with repository_server(tmp_path, root, CALIBSERVE_REPOSITORY_POLL_SECONDS="0.2") as (url, triton):
        assert list(index_of(triton)) == ["digits"]
        assert triton.is_model_ready("second") is False

        stage(model_sources.digits_copy, staging).rename(root / "second")
        wait_for(lambda: index_of(triton).get("second", {}).get("state") == "READY", "'second' READY in the index")
        assert index_of(triton)["second"] == {"name": "second", "version": version, "state": "READY"}
        assert triton.is_model_ready("second", version) is True
        result = infer(triton, "second", rows[:3])
        assert result.get_response()["model_name"] == "second"
        assert_probabilities(
            result.as_numpy("probabilities"), expected_probabilities(model_sources.digits_copy, rows[:3])
        )

        (root / "second").rename(staging / "second-removed")
        wait_for(lambda: index_of(triton)["second"]["state"] == "UNAVAILABLE", "'second' UNAVAILABLE in the index")
        assert index_of(triton)["second"] == {"name": "second", "state": "UNAVAILABLE", "reason": "unloaded"}
        assert triton.is_model_ready("second") is False
        with pytest.raises(InferenceServerException) as gone:
            infer(triton, "second", rows[:1])
        assert "'second'" in server_error(gone, "404")
        # The model that stayed never stopped.
        assert index_of(triton)["digits"]["state"] == "READY" and triton.is_model_ready("digits") is True
        assert httpx.get(f"{url}/health/ready", timeout=10.0).status_code == 200
