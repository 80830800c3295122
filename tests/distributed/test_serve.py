"""Sharded serving on Ray Serve: the same answers as one index, writes routed to the partition that owns the id."""

from __future__ import annotations

import socket

import httpx
import numpy as np
import pytest

from pooledir.build import BuildConfig, build_index_from_shards, create_index_for_shards
from pooledir.pooled_index import IndexConfig, PooledIndex
from pooledir.shards import read_shard_manifest

pytestmark = pytest.mark.slow

QUERIES = ["cancer cells grow", "vitamin d bone density", "protein gene expression in mice", "the heart", "t"]
FLAT = IndexConfig(backend="flat", pool_factor=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single(tmp_path_factory, small_shards):
    out = tmp_path_factory.mktemp("single") / "one"
    idx = create_index_for_shards(out, read_shard_manifest(small_shards).spec, FLAT, device="cpu")
    build_index_from_shards([small_shards], idx, BuildConfig(chunk_docs=10), show_progress=False)
    idx.close()
    return out


@pytest.fixture(scope="module")
def sharded(ray_cluster, tmp_path_factory, small_shards):
    """A 2-partition copy of the same documents, served by Ray Serve on a free port; yields its base URL."""
    from ray import serve

    from pooledir.distributed.partition import build_partitions
    from pooledir.service.ray_serve import build_app

    folder = tmp_path_factory.mktemp("sharded") / "split"
    build_partitions([small_shards], folder, 2, FLAT, show_progress=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(folder, {"batch_window_ms": 1}), name="split", route_prefix="/")
    yield folder, f"http://127.0.0.1:{port}"
    serve.shutdown()


def test_partitions_split_the_documents_by_id(single, sharded):
    from pooledir.distributed.partition import partition_of, read_partitions

    layout = read_partitions(sharded[0])
    held = []
    for p, path in enumerate(layout.parts):
        with PooledIndex.open(path, device="cpu") as idx:
            ids = idx.row_ids()
            assert ids and all(partition_of(i, 2) == p for i in ids)
            held += ids
    with PooledIndex.open(single, device="cpu") as one:
        assert sorted(held) == sorted(one.row_ids())


def test_sharded_search_answers_as_one_index(single, sharded):
    from fastapi.testclient import TestClient

    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    _, url = sharded
    with TestClient(create_app(Settings(indexes=[single], device="cpu"))) as one, httpx.Client(timeout=60) as http:
        # every partition answers the readiness probe (ShardedHandle.problem, over real deployment handles)
        assert http.get(f"{url}/readyz").json() == {"status": "ready", "indexes": ["split"]}
        for body in (
            {"k": 10},
            {"k": 5, "with_text": True},
            {"k": 3, "candidates_per_token": 1000, "rerank": 36},
        ):
            want = one.post("/indexes/one/search/batch", json={"queries": QUERIES, **body})
            got = http.post(f"{url}/indexes/split/search/batch", json={"queries": QUERIES, **body})
            assert want.status_code == got.status_code == 200, got.text
            for w, g in zip(want.json()["results"], got.json()["results"]):
                assert [h["id"] for h in w] == [h["id"] for h in g]
                np.testing.assert_allclose([h["score"] for h in w], [h["score"] for h in g], atol=1e-5)
                if body.get("with_text"):
                    assert [h["text"] for h in w] == [h["text"] for h in g]
        for mode in ("lexical", "hybrid"):  # BM25 with statistics summed over the partitions: one index's scores
            body = {"queries": QUERIES, "k": 36, "mode": mode}
            want = one.post("/indexes/one/search/batch", json=body)
            got = http.post(f"{url}/indexes/split/search/batch", json=body)
            assert want.status_code == got.status_code == 200, got.text
            for w, g in zip(want.json()["results"], got.json()["results"]):
                np.testing.assert_allclose([h["score"] for h in w], [h["score"] for h in g], rtol=1e-5, atol=1e-5)
                assert sorted(h["id"] for h in w) == sorted(h["id"] for h in g)
        stats = http.get(f"{url}/indexes/split").json()
        assert stats["documents"] == 36 and stats["vectors"] == one.get("/indexes/one").json()["vectors"]
        assert stats["backend"]["partitions"] == 2


def test_writes_are_routed_by_id(sharded):
    from pooledir.distributed.partition import partition_of, read_partitions

    folder, url = sharded
    layout = read_partitions(folder)
    docs = [{"id": f"new-{i}", "text": f"vitamin bone heart {i}"} for i in range(6)]
    with httpx.Client(timeout=60) as http:
        r = http.post(f"{url}/indexes/split/documents", json={"documents": docs})
        assert r.status_code == 200, r.text
        assert r.json() == {"upserted": 6, "documents": 42}
        for d in docs:  # each is on disk in its own partition, and only there
            for p, path in enumerate(layout.parts):
                with PooledIndex.open(path, device="cpu") as idx:
                    assert (d["id"] in idx.doc_store.lookup([d["id"]])) == (p == partition_of(d["id"], 2))
        assert http.get(f"{url}/indexes/split/documents/new-3").json()["text"] == "vitamin bone heart 3"
        hits = http.post(f"{url}/indexes/split/search", json={"query": "vitamin bone heart 3", "k": 42}).json()
        assert "new-3" in [h["id"] for h in hits["results"]]
        r = http.request("DELETE", f"{url}/indexes/split/documents", json={"ids": ["new-0", "nope"]})
        assert r.status_code == 404 and "nope" in r.json()["detail"]
        assert http.get(f"{url}/indexes/split").json()["documents"] == 42  # nothing deleted
        r = http.request("DELETE", f"{url}/indexes/split/documents", json={"ids": [d["id"] for d in docs]})
        assert r.status_code == 200 and r.json() == {"deleted": 6, "documents": 36}
        assert http.get(f"{url}/indexes/split/documents/new-3").status_code == 404
        assert http.post(f"{url}/indexes/split/search", json={"query": " ", "k": 3}).status_code == 422
        assert http.post(f"{url}/indexes/split/search", json={"query": "x", "k": 0}).status_code == 422


def test_cli_index_partitions(tmp_path, small_shards, single):
    from tests.distributed.test_encode import run_cli

    out = tmp_path / "split"
    r = run_cli(["index", "--embeddings", str(small_shards), "--out", str(out), "--index", "flat", "--partitions", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 3 partitions" in r.stdout
    from pooledir.distributed.partition import read_partitions

    layout = read_partitions(out)
    total = 0
    for path in layout.parts:
        with PooledIndex.open(path, device="cpu") as idx:
            total += len(idx)
    assert layout.partitions == 3 and total == 36
