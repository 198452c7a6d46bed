"""The dashboard's HTML: a whole page, or only its content (what the page's script fetches to refresh itself).

Read-only and without secrets: it shows the model's name, versions, card figures, statuses and figures, and
nothing of the settings (no database URL, no API key). Every number comes from ``DashboardView``; the figures
behind the time charts are also in a table (``#history-table``), for reading without the charts.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from service.calibration.metrics import ReliabilityBin
from service.dashboard.charts import (
    Mark,
    Point,
    Rule,
    Series,
    TimeChart,
    histogram_chart,
    reliability_diagram,
    time_chart,
)
from service.dashboard.view import AUTO, RANGES, DashboardView
from service.monitoring.history import HistoryBucket

STATIC = "/dashboard/static"
FAVICON = "/docs/static/favicon.png"  # served with the offline docs: no request for /favicon.ico goes unanswered
SYMBOLS = {"ok": "✓", "warning": "▲", "critical": "■", "insufficient_data": "…"}
RANGE_WORDS = {"1h": "1 hour", "6h": "6 hours", "24h": "24 hours", "7d": "7 days", "30d": "30 days"}
BUCKET_WORDS = {60: "1-minute", 300: "5-minute", 900: "15-minute", 3600: "1-hour", 21600: "6-hour"}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _utc(unix_seconds: float, with_date: bool = True) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%d %H:%M UTC" if with_date else "%H:%M")


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def badge(status: str) -> str:
    words = status.replace("_", " ")
    symbol = SYMBOLS.get(status, "?")
    return f'<span class="badge status-{_e(status)}" data-status="{_e(status)}">{symbol} {_e(words)}</span>'


def content_url(model: str, range_key: str) -> str:
    return f"/dashboard/{quote(model, safe='')}/content?range={quote(range_key)}"


def page(view: DashboardView, refresh_seconds: int) -> str:
    """The whole page: header, model and range navigation, the refresh control, and the content."""
    current = ' aria-current="page"'
    models = "".join(
        f'<li><a href="/dashboard/{quote(name, safe="")}"{current if name == view.model else ""}>{_e(name)}</a></li>'
        for name in view.models
    )
    chosen = ' aria-current="true"'
    ranges = "".join(
        f'<li><a href="/dashboard/{quote(view.model, safe="")}?range={key}"{chosen if key == view.range_key else ""}>'
        f"{_e(label)}</a></li>"
        for key, label in [(AUTO, "fit to data"), *((k, RANGE_WORDS[k]) for k in RANGES)]
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>calibserve · {_e(view.model)} · calibration</title>"
        f'<link rel="icon" href="{FAVICON}"><link rel="stylesheet" href="{STATIC}/dashboard.css">'
        f'<script src="{STATIC}/dashboard.js" defer></script></head><body>'
        '<header><h1>calibserve <span class="subtle">calibration dashboard</span></h1>'
        f'<nav aria-label="Models"><ul class="tabs">{models}</ul></nav></header>'
        f'<main id="dashboard" data-content="{_e(content_url(view.model, view.range_key))}" '
        f'data-refresh="{refresh_seconds}">'
        f'<div class="toolbar"><nav aria-label="Time range"><ul class="tabs">{ranges}</ul></nav>'
        '<button id="refresh-toggle" type="button" aria-pressed="false">Pause auto-refresh</button>'
        f'<span id="refresh-status" role="status" aria-live="polite">refreshes every {refresh_seconds} s '
        "while this tab is visible</span></div>"
        f'<div id="content">{content(view)}</div></main>'
        "<footer>Read-only. Figures from the prediction log and the model's calibration card; "
        'the same numbers as <a href="/docs#/health">GET /health/calibration</a> and '
        f'<a href="/v1/models/{quote(view.model, safe="")}/calibration/history">its history</a>.</footer>'
        "</body></html>"
    )


def content(view: DashboardView) -> str:
    """What the refresh replaces: status and reasons, the time charts, the diagrams, the shadow comparison."""
    return "".join(
        [
            f'<p class="generated" data-generated="{view.generated:.3f}">As of {_e(_utc(view.generated))} · model '
            f"<strong>{_e(view.model)}</strong> version <code>{_e(view.version[:12])}</code></p>",
            _status(view),
            _history(view),
            _diagrams(view),
            _shadow(view),
            _recalibrations(view),
        ]
    )


def _status(view: DashboardView) -> str:
    rows = "".join(
        f'<tr data-code="{_e(r.code)}"><td><code>{_e(r.code)}</code></td><td>{badge(r.status)}</td>'
        f"<td>{_e(r.message)}</td></tr>"
        for r in view.reasons
    )
    return (
        f'<section id="status" aria-labelledby="status-heading"><h2 id="status-heading">Status now: '
        f'{badge(view.status)}</h2><table class="reasons"><caption>Every reason behind the status (the live window '
        'and the card)</caption><thead><tr><th scope="col">check</th><th scope="col">status</th>'
        f'<th scope="col">why</th></tr></thead><tbody>{rows}</tbody></table></section>'
    )


def _bucket_label(bucket: HistoryBucket) -> str:
    return f"{_utc(bucket.start)} – {_utc(bucket.end, with_date=False)}"


def _check_status(bucket: HistoryBucket, code: str) -> str:
    return next((c.status for c in bucket.checks if c.code == code), "insufficient_data")


def _version_marks(buckets: Sequence[HistoryBucket]) -> list[Mark]:
    marks, seen = [], set[str]()
    for bucket in buckets:
        new = [v for v in bucket.versions if v not in seen]
        if new and seen:
            marks.append(Mark(bucket.start, "version " + ", ".join(v[:8] for v in new)))
        seen.update(bucket.versions)
    return marks


RECALIBRATION_WORDS = {"fit": "refit", "promotion": "promoted", "rejection": "rejected", "rollback": "rolled back"}


def _recalibration_marks(view: DashboardView, since: float, until: float) -> list[Mark]:
    """The closed loop's steps on the time axis: refit (and shadow), promotion, rejection, rollback."""
    marks = []
    for decision in view.recalibrations:
        at, kind = float(str(decision["at"])), str(decision["kind"])
        if kind in RECALIBRATION_WORDS and since <= at <= until:
            marks.append(Mark(at, RECALIBRATION_WORDS[kind]))
    return marks


def _recalibrations(view: DashboardView) -> str:
    if not view.recalibrations:
        return ""
    rows = "".join(
        f'<tr data-kind="{_e(d["kind"])}"><td>{_e(_utc(float(str(d["at"]))))}</td><td>{_e(d["kind"])}</td>'
        f"<td>{_e(d['trigger'])}</td><td>{_e(d['reason'])}</td></tr>"
        for d in view.recalibrations
    )
    head = "".join(f'<th scope="col">{h}</th>' for h in ("when", "step", "trigger", "why"))
    return (
        '<section id="recalibrations" aria-labelledby="recalibrations-heading"><h2 id="recalibrations-heading">'
        f"Recalibrations</h2><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>"
    )


def breaking_point(buckets: Sequence[HistoryBucket]) -> str:
    """In words: when the status last turned from ok to warning or critical, and the figures either side."""
    judged = [b for b in buckets if b.status != "insufficient_data"]
    for before, after in zip(judged[::-1][1:], judged[::-1], strict=False):
        if before.status == "ok" and after.status in ("warning", "critical"):
            changed = [c for c in after.checks if c.status != "ok"]
            figures = "; ".join(
                f"{c.code} {c.value:.3f} (was {_num(_value_of(before, c.code))}, {c.status} above {c.threshold:g})"
                for c in changed
            )
            return (
                f'<p id="breaking-point" class="alert" data-start="{after.start:.0f}">Calibration broke in the bucket '
                f"starting {_e(_utc(after.start))}: {badge(after.status)} {_e(figures)}.</p>"
            )
    if judged and all(b.status == "ok" for b in judged):
        counted = f"{len(judged)} of {len(buckets)}"
        return f'<p id="breaking-point" class="calm">Every bucket with enough data is ok ({counted}).</p>'
    if judged and judged[0].status != "ok":
        return (
            f'<p id="breaking-point" class="alert">Not ok since the first bucket with enough data '
            f"({_e(_utc(judged[0].start))}).</p>"
        )
    return '<p id="breaking-point" class="calm">No bucket has enough data to judge yet.</p>'


def _value_of(bucket: HistoryBucket, code: str) -> float | None:
    return next((c.value for c in bucket.checks if c.code == code), None)


def _history(view: DashboardView) -> str:
    heading = '<section id="history" aria-labelledby="history-heading"><h2 id="history-heading">Over time'
    if view.history is None:
        words = view.history_error or "prediction logging is off (CALIBSERVE_LOG_PREDICTIONS=false): no history"
        return f"{heading}</h2><p>{_e(words)}</p></section>"
    history, t = view.history, view.thresholds
    buckets = history.buckets
    bucket_s = RANGES[view.shown_range][1]
    parts = [
        f'{heading} <span class="subtle">(last {RANGE_WORDS[view.shown_range]}, '
        f"{BUCKET_WORDS.get(bucket_s, f'{bucket_s}-second')} buckets; each bucket judged as the live checks judge "
        "a window)</span></h2>",
        breaking_point(buckets),
    ]
    marks = _version_marks(buckets) + _recalibration_marks(view, history.since, history.until)
    mid = [b.start + (b.end - b.start) / 2 for b in buckets]
    reference = view.card.test.after_temperature

    def points(
        values: list[float | None], code: str, intervals: list[tuple[float, float] | None] | None = None
    ) -> list[Point]:
        out = []
        for i, (b, v) in enumerate(zip(buckets, values, strict=True)):
            lower, upper = (intervals[i] if intervals else None) or (None, None)
            status = _check_status(b, code)
            label = f"{_bucket_label(b)}: {_num(v)} ({status.replace('_', ' ')})"
            out.append(Point(mid[i], v, status, lower, upper, label))
        return out

    ece = [b.ece.value if b.ece else None for b in buckets]
    intervals = [(b.ece.lower, b.ece.upper) if b.ece else None for b in buckets]
    floor = [b.ece_noise_floor for b in buckets]
    parts.append(
        time_chart(
            TimeChart(
                "chart-ece",
                "Live ECE per bucket, with its 90% interval and noise floor",
                "ECE (top label, 15 bins)",
                history.since,
                history.until,
                [
                    Series("ECE", points(ece, "live_ece", intervals), "series-a"),
                    Series("noise floor", [Point(x, v) for x, v in zip(mid, floor, strict=True)], "series-c", False),
                ],
                [
                    Rule(t.ece_warning, f"warning {t.ece_warning:g}"),
                    Rule(t.ece_critical, f"critical {t.ece_critical:g}", "rule-critical"),
                    Rule(reference.ece.value, f"card {reference.ece.value:.3f}", "rule-reference"),
                ],
                marks,
                description="Expected calibration error of the labelled predictions in each bucket; markers: circle "
                "ok, triangle warning, square critical; gaps: too few labels.",
            )
        )
    )
    accuracy = [b.accuracy.value if b.accuracy else None for b in buckets]
    ref_acc = reference.accuracy.value
    parts.append(
        time_chart(
            TimeChart(
                "chart-accuracy",
                "Accuracy (labelled) and the label-free estimate (mean confidence)",
                "accuracy",
                history.since,
                history.until,
                [
                    Series("accuracy", points(accuracy, "live_accuracy_drop"), "series-a"),
                    Series(
                        "estimated (label-free)",
                        points(
                            [b.mean_confidence if b.confidence_psi is not None else None for b in buckets],
                            "estimated_accuracy_drop",
                        ),
                        "series-b",
                    ),
                ],
                [
                    Rule(ref_acc, f"card {ref_acc:.3f}", "rule-reference"),
                    Rule(ref_acc - t.accuracy_drop_warning, f"warning −{t.accuracy_drop_warning:g}"),
                    Rule(
                        ref_acc - t.accuracy_drop_critical, f"critical −{t.accuracy_drop_critical:g}", "rule-critical"
                    ),
                ],
                marks,
                y_max=1.0,
                description="Accuracy of the labelled predictions and mean top-label confidence of all predictions "
                "per bucket, against the card's test accuracy and the drop thresholds.",
            )
        )
    )
    parts.append(
        time_chart(
            TimeChart(
                "chart-psi",
                "Confidence drift (PSI against the card) and class shift",
                "PSI / total variation",
                history.since,
                history.until,
                [
                    Series("PSI", points([b.confidence_psi for b in buckets], "confidence_psi"), "series-a"),
                    Series("class shift", points([b.class_shift for b in buckets], "class_shift"), "series-b"),
                ],
                [
                    Rule(t.psi_warning, f"PSI warning {t.psi_warning:g}"),
                    Rule(t.psi_critical, f"PSI critical {t.psi_critical:g}", "rule-critical"),
                ],
                marks,
                description="Population stability index of the top-label confidences against the card's test split, "
                "and total variation of the predicted classes against the training classes, per bucket.",
            )
        )
    )
    parts.append(_history_table(buckets, history.source))
    parts.append("</section>")
    return "".join(parts)


def _history_table(buckets: Sequence[HistoryBucket], source: str) -> str:
    rows = []
    for b in buckets:
        ece = "—" if b.ece is None else f"{b.ece.value:.3f} [{b.ece.lower:.3f}, {b.ece.upper:.3f}]"
        rows.append(
            f'<tr data-start="{b.start:.0f}" data-status="{_e(b.status)}"><th scope="row">{_e(_bucket_label(b))}</th>'
            f"<td>{b.predictions}</td><td>{b.labelled}</td><td>{_e(ece)}</td><td>{_num(b.ece_noise_floor)}</td>"
            f"<td>{_num(b.accuracy.value if b.accuracy else None)}</td><td>{_num(b.mean_confidence)}</td>"
            f"<td>{_num(b.nll)}</td><td>{_num(b.brier)}</td><td>{_num(b.confidence_psi)}</td>"
            f"<td>{_num(b.class_shift)}</td><td>{badge(b.status)}</td></tr>"
        )
    head = "".join(
        f'<th scope="col">{h}</th>'
        for h in ("bucket", "predictions", "labelled", "ECE [90% interval]", "noise floor", "accuracy",
                  "estimated accuracy", "NLL", "Brier", "PSI", "class shift", "status")
    )  # fmt: skip
    return (
        f"<details><summary>Figures per bucket (counts from the {_e(source)})</summary>"
        f'<table id="history-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></details>'
    )


def _diagrams(view: DashboardView) -> str:
    live = view.live or {}
    labelled = live.get("labelled") if isinstance(live, dict) else None
    unlabelled = live.get("unlabelled") if isinstance(live, dict) else None
    card_bins = [
        ReliabilityBin(b.lower, b.upper, b.count, b.mean_confidence, b.accuracy)
        for b in view.card.test.after_temperature.reliability
    ]
    card_diagram = reliability_diagram(
        "reliability-card", f"Card: test split after temperature scaling (n = {view.card.test.after_temperature.n})",
        card_bins,
    )  # fmt: skip
    if isinstance(labelled, dict) and not labelled.get("insufficient"):
        bins = [ReliabilityBin(**b) for b in labelled["reliability"]]
        live_diagram = reliability_diagram("reliability-live", f"Live: last {labelled['n']} labelled predictions", bins)
    else:
        n = labelled.get("n", 0) if isinstance(labelled, dict) else 0
        needs = f"the live diagram needs {view.thresholds.min_labels}"
        live_diagram = f'<p class="placeholder">{n} labelled prediction(s) in the live window: {needs}.</p>'
    if isinstance(unlabelled, dict) and not unlabelled.get("insufficient"):
        histogram = histogram_chart(
            "confidence-histogram",
            f"Top-label confidence: last {unlabelled['n']} predictions against the card's test split",
            list(unlabelled["confidence_histogram"]),
            list(unlabelled["reference_histogram"]),
        )
    else:
        n = unlabelled.get("n", 0) if isinstance(unlabelled, dict) else 0
        needs = f"the histogram needs {view.thresholds.min_predictions}"
        histogram = f'<p class="placeholder">{n} prediction(s) in the live window: {needs}.</p>'
    return (
        '<section id="diagrams" aria-labelledby="diagrams-heading"><h2 id="diagrams-heading">Reliability now, '
        'beside the card</h2><div class="row"><figure>'
        f"{live_diagram}<figcaption>Live (bars: accuracy per confidence bin; dashed: perfect calibration)</figcaption>"
        f"</figure><figure>{card_diagram}<figcaption>Card</figcaption></figure></div>"
        f"<figure>{histogram}<figcaption>Confidence histogram, live against the card's reference</figcaption></figure>"
        "</section>"
    )


def _shadow(view: DashboardView) -> str:
    if view.shadow is None and view.shadow_error is None:
        return ""
    heading = '<section id="shadow" aria-labelledby="shadow-heading"><h2 id="shadow-heading">Shadow comparison</h2>'
    if view.shadow is None:
        return f"{heading}<p>{_e(view.shadow_error)}</p></section>"
    s = view.shadow
    lines = [
        f"<p>Champion <strong>{_e(s.champion[0])}</strong> against challenger <strong>{_e(s.challenger[0])}</strong> "
        "on the same requests.</p>"
    ]
    if s.labelled is None:
        lines.append("<p>No request both scored has a label yet.</p>")
    else:
        c = s.labelled
        rows = "".join(
            f'<tr><th scope="row">{name}</th><td>{m.champion.value:.4f}</td><td>{m.challenger.value:.4f}</td>'
            f"<td>{m.difference.value:+.4f} [{m.difference.lower:+.4f}, {m.difference.upper:+.4f}]</td></tr>"
            for name, m in (("accuracy", c.accuracy), ("NLL", c.nll), ("Brier", c.brier), ("ECE", c.ece))
        )
        lines.append(
            f'<p id="shadow-verdict"><strong>{_e(c.verdict)}</strong> ({c.n} labelled requests): {_e(c.reason)}</p>'
            '<table><thead><tr><th scope="col">metric</th><th scope="col">champion</th><th scope="col">challenger</th>'
            f'<th scope="col">challenger − champion [{round(c.level * 100)}% paired interval]</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
    if s.unlabelled is not None:
        lines.append(f"<p>Top labels agree on {s.unlabelled.agreement:.1%} of {s.unlabelled.n} requests.</p>")
    return heading + "".join(lines) + "</section>"
