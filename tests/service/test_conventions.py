"""The service encodes queries exactly as the library would for the same index, whatever checkpoint it loads."""

from __future__ import annotations

import shutil

import numpy as np

QUERIES = ["does vitamin d reduce risk?", "cancer cells, in mice!"]


def test_served_queries_follow_the_index_not_the_checkpoint(tmp_path, tiny_ckpt, tiny_docs):
    """POOLEDIR_CHECKPOINT (an index built elsewhere) moves where weights are read from, never how queries encode."""
    from fastapi.testclient import TestClient

    from pooledir import IndexConfig, PooledIndex
    from pooledir.checkpoint import convert_checkpoint
    from pooledir.encoder import ColBERTEncoder
    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    bert = tiny_ckpt.parent / "bert"
    # the same weights twice: built with every convention off, served from a copy whose metadata says all on
    built = convert_checkpoint(bert, tmp_path / "plain", dim=16, doc_maxlen=48, query_maxlen=12)
    mounted = convert_checkpoint(
        bert,
        tmp_path / "colbert",
        dim=16,
        doc_maxlen=64,
        query_maxlen=20,
        query_augmentation=True,
        markers=True,
        mask_punctuation=True,
    )
    path = tmp_path / "conv"
    encoder = ColBERTEncoder(built, device="cpu")
    with PooledIndex.create(path, config=IndexConfig(backend="flat"), device="cpu", encoder=encoder) as idx:
        idx.add(tiny_docs[:40])

    with PooledIndex.open(path, device="cpu") as idx:
        expected = idx.encoder.encode_queries(QUERIES)
        expected_hits = idx.search(QUERIES[0], k=5)[0]
    assert not np.allclose(ColBERTEncoder(mounted, device="cpu").encode_queries(QUERIES)[:, :12], expected)

    shutil.rmtree(built)  # the index was built elsewhere: only the mounted copy is here
    app = create_app(Settings(indexes=[path], device="cpu", checkpoint=mounted))
    with TestClient(app) as client:
        handle = app.state.registry.handles["conv"]
        served = handle.encode_queries(QUERIES)
        assert served.shape == expected.shape
        np.testing.assert_allclose(served, expected, atol=1e-5)
        hits = client.post("/indexes/conv/search", json={"query": QUERIES[0], "k": 5}).json()["results"]
    assert [h["id"] for h in hits] == [h.id for h in expected_hits]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected_hits], rtol=1e-4)
