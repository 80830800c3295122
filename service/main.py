"""The FastAPI app: ``create_app(settings)``; run with ``pooledir serve`` or uvicorn's factory mode."""

from __future__ import annotations

import os

# torch and faiss each run an OpenMP pool; passive waiting stops them stealing each other's cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from contextlib import asynccontextmanager  # noqa: E402

from fastapi import Depends, FastAPI, Request, status  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from pooledir import DocumentNotFoundError, IndexCorruptError, InputError  # noqa: E402
from service.deps import require_api_key  # noqa: E402
from service.registry import Registry  # noqa: E402
from service.routes import documents, health, indexes, search  # noqa: E402
from service.settings import Settings  # noqa: E402


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
