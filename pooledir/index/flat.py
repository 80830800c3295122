"""Exact inner-product search: the oracle the ANN backends are tested against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pooledir.index.base import VectorBackend, atomic_write_index


class FlatBackend(VectorBackend):
    """``IndexIDMap2(IndexFlatIP)``: full-precision vectors, exact search, reconstruct by id."""

    kind = "flat"

    def __init__(self, dim: int, index=None) -> None:
        import faiss

        super().__init__(dim)
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def ntotal(self) -> int:  # noqa: D102
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:  # noqa: D102
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:  # noqa: D102
        return int(self.index.remove_ids(np.asarray(ids, dtype=np.int64)))

    def search(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:  # noqa: D102
        return self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))

    def save(self, path: Path) -> None:  # noqa: D102
        atomic_write_index(self.index, path)

    @classmethod
    def load(cls, path: Path, config: dict, use_gpu: bool) -> FlatBackend:  # noqa: D102
        import faiss

        index = faiss.read_index(str(path))
        return cls(index.d, index)
