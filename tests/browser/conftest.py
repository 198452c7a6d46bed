"""A real headless Chromium (Debian's ``chromium``) driven by Playwright, against a live ``calibserve serve``.

No browser is downloaded: Playwright launches ``/usr/bin/chromium``. Skipped, with the reason, only where
that binary or the Playwright package is missing (CI installs both). The flags keep Chromium off the
network it cannot reach here (background services, component updates) and allow it to run as root.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.test_serve_e2e import serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Screenshots the browser tests take, for a person to look at (ignored by git).
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".artifacts" / "screenshots"


@dataclass
class PageEvents:
    """What a page said while it was open: console errors, failed requests, requests to other hosts."""

    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requested_urls: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console_errors.append(str(e)))
        page.on("requestfailed", lambda r: self.failed_requests.append(f"{r.url}: {r.failure}"))
        page.on("request", lambda r: self.requested_urls.append(r.url))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Per module, not per session: Playwright's sync API keeps an event loop set in this thread while it is
    open, and every later test calling ``asyncio.run()`` would fail ("cannot be called from a running loop")."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("browser-server")
    with serving(root / "data", root / "serve.log") as url:
        yield url
