"""The service's query/document backends: POOLEDIR_QUERY_BACKEND / POOLEDIR_DOCUMENT_BACKEND."""

from __future__ import annotations

import pytest

from tests.test_backends import QUERIES, same_hits


@pytest.fixture()
def onnx_cache(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_service_query_backend_from_settings(served_index, onnx_cache, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    monkeypatch.setenv("POOLEDIR_QUERY_BACKEND", "onnx")
    monkeypatch.setenv("POOLEDIR_DOCUMENT_BACKEND", "onnx")
    settings = Settings(indexes=[served_index], device="cpu")
    assert (settings.query_backend, settings.document_backend) == ("onnx", "onnx")
    body = {"queries": QUERIES, "k": 5}
    new = {"documents": [{"id": "new", "text": "vitamin bone study"}]}

    def run(client) -> tuple[list, list]:
        """Search, then upsert a document and search for it, then delete it again."""
        before = client.post("/indexes/tiny/search/batch", json=body).json()["results"]
        assert client.post("/indexes/tiny/documents", json=new).json()["upserted"] == 1
        after = client.post("/indexes/tiny/search", json={"query": "vitamin bone study", "k": 200}).json()["results"]
        assert client.request("DELETE", "/indexes/tiny/documents", json={"ids": ["new"]}).json()["deleted"] == 1
        return before, [h for h in after if h["id"] == "new"]

    with TestClient(create_app(Settings(indexes=[served_index], device="cpu"))) as client:
        want, want_new = run(client)
    with TestClient(create_app(settings)) as client:
        encoder = client.app.state.registry.handles["tiny"].index.encoder
        assert (encoder.query_backend, encoder.document_backend) == ("onnx", "onnx")
        got, got_new = run(client)
    pairs = [[(h["id"], h["score"]) for h in q] for q in got], [[(h["id"], h["score"]) for h in q] for q in want]
    same_hits(*pairs)
    assert len(got_new) == 1 and abs(got_new[0]["score"] - want_new[0]["score"]) < 2e-3  # same vectors, as float16


def test_service_refuses_an_unknown_backend(monkeypatch):
    pytest.importorskip("pydantic_settings")
    from pydantic import ValidationError

    from pooledir.service.settings import Settings

    monkeypatch.setenv("POOLEDIR_QUERY_BACKEND", "cuda-graphs")
    with pytest.raises(ValidationError, match="query_backend='cuda-graphs' is not one of auto, torch, onnx, onnx-int8"):
        Settings()
    monkeypatch.delenv("POOLEDIR_QUERY_BACKEND")
    with pytest.raises(ValidationError, match="document_backend='onnx-int8'"):
        Settings(document_backend="onnx-int8")
    assert Settings().query_backend == "auto"  # the default is never lossy: onnx fp32 or torch
