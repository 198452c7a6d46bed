"""The classifier: an MLP whose input standardisation is part of the graph.

Folding the training mean / scale into the module means the exported ONNX takes raw features, so
no client (and no other runtime serving the file) can forget or mismatch the preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn


class StandardizedMLP(nn.Module):
    """Raw features [N, F] -> logits [N, K]: (x - mean) / scale, then Linear-ReLU-Dropout blocks."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        mean: NDArray[np.float64],
        scale: NDArray[np.float64],
        n_classes: int,
        hidden_sizes: Sequence[int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        layers: list[nn.Module] = []
        width = len(mean)
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.scale)  # type: ignore[no-any-return]


class CalibratedClassifier(nn.Module):
    """What gets exported: uncalibrated logits and softmax(logits / T) with T folded into the graph."""

    inverse_temperature: torch.Tensor

    def __init__(self, model: StandardizedMLP, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inverse_temperature", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(features)
        return logits, torch.softmax(logits * self.inverse_temperature, dim=-1)


def standardization(features: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and scale fitted on training rows; constant columns get scale 1 instead of a division by 0."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return mean, scale
