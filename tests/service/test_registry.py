"""service/registry.py and the Ray Serve handle: the write path (passages), opening and closing, the query batcher."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pooledir import Document, IndexConfig, PooledIndex

LONG = " ".join(["vitamin bone heart"] * 60) + " the needle zebra quartz"  # far past doc_maxlen=64 tokens


def passage_index(path, encoder, docs):
    """A flat index that splits long documents into passages (stride 30)."""
    with PooledIndex.create(
        path, config=IndexConfig(backend="flat", passage_stride=30), device="cpu", encoder=encoder
    ) as idx:
        if docs:
            idx.add(docs)
    return path


def test_http_upsert_into_a_passage_index(tmp_path, tiny_encoder, tiny_docs, monkeypatch):
    """200, the document is split and found by its tail, and encoding ran outside the write lock."""
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

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
        assert len(idx.folder.store.ids_starting_with("long#p")) > 1  # stored as passages


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
    from service.ray_serve import Partition, ShardedHandle

    parts = [passage_index(tmp_path / f"part-{i}", tiny_encoder, []) for i in range(2)]
    bodies = [Partition(str(p)) for p in parts]
    handle = ShardedHandle("split", [_LocalHandle(b) for b in bodies], tiny_encoder, None, "cpu")
    docs = [Document("long", LONG), *tiny_docs[:6]]
    assert handle.upsert(docs) == 7
    owner = partition_of("long", 2)
    with PooledIndex.open(parts[owner], device="cpu", encoder=tiny_encoder) as idx:
        assert idx.get("long").text == LONG
        assert len(idx.folder.store.ids_starting_with("long#p")) > 1
    with PooledIndex.open(parts[1 - owner], device="cpu", encoder=tiny_encoder) as idx:
        assert not idx.folder.store.ids_starting_with("long#p")
    for d in docs[1:]:
        assert bodies[partition_of(d.id, 2)].get(d.id)["ok"] == d
    assert handle.read(lambda view: view.describe()).backend["partitions"] == 2
    hits = handle.search(["needle zebra quartz"], _params(7), with_text=False)[0]
    assert [h.id for h in hits].count("long") == 1


def _params(k):
    from pooledir import SearchParams

    return SearchParams(k=k)


def test_registry_open_closes_what_it_opened_when_a_later_index_fails(tmp_path, tiny_encoder, tiny_docs, monkeypatch):
    from pooledir.errors import IndexCorruptError
    from service import registry as registry_module

    good = passage_index(tmp_path / "good", tiny_encoder, tiny_docs[:5])
    broken = passage_index(tmp_path / "broken", tiny_encoder, tiny_docs[:5])
    (broken / "docs.sqlite").write_bytes(b"not a database")
    opened: list[PooledIndex] = []
    closed: list[PooledIndex] = []
    real_open, real_close = PooledIndex.open.__func__, PooledIndex.close

    def open_(cls, *a, **kw):
        idx = real_open(cls, *a, **kw)
        opened.append(idx)
        return idx

    def close(self):
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(PooledIndex, "open", classmethod(open_))
    monkeypatch.setattr(PooledIndex, "close", close)
    monkeypatch.setattr(registry_module, "encoder_for_index", lambda *a, **kw: tiny_encoder)
    before = {t for t in threading.enumerate() if t.name == "query-batcher"}
    with pytest.raises(IndexCorruptError):
        registry_module.Registry.open([good, broken], "cpu", True, 1, 8)
    assert opened and all(i in closed for i in opened)
    left = {t for t in threading.enumerate() if t.name == "query-batcher"} - before
    for t in left:
        t.join()  # a stopped batcher's thread ends by itself; one still running would hang here
    assert not any(t.is_alive() for t in left)


def test_a_request_outside_the_lifespan_is_a_503(tmp_path):
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    client = TestClient(create_app(Settings(indexes=[], device="cpu")))  # no `with`: the lifespan never ran
    r = client.post("/indexes/x/search", json={"query": "hello"})
    assert r.status_code == 503 and "not open" in r.json()["detail"], r.text


# -- QueryBatcher -----------------------------------------------------------------------------------------------
class _GatedEncoder:
    """encode_queries records its batches; the first call waits for ``gate``, so later queries pile up."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def encode_queries(self, texts):
        self.calls.append(list(texts))
        self.entered.set()
        self.gate.wait()
        if self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on}")
        return np.array([[[float(len(t))]] for t in texts])


def _submit(batcher, queries, out, errors):
    def run():
        try:
            out[tuple(queries)] = batcher.encode(list(queries))
        except Exception as e:  # noqa: BLE001 - the test inspects it
            errors[tuple(queries)] = e

    t = threading.Thread(target=run)
    t.start()
    return t


def _pending(batcher, n):
    """Wait until ``n`` requests are queued (state the test observes, no clock)."""
    while True:
        with batcher._cond:
            if len(batcher._pending) == n:
                return
        threading.Event().wait(0.001)


def test_query_batcher_encodes_waiting_queries_in_one_call():
    from service.registry import QueryBatcher

    enc = _GatedEncoder()
    batcher = QueryBatcher(enc, window_ms=0, max_batch=4)
    out, errors = {}, {}
    first = _submit(batcher, ["a"], out, errors)
    enc.entered.wait()  # the batcher is inside the first call: the next ones queue
    threads = [_submit(batcher, q, out, errors) for q in (["bb", "ccc"], ["dddd"], ["eeeee"])]
    _pending(batcher, 3)
    enc.gate.set()
    for t in [first, *threads]:
        t.join()
    batcher.close()
    assert not errors
    # the three waiting requests (4 queries, max_batch) go in one call; each gets its own rows back
    assert enc.calls == [["a"], ["bb", "ccc", "dddd", "eeeee"]]
    for queries, Q in out.items():
        assert Q[:, 0, 0].tolist() == [len(q) for q in queries]


def test_query_batcher_fails_every_request_of_a_failed_batch_and_goes_on():
    from service.registry import QueryBatcher

    enc = _GatedEncoder(fail_on="bad")
    batcher = QueryBatcher(enc, window_ms=0, max_batch=8)
    out, errors = {}, {}
    first = _submit(batcher, ["a"], out, errors)
    enc.entered.wait()
    threads = [_submit(batcher, q, out, errors) for q in (["bad"], ["ok"])]
    _pending(batcher, 2)
    enc.gate.set()
    for t in [first, *threads]:
        t.join()
    assert set(errors) == {("bad",), ("ok",)} and all("cannot encode bad" in str(e) for e in errors.values())
    assert batcher.encode(["again"])[0, 0, 0] == 5  # the thread survived the failure
    batcher.close()
    batcher._thread.join()
    assert not batcher._thread.is_alive()


def test_query_batcher_checks_queries_before_queueing():
    from pooledir import InputError
    from service.registry import QueryBatcher

    enc = _GatedEncoder()
    enc.gate.set()
    batcher = QueryBatcher(enc, window_ms=0, max_batch=8)
    with pytest.raises(InputError):
        batcher.encode(["fine", "   "])
    assert enc.calls == []
    batcher.close()


# -- ReadSide (what replaced the RW lock: reads never wait for writes, only for a newer commit to load) ----------
class _FakeIndex:
    """The part of PooledIndex that ReadSide uses; ``stale`` says a newer commit is on disk."""

    path = "fake"

    def __init__(self) -> None:
        self.stale = False
        self.pins = self.releases = 0
        self.commit = 0

    def is_stale(self) -> bool:
        return self.stale

    def pin(self) -> None:
        self.pins += 1
        self.stale = False
        self.commit += 1

    def release(self) -> None:
        self.releases += 1


def test_read_side_pins_once_for_concurrent_reads_and_releases_when_idle():
    from service.registry import ReadSide

    index = _FakeIndex()
    reads = ReadSide(index)
    with reads.reading() as a, reads.reading() as b:  # the second read joins the pinned snapshot
        assert a is b is index and index.pins == 1 and index.releases == 0
    assert index.releases == 1  # idle: no read transaction held
    with reads.reading():
        assert index.pins == 2  # pinned afresh for the next read


def test_read_side_loads_a_newer_commit_after_the_reads_in_flight():
    from service.registry import ReadSide

    index = _FakeIndex()
    reads = ReadSide(index)
    started, seen = threading.Event(), []
    with reads.reading():
        index.stale = True  # a write committed while this read runs

        def later() -> None:
            started.set()
            with reads.reading() as i:
                seen.append(i.commit)

        t = threading.Thread(target=later)
        t.start()
        started.wait()
        _waiting(reads)  # it waits for this read (on the old commit) to end before loading
        assert index.commit == 1 and not seen
    t.join()
    assert seen == [2] and index.pins == 2


def test_exclusive_waits_for_reads_and_holds_new_ones_off():
    from service.registry import ReadSide

    index = _FakeIndex()
    reads = ReadSide(index)
    order: list[str] = []
    entered = threading.Event()
    with reads.reading():

        def hold() -> None:
            with reads.exclusive():
                order.append("exclusive")

        t = threading.Thread(target=hold)
        t.start()
        _waiting(reads)
        order.append("read ends")
    t.join()
    with reads.exclusive():

        def read() -> None:
            entered.set()
            with reads.reading():
                order.append("read")

        r = threading.Thread(target=read)
        r.start()
        entered.wait()
        _waiting(reads)
        order.append("exclusive ends")
    r.join()
    assert order == ["read ends", "exclusive", "exclusive ends", "read"]


def _waiting(reads) -> None:
    """Return once some thread waits on the read side's condition (observed state, no clock)."""
    while True:
        with reads._cond:
            if reads._cond._waiters:
                return
        threading.Event().wait(0.001)


# -- the device: the resolved one decides whether FAISS may use a GPU --------------------------------------------
def test_auto_device_without_cuda_serves_on_the_cpu(served_index, monkeypatch):
    """Device 'auto' on a machine without CUDA: the served index's FAISS side is told CPU (it was told GPU)."""
    import torch
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with TestClient(create_app(Settings(indexes=[served_index], device="auto"))) as client:
        handle = client.app.state.registry.handles["tiny"]
        assert handle.index.folder.use_gpu is False
        assert client.get("/indexes/tiny").json()["device"] == "cpu"
        assert client.post("/indexes/tiny/search", json={"query": "bone", "k": 3}).status_code == 200


def test_cuda_without_cuda_refuses_to_start_with_the_fix(served_index, monkeypatch):
    import torch
    from fastapi.testclient import TestClient

    from pooledir.errors import InputError
    from service.main import create_app
    from service.settings import Settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = {t for t in threading.enumerate() if t.name == "query-batcher"}
    with pytest.raises(InputError, match="device='cuda' but torch sees no CUDA GPU; use device='cpu' or 'auto'"):
        with TestClient(create_app(Settings(indexes=[served_index], device="cuda"))):
            pass
    assert {t for t in threading.enumerate() if t.name == "query-batcher" and t.is_alive()} <= before
