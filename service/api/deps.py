"""Request-scoped access to what the lifespan built: the settings and the model repository."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from service.errors import ModelNotReady, Unauthorized
from service.repository import ModelRepository
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_repository(request: Request) -> ModelRepository:
    repository: ModelRepository | None = request.app.state.repository
    if repository is None or not repository.started:
        raise ModelNotReady("the models are not loaded yet", {"retry": True})
    return repository


def require_api_key(request: Request, settings: Settings = Depends(get_settings)) -> None:
    """Writes (feedback, the repository's load and unload, shadow pairs) need the API key when one is set."""
    if settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    valid = scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), settings.api_key.get_secret_value().encode()
    )  # the scheme is case-insensitive (RFC 7235); the key comparison takes constant time
    if not valid:
        raise Unauthorized(f"{request.url.path} needs 'Authorization: Bearer <CALIBSERVE_API_KEY>'")
