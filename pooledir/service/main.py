"""The FastAPI app: ``create_app(settings)``; run with ``pooledir serve`` or uvicorn's factory mode."""

from __future__ import annotations

# importing pooledir sets OMP_WAIT_POLICY=PASSIVE (pooledir/__init__.py) before torch or faiss loads
import errno
import logging
import math
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from pooledir.errors import DocumentNotFoundError, IndexCorruptError, InputError, NoSpaceError, PooledirError
from pooledir.service.deps import require_api_key
from pooledir.service.guard import RequestGuard
from pooledir.service.registry import Registry
from pooledir.service.routes import documents, health, indexes, search
from pooledir.service.settings import Settings


def create_app(
    settings: Settings | None = None, open_registry: Callable[[Settings], Registry] | None = None
) -> FastAPI:
    """Build the app; its lifespan opens ``settings.indexes`` into ``app.state.registry``.

    ``open_registry(settings)`` replaces :meth:`Registry.open` (the sharded service on Ray Serve
    passes one whose indexes are partitions behind deployment handles).
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if open_registry is not None:
            registry = open_registry(settings)
        else:
            registry = Registry.open(
                settings.indexes,
                settings.device,
                settings.micro_batching,
                settings.batch_window_ms,
                settings.max_batch_queries,
                settings.checkpoint,
                settings.query_backend,
                settings.document_backend,
                settings.wal_checkpoint_every,
            )
        app.state.registry = registry
        try:
            yield
        finally:
            app.state.registry = None
            registry.close()

    app = FastAPI(title="pooledir", summary="MaxSim search over pooled ColBERT indexes", lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = None
    app.include_router(health.router)
    protected = [Depends(require_api_key)]  # RequestGuard already checked it; this documents it in /docs
    for router in (indexes.router, search.router, documents.router):
        app.include_router(router, dependencies=protected)
    app.add_middleware(RequestGuard, settings=settings)
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Domain and storage errors become JSON 4xx/503/507 answers with a message, never a 5xx traceback."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_short_error(e) for e in exc.errors()[:MAX_ERRORS]]}, status_code=422)

    @app.exception_handler(DocumentNotFoundError)
    async def not_found(request: Request, exc: DocumentNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": _clip(str(exc))}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": _clip(str(exc))}, status_code=422)

    @app.exception_handler(IndexCorruptError)
    async def corrupt(request: Request, exc: IndexCorruptError) -> JSONResponse:
        return JSONResponse({"detail": _clip(str(exc), 1000)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.exception_handler(NoSpaceError)
    async def no_space(request: Request, exc: NoSpaceError) -> JSONResponse:
        return _storage_error(exc, True)

    @app.exception_handler(PooledirError)  # any other: the server cannot serve it now (a Ray partition down)
    async def unavailable(request: Request, exc: PooledirError) -> JSONResponse:
        log.error("cannot serve: %s", exc, exc_info=exc)
        return JSONResponse({"detail": _clip(str(exc), 1000)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        return _storage_error(exc, exc.errno in (errno.ENOSPC, errno.EDQUOT))

    @app.exception_handler(sqlite3.Error)
    async def sqlite_error(request: Request, exc: sqlite3.Error) -> JSONResponse:
        return _storage_error(exc, "full" in str(exc))  # sqlite says "database or disk is full"


log = logging.getLogger(__name__)


def _storage_error(exc: Exception, full: bool) -> JSONResponse:
    """507 when the disk is full, else 503: the server cannot serve this now; what was acknowledged stays."""
    log.error("storage error: %s", exc, exc_info=exc)
    if full:
        detail = f"the index's disk is full ({exc}); nothing was written: free space and retry"
        return JSONResponse({"detail": _clip(detail, 1000)}, status_code=status.HTTP_507_INSUFFICIENT_STORAGE)
    detail = f"the index's storage failed ({type(exc).__name__}: {exc}); retry later"
    return JSONResponse({"detail": _clip(detail, 1000)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


#: at most this many validation errors, and this many characters of any string, go back to the client
MAX_ERRORS = 20
MAX_ECHO_CHARS = 200


def _clip(value: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``value`` cut to ``limit`` characters and made UTF-8-safe (a lone surrogate would fail the JSON response)."""
    clipped = value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"
    return clipped.encode("utf-8", "backslashreplace").decode("utf-8")


def _short_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """A validation error without a large echo of the input: loc, msg and type, plus the input if it is small."""
    out = {
        "type": error.get("type"),
        "loc": [p if isinstance(p, int) else _clip(str(p), 100) for p in error.get("loc", ())],
        "msg": _clip(str(error.get("msg", ""))),
    }
    value = error.get("input")
    if isinstance(value, str):
        out["input"] = _clip(value, 100)
    elif isinstance(value, bool) or value is None or (isinstance(value, int) and abs(value) < 2**63):
        out["input"] = value
    elif isinstance(value, float) and math.isfinite(value):
        out["input"] = value
    return out
