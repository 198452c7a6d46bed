"""The one place that reads the environment: every knob is a ``CALIBSERVE_*`` variable.

``calibserve serve --help`` lists these fields with their descriptions, so the help text and the
settings cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CALIBSERVE_"


def default_model_path() -> Path:
    """The bundled digits model, wherever calibserve is installed.

    A wheel (and so the container image) carries it as package data, ``service/bundled_models/digits``:
    pyproject.toml maps the checkout's ``models/`` there. A checkout or an editable install (which does not
    copy data) has it in place, at ``models/digits`` beside the package.
    """
    package = Path(__file__).resolve().parent
    installed = package / "bundled_models" / "digits"
    return installed if installed.is_dir() else package.parent / "models" / "digits"


class Settings(BaseSettings):
    """Service configuration; defaults serve the bundled digits model on localhost:8000."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    model_path: Path = Field(
        default_factory=default_model_path, description="artifact directory (with model.onnx) or .onnx file"
    )
    model_repository: Path | None = Field(
        None,
        description="a directory of models: every subdirectory holding an artifact (model.onnx) is a model named "
        "after the subdirectory (exclusive with model_path; unset: model_path is a repository of one)",
    )
    default_model: str | None = Field(
        None, description="the model /v1/predict answers when the request names none (unset: the only model)"
    )
    repository_poll_seconds: float | None = Field(
        None,
        gt=0,
        description="poll the model repository this often and load new, changed and removed models, as Triton's "
        "--model-control-mode=poll (unset: load and unload only through POST /v2/repository/...)",
    )
    shadow: str | None = Field(
        None,
        description="champion:challenger pairs, comma separated (e.g. digits:digits-v2): every request the champion "
        "answers is also scored by the challenger off the request path, for GET /v1/models/{champion}/shadow",
    )
    shadow_queue_rows: int = Field(
        4096, ge=1, description="rows waiting for a shadow challenger; past this they are skipped and counted"
    )
    shadow_window: int = Field(
        5000, ge=1, description="shadow comparison: the last N requests both models scored (and N labelled ones)"
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
        description="abstain below the lowest confidence threshold of the card's selective table whose kept "
        "predictions' accuracy is at least this with 95% confidence (one-sided Clopper-Pearson lower bound, "
        "thresholds tried from the strictest down); start-up fails if none is, naming the test samples needed",
    )
    conformal_guarantee: Literal["marginal", "pac"] = Field(
        "marginal",
        description="which conformal threshold the prediction sets use: 'marginal' (the plain split-conformal "
        "threshold: the nominal coverage holds on average over calibration sets; for one card it falls short "
        "about half the time) or 'pac' (the card's training-conditional threshold: the nominal coverage holds "
        "for this card with probability 1 - delta, delta 0.05; a little larger sets); 'pac' needs a card that "
        "has PAC thresholds",
    )
    min_bin_support: int = Field(
        10, ge=1, description="expected_accuracy merges neighbouring reliability bins until they hold this many"
    )
    ece_warning: float = Field(0.05, gt=0.0, description="card or live ECE above this: status warning")
    ece_critical: float = Field(0.10, gt=0.0, description="card or live ECE above this: status critical")
    batch_max_rows: int = Field(
        64, ge=1, le=100_000, description="micro-batching: most rows in one onnxruntime call (1: batching off)"
    )
    batch_max_wait_ms: float = Field(
        0.0, ge=0.0, le=1000.0, description="micro-batching: how long a batch may wait for more requests"
    )
    inference_threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads per worker")

    # Overload: shed what cannot be answered in time instead of queueing without bound (bench/RESULTS.md).
    max_queue_rows: int = Field(
        16_384,
        ge=1,
        description="most rows waiting for inference per model; a request that does not fit is refused with 503",
    )
    max_concurrent_requests: int = Field(
        128,
        ge=1,
        description="inference requests parsed, scored or answered at once per worker; more wait, newest first "
        "(their bodies unread) until the queue deadline",
    )
    queue_timeout_ms: float = Field(
        1000.0,
        gt=0.0,
        description="a request still queued after this long is refused with 503 (one being scored is never dropped)",
    )
    limit_concurrency: int | None = Field(
        None,
        ge=1,
        description="uvicorn: most connections or requests at once per worker, more get uvicorn's plain 503 (unset: "
        "max_connections + 1, so the connection cap decides; uvicorn counts connections too, so a value at or "
        "below max_connections refuses requests of connections it accepted)",
    )
    max_connections: int = Field(
        4096,
        ge=1,
        description="open connections per worker; more are closed at once (keeps file descriptors in bound)",
    )
    backlog: int = Field(2048, ge=1, description="uvicorn: most connections waiting in the kernel to be accepted")
    timeout_keep_alive: int = Field(5, ge=1, description="uvicorn: close idle keep-alive connections after (s)")
    graceful_timeout: int = Field(8, ge=1, description="on SIGTERM: seconds to finish in-flight requests")
    log_format: Literal["text", "json"] = Field(
        "text", description="text (readable) or json (one object per line: access and application logs)"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")

    # Prediction log and live calibration monitoring.
    data_dir: Path = Field(Path("data"), description="directory of the prediction log (SQLite) and metrics files")
    database_url: SecretStr | None = Field(
        None,
        description="postgresql://user:password@host:5432/db: the shared prediction store for several replicas "
        "(unset: an embedded SQLite file in data_dir, for one server)",
    )
    log_predictions: bool = Field(True, description="log every prediction for live calibration monitoring")
    log_inputs: bool = Field(False, description="also log the input features (off: inputs may be personal data)")
    log_queue_size: int = Field(10_000, ge=1, description="rows the log writer may hold before the queue is full")
    log_queue_full: Literal["wait", "drop"] = Field(
        "wait", description="when the queue is full: wait (up to 5 s) or drop; drops are counted in /metrics"
    )
    retention_days: float = Field(30.0, gt=0, description="delete logged predictions older than this")
    retention_rows: int = Field(
        1_000_000, ge=1, description="keep at most this many logged predictions (a shadow score counts as one)"
    )
    window_labels: int = Field(500, ge=1, description="live window: the last N labelled predictions")
    window_predictions: int = Field(2000, ge=1, description="live window: the last N predictions (label-free checks)")
    window_hours: float | None = Field(None, gt=0, description="live window: only the last H hours (unset: no limit)")
    min_labels: int = Field(50, ge=1, description="fewer labels in the window: insufficient_data, no alarm")
    min_predictions: int = Field(100, ge=1, description="fewer predictions in the window: insufficient_data")
    accuracy_drop_warning: float = Field(0.05, gt=0, description="live (or estimated) accuracy this far below the card")
    accuracy_drop_critical: float = Field(0.10, gt=0, description="... this far below: critical")
    psi_warning: float = Field(0.10, gt=0, description="PSI of live confidences vs the card's: warning")
    psi_critical: float = Field(0.25, gt=0, description="PSI: critical")
    ks_pvalue: float = Field(
        0.01, gt=0, lt=1, description="KS test of confidences below this p-value (and false_alarm_rate / 6): warning"
    )
    class_shift_warning: float = Field(0.10, gt=0, description="total variation of predicted classes vs training")
    class_shift_critical: float = Field(0.20, gt=0, description="class shift: critical")
    false_alarm_rate: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="live checks: chance per evaluation that clean traffic raises the status; split equally across "
        "the six live checks, each of which must also exceed its own sampling-noise gate at that level",
    )
    recalibration: Literal["off", "propose", "auto"] = Field(
        "off",
        description="closed-loop recalibration when the live label checks say warning or critical: off; propose "
        "(refit the temperature, shadow the new version, promote by hand); auto (promote it once proven)",
    )
    recalibration_interval_seconds: float = Field(30.0, gt=0, description="how often the recalibration policy looks")
    recalibration_min_labels: int = Field(200, ge=10, description="never refit on fewer labels of the serving version")
    recalibration_min_per_class: int = Field(3, ge=1, description="... nor on fewer of any class that was labelled")
    recalibration_min_new_labels: int = Field(
        200, ge=10, description="labelled requests both versions scored before a recalibrated version is judged"
    )
    recalibration_check_fraction: float = Field(
        0.3, gt=0, lt=1, description="the newest share of the labels, held out to check the refit"
    )
    dashboard: bool = Field(True, description="serve the read-only calibration dashboard at /dashboard")
    dashboard_refresh_seconds: int = Field(
        30, ge=2, le=3600, description="how often an open dashboard refreshes itself (paused while the tab is hidden)"
    )
    api_key: SecretStr | None = Field(None, description="if set, POST /v1/feedback needs 'Authorization: Bearer <key>'")
    max_feedback_items: int = Field(1000, ge=1, description="most feedback items in one request (more: 413)")
    feedback_pending_seconds: float = Field(
        300.0,
        gt=0.0,
        description="feedback for an id made up to this long ago whose prediction is not logged yet is stored as "
        "pending and counts once the prediction lands",
    )

    @field_validator(
        "api_key",
        "database_url",
        "abstain_below",
        "target_accuracy",
        "window_hours",
        "limit_concurrency",
        "model_repository",
        "default_model",
        "repository_poll_seconds",
        "shadow",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # compose passes `${CALIBSERVE_API_KEY:-}` as an empty string: that means "not set", not "empty key".
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_abstain_rule(self) -> Self:
        if self.abstain_below is not None and self.target_accuracy is not None:
            raise ValueError("set at most one of abstain_below and target_accuracy")
        if self.ece_critical < self.ece_warning:
            raise ValueError("ece_critical must be >= ece_warning")
        if self.model_repository is not None and "model_path" in self.model_fields_set:
            raise ValueError("set at most one of model_path and model_repository")
        self.shadow_pairs  # noqa: B018 (validates the pairs' syntax at start-up)
        return self

    @property
    def shadow_pairs(self) -> list[tuple[str, str]]:
        """``shadow`` as (champion, challenger) pairs."""
        pairs = []
        for item in (self.shadow or "").split(","):
            if not item.strip():
                continue
            champion, colon, challenger = (part.strip() for part in item.partition(":"))
            if not colon or not champion or not challenger or champion == challenger or ":" in challenger:
                raise ValueError(f"shadow: {item.strip()!r} is not 'champion:challenger' (two different model names)")
            pairs.append((champion, challenger))
        champions = [champion for champion, _ in pairs]
        if len(set(champions)) != len(champions):
            raise ValueError("shadow: a champion can have one challenger at a time")
        return pairs
