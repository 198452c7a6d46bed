"""The dashboard after clean and then drifting traffic, as a new user sees it: the README's screenshot.

    .venv/bin/python bench/dashboard_screenshot.py            # writes bench/dashboard.png (about 4 minutes)

Starts ``calibserve serve`` on the bundled model with a fresh log, replays the calibration split with its
labels (``bench/replay.py``) for ``--clean`` minutes, then ``bench/replay.py --noise 6`` for ``--drift``
minutes (each replay in a minute of its own, so the 1-minute buckets of the default view tell them apart), opens
``/dashboard`` in headless Chromium (Debian's, driven by Playwright, as the browser tests do) and saves a
full-page screenshot. Needs the ``train`` extra (scikit-learn's digits) and ``dev`` (Playwright).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import CHROMIUM, FLAGS  # noqa: E402


@contextmanager
def serving(data_dir: Path, port: int = 8765) -> Iterator[str]:
    """``calibserve serve`` on the bundled model with its log in ``data_dir``, until the block ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIBSERVE_")}
    env |= {"CALIBSERVE_DATA_DIR": str(data_dir), "CALIBSERVE_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(url + "/health/ready", timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def next_minute() -> None:
    time.sleep(60 - time.time() % 60 + 1)


def replay(url: str, *options: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / "replay.py"), "--url", url, *options], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", type=int, default=2, help="minutes of clean traffic")
    parser.add_argument("--drift", type=int, default=2, help="minutes of traffic with noise sd 6")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "dashboard.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, serving(Path(tmp) / "data") as url:
        for minute in range(args.clean + args.drift):
            next_minute()
            drifting = minute >= args.clean
            replay(url, "--seed", str(minute), *(["--noise", "6"] if drifting else []))
            print(f"minute {minute + 1}: {'--noise 6' if drifting else 'clean'} traffic replayed", flush=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{url}/dashboard")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(args.out), full_page=True)
            print(page.locator("#breaking-point").inner_text())
            browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
