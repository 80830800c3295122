"""service/registry.py: opening the served indexes (which checkpoint, which device) and closing what was opened."""

from __future__ import annotations

import re
import threading

import pytest

from pooledir import IndexConfig, PooledIndex
from tests.engine import engine
from tests.service.test_handles import passage_index


def test_registry_open_closes_what_it_opened_when_a_later_index_fails(tmp_path, tiny_encoder, tiny_docs, monkeypatch):
    from pooledir.errors import IndexCorruptError
    from pooledir.service import registry as registry_module

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

    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    client = TestClient(create_app(Settings(indexes=[], device="cpu")))  # no `with`: the lifespan never ran
    r = client.post("/indexes/x/search", json={"query": "hello"})
    assert r.status_code == 503 and "not open" in r.json()["detail"], r.text


# -- the device: the resolved one decides whether FAISS may use a GPU --------------------------------------------
def test_auto_device_without_cuda_serves_on_the_cpu(served_index, monkeypatch):
    """Device 'auto' on a machine without CUDA: the served index's FAISS side is told CPU (it was told GPU)."""
    import torch
    from fastapi.testclient import TestClient

    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with TestClient(create_app(Settings(indexes=[served_index], device="auto"))) as client:
        handle = client.app.state.registry.handles["tiny"]
        assert engine(handle.index).use_gpu is False
        assert client.get("/indexes/tiny").json()["device"] == "cpu"
        assert client.post("/indexes/tiny/search", json={"query": "bone", "k": 3}).status_code == 200


def test_cuda_without_cuda_refuses_to_start_with_the_fix(served_index, monkeypatch):
    import torch
    from fastapi.testclient import TestClient

    from pooledir.errors import InputError
    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = {t for t in threading.enumerate() if t.name == "query-batcher"}
    with pytest.raises(InputError, match="device='cuda' but torch sees no CUDA GPU; use device='cpu' or 'auto'"):
        with TestClient(create_app(Settings(indexes=[served_index], device="cuda"))):
            pass
    assert {t for t in threading.enumerate() if t.name == "query-batcher" and t.is_alive()} <= before


# -- which checkpoint serves: the manifest's; $POOLEDIR_CHECKPOINT only where that is not on this machine -------
@pytest.fixture(scope="module")
def wide_ckpt(tiny_ckpt, tmp_path_factory):
    """The tiny BERT with a 32-d projection: the served index holds 16-d vectors."""
    from pooledir.checkpoint import convert_checkpoint

    return convert_checkpoint(tiny_ckpt.parent / "bert", tmp_path_factory.mktemp("wide") / "ckpt32", dim=32)


def test_pooledir_checkpoint_does_not_override_an_index_whose_checkpoint_is_here(served_index, wide_ckpt, monkeypatch):
    """$POOLEDIR_CHECKPOINT is the checkpoint to use where none is found: it never replaces an index's own.

    On main the service loaded it for every index and refused to start (16-d index, 32-d checkpoint).
    """
    from fastapi.testclient import TestClient

    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    monkeypatch.setenv("POOLEDIR_CHECKPOINT", str(wide_ckpt))
    monkeypatch.setenv("POOLEDIR_INDEXES", f'["{served_index}"]')
    monkeypatch.setenv("POOLEDIR_DEVICE", "cpu")
    settings = Settings()
    assert settings.checkpoint == wide_ckpt
    with TestClient(create_app(settings)) as client:
        r = client.post("/indexes/tiny/search", json={"query": "bone", "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert client.app.state.registry.handles["tiny"].index.encoder.dim == 16


def test_a_fallback_checkpoint_of_another_size_is_refused_with_the_setting_named(
    tiny_ckpt, tiny_docs, wide_ckpt, tmp_path, monkeypatch
):
    """An index built elsewhere (its checkpoint folder gone) and a $POOLEDIR_CHECKPOINT that makes 32-d vectors."""
    import shutil

    from fastapi.testclient import TestClient

    from pooledir.errors import InputError
    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    moved = shutil.copytree(tiny_ckpt, tmp_path / "elsewhere")
    path = tmp_path / "built-elsewhere"
    with PooledIndex.create(path, checkpoint=moved, config=IndexConfig(backend="flat"), device="cpu") as idx:
        idx.add(tiny_docs[:20])
    shutil.rmtree(moved)
    monkeypatch.setenv("POOLEDIR_CHECKPOINT", str(wide_ckpt))
    settings = Settings(indexes=[path], device="cpu")
    message = f"index 'built-elsewhere' holds 16-d vectors but $POOLEDIR_CHECKPOINT ({wide_ckpt}) makes 32-d ones"
    with pytest.raises(InputError, match=re.escape(message)):
        with TestClient(create_app(settings)):
            pass
    with PooledIndex.open(path, device="cpu") as idx:
        assert len(idx) == 20  # nothing indexed was touched
