"""The prediction log across real processes: two servers on one file, uvicorn workers, kill -9 and SIGTERM.

Every server is a real ``python -m service.cli serve`` on a free port with its own ``--data-dir``; what was
logged is read from the SQLite file after the processes are gone.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from service.api.schemas import DIGIT_ONE, DIGIT_ZERO
from service.card import CalibrationCard
from service.monitoring.monitor import LOG_FILE
from tests.conftest import DEFAULT_MODEL_DIR, REPO_ROOT
from tests.test_serve_e2e import free_port, wait_until_ready

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STOP_TIMEOUT_S = 15.0
# How long a test waits for a writer to commit what its server acknowledged (normally a fraction of a second).
COMMIT_DEADLINE_S = 30.0
ROWS = [DIGIT_ZERO, DIGIT_ONE]


def server_env() -> dict[str, str]:
    """The caller's environment without CALIBSERVE_* settings: the command line alone configures the server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CALIBSERVE_")}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    output: Path

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_TIMEOUT_S} s after {sig.name}:\n{self.text()}")

    def text(self) -> str:
        return self.output.read_text(errors="replace")


@contextmanager
def serving(data_dir: Path, *extra: str) -> Iterator[Server]:
    """A `calibserve serve` process on a free port, ready; killed at the end if the test left it running.

    These tests count every acknowledged prediction, so the queue deadline is far beyond the default: on a
    busy test machine, load shedding (503, tested elsewhere) would otherwise refuse some of them."""
    port = free_port()
    output = data_dir.parent / f"serve-{port}.log"
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    command += ["--queue-timeout-ms", "60000"]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "--model-path", str(DEFAULT_MODEL_DIR), *extra],
            cwd=REPO_ROOT,
            env=server_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", output)
    try:
        wait_until_ready(process, server.url, output)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def predict(client: httpx.Client | None, url: str, n: int) -> list[str]:
    body = {"instances": [ROWS[i % 2] for i in range(n)]}
    if client is None:
        response = httpx.post(f"{url}/v1/predict", json=body, timeout=30.0)
    else:
        response = client.post(f"{url}/v1/predict", json=body, timeout=30.0)
    assert response.status_code == 200, response.text
    return [p["prediction_id"] for p in response.json()["predictions"]]


def feedback(url: str, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        items = [{"prediction_id": i, "label": "0"} for i in ids[start : start + 500]]
        response = httpx.post(f"{url}/v1/feedback", json={"feedback": items}, timeout=30.0)
        assert response.status_code == 200, response.text
        for key, value in response.json()["counts"].items():
            counts[key] = counts.get(key, 0) + value
    return counts


def query(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(data_dir / LOG_FILE, timeout=10.0)) as connection:
        return list(connection.execute(sql).fetchall())


def logged_ids(data_dir: Path) -> set[str]:
    return {row[0] for row in query(data_dir, "SELECT id FROM predictions")}


def wait_until_logged(data_dir: Path, ids: set[str] | list[str], timeout: float = COMMIT_DEADLINE_S) -> set[str]:
    """Poll the file until every one of ``ids`` is committed (by whichever process logged it); returns what
    the file held then. Each server's writer commits on its own schedule: wait for the rows, not for a time."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while True:
        present = logged_ids(data_dir)
        if wanted <= present:
            return present
        assert time.monotonic() < deadline, f"{len(wanted - present)} id(s) not committed after {timeout} s"
        time.sleep(0.05)


def assert_well_formed(data_dir: Path, earliest: float, latest: float) -> int:
    """Every row is a complete prediction of the bundled model; returns the number of rows."""
    version = CalibrationCard.from_json((DEFAULT_MODEL_DIR / "card.json").read_bytes()).version
    assert query(data_dir, "PRAGMA integrity_check") == [("ok",)]
    rows = query(
        data_dir, "SELECT id, ts, model_version, class_index, confidence, probabilities, features FROM predictions"
    )
    for prediction_id, ts, model_version, class_index, confidence, blob, features in rows:
        parsed = uuid.UUID(prediction_id)
        assert parsed.version == 7 and str(parsed) == prediction_id
        assert earliest <= ts <= latest
        assert model_version == version
        assert isinstance(blob, bytes) and len(blob) == 4 * 10
        probabilities = np.frombuffer(blob, dtype=np.float32)
        assert np.isfinite(probabilities).all() and (probabilities >= 0).all()
        assert abs(float(probabilities.sum()) - 1.0) < 1e-5
        assert class_index == int(probabilities.argmax())
        assert confidence == pytest.approx(float(probabilities.max()), abs=1e-6)
        assert features is None
    return len(rows)


@dataclass
class Traffic:
    """Threads sending predictions (``rows`` instances each) until stopped or the server goes away.

    ``acknowledged`` maps each prediction id whose 200 response arrived to the monotonic time it arrived.
    """

    url: str
    threads: int = 4
    rows: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    acknowledged: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self.workers.append(worker)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self.stop.is_set():
                try:
                    ids = predict(client, self.url, self.rows)
                except httpx.TransportError:
                    return  # the server is gone (or going): nothing more is acknowledged
                arrived = time.monotonic()
                with self.lock:
                    for prediction_id in ids:
                        self.acknowledged[prediction_id] = arrived

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} predictions in {timeout} s"
            time.sleep(0.05)


def test_two_servers_write_one_log_concurrently(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with serving(data_dir) as first, serving(data_dir) as second:
        urls = [first.url, second.url]

        def one(i: int) -> list[str]:
            return predict(None, urls[i % 2], 1 + i % 3)

        with ThreadPoolExecutor(max_workers=8) as pool:
            batches = list(pool.map(one, range(400)))
        acknowledged = [i for batch in batches for i in batch]
        assert len(set(acknowledged)) == len(acknowledged) == sum(1 + i % 3 for i in range(400))
        # feedback reaches predictions the other process logged (once its writer has committed them)
        first_ids = [i for n, batch in enumerate(batches) for i in batch if n % 2 == 0]
        wait_until_logged(data_dir, first_ids[:100])
        assert feedback(second.url, first_ids[:100]) == {"recorded": 100}
        assert first.stop() == 0, first.text()
        assert second.stop() == 0, second.text()
    assert "Traceback" not in first.text() + second.text()
    assert logged_ids(data_dir) == set(acknowledged)
    assert query(data_dir, "SELECT COUNT(*) FROM feedback") == [(100,)]
    assert query(data_dir, "PRAGMA integrity_check") == [("ok",)]


def metrics_dir_of(server: Server, data_dir: Path) -> Path:
    """The multi-process metrics directory of this server (``<data dir>/prometheus/<pid>-<random>``)."""
    (directory,) = (data_dir / "prometheus").glob(f"{server.process.pid}-*")
    return directory


def per_process_predictions(metrics_dir: Path) -> list[float]:
    """calibserve_predictions_total as each worker process wrote it into its own multiprocess file."""
    totals = []
    for path in sorted(metrics_dir.glob("counter_*.db")):
        value = 0.0
        for metric in MultiProcessCollector.merge([str(path)], accumulate=True):  # type: ignore[no-untyped-call]
            value += sum(s.value for s in metric.samples if s.name == "calibserve_predictions_total")
        totals.append(value)
    return totals


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f"|{k}={v}" for k, v in sorted(sample.labels.items()) if k == "status")
            sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def test_two_workers_share_the_log_and_sum_their_metrics(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with serving(data_dir, "--workers", "2") as server:
        acknowledged: list[str] = []
        busy: list[float] = []
        for _ in range(20):  # new connections spread over the workers; go on until both have served some
            with ThreadPoolExecutor(max_workers=8) as pool:
                for batch in pool.map(lambda _: predict(None, server.url, 2), range(50)):
                    acknowledged += batch
            busy = [v for v in per_process_predictions(metrics_dir_of(server, data_dir)) if v > 0]
            if len(busy) >= 2:
                break
        assert len(busy) == 2, f"one worker served everything: {busy}"
        assert sum(busy) == len(acknowledged)
        wait_until_logged(data_dir, acknowledged)  # each worker's writer has committed: any worker may take it
        assert feedback(server.url, acknowledged) == {"recorded": len(acknowledged)}
        for _ in range(4):  # whichever worker answers the scrape, it reports the sum over both
            metrics = scrape(server.url)
            assert metrics["calibserve_predictions_total"] == len(acknowledged)
            assert metrics["calibserve_feedback_total|status=recorded"] == len(acknowledged)
        assert server.stop() == 0, server.text()
    assert logged_ids(data_dir) == set(acknowledged)
    assert query(data_dir, "SELECT COUNT(*) FROM feedback") == [(len(acknowledged),)]


def test_kill_9_during_traffic_leaves_a_consistent_log(tmp_path: Path) -> None:
    """SIGKILL mid-stream: the file is intact and reopens; committed rows survive.

    Tolerance: rows still queued in the killed process (acknowledged since the writer's last commit) are lost
    by design. Every id the file held before the kill (seen committed from another connection while traffic
    went on) must still be there after it.
    """
    data_dir = tmp_path / "data"
    started = time.time()
    with serving(data_dir) as server, Traffic(server.url) as traffic:
        traffic.wait_for(300)
        with traffic.lock:
            early = set(traffic.acknowledged)
        settled = wait_until_logged(data_dir, early)  # committed while traffic goes on
        traffic.wait_for(len(traffic.acknowledged) + 50)  # more traffic: some rows are only queued at the kill
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    killed_wall = time.time()
    assert len(settled) >= 300
    rows = assert_well_formed(data_dir, started - 1, killed_wall + 1)
    present = logged_ids(data_dir)
    assert settled <= present, f"{len(settled - present)} committed-long-ago ids missing"
    assert rows <= len(traffic.acknowledged) + traffic.threads  # at most one unanswered request per thread

    # The same data dir serves again: recovers the WAL, reads old rows and writes new ones.
    with serving(data_dir) as restarted:
        old = sorted(settled)[:5]
        assert feedback(restarted.url, old) == {"recorded": 5}
        new = predict(None, restarted.url, 3)
        assert restarted.stop() == 0, restarted.text()
    assert set(new) <= logged_ids(data_dir)
    assert assert_well_formed(data_dir, started - 1, time.time() + 1) == rows + 3
    assert query(data_dir, "SELECT COUNT(*) FROM feedback") == [(5,)]


def test_sigterm_during_traffic_keeps_every_acknowledged_prediction(tmp_path: Path) -> None:
    """SIGTERM mid-stream while the writer is behind: the graceful shutdown commits every acknowledged row.

    The test holds the database's write lock for the last stretch of traffic (as a second process might), so
    the predictions answered then are only queued when SIGTERM arrives; it lets go 1 s after the signal.
    """
    data_dir = tmp_path / "data"
    started = time.time()
    with serving(data_dir) as server, Traffic(server.url, rows=4) as traffic:
        traffic.wait_for(200)
        with closing(sqlite3.connect(data_dir / LOG_FILE, isolation_level=None, check_same_thread=False)) as lock:
            lock.execute("BEGIN EXCLUSIVE")
            traffic.wait_for(len(traffic.acknowledged) + 400)
            release = threading.Timer(1.0, lambda: lock.execute("ROLLBACK"))
            release.start()
            assert server.stop(signal.SIGTERM) == 0, server.text()
            release.join()
    assert "Traceback" not in server.text()
    assert set(traffic.acknowledged) <= logged_ids(data_dir)
    assert assert_well_formed(data_dir, started - 1, time.time() + 1) >= len(traffic.acknowledged) >= 600
