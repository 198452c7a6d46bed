"""Typed errors of calibserve, free of any HTTP framework.

Domain code raises these; the API layer maps each class to a status code in one table
(``service/api/errors.py``), and the CLI prints their message. Keeping the tree here means the
trainer, the inference engine and the monitor can fail precisely without knowing about HTTP.

    ServiceError                      base: ``message`` for people, ``details`` for machines
    ├── InvalidInput                  a request that cannot be answered as sent (422)
    │   ├── MalformedRequest          not JSON, or no body (400)
    │   ├── PayloadTooLarge           over the byte or instance limit (413)
    │   └── UnsupportedMediaType      not application/json (415)
    ├── Unauthorized                  a protected endpoint without the right API key (401)
    ├── ModelNotFound                 no model of that name / version is loaded
    ├── ModelNotReady                 the model is still loading or failed to load (503)
    ├── ModelLoadFailed               a requested (re)load failed; the old version serves on (400, as Triton)
    ├── Overloaded                    more queued work than can be answered in time (503, Retry-After)
    ├── StoreUnavailable              the prediction store cannot be read or written now (503, Retry-After)
    ├── ArtifactError                 model.onnx / card.json missing, corrupt or inconsistent
    ├── DataError                     a training data set that cannot be used (trainer only)
    └── ConfigurationError            settings that cannot work with the loaded model (start-up)
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error calibserve raises on purpose."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class InvalidInput(ServiceError):
    """The caller sent something we will not guess at: wrong shape, type, or value."""


class Unauthorized(ServiceError):
    """The endpoint needs ``Authorization: Bearer <CALIBSERVE_API_KEY>``."""


class ModelNotFound(ServiceError):
    """The caller asked for a model name or version that is not loaded."""


class ModelNotReady(ServiceError):
    """The model is not loaded (yet); readiness reports the same condition."""


class ModelLoadFailed(ServiceError):
    """An operator's load of a model failed (a broken artifact); the version that served before serves on."""


class Overloaded(ServiceError):
    """Load shedding: the request was refused (or waited past its deadline) before it was scored.

    ``details["retry_after"]`` is the seconds a client should wait; the API sends it as ``Retry-After``."""


class StoreUnavailable(ServiceError):
    """The prediction store (the log's file or database) cannot be read or written right now.

    Predictions go on without it; what needs it (feedback, the live window) says so instead of guessing.
    ``details["retry_after"]`` is sent as ``Retry-After``."""


class Conflict(ServiceError):
    """The request cannot run in the state things are in now (e.g. a recalibration of the model is already in
    flight); the message says what stands in the way (409)."""


class FeatureOff(ServiceError):
    """What was asked for is switched off in this deployment (the dashboard, or the prediction log behind a
    history); the message names the setting (404: there is nothing at that address here)."""


class ArtifactError(ServiceError):
    """A model artifact is missing, unreadable, or its card does not match the graph."""


class DataError(ServiceError):
    """A training data set is unusable; the message names the column, row or class at fault."""


class MalformedRequest(InvalidInput):
    """The body is not parseable JSON, or required parts of the request are missing (400)."""


class PayloadTooLarge(InvalidInput):
    """More bytes or more instances than the configured limits (413)."""


class UnsupportedMediaType(InvalidInput):
    """The body is not sent as application/json (415)."""


class ConfigurationError(ServiceError):
    """Settings that cannot work with the loaded model (e.g. an unreachable target accuracy)."""
