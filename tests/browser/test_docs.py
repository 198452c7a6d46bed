"""/docs and /redoc render in a real browser without the internet, and "Try it out" answers 200.

Before, FastAPI's defaults loaded Swagger UI from a CDN: opened here (no internet) /docs was a blank page.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import SCREENSHOTS, PageEvents

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def only_this_server(events: PageEvents, base: str) -> None:
    host = urlsplit(base).netloc
    elsewhere = [url for url in events.requested_urls if urlsplit(url).netloc not in (host, "")]
    assert elsewhere == [], f"the page asked other hosts: {elsewhere}"
    assert events.failed_requests == []
    assert events.console_errors == []


def test_swagger_ui_renders_the_operations_and_try_it_out_gets_a_200(browser: Any, live_server: str) -> None:
    page = browser.new_page()
    events = PageEvents()
    events.watch(page)
    page.goto(f"{live_server}/docs")
    operation = page.locator('.opblock-post:has([data-path="/v1/predict"])').first
    operation.wait_for(timeout=20_000)
    for path in ("/v1/feedback", "/health/calibration", "/v2/models/{name}/infer"):
        assert page.locator(f'[data-path="{path}"]').count() >= 1, path
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    operation.locator(".execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=20_000)
    assert status.inner_text().strip() == "200"
    body = operation.locator(".live-responses-table .microlight").first.inner_text()
    assert '"prediction_id"' in body and '"probabilities"' in body
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "docs-try-it-out.png"), full_page=False)
    only_this_server(events, live_server)
    page.close()


def test_redoc_renders_without_the_internet(browser: Any, live_server: str) -> None:
    page = browser.new_page()
    events = PageEvents()
    events.watch(page)
    page.goto(f"{live_server}/redoc")
    page.get_by_text("/v1/predict").first.wait_for(timeout=20_000)
    assert page.locator("h1").first.inner_text().startswith("calibserve")
    only_this_server(events, live_server)
    page.close()
