"""Train with label smoothing, then fit the temperature on the held-out calibration split.

Why both: label smoothing regularises but, on an easy task like digits, leaves the network
*under*-confident (DESIGN.md: alpha=0.1 gives ECE ~0.12); temperature scaling then fits T < 1 and
repairs it. So T is always fitted after training, and never assumed to be > 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm.auto import tqdm

from service.calibration.smoothing import class_prior, smoothed_targets
from service.calibration.temperature import TemperatureFit, fit_temperature
from service.training.config import TrainConfig
from service.training.data import Dataset, Split, stratified_split
from service.training.model import StandardizedMLP, standardization


@dataclass(frozen=True, slots=True)
class TrainingRun:
    """A trained model, its split, and float64 logits on the held-out parts."""

    dataset: Dataset
    config: TrainConfig
    split: Split
    model: StandardizedMLP
    prior: NDArray[np.float64]
    calibration_logits: NDArray[np.float64]
    test_logits: NDArray[np.float64]
    temperature: TemperatureFit
    train_seconds: float
    losses: tuple[float, ...] = field(default=())


def run_training(dataset: Dataset, config: TrainConfig, progress: bool = True) -> TrainingRun:
    """Split, train, and fit the temperature; deterministic for a given seed and data."""
    split = stratified_split(dataset, config.calibration_fraction, config.test_fraction, config.seed)
    train_labels = dataset.labels[split.train]
    prior = (
        class_prior(train_labels, dataset.n_classes)
        if config.smoothing_prior == "empirical"
        else np.full(dataset.n_classes, 1.0 / dataset.n_classes)
    )
    started = time.perf_counter()
    model, losses = _train(dataset.features[split.train], train_labels, dataset.n_classes, prior, config, progress)
    train_seconds = time.perf_counter() - started
    calibration_logits = predict_logits(model, dataset.features[split.calibration])
    test_logits = predict_logits(model, dataset.features[split.test])
    temperature = fit_temperature(calibration_logits, dataset.labels[split.calibration])
    return TrainingRun(
        dataset=dataset,
        config=config,
        split=split,
        model=model,
        prior=prior,
        calibration_logits=calibration_logits,
        test_logits=test_logits,
        temperature=temperature,
        train_seconds=train_seconds,
        losses=tuple(losses),
    )


def _train(
    features: NDArray[np.float64],
    labels: NDArray[np.int64],
    n_classes: int,
    prior: NDArray[np.float64],
    config: TrainConfig,
    progress: bool,
) -> tuple[StandardizedMLP, list[float]]:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    mean, scale = standardization(features)
    model = StandardizedMLP(mean, scale, n_classes, config.hidden_sizes, config.dropout)
    inputs = torch.as_tensor(features, dtype=torch.float32)
    # Soft targets (1 - a) * onehot + a * prior; a=0 gives plain cross-entropy on hard labels.
    targets = torch.as_tensor(
        smoothed_targets(labels, n_classes, config.label_smoothing, prior=prior), dtype=torch.float32
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    losses: list[float] = []
    epochs = tqdm(range(config.epochs), desc="training", unit="epoch", disable=not progress, leave=False)
    for _ in epochs:
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = soft_cross_entropy(model(inputs[batch]), targets[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(inputs))
        epochs.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return model, losses


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k y_k log softmax(z)_k, for soft (smoothed) targets y."""
    return -(targets * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def predict_logits(model: nn.Module, features: NDArray[np.float64]) -> NDArray[np.float64]:
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(features, dtype=torch.float32))
    return np.asarray(logits.numpy(), dtype=np.float64)
