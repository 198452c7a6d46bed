"""Human-readable outputs of a training run: the reliability diagram and REPORT.md."""

from __future__ import annotations

from pathlib import Path

from service.calibration.uncertainty import MetricEstimate
from service.card import CalibrationCard, SplitMetrics, provenance


def write_reliability_png(card: CalibrationCard, path: Path) -> None:
    """Reliability diagram before and after temperature scaling, side by side, with bin counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    panels = (
        ("before temperature scaling (T = 1)", card.test.before_temperature),
        (f"after temperature scaling (T = {card.temperature.value:.3f})", card.test.after_temperature),
    )
    for axis, (title, metrics) in zip(axes, panels, strict=True):
        _reliability_panel(axis, title, metrics)
    figure.suptitle(f"{card.name}: reliability on the test split (n = {card.dataset.n_test})")
    figure.tight_layout()
    figure.savefig(path, dpi=110, metadata={"Software": None, "CreationDate": None})
    plt.close(figure)


def _reliability_panel(axis: object, title: str, metrics: SplitMetrics) -> None:
    from matplotlib.axes import Axes

    assert isinstance(axis, Axes)
    filled = [b for b in metrics.reliability if b.count and b.accuracy is not None]
    width = metrics.reliability[0].upper - metrics.reliability[0].lower
    axis.bar(
        [b.lower for b in filled],
        [b.accuracy or 0.0 for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        color="#4c72b0",
        label="accuracy",
    )
    gaps = [(b.accuracy or 0.0, b.mean_confidence or 0.0) for b in filled]
    axis.bar(
        [b.lower for b in filled],
        [abs(confidence - accuracy) for accuracy, confidence in gaps],
        bottom=[min(accuracy, confidence) for accuracy, confidence in gaps],
        width=width,
        align="edge",
        color="#c44e52",
        alpha=0.35,
        edgecolor="#c44e52",
        hatch="//",
        label="gap to mean confidence",
    )
    axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for b in filled:
        axis.annotate(str(b.count), (b.lower + width / 2, 0.02), ha="center", fontsize=7, rotation=90)
    ece = metrics.ece
    axis.set_title(f"{title}\nECE {ece.value:.4f} [{ece.lower:.4f}, {ece.upper:.4f}]  NLL {metrics.nll.value:.4f}")
    axis.set_xlabel("confidence (top-label probability)")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.legend(loc="upper left", fontsize=8)


def _fmt(metric: MetricEstimate, digits: int = 4) -> str:
    return f"{metric.value:.{digits}f} [{metric.lower:.{digits}f}, {metric.upper:.{digits}f}]"


def render_report(card: CalibrationCard) -> str:
    """The card in words, for the people who decide whether to deploy it."""
    before, after = card.test.before_temperature, card.test.after_temperature
    level = int(after.interval_level * 100)
    t = card.temperature
    direction = (
        "under-confident (T < 1 sharpens the probabilities)"
        if t.value < 1
        else "over-confident (T > 1 softens the probabilities)"
    )
    lines = [
        f"# {card.name}: calibration report",
        "",
        f"- version (sha256 of the ONNX model without its card): `{card.version}`",
        f"- created: {card.created.isoformat()} by {card.producer}",
        f"- data: {card.dataset.name}, {card.dataset.n_samples} samples, {card.io.n_features} features, "
        f"{len(card.classes)} classes; split train / calibration / test = {card.dataset.n_train} / "
        f"{card.dataset.n_calibration} / {card.dataset.n_test} (stratified, seed {card.dataset.split_seed})",
        *_provenance(card),
        f"- temperature: T = {t.value:.4f} fitted on {t.n} calibration samples (NLL {t.nll_before:.4f} -> "
        f"{t.nll_after:.4f}); the trained network was {direction}",
        "",
        f"## Test split (n = {after.n}), {level}% bootstrap intervals",
        "",
        "| metric | before T | after T |",
        "|---|---|---|",
    ]
    for label, key in (
        ("accuracy", "accuracy"),
        ("NLL", "nll"),
        ("Brier (sum over classes)", "brier"),
        (f"ECE ({after.n_bins} equal-width bins)", "ece"),
        ("adaptive ECE (equal-mass bins)", "adaptive_ece"),
        ("classwise ECE", "classwise_ece"),
    ):
        lines.append(f"| {label} | {_fmt(getattr(before, key))} | {_fmt(getattr(after, key))} |")
    mce = [f"{m.mce:.4f}" if m.mce is not None else "n/a" for m in (before, after)]
    lines += [
        f"| MCE (bins with >= {after.mce_min_count} samples) | {mce[0]} | {mce[1]} |",
        f"| mean confidence | {before.mean_confidence:.4f} | {after.mean_confidence:.4f} |",
        "",
        f"ECE noise floor at n = {after.n}: a perfectly calibrated model with these confidences would show "
        f"ECE {after.ece_noise_floor.mean:.4f} on average ({int(after.ece_noise_floor.level * 100)}% quantile "
        f"{after.ece_noise_floor.upper:.4f}). An ECE below that is indistinguishable from perfect calibration "
        "at this sample size; NLL and Brier are the steadier figures.",
        "",
        "Intervals: accuracy, NLL and Brier by the percentile bootstrap; the three ECEs by the basic bootstrap "
        "(which corrects ECE's upward bias, so an interval may lie below its estimate) clipped at 0, with its "
        "lower end 0 whenever the estimate is within what a perfectly calibrated model would show. The ECE "
        "interval's measured coverage of the true ECE at nominal 90% is in calibserve's bench/ECE_INTERVALS.md.",
        "",
        "## Reliability after temperature scaling",
        "",
        "| confidence bin | count | mean confidence | accuracy |",
        "|---|---|---|---|",
    ]
    last = len(after.reliability) - 1
    for index, b in enumerate(after.reliability):
        closing = "]" if index == last else ")"  # a confidence of exactly 1.0 belongs to the last bin
        if b.count:
            lines.append(
                f"| [{b.lower:.3f}, {b.upper:.3f}{closing} | {b.count} | {b.mean_confidence:.4f} | {b.accuracy:.4f} |"
            )
    lines += [
        "",
        "## Conformal prediction sets (split conformal, LAC score)",
        "",
        "| target coverage | probability threshold | test coverage | mean set size |",
        "|---|---|---|---|",
    ]
    for level_ in card.conformal:
        lines.append(
            f"| {level_.coverage:.2f} | {level_.threshold:.4f} | {level_.test_coverage:.4f} | "
            f"{level_.test_mean_set_size:.3f} |"
        )
    lines += [
        "",
        "## Selective prediction (answer only when confidence >= threshold)",
        "",
        "| threshold | coverage | accuracy | n |",
        "|---|---|---|---|",
    ]
    for row in card.selective:
        accuracy = f"{row.accuracy:.4f}" if row.accuracy is not None else "n/a"
        lines.append(f"| {row.threshold:.2f} | {row.coverage:.4f} | {accuracy} | {row.n} |")
    lines += ["", "![reliability diagram](reliability.png)", ""]
    return "\n".join(lines)


def _provenance(card: CalibrationCard) -> list[str]:
    if card.training is None:
        return [f"- imported model: {provenance(card)}"]
    t = card.training
    return [
        f"- model: {t.architecture}, dropout {t.dropout}, Adam lr {t.learning_rate}, {t.epochs} epochs, batch "
        f"{t.batch_size}, seed {t.seed}",
        f"- label smoothing: alpha = {t.label_smoothing} towards the {t.smoothing_prior} prior",
    ]


def write_report(card: CalibrationCard, path: Path) -> None:
    path.write_text(render_report(card), encoding="utf-8")
