"""How often the shadow-scoring verdict is wrong, and how soon it is right: :func:`service.calibration.paired.
compare_paired` on synthetic champion/challenger pairs whose truth is known.

    python bench/shadow_verdict.py            # full run (1-3 min on 2 cores, by load), writes bench/SHADOW_VERDICT.md
    python bench/shadow_verdict.py --quick    # fewer trials (under a minute), prints only

The population is a finite set of ``M`` input types, equally likely, with 10 classes: type ``m`` has logits
``z_m = 2.5 g_m`` (``g_m`` standard normal) and its label is drawn from ``p_m = softmax(z_m)``, so
``softmax(z)`` is a perfectly calibrated model (top-1 accuracy 0.61). Every population metric is exact: an
average over the types with the label's expectation taken analytically (no sampling), so the true difference
of every metric is known. Pairs (champion, challenger):

Equally calibrated (any named winner is a false verdict):

- ``identical``: both ``softmax(z)``;
- ``calibrated, different sharpness``: champion ``softmax(z)``; challenger outputs the average of ``p_m`` and
  ``p_(m + M/2)`` for both types, which is perfectly calibrated too (given its output, the label is distributed
  as the output) but less sharp, so its NLL and Brier are worse and its ECE has a different bias; true ECE 0 for
  both;
- ``equally overconfident``: ``softmax(2 (z + e1))`` and ``softmax(2 (z + e2))`` with independent noise
  ``e ~ N(0, 1.5^2)`` per type and class; every type has a twin with ``e1`` and ``e2`` swapped, so the two models
  are different on every row but exactly equal on every population metric.

One worse calibrated (the verdict should name the other):

- ``challenger T=1, fitted T=2.0``: the challenger serves raw logits ``2 z`` whose fitted temperature is 2.0
  (overconfident); champion ``softmax(z)``;
- ``challenger T=1, fitted T=0.6``: raw logits ``0.6 z`` (underconfident);
- ``challenger T=1, fitted T=1.25``: raw logits ``1.25 z``, mildly overconfident;
- ``champion T=1, fitted T=2.0``: the first pair swapped; the verdict should name the challenger. Swapping the
  models mirrors every figure exactly (a test checks it), so the bench does not simulate it, nor ``identical``
  (every difference is exactly 0 and no winner is ever named; tested).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.calibration.binomial import clopper_pearson_lower
from service.calibration.metrics import bin_indices
from service.calibration.paired import compare_paired
from service.calibration.temperature import softmax

N_CLASSES = 10
N_TYPES = 4000
LOGIT_SCALE = 2.5
N_BINS = 15
LEVEL = 0.95
SIZES = (100, 300, 1000, 3000)
OUT = Path(__file__).resolve().parent / "SHADOW_VERDICT.md"
METRICS = ("accuracy", "nll", "brier", "ece")
# Simulated by main(); "identical" and the swapped "champion T=1, fitted T=2.0" are exact (see the docstring).
BENCH_PAIRS = (
    "calibrated, different sharpness",
    "equally overconfident",
    "challenger T=1, fitted T=2.0",
    "challenger T=1, fitted T=0.6",
    "challenger T=1, fitted T=1.25",
)


@dataclass(frozen=True)
class Pair:
    """A champion/challenger pair on the population: ``truth``, ``champion``, ``challenger`` are [M, K]."""

    name: str
    truth: NDArray[np.float64]
    champion: NDArray[np.float64]
    challenger: NDArray[np.float64]
    expected: str  # the right outcome: "none", "champion_better" or "challenger_better"

    def true_metrics(self, which: str) -> dict[str, float]:
        return population_metrics(self.truth, getattr(self, which))

    def true_difference(self) -> dict[str, float]:
        cp, ch = self.true_metrics("champion"), self.true_metrics("challenger")
        return {m: ch[m] - cp[m] for m in METRICS}

    def sample(
        self, n: int, rng: np.random.Generator
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.intp]]:
        """``n`` labelled rows: types drawn uniformly, labels from the types' true probabilities."""
        types = rng.integers(0, self.truth.shape[0], size=n)
        cumulative = np.cumsum(self.truth[types], axis=1)
        labels = np.minimum((rng.random((n, 1)) > cumulative).sum(axis=1), N_CLASSES - 1).astype(np.intp)
        return self.champion[types], self.challenger[types], labels


def population_metrics(truth: NDArray[np.float64], q: NDArray[np.float64]) -> dict[str, float]:
    """Accuracy, NLL, Brier and binned top-label ECE of model ``q`` [M, K] on the type population, exactly."""
    rows = np.arange(q.shape[0])
    pred = np.argmax(q, axis=1)
    conf = q[rows, pred]
    hit = truth[rows, pred]  # P(correct | type)
    gap = np.bincount(bin_indices(conf, N_BINS), weights=hit - conf, minlength=N_BINS)
    return {
        "accuracy": float(np.mean(hit)),
        "nll": float(np.mean(np.sum(truth * -np.log(np.maximum(q, 1e-12)), axis=1))),
        "brier": float(np.mean(np.sum(q * q, axis=1) - 2.0 * np.sum(q * truth, axis=1) + 1.0)),
        "ece": float(np.sum(np.abs(gap)) / q.shape[0]),
    }


def make_pairs(seed: int = 0) -> dict[str, Pair]:
    rng = np.random.default_rng(seed)
    z = LOGIT_SCALE * rng.standard_normal((N_TYPES, N_CLASSES))
    truth = softmax(z)
    half = N_TYPES // 2
    merged = 0.5 * (truth + np.roll(truth, half, axis=0))  # types m and m + M/2 share one output
    e1 = 1.5 * rng.standard_normal((half, N_CLASSES))
    e2 = 1.5 * rng.standard_normal((half, N_CLASSES))
    z_twin = np.concatenate([z[:half], z[:half]])  # the second half repeats the first with e1, e2 swapped
    over1 = softmax(2.0 * (z_twin + np.concatenate([e1, e2])))
    over2 = softmax(2.0 * (z_twin + np.concatenate([e2, e1])))
    truth_twin = softmax(z_twin)
    pairs = [
        Pair("identical", truth, truth, truth, "none"),
        Pair("calibrated, different sharpness", truth, truth, merged, "none"),
        Pair("equally overconfident", truth_twin, over1, over2, "none"),
        Pair("challenger T=1, fitted T=2.0", truth, truth, softmax(2.0 * z), "champion_better"),
        Pair("challenger T=1, fitted T=0.6", truth, truth, softmax(0.6 * z), "champion_better"),
        Pair("challenger T=1, fitted T=1.25", truth, truth, softmax(1.25 * z), "champion_better"),
        Pair("champion T=1, fitted T=2.0", truth, softmax(2.0 * z), truth, "challenger_better"),
    ]
    return {p.name: p for p in pairs}


@dataclass(frozen=True)
class Rates:
    trials: int
    outcomes: dict[str, int]
    covered: dict[str, int]  # per metric: trials whose difference interval contains the true difference

    def rate(self, outcome: str) -> float:
        return self.outcomes.get(outcome, 0) / self.trials

    def winner_named(self) -> int:
        return self.outcomes.get("champion_better", 0) + self.outcomes.get("challenger_better", 0)


def run_trials(
    pair: Pair,
    n: int,
    trials: int,
    seed: int,
    n_bootstrap: int = 1000,
) -> Rates:
    truth = pair.true_difference()
    rng = np.random.default_rng(seed)
    outcomes: dict[str, int] = {}
    covered = dict.fromkeys(METRICS, 0)
    for t in range(trials):
        champion, challenger, labels = pair.sample(n, rng)
        result = compare_paired(
            champion, challenger, labels, n_bins=N_BINS, n_bootstrap=n_bootstrap, level=LEVEL, seed=t
        )
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        for m in METRICS:
            d = getattr(result, m).difference
            covered[m] += int(d.lower - 1e-12 <= truth[m] <= d.upper + 1e-12)
    return Rates(trials, outcomes, covered)


def _upper95(k: int, n: int) -> float:
    """One-sided 95% Clopper–Pearson upper bound of a rate k/n."""
    return 1.0 - clopper_pearson_lower(n - k, n, 0.95)


def _job(args: tuple[str, int, int, int, int]) -> tuple[str, int, Rates]:
    name, n, trials, seed, n_bootstrap = args
    try:  # one BLAS thread per process: the matrix products are small, and threads only contend
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (the dev extra)
        return name, n, run_trials(make_pairs()[name], n, trials, seed, n_bootstrap)
    with threadpool_limits(1):
        return name, n, run_trials(make_pairs()[name], n, trials, seed, n_bootstrap)


def report(results: dict[tuple[str, int], Rates], pairs: dict[str, Pair], header: list[str]) -> str:
    sizes = sorted({n for _, n in results})
    names = [name for name in pairs if any((name, n) in results for n in sizes)]
    lines = [
        *header,
        "## Verdicts",
        "",
        "Equally calibrated pairs: the rate of a named winner (false verdict), with its one-sided 95% upper bound."
        " Other pairs: the rate of the right winner (detection); a wrong winner was never named unless shown.",
        "",
        "| pair | true ECE champion, challenger | true NLL challenger − champion | "
        + " | ".join(f"n={n}" for n in sizes)
        + " |",
        "|---|---|---|" + "---|" * len(sizes),
    ]
    for name in names:
        pair = pairs[name]
        cp, ch = pair.true_metrics("champion"), pair.true_metrics("challenger")
        cells = []
        for n in sizes:
            r = results[(name, n)]
            if pair.expected == "none":
                k = r.winner_named()
                cells.append(f"false {k / r.trials:.3f} (≤ {_upper95(k, r.trials):.3f})")
            else:
                wrong = r.winner_named() - r.outcomes.get(pair.expected, 0)
                cells.append(
                    f"detected {r.rate(pair.expected):.3f}" + (f", wrong {wrong / r.trials:.3f}" if wrong else "")
                )
        lines.append(
            f"| {name} | {cp['ece']:.4f}, {ch['ece']:.4f} | {ch['nll'] - cp['nll']:+.4f} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"## Coverage of the paired difference intervals (nominal {LEVEL})",
        "",
        "Fraction of trials whose challenger − champion interval contains the true population difference"
        " (accuracy / NLL / Brier / ECE).",
        "",
        "| pair | " + " | ".join(f"n={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name in names:
        cells = []
        for n in sizes:
            r = results[(name, n)]
            cells.append(" / ".join(f"{r.covered[m] / r.trials:.2f}" for m in METRICS))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials; print only")
    parser.add_argument("--trials", type=int, default=None, help="trials per pair and n")
    parser.add_argument("--n-bootstrap", type=int, default=None)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    trials = args.trials or (60 if args.quick else 300)
    n_bootstrap = args.n_bootstrap or (200 if args.quick else 300)
    pairs = make_pairs()
    jobs = [(name, n, trials, 1000 * i + 7, n_bootstrap) for name in BENCH_PAIRS for i, n in enumerate(SIZES)]
    jobs.sort(key=lambda job: -job[1])  # the largest first, so the two processes finish together
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.processes) as pool:
        results = {(name, n): rates for name, n, rates in pool.imap_unordered(_job, jobs)}
    elapsed = time.perf_counter() - start
    command = "python bench/shadow_verdict.py" + (" --quick" if args.quick else "")
    header = [
        "# Shadow scoring: false verdicts and detection (champion vs challenger)",
        "",
        f"`{command}` ({elapsed:.0f} s on {args.processes} processes; {trials} trials per cell,"
        f" n_bootstrap={n_bootstrap}, level={LEVEL}, {N_BINS} bins, {N_CLASSES} classes, {N_TYPES} input types)."
        " Populations and pairs: the script's docstring. `compare_paired` names a winner only when the ECE and"
        " the NLL difference intervals agree (its docstring). Not simulated: `identical` inputs (every difference"
        " is exactly 0, never a winner) and the `champion T=1, fitted T=2.0` pair, the exact mirror of"
        " `challenger T=1, fitted T=2.0` (both tested in tests/calibration/test_paired.py).",
        "",
    ]
    text = report(results, pairs, header)
    print(text)
    if not args.quick:
        OUT.write_text(text)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
