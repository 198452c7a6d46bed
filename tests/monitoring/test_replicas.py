"""Several `calibserve serve` processes on one PostgreSQL: the deployment a Kubernetes Deployment runs.

Real processes on free ports, each with its own data directory (nothing shared but the database), a real
PostgreSQL server started by the tests. What was stored is read from the database itself after the fact.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.monitoring.test_log_processes import ROWS, Server, serving
from tests.monitoring.test_log_processes import Traffic as ProcessTraffic
from tests.postgres import PostgresServer, find_bindir, running_postgres

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]

DEADLINE_S = 30.0


def query(url: str, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return [tuple(row) for row in connection.execute(sql, parameters).fetchall()]


def stored_ids(url: str) -> set[str]:
    return {str(row[0]) for row in query(url, "SELECT id FROM predictions")}


def wait_until_stored(url: str, ids: set[str], timeout: float = DEADLINE_S) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        present = stored_ids(url)
        if ids <= present:
            return present
        assert time.monotonic() < deadline, f"{len(ids - present)} id(s) not stored after {timeout} s"
        time.sleep(0.1)


def predict(url: str, n: int) -> list[str]:
    response = httpx.post(f"{url}/v1/predict", json={"instances": [ROWS[i % 2] for i in range(n)]}, timeout=30.0)
    assert response.status_code == 200, response.text
    return [p["prediction_id"] for p in response.json()["predictions"]]


def feedback(url: str, items: list[tuple[str, str]]) -> httpx.Response:
    body = {"feedback": [{"prediction_id": i, "label": label} for i, label in items]}
    return httpx.post(f"{url}/v1/feedback", json=body, timeout=30.0)


def health(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/health/calibration", timeout=30.0)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@contextmanager
def replicas(tmp_path: Path, database_url: str, count: int, *extra: str) -> Iterator[list[Server]]:
    with ExitStack() as stack:
        servers = []
        for i in range(count):
            data_dir = tmp_path / f"replica-{i}" / "data"
            data_dir.parent.mkdir(parents=True)
            servers.append(stack.enter_context(serving(data_dir, "--database-url", database_url, *extra)))
        yield servers


@dataclass
class Traffic(ProcessTraffic):
    """The processes tests' traffic (threads, ``acknowledged`` id -> arrival), sending two rows per request and
    keeping every answer that is not a 200 in ``failures`` (there, a failed request only ends its thread)."""

    threads: int = 3
    failures: list[str] = field(default_factory=list)
    until_gone: bool = False  # a server killed under the traffic: transport errors end a thread quietly

    def _run(self) -> None:
        body = {"instances": [ROWS[0], ROWS[1]]}
        with httpx.Client(timeout=15.0) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(f"{self.url}/v1/predict", json=body)
                except httpx.TransportError as exc:
                    if not self.until_gone:
                        with self.lock:
                            self.failures.append(repr(exc))
                    return
                arrived = time.monotonic()
                with self.lock:
                    if response.status_code == 200:
                        for prediction in response.json()["predictions"]:
                            self.acknowledged[prediction["prediction_id"]] = arrived
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")


def test_feedback_on_any_replica_and_one_calibration_status_everywhere(tmp_path: Path, postgres_url: str) -> None:
    with replicas(tmp_path, postgres_url, 3) as (a, b, c):
        on_a = [i for _ in range(4) for i in predict(a.url, 30)]
        on_b = [i for _ in range(3) for i in predict(b.url, 30)]
        # feedback before the other replica's writer committed is `pending`; once stored, `recorded`
        wait_until_stored(postgres_url, set(on_a + on_b))
        label = {i: "0" if n % 2 == 0 else "1" for n, i in enumerate(on_a)} | {
            i: "0" if n % 2 == 0 else "1" for n, i in enumerate(on_b)
        }
        first = feedback(c.url, [(i, label[i]) for i in on_a])  # a third replica labels the first one's
        assert first.status_code == 200, first.text
        assert first.json()["counts"] == {"recorded": len(on_a)}
        second = feedback(a.url, [(i, label[i]) for i in on_b])
        assert second.json()["counts"] == {"recorded": len(on_b)}
        again = feedback(b.url, [(on_a[0], label[on_a[0]]), (on_a[1], "7")])  # seen by every replica
        assert [item["status"] for item in again.json()["results"]] == ["duplicate", "conflict"]

        reports = [health(server.url) for server in (a, b, c)]
        for report in reports:
            assert report["live"]["labelled"]["n"] == len(on_a) + len(on_b)
            assert report["live"]["unlabelled"]["n"] == len(on_a) + len(on_b)
        assert reports[0]["live"] == reports[1]["live"] == reports[2]["live"]
        assert reports[0]["status"] == reports[1]["status"] == reports[2]["status"]
    assert query(postgres_url, "SELECT count(*) FROM feedback") == [(len(on_a) + len(on_b),)]


def test_kill_9_of_a_replica_loses_nothing_the_survivor_acknowledged(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Tolerance: rows still queued in the killed replica are lost by design (at most one writer batch);
    every row it had committed before the kill stays, and everything the survivor acknowledged lands."""
    with replicas(tmp_path, postgres_url, 2) as (victim, survivor):
        with Traffic(victim.url, until_gone=True) as doomed, Traffic(survivor.url) as steady:
            doomed.wait_for(200)
            steady.wait_for(200)
            committed = wait_until_stored(postgres_url, set(list(doomed.acknowledged)[:200]))
            doomed.wait_for(len(doomed.acknowledged) + 40)
            assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
            steady.wait_for(len(steady.acknowledged) + 200)  # the survivor goes on serving
        assert steady.failures == []
        assert survivor.stop() == 0, survivor.text()  # SIGTERM: its queue is drained into the database
    present = stored_ids(postgres_url)
    assert set(steady.acknowledged) <= present
    assert {i for i in committed if i in set(doomed.acknowledged)} <= present
    assert len(present) <= len(doomed.acknowledged) + len(steady.acknowledged) + doomed.threads * 2
    # PostgreSQL's own check of every B-tree index against its table (amcheck): it raises on any inconsistency
    assert int(postgres_server.amcheck(postgres_url.rsplit("/", 1)[1])) > 0
    duplicates = query(postgres_url, "SELECT count(*) - count(DISTINCT (id, model)) FROM predictions")
    assert duplicates == [(0,)]


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, to stop and start under traffic without disturbing the others' server."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found: apt-get install postgresql")
    with running_postgres(bindir) as server:
        yield server


def test_the_database_stopped_and_restarted_mid_traffic_fails_no_prediction(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    url = own_postgres.fresh_database()
    # A queue far beyond what the outage can fill (about 2,000 rows a second for up to ~10 s here), so that every
    # row must wait and be written; what happens past the bound is tested in test_store_unavailable.py.
    with replicas(tmp_path, url, 2, "--log-queue-size", "200000") as (a, b):
        with Traffic(a.url) as traffic:
            traffic.wait_for(100)
            own_postgres.stop("fast")
            outage_started = len(traffic.acknowledged)
            traffic.wait_for(outage_started + 300)  # predictions go on while the database is down
            down = health(b.url)
            store = next(r for r in down["reasons"] if r["code"] == "log_store_unavailable")
            assert "***" not in url and url.split("@")[-1] in store["message"]  # says which store, no password
            refused = feedback(b.url, [(next(iter(traffic.acknowledged)), "0")])
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0, refused.text
            assert httpx.get(f"{a.url}/health/ready", timeout=10).status_code == 200  # readiness stays up
            # the idle replica's writer notices too (it asks every 5 s): its gauge says so
            deadline = time.monotonic() + DEADLINE_S
            while writable(b.url) != 0.0:
                assert time.monotonic() < deadline, "the idle replica never reported its store down"
                time.sleep(0.2)
            own_postgres.start()
            traffic.wait_for(len(traffic.acknowledged) + 100)
        assert traffic.failures == []
        deadline = time.monotonic() + DEADLINE_S
        while any(r["code"] == "log_store_unavailable" for r in health(a.url)["reasons"]):
            assert time.monotonic() < deadline, "the store problem never cleared"
            time.sleep(0.2)
        dropped = health(a.url)["log"]["dropped"]
        assert writable(a.url) == 1.0
        assert a.stop() == 0, a.text()
    present = stored_ids(url)
    acknowledged = set(traffic.acknowledged)
    assert dropped == 0  # the outage fit in the queue: every row waited and was written
    assert acknowledged <= present, f"{len(acknowledged - present)} acknowledged predictions missing"
    assert feedback_after_restart(url, next(iter(traffic.acknowledged))) == 0


def writable(url: str) -> float:
    """``calibserve_log_store_writable`` as the server's /metrics says it."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    (line,) = [line for line in text.splitlines() if line.startswith("calibserve_log_store_writable")]
    return float(line.split()[-1])


def feedback_after_restart(url: str, prediction_id: str) -> int:
    """Labels stored for the id (none were accepted while the database was down)."""
    return int(query(url, "SELECT count(*) FROM feedback WHERE prediction_id = %s", (prediction_id,))[0][0])
