"""The small interface every vector backend implements, and the vector-id scheme.

A vector's faiss id is ``doc_int << ID_SHIFT | position``: the document's
stable internal number and the vector's place in it. The document of a hit is
one shift away, and a document's vectors are found without a lookup table.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

ID_SHIFT = 16
MAX_VECTORS_PER_DOC = 1 << ID_SHIFT


def vector_ids(doc_ints: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Ids of all vectors of the given documents, packed in document order."""
    doc_ints = np.asarray(doc_ints, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    positions = np.arange(int(counts.sum()), dtype=np.int64) - starts
    return (np.repeat(doc_ints, counts) << ID_SHIFT) | positions


def doc_of(ids: np.ndarray) -> np.ndarray:
    """Internal document number of each vector id (-1 stays -1: faiss's 'no hit')."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(ids < 0, -1, ids >> ID_SHIFT)


def atomic_write_index(index, path: Path) -> None:
    """Write a faiss index to ``path`` through a temp file, fsync and ``os.replace``.

    The bytes go through a Python file object: faiss's own writer only prints an error when
    ``fclose`` fails (a full disk can leave a truncated file that looks written), while Python
    raises ``OSError`` for any failed write, flush or fsync. On failure the temp file is removed,
    so a full disk does not stay full of it.
    """
    import faiss

    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed f.write names no file: name the one being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class VectorBackend(ABC):
    """A store of unit vectors with ids: train, add, remove, search, reconstruct, save, load."""

    kind: str

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @property
    @abstractmethod
    def ntotal(self) -> int:
        """Number of stored vectors."""

    @property
    def is_trained(self) -> bool:
        """Whether ``add`` may be called (exact backends need no training)."""
        return True

    def train(self, vectors: np.ndarray, n_total: int | None = None) -> None:  # noqa: B027 (a deliberate no-op)
        """Learn whatever the backend needs from a sample of the ``n_total`` vectors (no-op for exact backends)."""

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add float32 ``vectors`` (n, dim) under int64 ``ids``."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id; returns how many were removed."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products per query vector: (scores, ids), each (n, k); missing hits have id -1."""

    @abstractmethod
    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored (possibly compressed, then decoded) vectors for ``ids``, float32 (n, dim)."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the backend to ``path`` atomically."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, config: dict, use_gpu: bool) -> VectorBackend:
        """Read a backend written by :meth:`save`."""

    def describe(self) -> dict:
        """Resolved parameters, saved in the manifest."""
        return {"kind": self.kind, "dim": self.dim}
