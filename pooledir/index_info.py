"""What :meth:`PooledIndex.describe <pooledir.pooled_index.PooledIndex.describe>` reports: a typed record.

``IndexInfo.to_json()`` is ``pooledir info --json`` (and :meth:`PooledIndex.info`), key for key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of the loaded snapshot."""

    id: int
    kind: str
    vectors: int
    live_vectors: int


@dataclass(frozen=True)
class IndexInfo:
    """Counts, sizes, segments and settings of an index (its loaded snapshot).

    ``config`` is the :class:`~pooledir.index.manifest.IndexConfig` as a dict; ``backend`` holds ``kind``,
    ``dim``, ``trained`` and, once trained, the quantizer's description (it varies with the codec).
    """

    path: str
    device: str
    checkpoint: str
    documents: int
    vectors_before_pooling: int
    vectors: int
    pool_factor: int
    pool_threshold: float | None
    config: dict[str, Any]
    backend: dict[str, Any]
    segments: tuple[SegmentInfo, ...]
    deleted_vectors: int
    trained_vectors: int
    retrain_recommended: bool
    bytes: dict[str, int]
    index_bytes: int
    commit: int
    lexical: bool

    @property
    def dim(self) -> int:
        """The vector dimension."""
        return int(self.backend["dim"])

    def to_json(self) -> dict[str, Any]:
        """The record as ``pooledir info --json`` prints it."""
        out = asdict(self)
        out["segments"] = [asdict(s) for s in self.segments]
        return out

    @classmethod
    def merged(cls, parts: Sequence[IndexInfo]) -> IndexInfo:
        """Partitions seen as one index: counts and bytes summed; the rest from the first, plus a partition count."""
        first = parts[0]
        return replace(
            first,
            documents=sum(p.documents for p in parts),
            vectors_before_pooling=sum(p.vectors_before_pooling for p in parts),
            vectors=sum(p.vectors for p in parts),
            index_bytes=sum(p.index_bytes for p in parts),
            backend=first.backend | {"partitions": len(parts)},
        )
