"""/metrics renders even when the multi-process metrics directory was deleted under a running server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit

# prometheus_client picks its storage when first imported, so the scenario runs in a fresh interpreter.
SCENARIO = textwrap.dedent(
    """
    import os, shutil, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from service.monitoring import prometheus as metrics
    metrics.REQUESTS.labels(route="/before", method="GET", status="200").inc(3)
    shared, _ = metrics.render()
    shutil.rmtree(sys.argv[1])  # the data directory deleted while serving
    metrics.REQUESTS.labels(route="/after", method="GET", status="200").inc()
    alone, _ = metrics.render()
    print(int(b'route="/before"' in shared), int(b'{method="GET",route="/before",status="200"} 3.0' in alone),
          int(b'route="/after"' in alone))
    """
)


def test_metrics_render_this_workers_values_when_the_shared_directory_is_gone(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(directory)], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "1"]
    assert result.stderr.count("serves this worker only") == 1
