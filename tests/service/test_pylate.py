"""The service over an index whose checkpoint is a PyLate folder (BERT and ModernBERT), as over a colbert-ai one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pylate"
QUERIES = ["cancer cells", "vitamin bone study", "immune response of t cells"]


@pytest.mark.parametrize("model", ["bert", "modernbert"])
def test_service_creates_upserts_searches_and_deletes_with_a_pylate_checkpoint(tmp_path, tiny_docs, model):
    from fastapi.testclient import TestClient

    from pooledir import IndexConfig, PooledIndex
    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    path = tmp_path / "pl"
    ckpt = FIXTURES / model
    with PooledIndex.create(path, checkpoint=ckpt, config=IndexConfig(pool_factor=2), device="cpu") as idx:
        idx.add(tiny_docs)
        library = idx.search(QUERIES, k=5)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["encoder"]["layout"] == "pylate" and manifest["checkpoint"] == str(ckpt.resolve())

    with TestClient(create_app(Settings(indexes=[path], device="cpu"))) as client:
        stats = client.get("/indexes/pl").json()
        assert stats["documents"] == 120 and stats["checkpoint"] == str(ckpt.resolve())
        assert stats["backend"]["kind"] == "ivfpq" and stats["vectors"] < stats["vectors_before_pooling"]
        batch = client.post("/indexes/pl/search/batch", json={"queries": QUERIES, "k": 5}).json()["results"]
        assert [[h["id"] for h in q] for q in batch] == [[h.id for h in q] for q in library]
        assert all(abs(h["score"] - w.score) < 1e-5 for q, lq in zip(batch, library) for h, w in zip(q, lq))

        doc = {"id": "new", "text": "vitamin bone study", "metadata": {"src": "api"}}
        r = client.post("/indexes/pl/documents", json={"documents": [doc]})
        assert r.status_code == 200 and r.json() == {"upserted": 1, "documents": 121}
        query = {"query": "vitamin bone study", "k": 5}
        found = client.post("/indexes/pl/search", json=query | {"filter": {"src": "api"}}).json()["results"]
        assert [h["id"] for h in found] == ["new"] and found[0]["score"] > 0
        everything = client.post("/indexes/pl/search", json={"query": "vitamin bone study", "k": 200}).json()
        assert len(everything["results"]) == 121

        r = client.request("DELETE", "/indexes/pl/documents", json={"ids": ["new", "d1"]})
        assert r.status_code == 200 and r.json() == {"deleted": 2, "documents": 119}
        assert client.get("/indexes/pl/documents/new").status_code == 404
        left = client.post("/indexes/pl/search", json={"query": "vitamin bone study", "k": 200}).json()["results"]
        assert len(left) == 119 and not {h["id"] for h in left} & {"new", "d1"}

    with PooledIndex.open(path, device="cpu") as idx:  # what the service wrote, read back by the library
        assert len(idx) == 119 and idx.get("d2").text == tiny_docs[2].text
