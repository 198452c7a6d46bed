"""Live monitoring of each served model version: log its predictions, judge its live window.

Glue between the prediction log (SQLite or PostgreSQL, one per server, shared by every model), the live evaluation (pure
numpy) and the Prometheus metrics, so the HTTP layer calls a few methods and knows nothing of windows or
thresholds. One ``Monitor`` per loaded model version: a new version starts its own window (the log is read
by model name and version) and is judged against its own card.

When the log's store is unavailable, predictions go on, feedback raises ``StoreUnavailable`` (503),
``health()`` names the problem as a reason instead of failing, and ``refresh_metrics()`` never fails:
a dashboard scraping /metrics keeps its other series while the window cannot be read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.card import CalibrationCard
from service.errors import StoreUnavailable
from service.monitoring import prometheus as metrics
from service.monitoring.health import Reason, Thresholds, card_reasons, worst
from service.monitoring.ids import new_ids
from service.monitoring.live import LabelledWindow, LiveReport, LiveThresholds, UnlabelledWindow, evaluate_live
from service.monitoring.log import FeedbackStatus, LogStats, PredictionLog, records_for_batch
from service.settings import Settings

LOG_FILE = "predictions.sqlite"

logger = logging.getLogger("calibserve.monitor")


@dataclass(frozen=True, slots=True)
class HealthReport:
    status: str
    reasons: tuple[Reason, ...]
    live: dict[str, object] | None
    log: LogStats | None


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """What a monitor needs of the settings (the thresholds and the window), nothing else."""

    log_inputs: bool
    window_labels: int
    window_predictions: int
    window_hours: float | None
    card_thresholds: Thresholds
    live_thresholds: LiveThresholds

    @classmethod
    def from_settings(cls, settings: Settings) -> MonitorConfig:
        return cls(
            log_inputs=settings.log_inputs,
            window_labels=settings.window_labels,
            window_predictions=settings.window_predictions,
            window_hours=settings.window_hours,
            card_thresholds=Thresholds(settings.ece_warning, settings.ece_critical),
            live_thresholds=LiveThresholds(
                min_labels=settings.min_labels,
                min_predictions=settings.min_predictions,
                ece_warning=settings.ece_warning,
                ece_critical=settings.ece_critical,
                accuracy_drop_warning=settings.accuracy_drop_warning,
                accuracy_drop_critical=settings.accuracy_drop_critical,
                psi_warning=settings.psi_warning,
                psi_critical=settings.psi_critical,
                ks_pvalue=settings.ks_pvalue,
                class_shift_warning=settings.class_shift_warning,
                class_shift_critical=settings.class_shift_critical,
                false_alarm_rate=settings.false_alarm_rate,
            ),
        )


def open_log(settings: Settings) -> PredictionLog | None:
    """The server's one prediction log (None when logging is off), its drops and depth fed to /metrics."""
    if not settings.log_predictions:
        return None
    target = settings.database_url.get_secret_value() if settings.database_url else settings.data_dir / LOG_FILE
    return PredictionLog(
        target,
        queue_size=settings.log_queue_size,
        on_full=settings.log_queue_full,
        retention_days=settings.retention_days,
        retention_rows=settings.retention_rows,
        feedback_pending_seconds=settings.feedback_pending_seconds,
        # Counted where it happens (a request's thread or the writer's), so write errors count too.
        on_dropped=metrics.DROPPED.inc,
        on_queue_depth=metrics.QUEUE_DEPTH.set,
        on_writable=lambda writable: metrics.STORE_WRITABLE.set(1 if writable else 0),
    )


def record_feedback(log: PredictionLog | None, items: Sequence[tuple[str, str]]) -> list[FeedbackStatus]:
    """Statuses in item order (see ``PredictionLog.record_feedback``); ``StoreUnavailable`` when the log
    cannot be written, so that a client retries instead of trusting an answer we cannot give."""
    if log is None:
        return ["unknown_id"] * len(items)
    statuses = log.record_feedback(items)
    for status in statuses:
        metrics.FEEDBACK.labels(status=status).inc()
    return statuses


class Monitor:
    """One model version's monitoring, under the name it is served by."""

    def __init__(self, name: str, card: CalibrationCard, log: PredictionLog | None, config: MonitorConfig) -> None:
        self.name = name
        self.card = card
        self.log = log
        self.config = config
        self.version_label = card.version[:12]

    def record(
        self,
        class_index: NDArray[np.intp],
        confidence: NDArray[np.float64],
        probabilities: NDArray[np.float64],
        features: NDArray[np.float32],
        *,
        ids: list[str] | None = None,
        served: bool = True,
    ) -> list[str]:
        """Ids for a batch of predictions, queued for the log (never blocks unless the queue is full).

        A shadow score (``served=False``) reuses the ids of the answers it shadows and is not counted as a
        prediction in /metrics (the caller never saw it)."""
        ids = new_ids(len(class_index)) if ids is None else ids
        if served:
            counts = np.bincount(class_index, minlength=self.card.n_classes)
            for label, count in zip(self.card.classes, counts.tolist(), strict=True):
                if count:
                    metrics.PREDICTIONS.labels(model=self.name, label=label).inc(count)
            metrics.observe_many(metrics.CONFIDENCE.labels(model=self.name), confidence)
        if self.log is not None:
            records = records_for_batch(
                ids,
                self.name,
                self.card.version,
                served,
                class_index,
                confidence,
                probabilities,
                features if self.config.log_inputs else None,
            )
            self.log.submit(records)  # rows it cannot take are counted as dropped by the log itself
        return ids

    def live(self) -> LiveReport | None:
        """The live window's report (and its gauges); ``StoreUnavailable`` when the log cannot be read."""
        if self.log is None:
            return None
        self.log.flush(timeout=2.0)  # the window includes what this process has acknowledged so far
        config = self.config
        since = time.time() - config.window_hours * 3600 if config.window_hours else None
        key = (self.name, self.card.version)
        probs, labels = self.log.labelled_window(*key, self.card.classes, config.window_labels, since)
        recent = self.log.recent_predictions(*key, self.card.n_classes, config.window_predictions, since)
        report = evaluate_live(
            self.card, LabelledWindow(probs, labels), UnlabelledWindow(recent), config.live_thresholds
        )
        # Gauges from the typed results; a window too small to be checked leaves its gauges at their last value.
        series = {"model": self.name, "version": self.version_label}
        if report.labelled is not None:
            metrics.LIVE_ECE.labels(**series).set(report.labelled.live_ece.ece.value)
        if report.unlabelled is not None:
            metrics.LIVE_PSI.labels(**series).set(report.unlabelled.confidence_psi.psi)
            estimated = report.unlabelled.estimated_accuracy_drop.estimated_accuracy
            metrics.ESTIMATED_ACCURACY.labels(**series).set(estimated)
        return report

    def refresh_metrics(self) -> None:
        """Bring the live-window gauges up to date for a scrape; never raises for a store that cannot be
        read (health names that), nor for anything else: /metrics must render whatever happens here."""
        try:
            self.live()
        except StoreUnavailable:
            pass
        except Exception:
            logger.exception("could not refresh the live-window gauges; /metrics shows their last values")

    def health(self) -> HealthReport:
        reasons = card_reasons(self.card, self.config.card_thresholds)
        unreadable: StoreUnavailable | None = None
        try:
            report = self.live()
        except StoreUnavailable as exc:
            report, unreadable = None, exc
        if self.log is None:
            reasons.append(
                Reason("live_monitoring_off", "ok", "prediction logging is off: the status reflects the card only")
            )
        elif report is not None:
            reasons.extend(report.reasons)
        store = self._store_reason(unreadable)
        if store is not None:
            reasons.append(store)
        stats = self.log.stats() if self.log is not None else None
        if stats is not None and stats.dropped:
            reasons.append(
                Reason(
                    "log_dropped_rows",
                    "warning",
                    f"{stats.dropped} prediction(s) were not logged (queue full or write errors): the live window "
                    "misses them",
                    float(stats.dropped),
                    0.0,
                )
            )
        return HealthReport(
            worst([r.status for r in reasons]), tuple(reasons), report.summary if report else None, stats
        )

    def _store_reason(self, unreadable: StoreUnavailable | None) -> Reason | None:
        """``log_store_unavailable`` naming the path and the reason, if the writer cannot write or the
        window cannot be read; None while the store works."""
        if self.log is None:
            return None
        problem = self.log.store_problem()
        if problem is not None:
            what = f"cannot be written: {problem.reason}"
        elif unreadable is not None:
            what = f"cannot be read: {unreadable.details.get('reason', unreadable.message)}"
        else:
            return None
        return Reason(
            "log_store_unavailable",
            "warning",
            f"the prediction log {self.log.path} {what}. Predictions are served; their rows wait in the log's "
            "queue and are written when the store is back (beyond the queue they are counted in log_dropped_rows), "
            "feedback is refused with 503, and the live checks cannot run until it is back",
        )
