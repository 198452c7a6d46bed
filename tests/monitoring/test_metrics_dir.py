"""Each multi-worker server has its own Prometheus multi-process directory under the data directory.

Unit tests use real directories and real (live or finished) processes; the end-to-end test runs two real
``calibserve serve --workers 2`` servers on one data directory and scrapes both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.monitoring import metrics_dir
from tests.monitoring.test_log_processes import predict, scrape, serving


def finished_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return process.pid


def server_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name[0].isdigit())


@pytest.mark.unit
def test_claim_makes_an_owned_directory_and_release_removes_it(tmp_path: Path) -> None:
    root = tmp_path / "prometheus"
    other = root / f"{os.getppid()}-0123abcd"  # another live server's
    other.mkdir(parents=True)
    mine = metrics_dir.claim(root)
    assert mine.parent == root and mine.name.startswith(f"{os.getpid()}-")
    pid, start = (mine / metrics_dir.OWNER_FILE).read_text().split()
    assert int(pid) == os.getpid() and start == metrics_dir.process_start(os.getpid())
    metrics_dir.release(mine)
    assert not mine.exists() and other.exists()


@pytest.mark.unit
def test_release_in_another_process_leaves_the_directory(tmp_path: Path) -> None:
    foreign = tmp_path / f"{finished_pid()}-abcd"
    foreign.mkdir()
    metrics_dir.release(foreign)
    assert foreign.exists()


@pytest.mark.unit
def test_only_directories_of_servers_that_are_gone_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "prometheus"
    root.mkdir()
    dead = finished_pid()
    parent = os.getppid()  # alive for the whole test
    gone = root / f"{dead}-0badc0de"
    alive = root / f"{parent}-11111111"
    reused = root / f"{parent}-22222222"  # the same pid, but another process than the one that made it
    old_layout_dead, old_layout_alive = root / f"counter_{dead}.db", root / f"gauge_livesum_{parent}.db"
    unrelated = root / "notes"
    for directory in (gone, alive, reused, unrelated):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"x")
    (alive / metrics_dir.OWNER_FILE).write_text(f"{parent} {metrics_dir.process_start(parent)}\n")
    (reused / metrics_dir.OWNER_FILE).write_text(f"{parent} 1\n")
    old_layout_dead.write_bytes(b"x")
    old_layout_alive.write_bytes(b"x")
    removed = metrics_dir.remove_stale(root)
    assert sorted(removed) == sorted([gone, reused, old_layout_dead])
    assert sorted(root.iterdir()) == sorted([alive, old_layout_alive, unrelated])


@pytest.mark.unit
def test_our_own_pid_on_an_old_directory_means_a_former_server(tmp_path: Path) -> None:
    """In a container every start may get the same pid: a directory named by it is not ours yet."""
    root = tmp_path / "prometheus"
    former = root / f"{os.getpid()}-deadbeef"
    former.mkdir(parents=True)
    mine = metrics_dir.claim(root)
    assert not former.exists() and mine.exists()


@pytest.mark.e2e
@pytest.mark.slow
def test_two_multi_worker_servers_on_one_data_dir_keep_their_own_metrics(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    root = data_dir / "prometheus"
    stale = root / f"{finished_pid()}-0badc0de"  # a server killed with -9 left this behind
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"x")
    unrelated = root / "keep-me"
    unrelated.mkdir()
    with serving(data_dir, "--workers", "2") as first:
        assert not stale.exists() and unrelated.exists()
        (first_dir,) = server_dirs(root)
        assert first_dir.name.startswith(f"{first.process.pid}-")
        for _ in range(5):
            predict(None, first.url, 2)
        assert scrape(first.url)["calibserve_predictions_total"] == 10
        with serving(data_dir, "--workers", "2") as second:
            dirs = server_dirs(root)
            assert len(dirs) == 2 and first_dir in dirs  # the second start removed nothing of the first's
            for _ in range(3):
                predict(None, second.url, 2)
            for _ in range(4):  # whichever worker answers the scrape, each server sums its own workers only
                assert scrape(first.url)["calibserve_predictions_total"] == 10
                assert scrape(second.url)["calibserve_predictions_total"] == 6
            assert second.stop() == 0, second.text()
        assert server_dirs(root) == [first_dir]  # the second removed its own directory on exit
        assert scrape(first.url)["calibserve_predictions_total"] == 10
        assert first.stop() == 0, first.text()
    assert server_dirs(root) == []
    assert unrelated.exists()
    assert "Traceback" not in first.text() + second.text()
