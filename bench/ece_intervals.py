"""Coverage of calibserve's ECE intervals, measured on populations whose true ECE is known.

    python bench/ece_intervals.py            # full run (~3 min on 2 cores), writes bench/ECE_INTERVALS.md
    python bench/ece_intervals.py --quick    # a smaller run (~30 s), same table

Populations are shaped like the digits card: confidences are drawn from the card's 360 reference
confidences (models/digits/card.json), and each prediction is right with probability ``q(confidence)``:

- ``calibrated``: ``q(c) = c``, true ECE 0;
- ``overconfident -0.03`` / ``-0.06``: ``q(c) = c - 0.03`` (``- 0.06``), right less often than it says;
- ``overconfident T=1.5``: ``q(c) = sigmoid(logit(c) / 1.5)``, the usual shape of an uncalibrated network;
- ``underconfident T=0.67``: ``q(c) = sigmoid(logit(c) * 1.5)``, true ECE under 0.01.

The true ECE is the population's binned ECE (15 equal-width bins, as calibserve's):
``sum_b |E[(q(c) - c) 1{c in b}]|`` over the reference confidences, exactly. Each trial draws ``n`` predictions,
computes the interval that the card and ``/health/calibration`` state (:func:`service.calibration.uncertainty.
ece_estimate`, the same figure as ``summarize(...).ece``; nominal 90%) and the former percentile bootstrap on
the same resamples, and counts how often each contains the true ECE. The table gives the coverage with a 95%
Clopper-Pearson interval, and how often the interval's lower end is 0.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.calibration.binomial import clopper_pearson_lower
from service.calibration.metrics import bin_indices
from service.calibration.uncertainty import ece_estimate
from service.card import CalibrationCard
from service.settings import default_model_path

LEVEL = 0.9
N_BINS = 15
SIZES = (50, 100, 360, 2000)
OUT = Path(__file__).resolve().parent / "ECE_INTERVALS.md"

Accuracy = Callable[[NDArray[np.float64]], NDArray[np.float64]]


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-x))
    return out


def _logit(c: NDArray[np.float64]) -> NDArray[np.float64]:
    c = np.clip(c, 1e-9, 1 - 1e-9)
    out: NDArray[np.float64] = np.log(c / (1.0 - c))
    return out


POPULATIONS: dict[str, Accuracy] = {
    "calibrated": lambda c: c,
    "overconfident -0.03": lambda c: np.clip(c - 0.03, 0.0, 1.0),
    "overconfident -0.06": lambda c: np.clip(c - 0.06, 0.0, 1.0),
    "overconfident T=1.5": lambda c: _sigmoid(_logit(c) / 1.5),
    "underconfident T=0.67": lambda c: _sigmoid(_logit(c) * 1.5),
}


def reference_confidences() -> NDArray[np.float64]:
    card = CalibrationCard.from_json((default_model_path() / "card.json").read_text())
    assert card.reference.confidences is not None, "the bundled card stores its reference confidences"
    return np.clip(np.asarray(card.reference.confidences, dtype=np.float64), 1e-6, 1.0 - 1e-6)


def true_ece(confidences: NDArray[np.float64], accuracy: Accuracy) -> float:
    """The population's binned ECE when confidences are uniform over ``confidences``."""
    gap = np.bincount(bin_indices(confidences, N_BINS), weights=accuracy(confidences) - confidences, minlength=N_BINS)
    return float(np.sum(np.abs(gap)) / confidences.size)


def coverage(
    confidences: NDArray[np.float64], accuracy: Accuracy, n: int, trials: int, seed: int, n_boot: int = 1000
) -> dict[str, float]:
    """Coverage of the stated interval and of the percentile bootstrap over ``trials`` samples of size ``n``."""
    truth = true_ece(confidences, accuracy)
    rng = np.random.default_rng(seed)
    stated = percentile = lower_zero = 0
    for trial in range(trials):
        conf = rng.choice(confidences, n)
        correct = rng.random(n) < accuracy(conf)
        est = ece_estimate(conf, correct, N_BINS, n_boot, LEVEL, seed=trial)
        stated += est.lower <= truth <= est.upper
        lower_zero += est.lower == 0.0
        # The former interval: the percentile bootstrap, on resamples drawn the same way.
        percentile += _percentile_covers(conf, correct, n_boot, trial, truth)
    return {
        "true_ece": truth,
        "coverage": stated / trials,
        "coverage_low": clopper_pearson_lower(stated, trials, 0.975),
        "coverage_high": 1.0 - clopper_pearson_lower(trials - stated, trials, 0.975),
        "percentile": percentile / trials,
        "lower_zero": lower_zero / trials,
        "trials": trials,
    }


def _percentile_covers(
    conf: NDArray[np.float64], correct: NDArray[np.bool_], n_boot: int, seed: int, truth: float
) -> bool:
    n = conf.size
    design = np.zeros((n, N_BINS))
    design[np.arange(n), bin_indices(conf, N_BINS)] = correct - conf
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    offsets = (np.arange(n_boot) * n)[:, None]
    w = np.bincount((idx + offsets).ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
    stats = np.sum(np.abs(w @ design), axis=1) / n
    lo, hi = np.quantile(stats, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return bool(lo <= truth <= hi)


def run(trials: int, sizes: tuple[int, ...], seed: int = 0) -> list[dict[str, object]]:
    confidences = reference_confidences()
    rows: list[dict[str, object]] = []
    for p, (name, accuracy) in enumerate(POPULATIONS.items()):
        for n in sizes:
            started = time.perf_counter()
            row: dict[str, object] = {"population": name, "n": n}
            row.update(coverage(confidences, accuracy, n, trials, seed + 1000 * p + n))
            rows.append(row)
            print(
                f"{name:24s} n={n:5d} true ECE {row['true_ece']:.4f}  coverage {row['coverage']:.3f} "
                f"(percentile bootstrap {row['percentile']:.3f})  lower=0 {row['lower_zero']:.2f}  "
                f"[{time.perf_counter() - started:.1f} s]",
                flush=True,
            )
    return rows


def markdown(rows: list[dict[str, object]], command: str) -> str:
    lines = [
        "# Coverage of the ECE intervals (nominal 90%)",
        "",
        f"`{command}`; populations shaped like the digits card, true ECE known (see the script's docstring).",
        "`stated` is the interval calibserve writes in the card and in `/health/calibration` (basic bootstrap",
        "clipped at 0, lower end 0 while the estimate is within the noise floor); `percentile` is the interval",
        "used before issue 12.",
        "",
        "| population | true ECE | n | stated coverage (95% CI) | percentile coverage | lower end 0 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['population']} | {r['true_ece']:.4f} | {r['n']} | {r['coverage']:.3f} "
            f"({r['coverage_low']:.3f}-{r['coverage_high']:.3f}) | {r['percentile']:.3f} | {r['lower_zero']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 trials per cell instead of 400")
    parser.add_argument("--output", type=Path, default=OUT, help="where to write the Markdown table")
    args = parser.parse_args()
    trials = 100 if args.quick else 400
    rows = run(trials, SIZES)
    command = "python bench/ece_intervals.py" + (" --quick" if args.quick else "")
    args.output.write_text(markdown(rows, command))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
