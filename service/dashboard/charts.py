"""Server-side SVG charts for the dashboard: plain strings, no JavaScript, no charting library.

Why SVG made here rather than a vendored charting library: the page must work air-gapped and under a strict
Content-Security-Policy (no inline script or style), the figures are few and simple (lines, bars, bands), and
the server already holds every number; a chart drawn here is a pure function of the figures, tested like any
other code, and readable with JavaScript off. Each chart is ``role="img"`` with a title and a description, has
text labels on both axes, draws its thresholds as labelled lines, and tells statuses apart by marker shape as
well as colour (circle ok, triangle warning, square critical), so nothing depends on colour alone. The numbers
behind each chart are also in a table beside it (``page.py``).

Styling is by class only (``dashboard.css``): presentation attributes for geometry, no ``style=``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from service.calibration.metrics import ReliabilityBin

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 40
SQUARE = 260  # reliability diagrams and histograms


@dataclass(frozen=True, slots=True)
class Point:
    x: float  # Unix seconds (the bucket's middle)
    y: float | None  # None: no figure in this bucket (too little data): the line breaks there
    status: str = "ok"
    lower: float | None = None
    upper: float | None = None
    label: str = ""  # the marker's tooltip


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    points: Sequence[Point]
    css: str  # series-a, series-b...: colour and dash pattern both differ
    markers: bool = True


@dataclass(frozen=True, slots=True)
class Rule:
    """A horizontal line across the plot: a threshold or a reference value, with its label."""

    value: float
    label: str
    css: str = "rule-warning"


@dataclass(frozen=True, slots=True)
class Mark:
    """A vertical line on the time axis: a new model version began serving here."""

    x: float
    label: str


@dataclass(frozen=True, slots=True)
class TimeChart:
    chart_id: str
    title: str
    y_label: str
    since: float
    until: float
    series: Sequence[Series]
    rules: Sequence[Rule] = ()
    marks: Sequence[Mark] = ()
    y_max: float | None = None  # None: fit the data and the rules
    description: str = ""
    y_format: str = "{:.2f}"
    extra_css: tuple[str, ...] = field(default=())


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _text(css: str, x: float, y: float, text: str, anchor: str = "start", transform: str = "") -> str:
    """A text element; ``transform`` (a rotation) replaces the position."""
    where = f'transform="{transform}"' if transform else f'x="{_fmt(x)}" y="{_fmt(y)}"'
    return f'<text class="{css}" {where} text-anchor="{anchor}">{_e(text)}</text>'


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def time_ticks(since: float, until: float, count: int = 6) -> list[tuple[float, str]]:
    """About ``count`` ticks on round UTC times, labelled HH:MM (with the date when the range spans days)."""
    span = until - since
    steps = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800]
    step = next((s for s in steps if span / s <= count), steps[-1])
    first = math.ceil(since / step) * step
    days = span > 86400
    ticks = []
    t = float(first)
    while t <= until:
        moment = datetime.fromtimestamp(t, UTC)
        ticks.append((t, moment.strftime("%m-%d %H:%M" if days else "%H:%M")))
        t += step
    return ticks


def _marker(x: float, y: float, status: str, label: str) -> str:
    title = f"<title>{_e(label)}</title>" if label else ""
    css = f"marker status-{_e(status)}"
    if status == "critical":
        return f'<rect class="{css}" x="{_fmt(x - 4)}" y="{_fmt(y - 4)}" width="8" height="8">{title}</rect>'
    if status == "warning":
        points = f"{_fmt(x)},{_fmt(y - 5)} {_fmt(x - 5)},{_fmt(y + 4)} {_fmt(x + 5)},{_fmt(y + 4)}"
        return f'<polygon class="{css}" points="{points}">{title}</polygon>'
    return f'<circle class="{css}" cx="{_fmt(x)}" cy="{_fmt(y)}" r="3.5">{title}</circle>'


def time_chart(chart: TimeChart) -> str:
    """A time series chart: lines broken where a bucket has no figure, intervals as whiskers, thresholds as
    labelled dashed lines, version changes as labelled vertical lines."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [v for s in chart.series for p in s.points for v in (p.y, p.upper) if v is not None]
    values += [r.value for r in chart.rules]
    top = chart.y_max if chart.y_max is not None else max([*values, 1e-9]) * 1.1
    span = max(chart.until - chart.since, 1.0)

    def sx(t: float) -> float:
        return LEFT + (t - chart.since) / span * plot_w

    def sy(v: float) -> float:
        return TOP + plot_h - min(max(v, 0.0), top) / top * plot_h

    parts = [
        f'<svg class="chart" id="{_e(chart.chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{_e(chart.chart_id)}-title {_e(chart.chart_id)}-desc">',
        f'<title id="{_e(chart.chart_id)}-title">{_e(chart.title)}</title>',
        f'<desc id="{_e(chart.chart_id)}-desc">{_e(chart.description)}</desc>',
        f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>',
    ]
    for i in range(5):  # y grid and labels
        v = top * i / 4
        y = sy(v)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{_fmt(y)}" y2="{_fmt(y)}"/>')
        parts.append(_text("tick", LEFT - 6, y + 4, chart.y_format.format(v), "end"))
    for t, label in time_ticks(chart.since, chart.until):
        x = sx(t)
        parts.append(f'<line class="grid" x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{TOP}" y2="{TOP + plot_h}"/>')
        parts.append(
            f'<text class="tick" x="{_fmt(x)}" y="{TOP + plot_h + 14}" text-anchor="middle">{_e(label)}</text>'
        )
    parts.append(
        f'<text class="axis-label" x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">time (UTC)</text>'
    )
    parts.append(
        f'<text class="axis-label" transform="translate(14 {TOP + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">{_e(chart.y_label)}</text>'
    )
    for rule in chart.rules:
        if rule.value > top:
            continue
        y = sy(rule.value)
        parts.append(
            f'<line class="rule {_e(rule.css)}" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{_fmt(y)}" y2="{_fmt(y)}"/>'
        )
        if rule.css == "rule-reference":  # the card's value on the left, thresholds on the right: no overlap
            parts.append(_text("rule-label", LEFT + 4, y - 3, rule.label))
        else:
            parts.append(_text("rule-label", LEFT + plot_w - 4, y - 3, rule.label, "end"))
    row, last_x = 0, -1e9
    for mark in sorted(chart.marks, key=lambda m: m.x):
        x = sx(mark.x)
        row = row + 1 if x - last_x < 90 else 0  # marks close together: their labels stack, one per line
        last_x = x if row == 0 else last_x
        anchor = "end" if x > LEFT + plot_w * 0.75 else "start"  # near the right edge: the label to the left
        parts.append(f'<line class="version-mark" x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{TOP}" y2="{TOP + plot_h}"/>')
        label_x = x - 3 if anchor == "end" else x + 3
        parts.append(_text("version-label", label_x, TOP + 10 + 11 * row, mark.label, anchor))
    for series in chart.series:
        parts.append(f'<g class="series {_e(series.css)}" data-series="{_e(series.name)}">')
        run: list[str] = []
        segments: list[list[str]] = []
        for p in series.points:
            if p.y is None:
                if run:
                    segments.append(run)
                run = []
                continue
            run.append(f"{_fmt(sx(p.x))},{_fmt(sy(p.y))}")
            if p.lower is not None and p.upper is not None:
                at = _fmt(sx(p.x))
                parts.append(
                    f'<line class="whisker" x1="{at}" x2="{at}" y1="{_fmt(sy(p.lower))}" y2="{_fmt(sy(p.upper))}"/>'
                )
        if run:
            segments.append(run)
        for segment in segments:
            if len(segment) > 1:
                parts.append(f'<polyline class="line" points="{" ".join(segment)}"/>')
        if series.markers:
            for p in series.points:
                if p.y is not None:
                    parts.append(_marker(sx(p.x), sy(p.y), p.status, p.label))
        parts.append("</g>")
    parts.append(_legend(chart.series, LEFT + 4, 16))
    parts.append("</svg>")
    return "".join(parts)


def _legend(series: Sequence[Series], x: float, y: float) -> str:
    parts = []
    for s in series:
        parts.append(
            f'<g class="legend {_e(s.css)}"><line class="line" x1="{_fmt(x)}" x2="{_fmt(x + 18)}" y1="{_fmt(y - 4)}" '
            f'y2="{_fmt(y - 4)}"/><text class="legend-text" x="{_fmt(x + 22)}" y="{_fmt(y)}">{_e(s.name)}</text></g>'
        )
        x += 30 + 7 * len(s.name)
    return "".join(parts)


def reliability_diagram(chart_id: str, title: str, bins: Sequence[ReliabilityBin]) -> str:
    """Accuracy per confidence bin as bars (the gap to the diagonal is the miscalibration), the diagonal for
    perfect calibration; each bar's tooltip gives its count, mean confidence and accuracy."""
    size, pad = SQUARE, 36
    plot = size - pad - 12

    def sx(v: float) -> float:
        return pad + v * plot

    def sy(v: float) -> float:
        return 12 + plot - v * plot

    parts = [
        f'<svg class="chart square" id="{_e(chart_id)}" viewBox="0 0 {size} {size}" role="img" '
        f'aria-labelledby="{_e(chart_id)}-title">',
        f'<title id="{_e(chart_id)}-title">{_e(title)}</title>',
        f'<rect class="plot" x="{pad}" y="12" width="{plot}" height="{plot}"/>',
    ]
    for i in range(0, 6):
        v = i / 5
        parts.append(
            f'<text class="tick" x="{_fmt(sx(v))}" y="{_fmt(12 + plot + 12)}" text-anchor="middle">{v:.1f}</text>'
        )
        parts.append(f'<text class="tick" x="{pad - 4}" y="{_fmt(sy(v) + 4)}" text-anchor="end">{v:.1f}</text>')
    for b in bins:
        if not b.count or b.accuracy is None:
            continue
        x0, x1 = sx(b.lower), sx(b.upper)
        tip = f"confidence {b.lower:.2f}-{b.upper:.2f}: {b.count} predictions, mean confidence "
        tip += f"{(b.mean_confidence or 0.0):.3f}, accuracy {b.accuracy:.3f}"
        parts.append(
            f'<rect class="bar" x="{_fmt(x0)}" y="{_fmt(sy(b.accuracy))}" width="{_fmt(max(x1 - x0 - 1, 1))}" '
            f'height="{_fmt(b.accuracy * plot)}" data-count="{b.count}" data-accuracy="{b.accuracy:.6f}">'
            f"<title>{_e(tip)}</title></rect>"
        )
    parts.append(f'<line class="diagonal" x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}"/>')
    parts.append(_text("axis-label", pad + plot / 2, size - 2, "confidence", "middle"))
    parts.append(_text("axis-label", 0, 0, "accuracy", "middle", f"translate(10 {12 + plot / 2}) rotate(-90)"))
    parts.append("</svg>")
    return "".join(parts)


def histogram_chart(chart_id: str, title: str, live: Sequence[int], reference: Sequence[int]) -> str:
    """Share of predictions per confidence bin, live (filled bars) beside the card's reference (hatched):
    the two differ by fill as well as colour."""
    size_w, size_h, pad = 2 * SQUARE, SQUARE, 40
    plot_w, plot_h = size_w - pad - 12, size_h - pad - 12
    live_total, ref_total = max(sum(live), 1), max(sum(reference), 1)
    shares = [(n / live_total, r / ref_total) for n, r in zip(live, reference, strict=True)]
    top = max([max(a, b) for a, b in shares] + [1e-9]) * 1.1
    k = len(shares)
    width = plot_w / max(k, 1)
    parts = [
        f'<svg class="chart wide" id="{_e(chart_id)}" viewBox="0 0 {size_w} {size_h}" role="img" '
        f'aria-labelledby="{_e(chart_id)}-title">',
        f'<title id="{_e(chart_id)}-title">{_e(title)}</title>',
        '<defs><pattern id="hatch" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<line class="hatch" x1="0" y1="0" x2="0" y2="5"/></pattern></defs>',
        f'<rect class="plot" x="{pad}" y="12" width="{plot_w}" height="{plot_h}"/>',
    ]
    for i, (a, b) in enumerate(shares):
        x = pad + i * width
        for j, (share, css, name, count) in enumerate(
            ((a, "bar live", "live", live[i]), (b, "bar reference", "card reference", reference[i]))
        ):
            h = share / top * plot_h
            tip = f"confidence {i / k:.2f}-{(i + 1) / k:.2f}: {name} {share:.1%} ({count})"
            parts.append(
                f'<rect class="{css}" x="{_fmt(x + 1 + j * (width - 2) / 2)}" y="{_fmt(12 + plot_h - h)}" '
                f'width="{_fmt(max((width - 2) / 2, 1))}" height="{_fmt(h)}"><title>{_e(tip)}</title></rect>'
            )
    for i in range(0, 6):
        v = i / 5
        parts.append(_text("tick", pad + v * plot_w, 12 + plot_h + 12, f"{v:.1f}", "middle"))
    for i in range(0, 5):
        v = top * i / 4
        y = 12 + plot_h - v / top * plot_h
        parts.append(_text("tick", pad - 4, y + 4, f"{v:.0%}", "end"))
    parts.append(_text("axis-label", pad + plot_w / 2, size_h - 4, "top-label confidence", "middle"))
    rotated = f"translate(10 {12 + plot_h / 2}) rotate(-90)"
    parts.append(_text("axis-label", 0, 0, "share of predictions", "middle", rotated))
    parts.append(
        f'<g class="legend"><rect class="bar live" x="{pad + 8}" y="16" width="12" height="8"/>'
        f'<text class="legend-text" x="{pad + 24}" y="24">live</text>'
        f'<rect class="bar reference" x="{pad + 64}" y="16" width="12" height="8"/>'
        f'<text class="legend-text" x="{pad + 80}" y="24">card reference (test split)</text></g>'
    )
    parts.append("</svg>")
    return "".join(parts)
