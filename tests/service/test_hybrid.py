"""The ``mode`` field of the search and batch bodies: dense, lexical, hybrid over HTTP."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_search_and_batch_in_every_mode(shared_client, mode):
    r = shared_client.post("/indexes/tiny/search", json={"query": "cancer cells", "k": 5, "mode": mode})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 5
    r = shared_client.post(
        "/indexes/tiny/search/batch",
        json={"queries": ["blood", "vitamin bone"], "k": 3, "mode": mode, "filter": {"n": 7}, "with_text": True},
    )
    assert r.status_code == 200, r.text
    assert all(h["id"] == "d7" and h["metadata"]["n"] == 7 for hits in r.json()["results"] for h in hits)


@pytest.mark.parametrize("query", ['"unbalanced', "AND OR NOT", "NEAR(x", "* ( )", "te* AND (", "...", "^a:b"])
def test_fts5_syntax_is_plain_text_over_http(shared_client, query):
    for mode in ("lexical", "hybrid"):
        r = shared_client.post("/indexes/tiny/search", json={"query": query, "k": 3, "mode": mode})
        assert r.status_code == 200, r.text


def test_a_bad_mode_is_a_422_and_the_schema_lists_the_modes(shared_client):
    r = shared_client.post("/indexes/tiny/search", json={"query": "x", "mode": "bm25"})
    assert r.status_code == 422 and "mode" in r.text
    schema = shared_client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("SearchRequest", "BatchSearchRequest"):
        assert schema[name]["properties"]["mode"]["enum"] == ["dense", "lexical", "hybrid"]
