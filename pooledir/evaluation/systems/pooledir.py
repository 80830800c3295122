"""pooledir's own indexes as evaluated systems: one per (backend, pool factor), built from cached vectors."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from pooledir.corpus import Document
from pooledir.evaluation.systems.base import Context
from pooledir.pooled_index import Hit, IndexConfig, PooledIndex
from pooledir.search import SearchParams


class PooledirSystem:
    """A :class:`PooledIndex` with one backend and pool factor, searched with ``params``' knobs."""

    def __init__(self, backend: str, pool_factor: int, params: SearchParams | None = None) -> None:
        self.config = IndexConfig(backend=backend, pool_factor=pool_factor)
        self.config.check()
        self.params = params or SearchParams()
        self.name = f"pooledir-{backend}-pf{pool_factor}"
        self.index: PooledIndex | None = None
        self.pool_s = 0.0

    def build(self, context: Context, documents: Sequence[Document], vectors: Sequence[np.ndarray]) -> None:  # noqa: D102
        path = context.workdir / self.name
        shutil.rmtree(path, ignore_errors=True)
        self.index = PooledIndex.create(path, config=self.config, device=context.device, encoder=context.encoder)
        self.pool_s = self.index.add(documents, embeddings=vectors).pool_s

    def search(self, queries: Sequence[str], k: int, vectors: np.ndarray | None = None) -> list[list[Hit]]:  # noqa: D102
        params = replace(self.params, k=k)
        if vectors is not None:
            return self.index.search_embeddings(vectors, params)
        return self.index.search(list(queries), k=k, params=params)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            "system": "pooledir",
            "index": self.config.backend,
            "pool_factor": self.config.pool_factor,
            "nbits": None,
            "vectors": self.index.info()["vectors"],
            "pool_s": self.pool_s,
        }

    def bytes(self) -> dict[str, int]:  # noqa: D102
        files = self.index.info()["bytes"]
        return {
            "index_bytes": sum(v for k, v in files.items() if k.startswith(("segments", "quantizer", "docs.sqlite"))),
            "vector_bytes": sum(v for k, v in files.items() if k.startswith(("segments", "quantizer"))),
        }

    def close(self) -> None:  # noqa: D102
        if self.index is not None:
            self.index.close()


def systems(
    indexes: Sequence[str] = ("ivfpq", "flat"),
    pool_factors: Sequence[int] = (1, 2, 3, 4),
    params: SearchParams | None = None,
) -> list[PooledirSystem]:
    """One system per (backend, pool factor), backends first; bad values fail before anything is built."""
    return [PooledirSystem(b, pf, params) for b in indexes for pf in pool_factors]
