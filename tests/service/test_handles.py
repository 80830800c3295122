"""service/handles.py (and the Ray Serve handle): both implement the protocol the routes use; the write path
carries passages; reads never wait for writes, and every worker reads what any worker wrote (issue 22, items 7-9).

Two apps on one folder stand for two worker processes: each has its own registry, its own
sqlite connections and its own snapshot, as ``pooledir serve --workers 2`` gives each worker.
Ordering is asserted on state (a lock held, a request not yet answered), never on time.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import types

import pytest

from pooledir import Document, PooledIndex

DOCS = "/indexes/tiny/documents"
#: only for a test that fails: how long to wait for what should come at once
STUCK_S = int(os.environ.get("POOLEDIR_TEST_STUCK_S", "120"))


class Call(threading.Thread):
    """One request in its own thread; ``response`` once answered."""

    def __init__(self, client, method: str, url: str, body=None) -> None:
        super().__init__(daemon=True)
        self.args = (client, method, url, body)
        self.response = None
        self.start()

    def run(self) -> None:
        client, method, url, body = self.args
        self.response = client.request(method, url, json=body)


@pytest.fixture()
def folder_lock(served_index):
    """Take the folder's write lock as another process would (its own open file), for the test's block."""
    lock = open(served_index / ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield lock
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


def test_searches_and_reads_answer_while_a_queued_write_waits_for_the_folder_lock(client, folder_lock, monkeypatch):
    """Item 7: an upsert waiting for another process's write holds nothing a read needs."""
    import pooledir.index.folder as folder_mod

    queued = threading.Event()

    def flock(fd, op):  # the server's writer reached the folder lock: it waits there from now on
        if op == fcntl.LOCK_EX:
            queued.set()
        return fcntl.flock(fd, op)

    monkeypatch.setattr(folder_mod, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
    upsert = Call(client, "POST", DOCS, {"documents": [{"id": "new", "text": "bone density", "metadata": {"n": -1}}]})
    try:
        assert queued.wait(STUCK_S), "the upsert never reached the folder lock"
        reads = [
            Call(client, "POST", "/indexes/tiny/search", {"query": "bone", "k": 5}),
            Call(client, "POST", "/indexes/tiny/search/batch", {"queries": ["bone", "cells"], "k": 3}),
            Call(client, "GET", "/indexes/tiny/documents/d1"),
            Call(client, "GET", "/indexes/tiny"),
            Call(client, "GET", "/indexes"),
            Call(client, "GET", f"{DOCS}/new"),  # not there yet
        ]
        deadline = time.monotonic() + STUCK_S
        for r in reads:
            r.join(max(0.0, deadline - time.monotonic()))
        answered = [r.response.status_code if r.response is not None else None for r in reads]
        still_queued = upsert.is_alive()
    finally:
        fcntl.flock(folder_lock, fcntl.LOCK_UN)  # the other process's write ends
        upsert.join(STUCK_S)
    assert answered == [200] * 5 + [404]  # every read answered while the write waited
    assert still_queued  # ... and the write really was still waiting
    assert reads[0].response.json()["results"]
    assert reads[3].response.json()["documents"] == 120
    assert upsert.response.status_code == 200, upsert.response.text
    assert upsert.response.json() == {"upserted": 1, "documents": 121}
    assert client.get(f"{DOCS}/new").json()["text"] == "bone density"


def test_every_read_route_sees_writes_of_another_worker(make_client):
    """Item 8: after an acknowledged write in worker A, every read route of worker B shows it."""
    a, b = make_client(), make_client()
    assert b.get("/indexes/tiny").json()["documents"] == 120  # B has loaded (and read) the old commit
    doc = {"id": "fresh", "text": "vitamin bone density", "metadata": {"tag": "fresh"}}
    assert a.post(DOCS, json={"documents": [doc]}).status_code == 200

    def seen_by_b() -> dict:
        r = b.get(f"{DOCS}/fresh")
        search = {"k": 5, "filter": {"tag": "fresh"}}
        batch = b.post("/indexes/tiny/search/batch", json=search | {"queries": ["vitamin", "bone"]}).json()
        return {
            "get": r.json()["text"] if r.status_code == 200 else r.status_code,
            "stats": b.get("/indexes/tiny").json()["documents"],
            "list": b.get("/indexes").json()["indexes"][0]["documents"],
            "search": [h["id"] for h in b.post("/indexes/tiny/search", json=search | {"query": "x"}).json()["results"]],
            "batch": [[h["id"] for h in hits] for hits in batch["results"]],
        }

    expected = {"get": "vitamin bone density", "stats": 121, "list": 121, "search": ["fresh"]}
    assert seen_by_b() == expected | {"batch": [["fresh"], ["fresh"]]}
    replaced = {"id": "fresh", "text": "a new text", "metadata": {"tag": "fresh"}}
    assert a.post(DOCS, json={"documents": [replaced]}).status_code == 200
    assert b.get(f"{DOCS}/fresh").json()["text"] == "a new text"
    assert a.request("DELETE", DOCS, json={"ids": ["fresh", "d7"]}).json() == {"deleted": 2, "documents": 119}
    assert seen_by_b() == {"get": 404, "stats": 119, "list": 119, "search": [], "batch": [[], []]}
    assert b.get(f"{DOCS}/d7").status_code == 404
    batch = b.post("/indexes/tiny/search/batch", json={"queries": ["bone", "cells"], "k": 200}).json()["results"]
    assert [len(hits) for hits in batch] == [119, 119]  # every document asked for: the new count


def test_an_idle_worker_lets_the_other_checkpoint_the_wal(make_client, served_index):
    """Item 9: worker B's snapshot pins no WAL frames while B is idle, so A's checkpoints fold the WAL."""
    a, b = make_client(), make_client()
    wal = served_index / "docs.sqlite-wal"
    sizes = []
    for i in range(60):
        r = a.post(DOCS, json={"documents": [{"id": f"w{i}", "text": f"write number {i} bone", "metadata": {"i": i}}]})
        assert r.status_code == 200, r.text
        if i % 5 == 0:  # B keeps reading now and then, as a serving worker does
            assert b.post("/indexes/tiny/search", json={"query": "bone", "k": 3}).status_code == 200
        sizes.append(wal.stat().st_size if wal.exists() else 0)
    print("WAL bytes after each write:", sizes)
    assert max(sizes[30:]) <= max(sizes[:30])  # folded again and again: it does not grow with the writes
    assert b.get("/indexes/tiny").json()["documents"] == 180


def test_the_service_checkpoints_every_n_writes(make_client, served_index):
    a, b = make_client(wal_checkpoint_every=4), make_client()
    assert b.get("/indexes/tiny/documents/d1").status_code == 200
    sizes = []
    for i in range(8):
        assert a.post(DOCS, json={"documents": [{"id": f"w{i}", "text": f"write {i}"}]}).status_code == 200
        sizes.append((served_index / "docs.sqlite-wal").stat().st_size)
    assert sizes[3] == sizes[7] == 0 and min(sizes[:3]) > 0, sizes


LONG = " ".join(["vitamin bone heart"] * 60) + " the needle zebra quartz"  # far past doc_maxlen=64 tokens


def passage_index(path, encoder, docs):
    """A flat index that splits long documents into passages (stride 30)."""
    from pooledir import IndexConfig

    with PooledIndex.create(
        path, config=IndexConfig(backend="flat", passage_stride=30), device="cpu", encoder=encoder
    ) as idx:
        if docs:
            idx.add(docs)
    return path


def test_http_upsert_into_a_passage_index(tmp_path, tiny_encoder, tiny_docs, monkeypatch):
    """200, the document is split and found by its tail, and encoding ran outside the write lock."""
    from fastapi.testclient import TestClient

    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    path = passage_index(tmp_path / "p", tiny_encoder, tiny_docs[:20])
    with TestClient(create_app(Settings(indexes=[path], device="cpu"))) as client:
        handle = client.app.state.registry.handles["p"]
        locked_while_encoding = []
        encode = type(tiny_encoder).encode_documents

        def watched(self, texts, **kw):
            locked_while_encoding.append(handle.write_lock.locked())
            return encode(self, texts, **kw)

        monkeypatch.setattr(type(tiny_encoder), "encode_documents", watched)
        r = client.post("/indexes/p/documents", json={"documents": [{"id": "long", "text": LONG}]})
        assert r.status_code == 200, r.text
        assert r.json() == {"upserted": 1, "documents": 21}  # documents, not passage rows (it said 26)
        assert client.get("/indexes/p").json()["documents"] == 21
        assert locked_while_encoding == [False]  # a long encode holds no other write up
        assert client.get("/indexes/p/documents/long").json()["text"] == LONG  # the whole document
        hits = client.post("/indexes/p/search", json={"query": "needle zebra quartz", "k": 21}).json()["results"]
        assert [h["id"] for h in hits].count("long") == 1  # one hit per document, not per passage
    with PooledIndex.open(path, device="cpu", encoder=tiny_encoder) as idx:
        assert len(idx.doc_store.ids_starting_with("long#p")) > 1  # stored as passages


class _Call:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return _Call(self.fn(*args))


class _LocalHandle:
    """A Ray Serve deployment handle stand-in: ``handle.method.remote(...).result()`` calls the body here."""

    def __init__(self, body):
        self.body = body

    def __getattr__(self, name):
        return _Method(getattr(self.body, name))


def test_ray_serve_upsert_into_passage_partitions(tmp_path, tiny_encoder, tiny_docs):
    """The ingress's write path (ShardedHandle.upsert) carries passages to the partition that owns the document."""
    from pooledir.distributed.partition import partition_of
    from pooledir.service.ray_serve import Partition, ShardedHandle

    parts = [passage_index(tmp_path / f"part-{i}", tiny_encoder, []) for i in range(2)]
    bodies = [Partition(str(p)) for p in parts]
    handle = ShardedHandle("split", [_LocalHandle(b) for b in bodies], tiny_encoder, None, "cpu")
    docs = [Document("long", LONG), *tiny_docs[:6]]
    assert handle.upsert(docs) == 7
    owner = partition_of("long", 2)
    with PooledIndex.open(parts[owner], device="cpu", encoder=tiny_encoder) as idx:
        assert idx.get("long").text == LONG
        assert len(idx.doc_store.ids_starting_with("long#p")) > 1
    with PooledIndex.open(parts[1 - owner], device="cpu", encoder=tiny_encoder) as idx:
        assert not idx.doc_store.ids_starting_with("long#p")
    for d in docs[1:]:
        assert bodies[partition_of(d.id, 2)].get(d.id)["ok"] == d
    assert handle.read(lambda view: view.describe()).backend["partitions"] == 2
    hits = handle.search(["needle zebra quartz"], _params(7), with_text=False)[0]
    assert [h.id for h in hits].count("long") == 1


def _params(k):
    from pooledir import SearchParams

    return SearchParams(k=k)


def test_both_handles_implement_the_protocol_the_routes_use(client, tiny_encoder):
    """The local handle and the Ray Serve one are both IndexHandles (mypy checks the signatures: ``make lint``)."""
    from pooledir.service.handles import IndexHandle, LocalIndexHandle
    from pooledir.service.ray_serve import ShardedHandle

    local = client.app.state.registry.handles["tiny"]
    sharded = ShardedHandle("split", [], tiny_encoder, None, "cpu")
    assert isinstance(local, LocalIndexHandle) and isinstance(local, IndexHandle)
    assert isinstance(sharded, IndexHandle)
    assert (local.name, local.device, local.problem()) == ("tiny", "cpu", None)
    assert (sharded.name, sharded.device, sharded.problem()) == ("split", "cpu", None)
