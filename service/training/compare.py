"""`calibserve train --compare`: label smoothing strengths x seeds, like Müller et al. 2019, Table 3.

Point estimates only (no bootstrap): the spread across seeds is the uncertainty this table reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from service.calibration.metrics import accuracy, brier, ece, nll
from service.calibration.temperature import softmax
from service.training.config import TrainConfig
from service.training.data import Dataset
from service.training.train import run_training

DEFAULT_ALPHAS = (0.0, 0.05, 0.1, 0.2)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
COLUMNS = ("accuracy", "nll", "brier", "ece_before", "ece_after", "nll_after", "temperature")


@dataclass(frozen=True, slots=True)
class CompareRow:
    alpha: float
    seed: int
    values: dict[str, float]


def run_compare(
    dataset: Dataset,
    base: TrainConfig,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    progress: bool = True,
) -> list[CompareRow]:
    rows = []
    grid = [(alpha, seed) for alpha in alphas for seed in seeds]
    for alpha, seed in tqdm(grid, desc="compare", unit="run", disable=not progress):
        run = run_training(dataset, dataclasses.replace(base, label_smoothing=alpha, seed=seed), progress=False)
        labels = dataset.labels[run.split.test]
        before = softmax(run.test_logits)
        after = softmax(run.test_logits, run.temperature.temperature)
        rows.append(
            CompareRow(
                alpha,
                seed,
                {
                    "accuracy": accuracy(before, labels),
                    "nll": nll(before, labels),
                    "brier": brier(before, labels),
                    "ece_before": ece(before, labels),
                    "ece_after": ece(after, labels),
                    "nll_after": nll(after, labels),
                    "temperature": run.temperature.temperature,
                },
            )
        )
    return rows


def render_compare(rows: Sequence[CompareRow], dataset_name: str, n_test: int, base: TrainConfig) -> str:
    seeds = sorted({row.seed for row in rows})
    lines = [
        f"# Label smoothing vs temperature scaling on {dataset_name}",
        "",
        f"MLP {base.hidden_sizes}, {base.epochs} epochs; test split n = {n_test}; mean ± std over seeds "
        f"{', '.join(map(str, seeds))}. NLL / Brier / ECE (15 bins) before temperature scaling unless marked "
        "'after T'. Layout after Müller et al. 2019, Table 3.",
        "",
        "| alpha | accuracy | NLL | Brier | ECE before T | ECE after T | NLL after T | fitted T |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for alpha in sorted({row.alpha for row in rows}):
        group = [row for row in rows if row.alpha == alpha]
        cells = []
        for column in COLUMNS:
            values = np.array([row.values[column] for row in group])
            cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}")
        lines.append(f"| {alpha:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
