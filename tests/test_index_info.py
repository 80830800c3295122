"""IndexInfo: the typed record of PooledIndex.describe(); to_json() is today's ``info --json``, key for key."""

from __future__ import annotations

import json

from pooledir.index_info import IndexInfo, SegmentInfo
from pooledir.pooled_index import IndexConfig, PooledIndex

#: the keys of ``pooledir info --json``, in order (what scripts parse)
KEYS = [
    "path",
    "device",
    "checkpoint",
    "documents",
    "vectors_before_pooling",
    "vectors",
    "pool_factor",
    "pool_threshold",
    "config",
    "backend",
    "segments",
    "deleted_vectors",
    "trained_vectors",
    "retrain_recommended",
    "bytes",
    "index_bytes",
    "commit",
    "lexical",
]


def test_describe_is_typed_and_to_json_is_the_info_json(tmp_path, tiny_encoder, tiny_docs):
    config = IndexConfig(backend="flat", pool_factor=2)
    with PooledIndex.create(tmp_path / "i", config=config, device="cpu", encoder=tiny_encoder) as idx:
        idx.add(tiny_docs[:20])
        idx.add(tiny_docs[20:30])
        idx.delete(["d3"])
        info = idx.describe()
        data = idx.info()
    assert isinstance(info, IndexInfo) and list(data) == KEYS
    assert info.to_json() == data and json.loads(json.dumps(data)) == data
    assert (info.documents, info.dim, info.pool_factor, info.commit) == (29, tiny_encoder.dim, 2, 3)
    assert [s.vectors for s in info.segments] == [s["vectors"] for s in data["segments"]]
    assert list(data["segments"][0]) == ["id", "kind", "vectors", "live_vectors"]
    assert info.deleted_vectors == sum(s.vectors - s.live_vectors for s in info.segments) > 0
    assert info.index_bytes == sum(info.bytes.values()) and "docs.sqlite" in info.bytes
    assert data["config"] == {**data["config"], "backend": "flat", "pool_factor": 2}


def test_partitions_merge_into_one_record():
    def part(documents: int, vectors: int) -> IndexInfo:
        return IndexInfo(
            "/p", "cpu", "/ckpt", documents, 3 * vectors, vectors, 2, None, {}, {"kind": "flat", "dim": 16},
            (SegmentInfo(1, "flat", vectors, vectors),), 0, 0, False, {"docs.sqlite": 10}, 10, 1, True,
        )  # fmt: skip

    merged = IndexInfo.merged([part(5, 50), part(7, 70)])
    assert (merged.documents, merged.vectors, merged.vectors_before_pooling, merged.index_bytes) == (12, 120, 360, 20)
    assert merged.backend == {"kind": "flat", "dim": 16, "partitions": 2}
