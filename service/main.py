"""The FastAPI app: ``create_app(settings)``; run with ``pooledir serve`` or uvicorn's factory mode."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse

from pooledir import DocumentNotFoundError, IndexCorruptError, InputError
from service.deps import require_api_key
from service.registry import Registry
from service.routes import documents, health, indexes, search
from service.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; its lifespan opens ``settings.indexes`` into ``app.state.registry``."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        registry = Registry.open(
            settings.indexes,
            settings.device,
            settings.micro_batching,
            settings.batch_window_ms,
            settings.max_batch_queries,
            settings.checkpoint,
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
    protected = [Depends(require_api_key)]
    for router in (indexes.router, search.router, documents.router):
        app.include_router(router, dependencies=protected)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > settings.max_body_bytes):
            return JSONResponse(
                {"detail": f"request body over {settings.max_body_bytes} bytes"},
                status_code=413,
            )
        return await call_next(request)

    @app.exception_handler(DocumentNotFoundError)
    async def not_found(request: Request, exc: DocumentNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(IndexCorruptError)
    async def corrupt(request: Request, exc: IndexCorruptError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    return app
