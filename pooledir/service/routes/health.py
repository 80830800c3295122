"""Liveness and readiness: never behind the API key, and ``async def`` so no thread pool stands in their way."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from starlette.concurrency import run_in_threadpool

from pooledir.service.handles import Problem
from pooledir.service.registry import Registry
from pooledir.service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, response_model_exclude_none=True, responses={503: {"model": Health}})
async def readyz(request: Request, response: Response) -> Health:
    """Every configured index is open and answering: 503 while starting, or while an index is corrupt or unreachable.

    The body's status says which: ``corrupt`` if any index has a file that fails verification, else
    ``unreachable`` (a partition that does not answer); ``detail`` names each index and why.
    """
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="starting")
    problems = await run_in_threadpool(_problems, registry)
    if problems:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        kind = "corrupt" if any(p.kind == "corrupt" for p in problems.values()) else "unreachable"
        detail = {name: p.message for name, p in problems.items()}
        return Health(status=kind, indexes=sorted(registry.handles), detail=detail)
    return Health(status="ready", indexes=sorted(registry.handles))


def _problems(registry: Registry) -> dict[str, Problem]:
    """Index name -> why it cannot serve, for the indexes that cannot (the check loads a newer commit if any)."""
    problems = {name: handle.problem() for name, handle in registry.handles.items()}
    return {name: problem for name, problem in problems.items() if problem is not None}
