from __future__ import annotations

import pytest


def search(client, query="cancer cells", **body):
    return client.post("/indexes/tiny/search", json={"query": query, **body})


def test_health_ready_and_stats(client):
    assert client.get("/healthz").json() == {"status": "ok", "indexes": []}
    assert client.get("/readyz").json() == {"status": "ready", "indexes": ["tiny"]}
    stats = client.get("/indexes/tiny").json()
    assert stats["documents"] == 120 and stats["pool_factor"] == 2
    assert stats["vectors"] < stats["vectors_before_pooling"]
    assert stats["backend"]["kind"] == "ivfpq" and stats["device"] == "cpu" and stats["index_bytes"] > 0
    assert [i["name"] for i in client.get("/indexes").json()["indexes"]] == ["tiny"]
    assert "/indexes/{name}/search" in client.get("/openapi.json").json()["paths"]


def test_search_single_batch_text_and_filter(client):
    r = search(client, k=5)
    assert r.status_code == 200
    body = r.json()
    assert len(body["results"]) == 5 and body["took_ms"] > 0
    assert set(body["results"][0]) == {"id", "score"}
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    with_text = search(client, k=2, with_text=True).json()["results"]
    assert with_text[0]["text"] and "n" in with_text[0]["metadata"]
    batch = client.post("/indexes/tiny/search/batch", json={"queries": ["cancer cells", "vitamin"], "k": 3}).json()
    assert len(batch["results"]) == 2 and all(len(x) == 3 for x in batch["results"])
    assert batch["results"][0] == body["results"][:3]  # same query, same answer, batched or not
    filtered = search(client, k=3, filter={"n": 7}, with_text=True).json()["results"]
    assert [h["id"] for h in filtered] == ["d7"]


def test_k_above_the_document_count_returns_every_document(client):
    r = search(client, k=500)
    assert r.status_code == 200 and len(r.json()["results"]) == 120


def test_documents_upsert_get_delete(client):
    doc = {"id": "new", "title": "Bone", "text": "vitamin bone density study", "metadata": {"src": "api"}}
    r = client.post("/indexes/tiny/documents", json={"documents": [doc]})
    assert r.status_code == 200 and r.json() == {"upserted": 1, "documents": 121}
    got = client.get("/indexes/tiny/documents/new").json()
    assert got == {"id": "new", "text": "Bone vitamin bone density study", "metadata": {"src": "api", "title": "Bone"}}
    r = client.post("/indexes/tiny/documents", json={"documents": [{"id": "new", "text": "replaced text"}]})
    assert r.json()["documents"] == 121
    assert client.get("/indexes/tiny/documents/new").json()["text"] == "replaced text"
    r = client.request("DELETE", "/indexes/tiny/documents", json={"ids": ["new", "d1"]})
    assert r.status_code == 200 and r.json() == {"deleted": 2, "documents": 119}
    assert client.get("/indexes/tiny/documents/d1").status_code == 404


@pytest.mark.parametrize(
    "method, url, body, code, message",
    [
        ("post", "/indexes/nope/search", {"query": "x"}, 404, "unknown index 'nope'"),
        ("get", "/indexes/nope", None, 404, "unknown index"),
        ("get", "/indexes/tiny/documents/missing", None, 404, "unknown document id 'missing'"),
        ("delete", "/indexes/tiny/documents", {"ids": ["d1", "missing"]}, 404, "'missing'"),
        ("post", "/indexes/tiny/search", {"query": ""}, 422, "at least 1 character"),
        ("post", "/indexes/tiny/search", {"query": "   "}, 422, "must not be empty"),
        ("post", "/indexes/tiny/search", {"query": "x", "k": 0}, 422, "greater than or equal to 1"),
        ("post", "/indexes/tiny/search", {"query": "x", "k": 5000}, 422, "above this service's limit 1000"),
        ("post", "/indexes/tiny/search", {"query": 5}, 422, "valid string"),
        ("post", "/indexes/tiny/search", {"query": "x", "colour": 1}, 422, "Extra inputs"),
        ("post", "/indexes/tiny/search", {"k": 3}, 422, "Field required"),
        ("post", "/indexes/tiny/search/batch", {"queries": []}, 422, "at least 1 item"),
        ("post", "/indexes/tiny/search/batch", {"queries": ["a"] * 65}, 413, "at most 64"),
        ("post", "/indexes/tiny/documents", {"documents": []}, 422, "at least 1 item"),
        ("post", "/indexes/tiny/documents", {"documents": [{"id": "a"}]}, 422, "Field required"),
        (
            "post",
            "/indexes/tiny/documents",
            {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
            422,
            "duplicate document id 'a'",
        ),
        ("post", "/indexes/tiny/documents", {"documents": [{"id": "a", "text": "x"}] * 300}, 413, "at most 256"),
    ],
)
def test_bad_input_is_4xx_with_message_and_loses_nothing(shared_client, method, url, body, code, message):
    client = shared_client  # none of these may change the index, so one app serves them all
    r = client.request(method.upper(), url, json=body)
    assert r.status_code == code, r.text
    assert message in str(r.json()["detail"])
    assert client.get("/indexes/tiny").json()["documents"] == 120
    assert client.get("/indexes/tiny/documents/d1").status_code == 200


def test_oversized_body_is_413(make_client):
    client = make_client(max_body_bytes=1000)
    r = client.post("/indexes/tiny/documents", json={"documents": [{"id": "big", "text": "x " * 2000}]})
    assert r.status_code == 413 and "over 1000 bytes" in r.json()["detail"]


def test_api_key(make_client):
    client = make_client(api_key="s3cret")
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert client.get("/indexes").status_code == 401
    assert search(client).status_code == 401
    assert client.get("/indexes", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/indexes", headers=ok).status_code == 200
    assert client.post("/indexes/tiny/search", json={"query": "cancer"}, headers=ok).status_code == 200


def test_without_micro_batching_answers_the_same(make_client, client):
    plain = make_client(micro_batching=False)
    assert search(plain, k=4).json()["results"] == search(client, k=4).json()["results"]


#: the service's URL contract: every (method, path) of its OpenAPI schema; a route that moves fails here
ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/indexes"),
    ("GET", "/indexes/{name}"),
    ("POST", "/indexes/{name}/search"),
    ("POST", "/indexes/{name}/search/batch"),
    ("POST", "/indexes/{name}/documents"),
    ("DELETE", "/indexes/{name}/documents"),
    ("GET", "/indexes/{name}/documents/{doc_id}"),
}


def test_openapi_paths_are_pinned():
    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    schema = create_app(Settings(indexes=[], device="cpu")).openapi()  # no lifespan: nothing is opened
    assert {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops} == ROUTES
    protected = {(m.upper(), p) for p, ops in schema["paths"].items() for m, op in ops.items() if op.get("security")}
    assert protected == ROUTES - {("GET", "/healthz"), ("GET", "/readyz")}  # health stays outside the API key
