"""Training configuration, importable without torch (the CLI reads its defaults for --help)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SmoothingPrior = Literal["uniform", "empirical"]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Every knob of one training run; the card records all of them."""

    label_smoothing: float = 0.1
    smoothing_prior: SmoothingPrior = "uniform"
    hidden_sizes: tuple[int, ...] = (256, 256)
    dropout: float = 0.1
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    calibration_fraction: float = 0.2
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch size must be >= 1 and the learning rate > 0")
        if any(width < 1 for width in self.hidden_sizes):
            raise ValueError(f"hidden sizes must be >= 1, got {self.hidden_sizes}")


def architecture_name(n_features: int, hidden_sizes: Sequence[int], n_classes: int) -> str:
    """The card's name for the trainer's MLP (torch-free: the card builder imports it without the model)."""
    return "mlp-" + "-".join(str(width) for width in (n_features, *hidden_sizes, n_classes))
