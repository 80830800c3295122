"""Index listing and stats (plain ``def``: they take the read lock, so they run in the thread pool)."""

from __future__ import annotations

from fastapi import APIRouter

from pooledir.service.deps import IndexDep, RegistryDep
from pooledir.service.handles import IndexHandle
from pooledir.service.schemas import IndexList, IndexStats

router = APIRouter(prefix="/indexes", tags=["indexes"])


def stats(handle: IndexHandle) -> IndexStats:
    """Stats of one index, read under its read lock."""
    info = handle.read(lambda index: index.describe())
    return IndexStats(
        name=handle.name,
        documents=info.documents,
        vectors_before_pooling=info.vectors_before_pooling,
        vectors=info.vectors,
        pool_factor=info.pool_factor,
        index_bytes=info.index_bytes,
        backend=info.backend,
        device=handle.device,
        checkpoint=info.checkpoint,
    )


@router.get("", response_model=IndexList)
def list_indexes(registry: RegistryDep) -> IndexList:
    """Every served index with its stats."""
    return IndexList(indexes=[stats(h) for h in registry.handles.values()])


@router.get("/{name}", response_model=IndexStats)
def index_stats(handle: IndexDep) -> IndexStats:
    """Documents, vectors before and after pooling, pool factor, bytes, device, checkpoint."""
    return stats(handle)
