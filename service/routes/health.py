"""Liveness and readiness: never behind the API key, and ``async def`` so no thread pool stands in their way."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request, response: Response) -> Health:
    """Every configured index is open and answering."""
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="starting")
    return Health(status="ready", indexes=sorted(registry.handles))
