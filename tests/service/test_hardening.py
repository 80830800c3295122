"""Hostile and careless input over HTTP: every answer a 4xx with a message, never a 5xx, nothing lost."""

from __future__ import annotations

import json
import threading
import time

import pytest

SEARCH = "/indexes/tiny/search"
BATCH = "/indexes/tiny/search/batch"
DOCS = "/indexes/tiny/documents"


def send(client, method: str, url: str, body):
    """Send ``body`` as JSON escaped to ASCII, so lone surrogates travel as ``\\ud800`` escapes."""
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.request(method, url, content=raw, headers={"Content-Type": "application/json"})


def assert_nothing_lost(client):
    assert client.get("/indexes/tiny").json()["documents"] == 120
    assert client.get("/indexes/tiny/documents/d1").status_code == 200


def detail_text(r) -> str:
    return json.dumps(r.json()["detail"])


BAD = "a\ud800b"


@pytest.mark.parametrize(
    "method, url, body",
    [
        ("POST", SEARCH, {"query": BAD}),
        ("POST", BATCH, {"queries": ["fine", BAD]}),
        ("POST", DOCS, {"documents": [{"id": "x", "text": BAD}]}),
        ("POST", DOCS, {"documents": [{"id": "x", "text": "t", "title": BAD}]}),
        ("POST", DOCS, {"documents": [{"id": BAD, "text": "t"}]}),
        ("POST", DOCS, {"documents": [{"id": "x", "text": "t", "metadata": {BAD: 1}}]}),
        ("POST", DOCS, {"documents": [{"id": "x", "text": "t", "metadata": {"k": [{"deep": BAD}]}}]}),
        ("DELETE", DOCS, {"ids": [BAD]}),
        ("POST", SEARCH, {"query": "x", "filter": {BAD: 1}}),
        ("POST", SEARCH, {"query": "x", "filter": {"n": BAD}}),
        ("POST", SEARCH, {"query": BAD, "unknown\udfff": 1}),  # the echo of a surrogate key must not fail either
    ],
)
def test_lone_surrogates_are_422_with_a_message(shared_client, method, url, body):
    client = shared_client
    r = send(client, method, url, body)
    assert r.status_code == 422, r.text
    assert any(m in detail_text(r) for m in ("lone surrogate", "unable to parse raw data as a unicode string"))
    assert_nothing_lost(client)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"query": "x", "filter": {"n": 2**63}}, "less than or equal to 9223372036854775807"),
        ({"query": "x", "filter": {"n": -(2**63) - 1}}, "greater than or equal to -9223372036854775808"),
        ('{"query": "x", "filter": {"n": NaN}}', "finite number"),
        ('{"query": "x", "filter": {"n": Infinity}}', "finite number"),
        ({"query": "x", "filter": {'a"b': 1}}, "quotes, backslashes or control characters"),
        ({"query": "x", "filter": {"a\u0000b": 1}}, "quotes, backslashes or control characters"),
        ({"query": "x", "filter": {"n": [1]}}, "valid string"),
        ({"query": "x", "k": "3"}, "valid integer"),
        ({"query": "x", "k": True}, "valid integer"),
        ({"query": "x", "k": 3.0}, "valid integer"),
        ({"query": "x", "nprobe": "4"}, "valid integer"),
        ({"query": "x", "rerank": False}, "valid integer"),
        ({"query": "x", "with_text": 1}, "valid boolean"),
        ({"query": "x", "prune": "yes"}, "valid boolean"),
        ({"query": "x" * 2001}, "query 0 has 2001 characters; this service takes at most 2000"),
        ({"queries": ["ok", "y" * 2500]}, "query 1 has 2500 characters"),
    ],
)
def test_filters_and_knobs_are_strict(shared_client, body, message):
    client = shared_client
    r = send(client, "POST", BATCH if "queries" in body else SEARCH, body)
    assert r.status_code == 422, r.text
    assert message in detail_text(r)
    assert_nothing_lost(client)


def test_prune_is_a_search_knob(shared_client):
    for body in ({"query": "cancer", "k": 3, "prune": True}, {"query": "cancer", "k": 3, "prune": False}):
        r = send(shared_client, "POST", SEARCH, body)
        assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text
    r = send(shared_client, "POST", BATCH, {"queries": ["cancer", "cells"], "k": 2, "prune": True})
    assert r.status_code == 200 and [len(x) for x in r.json()["results"]] == [2, 2], r.text


def test_extreme_filter_values_inside_the_range_work(shared_client):
    client = shared_client
    for value in (2**63 - 1, -(2**63), 1e308, -0.5, ""):
        r = send(client, "POST", SEARCH, {"query": "cancer", "filter": {"n": value}})
        assert r.status_code == 200 and r.json()["results"] == [], r.text
    assert send(client, "POST", SEARCH, {"query": "cancer", "k": 3, "filter": {"n": 7}}).json()["results"][0]["id"]


@pytest.mark.parametrize(
    "method, body, message",
    [
        ("POST", {"documents": [{"id": "   ", "text": "t"}]}, "must not be empty or whitespace"),
        ("POST", {"documents": [{"id": "\t\n", "text": "t"}]}, "must not be empty or whitespace"),
        ("DELETE", {"ids": ["  "]}, "must not be empty or whitespace"),
        ("POST", {"documents": [{"id": 5, "text": "t"}]}, "valid string"),
        ("POST", '{"documents": [{"id": "x", "text": "t", "metadata": {"v": NaN}}]}', "JSON has no NaN"),
        ("POST", {"documents": [{"id": "x", "text": "t", "metadata": "flat"}]}, "valid dictionary"),
    ],
)
def test_documents_that_cannot_be_stored_are_refused(shared_client, method, body, message):
    client = shared_client
    r = send(client, method, DOCS, body)
    assert r.status_code == 422, r.text
    assert message in detail_text(r)
    assert_nothing_lost(client)


def test_deep_metadata_is_4xx_at_any_depth(client):
    def nested(depth):
        return "[" * depth + "]" * depth

    ok = '{"documents": [{"id": "deep", "text": "t", "metadata": {"m": %s}}]}'
    assert send(client, "POST", DOCS, ok % nested(60)).status_code == 200
    assert client.get("/indexes/tiny/documents/deep").status_code == 200
    r = send(client, "POST", DOCS, ok % nested(70))
    assert r.status_code == 422 and "nested more than 64 levels" in detail_text(r)
    r = send(client, "POST", DOCS, ok % nested(100_000))  # too deep for the JSON parser itself
    assert r.status_code == 400, r.text
    assert client.get("/indexes/tiny").json()["documents"] == 121


def test_errors_never_echo_a_large_input(shared_client):
    client = shared_client
    big = "x" * 3_000_000
    for body in (
        {"query": big},  # over max_query_chars
        {"query": "x", "k": big},  # wrong type
        {"query": "x", big: 1},  # unknown field: the name is echoed in loc
        {"queries": [big] * 2},
        {"documents": [{"id": big, "text": "t"}]},
        {"ids": [big]},  # unknown id: 404 from the library, its message quotes the id
    ):
        url = DOCS if "documents" in body or "ids" in body else BATCH if "queries" in body else SEARCH
        r = send(client, "DELETE" if "ids" in body else "POST", url, body)
        assert r.status_code in (404, 422), r.text[:300]
        assert len(r.content) < 8_000, (body.keys(), len(r.content))
        assert r.json()["detail"]
    r = send(client, "POST", SEARCH, {"query": "x", "k": "3"})
    assert r.json()["detail"] == [
        {"type": "int_type", "loc": ["body", "k"], "msg": "Input should be a valid integer", "input": "3"}
    ]


def test_ids_with_slashes_can_be_fetched(client):
    doc = {"id": "folder/sub/doc one", "text": "vitamin bone density"}
    assert send(client, "POST", DOCS, {"documents": [doc]}).status_code == 200
    for url in ("/indexes/tiny/documents/folder/sub/doc one", "/indexes/tiny/documents/folder%2Fsub%2Fdoc%20one"):
        r = client.get(url)
        assert r.status_code == 200 and r.json()["id"] == "folder/sub/doc one", url
    assert client.get("/indexes/tiny/documents/folder/sub").status_code == 404
    # newlines too: starlette's own path converter cannot match them and drops a trailing one
    docs = [{"id": "line\nbreak", "text": "bone"}, {"id": "d1\n", "text": "cells"}]
    assert send(client, "POST", DOCS, {"documents": docs}).status_code == 200
    assert client.get("/indexes/tiny/documents/line%0Abreak").json()["id"] == "line\nbreak"
    assert client.get("/indexes/tiny/documents/d1%0A").json()["text"] == "cells"


def test_health_answers_while_a_write_holds_the_index_lock(client, monkeypatch):
    """Routes that wait on the index's lock run in the thread pool: the event loop and /healthz stay free."""
    handle = client.app.state.registry.handles["tiny"]
    # the writes themselves are done; only the count each route reads afterwards needs the lock
    monkeypatch.setattr(handle, "upsert", lambda docs: len(docs))
    monkeypatch.setattr(handle, "delete", lambda ids: len(ids))
    held, release = threading.Event(), threading.Event()

    def slow_write():
        with handle.reads.exclusive():
            held.set()
            release.wait(5)

    calls = [
        ("POST", DOCS, {"documents": [{"id": "n", "text": "bone"}]}),
        ("DELETE", DOCS, {"ids": ["d3"]}),
        ("GET", "/indexes/tiny/documents/d1", None),
        ("GET", "/indexes/tiny", None),
        ("GET", "/indexes", None),
        ("POST", SEARCH, {"query": "cancer"}),
        ("POST", BATCH, {"queries": ["cancer"]}),
    ]
    codes: list[int] = []
    writer = threading.Thread(target=slow_write)
    writer.start()
    assert held.wait(5)
    waiting = [
        threading.Thread(target=lambda c=c: codes.append(client.request(c[0], c[1], json=c[2]).status_code))
        for c in calls
    ]
    try:
        for t in waiting:
            t.start()
        time.sleep(0.3)  # every request is now waiting on the lock
        latencies = []
        for _ in range(3):
            t0 = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - t0)
        assert max(latencies) < 0.5, latencies
        assert codes == []  # they really were waiting
    finally:
        release.set()
        writer.join(5)
        for t in waiting:
            t.join(30)
    assert sorted(codes) == [200] * len(calls)
