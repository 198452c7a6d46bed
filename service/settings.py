"""The one place that reads the environment: every knob is a ``CALIBSERVE_*`` variable.

``calibserve serve --help`` lists these fields with their descriptions, so the help text and the
settings cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CALIBSERVE_"


def default_model_path() -> Path:
    """The bundled model: ``models/digits`` beside the package (a checkout or the container image)."""
    return Path(__file__).resolve().parent.parent / "models" / "digits"


class Settings(BaseSettings):
    """Service configuration; defaults serve the bundled digits model on localhost:8000."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    model_path: Path = Field(
        default_factory=default_model_path, description="artifact directory (with model.onnx) or .onnx file"
    )
    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 in containers)")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    max_instances: int = Field(1000, ge=1, description="most instances in one request (more: 413)")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body in bytes (more: 413)")
    abstain_below: float | None = Field(
        None, ge=0.0, le=1.0, description="abstain when confidence is below this (exclusive with target_accuracy)"
    )
    target_accuracy: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="abstain below the lowest confidence threshold whose accuracy in the card's selective "
        "table reaches this",
    )
    min_bin_support: int = Field(
        10, ge=1, description="expected_accuracy merges neighbouring reliability bins until they hold this many"
    )
    ece_warning: float = Field(0.05, gt=0.0, description="card or live ECE above this: status warning")
    ece_critical: float = Field(0.10, gt=0.0, description="card or live ECE above this: status critical")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")

    @model_validator(mode="after")
    def _one_abstain_rule(self) -> Self:
        if self.abstain_below is not None and self.target_accuracy is not None:
            raise ValueError("set at most one of abstain_below and target_accuracy")
        if self.ece_critical < self.ece_warning:
            raise ValueError("ece_critical must be >= ece_warning")
        return self
