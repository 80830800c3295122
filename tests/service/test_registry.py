"""service/registry.py: opening the served indexes (which checkpoint, which device) and closing what was opened."""

from __future__ import annotations

import threading

import pytest

from pooledir import IndexConfig, PooledIndex


def passage_index(path, encoder, docs):
    """A flat index that splits long documents into passages (stride 30)."""
    with PooledIndex.create(
        path, config=IndexConfig(backend="flat", passage_stride=30), device="cpu", encoder=encoder
    ) as idx:
        if docs:
            idx.add(docs)
    return path


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
