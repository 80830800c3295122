"""Partitions by document id (no Ray needed): stable routing, and IVF-PQ partitions share one quantizer."""

from __future__ import annotations

import pytest

from pooledir.distributed.partition import build_partitions, partition_of, read_partitions
from pooledir.errors import InputError
from pooledir.index.segments import file_digest
from pooledir.index.snapshot import quantizer_path
from pooledir.pooled_index import IndexConfig, PooledIndex
from tests.engine import engine


def test_partition_of_is_stable_and_spreads():
    assert partition_of("doc-1", 4) == partition_of("doc-1", 4)
    assert partition_of("doc-1", 1) == 0
    counts = [0] * 4
    for i in range(400):
        counts[partition_of(f"d{i}", 4)] += 1
    assert min(counts) > 60  # about 100 each


def test_ivfpq_partitions_share_one_quantizer(tmp_path, small_shards):
    config = IndexConfig(backend="ivfpq", pool_factor=2, nlist=4, pq_m=4, train_min_vectors=50, train_sample=150)
    layout = build_partitions([small_shards], tmp_path / "split", 2, config, show_progress=False)
    digests, docs = set(), 0
    for path in read_partitions(layout.path).parts:
        with PooledIndex.open(path, device="cpu") as idx:
            snap = engine(idx).snapshot
            assert snap.quantizer is not None and {s.kind for s in snap.segments} == {"pq3"}
            digests.add(file_digest(quantizer_path(path, snap.quantizer_id)))
            docs += len(idx)
    assert len(digests) == 1 and docs == 36


def test_bad_partition_input(tmp_path, small_shards):
    with pytest.raises(InputError, match="partitions=0"):
        build_partitions([small_shards], tmp_path / "a", 0, IndexConfig(backend="flat"), show_progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(InputError, match="not empty"):
        build_partitions([small_shards], tmp_path / "b", 2, IndexConfig(backend="flat"), show_progress=False)
    with pytest.raises(InputError, match="partitions.json is missing"):
        read_partitions(tmp_path / "b")


def test_cli_partitions_keep_an_adaptive_pooling_threshold(tmp_path, tiny_encoder, small_corpus):
    """`--partitions` builds with the same config as one index: `--pool-threshold` is not dropped."""
    from pooledir.build_shards import EncodeConfig, encode_corpus
    from pooledir.corpus import iter_corpus
    from tests.distributed.test_encode import run_cli

    shards = tmp_path / "unpooled"
    encode_corpus(iter_corpus(small_corpus), shards, tiny_encoder, EncodeConfig(pool_factor=1), show_progress=False)
    out = tmp_path / "split"
    argv = ["index", "--embeddings", str(shards), "--out", str(out), "--index", "flat", "--partitions", "2"]
    r = run_cli([*argv, "--pool-threshold", "0.3"])
    assert r.returncode == 0, r.stderr[-3000:]
    for path in read_partitions(out).parts:
        with PooledIndex.open(path, device="cpu") as idx:
            assert idx.config.pool_threshold == 0.3
