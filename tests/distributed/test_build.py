"""Distributed build on a local Ray cluster: the same index as the serial build, in one commit."""

from __future__ import annotations

import numpy as np
import pytest

from pooledir.build import BuildConfig, build_index_from_shards, create_index_for_shards
from pooledir.build_shards import EncodeConfig, encode_corpus
from pooledir.corpus import iter_corpus
from pooledir.pooled_index import IndexConfig
from pooledir.search import SearchParams
from pooledir.shards import read_shard_manifest

pytestmark = pytest.mark.slow

FLAT_CONFIG = IndexConfig(backend="flat", pool_factor=2)
EXACT = SearchParams(k=10, nprobe=1, candidates_per_token=1000, rerank=36)
QUERIES = ["cancer cells grow", "vitamin d bone density", "protein gene expression in mice", "the heart"]


def build_serial(shards, out, config):
    idx = create_index_for_shards(out, read_shard_manifest(shards).spec, config, device="cpu")
    build_index_from_shards([shards], idx, BuildConfig(chunk_docs=10), show_progress=False)
    return idx


def build_ray(shards, out, config, segments):
    from pooledir.distributed.build import build_index_ray

    idx = create_index_for_shards(out, read_shard_manifest(shards).spec, config, device="cpu")
    report = build_index_ray([shards], idx, segments=segments, show_progress=False)
    return idx, report


def assert_same_index(a, b, encoder):
    ia, ib = a.info(), b.info()
    for key in ("documents", "vectors", "vectors_before_pooling"):
        assert ia[key] == ib[key], key
    ids = sorted(a.row_ids())
    assert ids == sorted(b.row_ids())
    for i in ids[::7]:
        assert a.get(i) == b.get(i)
    Q = encoder.encode_queries(QUERIES)
    for x, y in zip(a.search_embeddings(Q, EXACT), b.search_embeddings(Q, EXACT)):
        assert [h.id for h in x] == [h.id for h in y]
        np.testing.assert_allclose([h.score for h in x], [h.score for h in y], atol=1e-5)


def test_parallel_build_equals_serial(ray_cluster, tmp_path, tiny_encoder, small_shards):
    flat = IndexConfig(backend="flat", pool_factor=2)
    serial = build_serial(small_shards, tmp_path / "serial", flat)
    parallel, report = build_ray(small_shards, tmp_path / "ray", flat, segments=2)
    assert report.added == 36 and report.commits == 1
    assert_same_index(serial, parallel, tiny_encoder)
    assert not list(parallel.path.glob(".ray-build-*"))  # the tasks' segment folders are gone


def test_unpooled_shards_are_pooled_in_the_tasks(ray_cluster, tmp_path, tiny_encoder, small_corpus):
    shards = tmp_path / "unpooled"
    config = EncodeConfig(pool_factor=1, shard_docs=12, chunk_docs=6)
    encode_corpus(iter_corpus(small_corpus), shards, tiny_encoder, config, show_progress=False)
    flat = IndexConfig(backend="flat", pool_factor=2)
    serial = build_serial(shards, tmp_path / "serial", flat)
    parallel, _ = build_ray(shards, tmp_path / "ray", flat, segments=3)
    assert_same_index(serial, parallel, tiny_encoder)
    # an adaptive index pools the shards with its threshold in the tasks too, not with the factor
    adaptive = IndexConfig(backend="flat", pool_threshold=0.3)
    serial = build_serial(shards, tmp_path / "serial-t", adaptive)
    parallel, _ = build_ray(shards, tmp_path / "ray-t", adaptive, segments=3)
    assert_same_index(serial, parallel, tiny_encoder)
    assert parallel.info()["vectors"] != build_serial(shards, tmp_path / "factor", flat).info()["vectors"]


def test_ivfpq_trains_once_on_a_sample_across_shards(ray_cluster, tmp_path, tiny_encoder, small_shards):
    manifest = read_shard_manifest(small_shards)
    config = IndexConfig(backend="ivfpq", pool_factor=2, nlist=4, pq_m=4, train_min_vectors=50, train_sample=150)
    idx, report = build_ray(small_shards, tmp_path / "ray", config, segments=4)
    info = idx.info()
    assert info["documents"] == 36 and info["vectors"] == manifest.vectors == report.vectors
    assert info["backend"]["trained"] and info["trained_vectors"] == manifest.vectors
    assert {s["kind"] for s in info["segments"]} == {"pq3"}
    hits = idx.search_embeddings(tiny_encoder.encode_queries(QUERIES), SearchParams(k=5, nprobe=4))
    assert all(len(h) == 5 for h in hits)


def test_nonempty_index_is_refused(ray_cluster, tmp_path, small_shards):
    from pooledir.distributed.build import build_index_ray
    from pooledir.errors import InputError

    idx = build_serial(small_shards, tmp_path / "serial", IndexConfig(backend="flat", pool_factor=2))
    with pytest.raises(InputError, match="already holds documents"):
        build_index_ray([small_shards], idx, show_progress=False)
    assert len(idx) == 36


def test_cli_index_embeddings_ray(ray_cluster, tmp_path, tiny_encoder, small_shards):
    from pooledir.pooled_index import PooledIndex
    from tests.distributed.test_encode import run_cli

    address = ray_cluster.get_runtime_context().gcs_address
    out = tmp_path / "idx"
    argv = ["index", "--embeddings", str(small_shards), "--out", str(out), "--index", "flat", "--device", "cpu"]
    r = run_cli([*argv, "--ray", "--address", address, "--segments", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    serial = build_serial(small_shards, tmp_path / "serial", IndexConfig(backend="flat", pool_factor=2))
    with PooledIndex.open(out, device="cpu") as idx:
        assert_same_index(serial, idx, tiny_encoder)


def test_a_corrupt_shard_fails_in_its_task_and_nothing_is_attached(ray_cluster, tmp_path, small_shards):
    import shutil

    from pooledir.distributed.build import build_index_ray
    from pooledir.shards import ShardError

    shards = tmp_path / "shards"
    shutil.copytree(small_shards, shards)
    with open(shards / "shard-00003.npy", "r+b") as f:  # flip a byte of one shard's vectors
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    idx = create_index_for_shards(tmp_path / "idx", read_shard_manifest(shards).spec, FLAT_CONFIG, device="cpu")
    with pytest.raises(ShardError, match=r"shard-00003\.npy does not match the sha256"):
        build_index_ray([shards], idx, show_progress=False)
    assert len(idx) == 0 and not list(idx.path.glob(".ray-build-*"))
