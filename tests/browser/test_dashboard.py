"""The dashboard in a real headless Chromium against a live ``calibserve serve``: it loads with no console
error, no failed request and nothing from another host; it shows the status and the figures the APIs give;
it refreshes itself after new feedback, not while the tab is hidden or paused; its controls are reachable by
keyboard. Screenshots go to .artifacts/screenshots/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.browser.conftest import SCREENSHOTS, PageEvents
from tests.browser.test_docs import only_this_server
from tests.monitoring.test_feedback_api import digits_test_split, noisy
from tests.test_serve_e2e import call_json as call
from tests.test_serve_e2e import serving

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

REFRESH_S = 2


def replay(base: str, rows: np.ndarray, labels: np.ndarray) -> None:
    """Predictions over HTTP, then the true labels as feedback, as a client would send them."""
    ids: list[str] = []
    for start in range(0, len(rows), 60):
        answer = call(base, "/v1/predict", {"instances": rows[start : start + 60].tolist()})
        ids += [p["prediction_id"] for p in answer["predictions"]]
    for start in range(0, len(ids), 200):
        items = [
            {"prediction_id": i, "label": str(y)}
            for i, y in zip(ids[start : start + 200], labels[start : start + 200], strict=True)
        ]
        call(base, "/v1/feedback", {"feedback": items})


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("dashboard-server")
    env = {"CALIBSERVE_DASHBOARD_REFRESH_SECONDS": str(REFRESH_S), "CALIBSERVE_WINDOW_LABELS": "1000"}
    with serving(root / "data", root / "serve.log", extra_env=env) as url:
        yield url


def open_dashboard(browser: Any, url: str) -> tuple[Any, PageEvents]:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    events = PageEvents()
    events.watch(page)
    page.goto(url)
    page.wait_for_load_state("networkidle")
    return page, events


def test_the_page_updates_after_feedback_and_shows_the_apis_figures(browser: Any, dashboard_server: str) -> None:
    features, labels = digits_test_split()
    replay(dashboard_server, features, labels)  # clean traffic first: ok
    page, events = open_dashboard(browser, f"{dashboard_server}/dashboard")
    health = call(dashboard_server, "/health/calibration")
    status = page.locator("#status-heading .badge")
    assert status.get_attribute("data-status") == health["status"] == "ok"
    assert page.locator("#chart-ece").is_visible() and page.locator("#reliability-live").is_visible()
    for reason in health["reasons"]:
        assert (
            page.locator(f'#status tr[data-code="{reason["code"]}"] .badge').get_attribute("data-status")
            == reason["status"]
        )
    page.screenshot(path=str(SCREENSHOTS / "dashboard-clean.png"), full_page=True)

    replay(dashboard_server, noisy(features, 6.0, seed=3), labels)  # then drifting traffic, with its labels
    # a polling locator, not wait_for_function: the page's CSP forbids the eval that one needs
    for _ in range(REFRESH_S * 10):
        if status.get_attribute("data-status") == "critical":
            break
        page.wait_for_timeout(500)
    assert status.get_attribute("data-status") == "critical", "the page did not refresh after the new feedback"
    assert int(page.locator("#dashboard").get_attribute("data-refreshes")) >= 1
    after = call(dashboard_server, "/health/calibration")
    assert after["status"] == "critical"
    rows = page.locator("#history-table tbody tr")
    starts = [int(rows.nth(i).get_attribute("data-start")) for i in range(rows.count())]
    name = after["model"]["name"]
    history = call(
        dashboard_server,
        f"/v1/models/{name}/calibration/history?since={starts[0]}&until={starts[-1] + 60}&bucket=1m",
    )
    shown = {int(rows.nth(i).get_attribute("data-start")): rows.nth(i) for i in range(rows.count())}
    for bucket in history["buckets"]:
        row = shown[int(bucket["start"])]
        cells = row.locator("td")
        assert int(cells.nth(0).text_content()) == bucket["predictions"]
        assert int(cells.nth(1).text_content()) == bucket["labelled"]
        assert row.get_attribute("data-status") == bucket["status"]
    assert sum(b["predictions"] for b in history["buckets"]) == 720
    assert (
        "critical" in page.locator("#breaking-point").inner_text()
        or "Not ok" in page.locator("#breaking-point").inner_text()
    )
    page.screenshot(path=str(SCREENSHOTS / "dashboard-drifted.png"), full_page=True)
    only_this_server(events, dashboard_server)
    page.close()


def test_no_refresh_while_hidden_or_paused_and_the_controls_answer_the_keyboard(
    browser: Any, dashboard_server: str
) -> None:
    page, events = open_dashboard(browser, f"{dashboard_server}/dashboard")
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "/content" in r.url else None)
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    time.sleep(REFRESH_S * 2.5)
    assert fetched == [], "refreshed while the tab was hidden"
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    page.wait_for_timeout(500)
    assert len(fetched) >= 1, "did not refresh when the tab became visible again"

    for _ in range(30):  # the pause button, by keyboard alone
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "refresh-toggle":
            break
    else:
        pytest.fail("the refresh toggle cannot be reached with Tab")
    page.keyboard.press("Enter")
    assert page.locator("#refresh-toggle").get_attribute("aria-pressed") == "true"
    before = len(fetched)
    time.sleep(REFRESH_S * 2.5)
    assert len(fetched) == before, "refreshed while paused"
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    assert len(fetched) > before
    only_this_server(events, dashboard_server)
    page.close()
