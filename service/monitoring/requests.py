"""Request count and latency per route template (no per-path cardinality).

Every label value is bounded whatever clients send: the route is the matched template (or ``unmatched``),
the method one of the standard ones (or ``other``: HTTP lets a client invent methods, and 500 made-up
4 KB method names once minted 500 series, +47 MB of memory and an 82 MB /metrics), the status a code.
"""

from __future__ import annotations

from typing import Any

from service.monitoring.prometheus import LATENCY, REQUESTS

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


class RequestMetrics:
    """Counts and times finished requests; the API's outermost middleware calls ``record`` once per request
    (it already times the request and sees its status for the access log: one wrapper, not two)."""

    def __init__(self) -> None:
        # labels() takes a lock and builds a key per call; the children are few (routes x methods x
        # statuses), so keep them: a dict lookup per request instead.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[str, Any] = {}

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        """``route`` is the matched template (``unmatched`` when none), never the raw path."""
        method = method if method in METHODS else OTHER_METHOD
        key = (route, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = REQUESTS.labels(route=route, method=method, status=str(status))
        counter.inc()
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = LATENCY.labels(route=route)
        histogram.observe(seconds)
