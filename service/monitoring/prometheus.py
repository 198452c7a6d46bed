"""Prometheus metrics, correct with several uvicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``calibserve serve`` sets it for workers > 1), every process
writes its samples to files there and ``/metrics`` aggregates them; otherwise the default registry
serves one process. Gauges that every worker computes from the shared log use ``mostrecent``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

logger = logging.getLogger("calibserve.metrics")

REQUESTS = Counter(
    "calibserve_requests_total", "HTTP requests by route, method and status", ["route", "method", "status"]
)
LATENCY = Histogram(
    "calibserve_request_duration_seconds",
    "HTTP request latency by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
PREDICTIONS = Counter("calibserve_predictions_total", "Predictions by model and predicted class", ["model", "label"])
CONFIDENCE = Histogram(
    "calibserve_prediction_confidence",
    "Calibrated top-label confidence of each prediction (the card's 15 bins)",
    ["model"],
    buckets=tuple(float(edge) for edge in np.linspace(0, 1, 16)[1:]),
)
FEEDBACK = Counter("calibserve_feedback_total", "Feedback items by outcome", ["status"])
# Live-window gauges by model name and version (the card version's first 12 hex digits): a new version
# starts a new series, judged against its own card.
MODEL_VERSION = ["model", "version"]
LIVE_ECE = Gauge(
    "calibserve_live_ece", "ECE over the live labelled window", MODEL_VERSION, multiprocess_mode="mostrecent"
)
LIVE_PSI = Gauge(
    "calibserve_live_psi", "PSI of live vs reference confidences", MODEL_VERSION, multiprocess_mode="mostrecent"
)
ESTIMATED_ACCURACY = Gauge(
    "calibserve_estimated_accuracy",
    "Mean calibrated confidence of recent predictions",
    MODEL_VERSION,
    multiprocess_mode="mostrecent",
)
MODEL_READY = Gauge(
    "calibserve_model_ready",
    "1 for the model version that serves each model name, 0 once it is replaced or unloaded",
    MODEL_VERSION,
    multiprocess_mode="mostrecent",
)
MODEL_LOADS = Counter(
    "calibserve_model_loads_total",
    "Model (re)loads by outcome: loaded, failed (the previous version, if any, keeps serving), unloaded",
    ["model", "outcome"],
)
SHADOW_ROWS = Counter(
    "calibserve_shadow_rows_total",
    "Rows of champion traffic offered to its shadow challenger, by outcome: scored, or skipped (the challenger "
    "fell behind, is not loaded, or failed)",
    ["champion", "challenger", "outcome"],
)
QUEUE_DEPTH = Gauge("calibserve_log_queue_depth", "Rows waiting for the log writer", multiprocess_mode="livesum")
DROPPED = Counter("calibserve_log_dropped_rows_total", "Prediction rows not logged (queue full or write error)")
STORE_WRITABLE = Gauge(
    "calibserve_log_store_writable",
    "1 while the prediction log's store (SQLite file or PostgreSQL) takes writes, 0 while rows wait for it; "
    "the lowest of the live processes",
    multiprocess_mode="livemin",
)
SHED = Counter(
    "calibserve_shed_requests_total",
    "Requests refused with 503 before scoring: queue full (rows over CALIBSERVE_MAX_QUEUE_ROWS) or queue deadline",
    ["reason"],
)
CONNECTIONS_REFUSED = Counter(
    "calibserve_connections_refused_total",
    "Connections closed at accept: open connections were at CALIBSERVE_MAX_CONNECTIONS",
)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every ``v``, one increment per bucket instead of one call per value.

    prometheus-client has no batch observe, and per value it costs a lock and a Python loop over the
    buckets (2 ms for a 1000-row request). This uses its internal per-bucket values, the same ones
    ``observe`` increments (each value counts in the first bucket whose bound holds it; the exposition
    accumulates), so bucket counts and the count are identical; the sum is added once per batch, so its
    last bits may differ from adding value by value. A test compares it with ``observe`` in a loop.
    """
    if len(values) == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(np.sum(values)))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count)


def render() -> tuple[bytes, str]:
    """The exposition of every worker's metrics, or of this worker's alone when the shared directory is gone.

    ``/metrics`` must always render: if the multi-process directory was deleted (with the data directory,
    say), this worker's own values are still in its memory-mapped files (unlinked, still mapped), so they
    are served instead, with one warning that the sum over workers is lost until the server restarts.
    """
    global _warned_directory
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and Path(directory).is_dir():
        try:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        except (OSError, ValueError) as error:
            problem = str(error)
    else:
        problem = "it is gone"
    if directory and not _warned_directory:
        _warned_directory = True
        logger.warning("metrics directory %s unreadable (%s): /metrics serves this worker only", directory, problem)
    return generate_latest(), CONTENT_TYPE_LATEST


_warned_directory = False
