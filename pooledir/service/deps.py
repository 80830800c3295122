"""Dependencies: the settings, the registry, one index by name, and the API key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pooledir.service.guard import key_ok
from pooledir.service.handles import IndexHandle
from pooledir.service.registry import Registry
from pooledir.service.settings import Settings

_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def get_registry(request: Request) -> Registry:
    """The open indexes; 503 while none are open (before the app's lifespan started or after it ended)."""
    registry: Registry | None = getattr(request.app.state, "registry", None)
    if registry is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the indexes are not open (the service is starting or stopping)"
        )
    return registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]


def get_index(name: str, registry: RegistryDep) -> IndexHandle:
    """The index named in the path, or 404 listing the served ones."""
    handle = registry.handles.get(name)
    if handle is None:
        known = ", ".join(sorted(registry.handles)) or "none"
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown index {name!r}; served: {known}")
    return handle


IndexDep = Annotated[IndexHandle, Depends(get_index)]


def require_api_key(
    settings: SettingsDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """When POOLEDIR_API_KEY is set, demand ``Authorization: Bearer <key>`` (the rule is :func:`key_ok`).

    :class:`pooledir.service.guard.RequestGuard` applies it before any body is read; this dependency
    states it in the OpenAPI schema and guards any route mounted outside the middleware.
    """
    if not key_ok(settings, f"Bearer {creds.credentials}" if creds else None):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"}
        )
