"""bench/replay.py against a real server: by default it replays fresh clean traffic, not the card's reference.

The statistical review (issue 12) found that the replay sent the test split, which *is* the card's reference
(KS D = 0.003, p = 1.0), so its "ok" said nothing about false alarms. These tests fail on that version.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.test_serve_e2e import serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    with serving(tmp_path / "data", tmp_path / "serve.log") as url:
        yield url


def replay(url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "replay.py"), "--url", url, "--batch", "120", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ},
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_default_replay_is_fresh_traffic_not_the_reference(server: str) -> None:
    out = replay(server)
    assert "calibration split" in out and "not the" in out
    health = httpx.get(f"{server}/health/calibration", timeout=10).json()
    ks = health["live"]["unlabelled"]["ks"]
    # The test split gives D ~ 0.003 against itself; 360 other digits from the same distribution do not.
    assert ks["statistic"] > 0.02, ks
    assert health["live"]["labelled"]["n"] == 360
    assert health["status"] == "ok", [r for r in health["reasons"] if r["status"] != "ok"]


def test_test_split_replay_says_it_is_the_reference(server: str) -> None:
    out = replay(server, "--split", "test")
    assert "TEST split: the card's own reference" in out
    ks = httpx.get(f"{server}/health/calibration", timeout=10).json()["live"]["unlabelled"]["ks"]
    assert ks["statistic"] < 0.02, ks
