"""False-alarm rates and detection delays of the live calibration checks, measured with the project's own code.

    python bench/false_alarms.py            # full run (~5 min on 2 cores), writes bench/FALSE_ALARMS.md
    python bench/false_alarms.py --quick    # a smaller run (~1 min), same tables

Every number here comes from :func:`service.monitoring.live.evaluate_live` with the default thresholds
(``LiveThresholds()``: the service's defaults), on traffic where nothing is wrong:

- **synthetic cards**: perfectly calibrated populations shaped like the digits card (models/digits/card.json).
  Each card draws its own confidence distribution (the digits card's reference confidences, jittered in logit
  space by a per-card shift and spread), puts the rest of the mass on the other classes at random, and draws
  every label from the probability vector: calibrated by construction. Its card (test accuracy, reference
  histogram and confidences) comes from 360 draws, like the digits card's test split.
- **held-out digits**: the bundled model (models/digits/model.onnx, onnxruntime) on scikit-learn's bundled
  digits. Live traffic is resampled from the *calibration* split (never in the card's reference, never
  trained on); the card is the bundled one. Nothing is downloaded.

A check is one evaluation of the live windows; a false alarm is any status other than ``ok`` (warning or
critical) on clean traffic. Windows from the minimum (100 predictions, 50 labels) to the full window (2000,
500), **independent** (fresh traffic per check) and **overlapping** (one stream per card, evaluated every
quarter window). The table gives the rate per reason and for the overall status, with a 95% upper
(Clopper-Pearson) bound, and the worst synthetic card's rate over the overlapping stream.

Detection delays: the digits model's windows are first filled with clean traffic (2000 predictions, every one
labelled), then the traffic changes (Gaussian pixel noise of sd 0.5 / 1 / 2 on the 0..16 scale, or 10% / 20%
of feedback labels wrong) and the windows are evaluated every 25 predictions; the delay is the number of
changed predictions (and labels) until the first alarm, median over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.calibration.reference import confidence_histogram
from service.card import CalibrationCard
from service.monitoring.live import (
    REFERENCE_CONFIDENCE_DECIMALS,
    LabelledWindow,
    LiveThresholds,
    UnlabelledWindow,
    evaluate_live,
)
from service.settings import default_model_path

Probs = NDArray[np.float64]
Labels = NDArray[np.int64]
CODES = (
    "live_ece",
    "live_accuracy_drop",
    "confidence_psi",
    "confidence_ks",
    "estimated_accuracy_drop",
    "class_shift",
)
REFERENCE_N = 360
OUT = Path(__file__).with_name("FALSE_ALARMS.md")


def load_card() -> CalibrationCard:
    return CalibrationCard.from_json((default_model_path() / "card.json").read_text())


# ------------------------------------------------------------------------------------------ synthetic cards


@dataclass(frozen=True)
class Population:
    """A perfectly calibrated population: confidences from a jittered digits reference, labels from probs."""

    base_logit: NDArray[np.float64]
    shift: float
    spread: float
    n_classes: int

    def draw(self, rng: np.random.Generator, n: int) -> tuple[Probs, Labels]:
        k = self.n_classes
        z = rng.choice(self.base_logit, size=n) * self.spread + self.shift + rng.normal(0.0, 0.3, size=n)
        conf = np.clip(1.0 / (1.0 + np.exp(-z)), 1.0 / k + 1e-3, 1.0 - 1e-7)
        top = rng.integers(0, k, size=n)
        rest = rng.dirichlet(np.ones(k - 1), size=n) * (1.0 - conf)[:, None]
        probs = np.empty((n, k))
        cols = np.arange(k - 1)[None, :]
        cols = cols + (cols >= top[:, None])  # the other classes' columns, skipping the top one
        probs[np.arange(n)[:, None], cols] = rest
        probs[np.arange(n), top] = conf
        cum = np.cumsum(probs, axis=1)
        labels = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), k - 1)
        return probs, labels.astype(np.int64)


def synthetic_card(base: CalibrationCard, rng: np.random.Generator) -> tuple[CalibrationCard, Population]:
    ref_conf = np.clip(np.asarray(base.reference.confidences, dtype=np.float64), 1e-6, 1 - 1e-6)
    pop = Population(
        base_logit=np.log(ref_conf / (1.0 - ref_conf)),
        shift=float(rng.normal(0.0, 0.5)),
        spread=float(rng.uniform(0.7, 1.3)),
        n_classes=base.n_classes,
    )
    probs, labels = pop.draw(rng, REFERENCE_N)
    conf = probs.max(axis=1)
    after = base.test.after_temperature
    acc = float(np.mean(probs.argmax(axis=1) == labels))
    after = after.model_copy(
        update={"n": REFERENCE_N, "accuracy": dataclasses.replace(after.accuracy, value=acc, n=REFERENCE_N)}
    )
    test = base.test.model_copy(update={"after_temperature": after})
    ref = base.reference.model_copy(
        update={
            "n": REFERENCE_N,
            "confidence_histogram": tuple(confidence_histogram(conf, len(base.reference.confidence_histogram))),
            "confidences": tuple(float(v) for v in np.round(conf, REFERENCE_CONFIDENCE_DECIMALS)),
            "mean_confidence": float(conf.mean()),
        }
    )
    counts = rng.multinomial(base.dataset.n_samples, np.full(base.n_classes, 1.0 / base.n_classes))
    dataset = base.dataset.model_copy(update={"class_counts": tuple(int(c) for c in counts)})
    return base.model_copy(update={"test": test, "reference": ref, "dataset": dataset}), pop


# ------------------------------------------------------------------------------------------ digits model


class Digits:
    """The bundled model on scikit-learn's bundled digits (the card's own split)."""

    def __init__(self) -> None:
        import onnxruntime as ort

        from service.training.data import load_dataset, stratified_split

        self.card = load_card()
        self.data = load_dataset("digits")
        split = stratified_split(self.data, 0.2, 0.2, seed=self.card.dataset.split_seed)
        self.rows = np.asarray(split.calibration)
        self.session = ort.InferenceSession(
            str(default_model_path() / "model.onnx"), providers=["CPUExecutionProvider"]
        )

    def probs(self, features: NDArray[np.float64]) -> Probs:
        out = self.session.run(["probabilities"], {"features": features.astype(np.float32)})[0]
        return np.asarray(out, dtype=np.float64)

    def draw(self, rng: np.random.Generator, n: int, noise: float = 0.0) -> tuple[Probs, Labels]:
        rows = rng.choice(self.rows, size=n)
        x = self.data.features[rows].astype(np.float64)
        if noise:
            x = np.clip(x + rng.normal(0.0, noise, size=x.shape), 0.0, 16.0)
        return self.probs(x), self.data.labels[rows].astype(np.int64)


# ------------------------------------------------------------------------------------------ false alarms

Draw = Callable[[np.random.Generator, int], tuple[Probs, Labels]]


def alarms(card: CalibrationCard, lab: tuple[Probs, Labels], preds: Probs) -> dict[str, bool]:
    """Which reasons (and the overall status, key "overall") are not ok for these windows.

    Seed 0, as the service evaluates (so the cached nulls are the service's); n_boot only sizes the
    bootstrap intervals in the messages, which no alarm depends on.
    """
    report = evaluate_live(card, LabelledWindow(*lab), UnlabelledWindow(preds), LiveThresholds(), seed=0, n_boot=10)
    out = {r.code: r.status in ("warning", "critical") for r in report.reasons}
    out["overall"] = any(out.values())
    return out


def independent(card: CalibrationCard, draw: Draw, n_pred: int, n_lab: int, checks: int, rng: np.random.Generator):
    results = []
    for _ in range(checks):
        preds, _labels = draw(rng, n_pred)
        lab = draw(rng, n_lab)
        results.append(alarms(card, lab, preds))
    return results


def overlapping(card: CalibrationCard, draw: Draw, n_pred: int, n_lab: int, checks: int, rng: np.random.Generator):
    """One stream; window slides by a quarter window between checks (75% overlap)."""
    step_p, step_l = max(1, n_pred // 4), max(1, n_lab // 4)
    preds, _ = draw(rng, n_pred + step_p * (checks - 1))
    lp, ll = draw(rng, n_lab + step_l * (checks - 1))
    results = []
    for i in range(checks):
        p = preds[i * step_p : i * step_p + n_pred]
        lab = (lp[i * step_l : i * step_l + n_lab], ll[i * step_l : i * step_l + n_lab])
        results.append(alarms(card, lab, p))
    return results


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a rate, by bisection on the binomial tail (no scipy needed)."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        tail = sum(math.comb(n, i) * mid**i * (1 - mid) ** (n - i) for i in range(k + 1))
        lo, hi = (mid, hi) if tail > 1 - level else (lo, mid)
    return hi


def rates(results: list[dict[str, bool]]) -> dict[str, float]:
    keys = [*CODES, "overall"]
    return {key: float(np.mean([r.get(key, False) for r in results])) for key in keys}


# ------------------------------------------------------------------------------------------ detection delays


def delay(digits: Digits, kind: str, amount: float, seed: int, step: int = 25, limit: int = 4000) -> tuple[int, int]:
    """Changed predictions and labels until the first alarm (limit if none), every prediction labelled."""
    rng = np.random.default_rng(seed)
    probs, labels = digits.draw(rng, 2000)
    k = digits.card.n_classes
    for t in range(step, limit + step, step):
        p, y = digits.draw(rng, step, noise=amount if kind == "noise" else 0.0)
        if kind == "labels":
            wrong = rng.random(step) < amount
            y = np.where(wrong, (y + rng.integers(1, k, size=step)) % k, y)
        probs = np.concatenate([probs, p])[-2000:]
        labels = np.concatenate([labels, y])[-2000:]
        report = evaluate_live(
            digits.card,
            LabelledWindow(probs[-500:], labels[-500:]),
            UnlabelledWindow(probs),
            LiveThresholds(),
            seed=0,
            n_boot=10,
        )
        if any(r.status in ("warning", "critical") for r in report.reasons):
            return t, t
    return limit, limit


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cards and checks")
    parser.add_argument("--cards", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    n_cards = args.cards or (20 if args.quick else 60)
    checks = 4 if args.quick else 6
    stream_cards, stream_checks = (8, 20) if args.quick else (25, 40)
    delay_seeds = 2 if args.quick else 5
    windows = [(100, 50), (500, 125), (2000, 500)]
    rng = np.random.default_rng(args.seed)
    base = load_card()
    start = time.perf_counter()

    rows: list[tuple[str, str, tuple[int, int], int, dict[str, float], float]] = []
    cards = [synthetic_card(base, rng) for _ in range(n_cards)]
    for n_pred, n_lab in windows:
        for mode, fn in (("independent", independent), ("overlapping", overlapping)):
            results: list[dict[str, bool]] = []
            for card, pop in cards:
                results.extend(fn(card, pop.draw, n_pred, n_lab, checks, rng))
            r = rates(results)
            k = round(r["overall"] * len(results))
            rows.append(("synthetic", mode, (n_pred, n_lab), len(results), r, upper_bound(k, len(results))))
            print(fmt_row(rows[-1]), flush=True)

    # Per card: a long overlapping stream each, so a card whose own reference is unlucky shows up.
    per_card: list[tuple[tuple[int, int], float, float]] = []
    for n_pred, n_lab in (windows[0], windows[-1]):
        card_rates = []
        for card, pop in cards[:stream_cards]:
            card_rates.append(rates(overlapping(card, pop.draw, n_pred, n_lab, stream_checks, rng))["overall"])
        per_card.append(((n_pred, n_lab), max(card_rates), float(np.mean(card_rates))))
        print(f"per card, window {n_pred}/{n_lab}: worst {max(card_rates):.1%}, mean {np.mean(card_rates):.2%}")
    per_card_worst = max(w for _, w, _ in per_card)

    digits = Digits()
    for n_pred, n_lab in windows:
        for mode, fn in (("independent", independent), ("overlapping", overlapping)):
            results = fn(digits.card, digits.draw, n_pred, n_lab, n_cards * checks // 4, rng)
            r = rates(results)
            k = round(r["overall"] * len(results))
            rows.append(("digits", mode, (n_pred, n_lab), len(results), r, upper_bound(k, len(results))))
            print(fmt_row(rows[-1]), flush=True)

    delays: list[tuple[str, int, int]] = []
    for kind, amount, label in (
        ("noise", 0.5, "input noise sd 0.5"),
        ("noise", 1.0, "input noise sd 1"),
        ("noise", 2.0, "input noise sd 2"),
        ("labels", 0.1, "10% wrong labels"),
        ("labels", 0.2, "20% wrong labels"),
    ):
        got = [delay(digits, kind, amount, seed) for seed in range(delay_seeds)]
        delays.append((label, int(np.median([g[0] for g in got])), int(np.median([g[1] for g in got]))))
        print(f"{label:20s} predictions {delays[-1][1]:5d}  labels {delays[-1][2]:5d}", flush=True)

    elapsed = time.perf_counter() - start
    write(args.out, rows, per_card, (stream_cards, stream_checks), n_cards, delays, elapsed, args.quick)
    print(f"worst synthetic card (overlapping, overall): {per_card_worst:.1%}; {elapsed:.0f} s; wrote {args.out}")


HEADER = (
    "| population | windows | window (pred, labels) | checks | "
    + " | ".join(CODES)
    + " | **overall** | overall 95% upper |"
)


def fmt_row(row: tuple[str, str, tuple[int, int], int, dict[str, float], float]) -> str:
    pop, mode, (n_pred, n_lab), n, r, ub = row
    cells = " | ".join(f"{r[c]:.2%}" for c in CODES)
    return f"| {pop} | {mode} | {n_pred}, {n_lab} | {n} | {cells} | **{r['overall']:.2%}** | {ub:.2%} |"


def write(out: Path, rows, per_card, stream, n_cards: int, delays, elapsed: float, quick: bool) -> None:
    lines = [
        "# False alarms and detection delays of the live checks",
        "",
        f"`python bench/false_alarms.py{' --quick' if quick else ''}` ({elapsed:.0f} s; {n_cards} synthetic "
        "cards). A false alarm is a status other than `ok` on clean traffic, per check (one evaluation).",
        "Target: overall <= 1% per check at every window size; no card above 5%.",
        "",
        HEADER,
        "|" + "---|" * (6 + len(CODES)),
        *[fmt_row(r) for r in rows],
        "",
        f"Per synthetic card ({stream[0]} cards, {stream[1]} overlapping checks each), overall status:",
        "",
        "| window (pred, labels) | worst card | mean over cards |",
        "|---|---|---|",
        *[f"| {w[0]}, {w[1]} | {worst:.1%} | {mean:.2%} |" for w, worst, mean in per_card],
        "",
        "Detection delays (digits model, windows full of clean traffic first, evaluated every 25 predictions,",
        "every prediction labelled; median over seeds):",
        "",
        "| change | predictions until the first alarm | labels until the first alarm |",
        "|---|---|---|",
        *[f"| {label} | {p} | {lab} |" for label, p, lab in delays],
        "",
    ]
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
