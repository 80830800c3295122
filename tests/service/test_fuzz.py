"""Fuzz the HTTP app with hostile documents, ids, metadata and queries: never a 5xx, and nothing half-written.

Strings include lone surrogates, NULs and very long runs; numbers include ints far past 64 bits, NaN and
infinity (sent as the ``NaN``/``Infinity`` literals Python's JSON parser accepts); metadata nests deeply.
Filters name up to thousands of fields, batches ask for up to 80 queries x k=3000 with their text, and an
index whose newest segment is cut short answers the same hostile requests (a JSON 503 there, never a 500).
The case counts are printed (``pytest -s``) and asserted, so a silently skipped strategy shows.
"""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SEARCH = "/indexes/tiny/search"
BATCH = "/indexes/tiny/search/batch"
DOCS = "/indexes/tiny/documents"
CASES: Counter[str] = Counter()
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))

#: any code point, lone surrogates and NUL included
CHARS = st.characters(codec=None)
SHORT = st.text(CHARS, max_size=12)
LONG = st.builds(lambda s, n: (s or "x") * n, st.text(CHARS, max_size=3), st.integers(1_000, 150_000))
TEXT = st.one_of(SHORT, SHORT, st.sampled_from(["cancer cells", "vitamin", "a\ud800b", "\x00", " \t"]), LONG)
NUMBER = st.one_of(st.integers(), st.integers(-(2**70), 2**70), st.floats(), st.sampled_from([2**63, -(2**63) - 1]))
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JSONISH = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SHORT, inner, max_size=3))


def nested(depth: int, leaf) -> object:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


#: plausible values, so that enough cases get past validation and exercise storage (NUL and odd scripts included)
PLAIN = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).filter(str.strip)
METADATA = st.one_of(
    st.dictionaries(PLAIN, st.one_of(PLAIN, st.integers(-(2**63), 2**63 - 1), st.booleans()), max_size=3),
    st.dictionaries(SHORT, JSONISH, max_size=4),
    st.builds(nested, st.integers(1, 150), SCALAR),
    JSONISH,
)
DOC_ID = st.one_of(PLAIN, TEXT, st.integers(), st.none(), st.sampled_from(["a/b", "../x", "%2F", "   ", "d1"]))
KNOB = st.one_of(st.integers(-3, 200), st.integers(), st.text(max_size=3), st.booleans(), st.floats(), st.none())


def optional(strategy):
    """A field that is left out (None) as often as it is given."""
    return st.one_of(st.none(), strategy)


def body_of(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if v is not None}


def call(client, method: str, url: str, body=None, label: str = ""):
    """Send ``body`` as JSON (ASCII-escaped, NaN allowed) and check the answer is not a server error."""
    content = None if body is None else json.dumps(body, allow_nan=True)
    r = client.request(method, url, content=content, headers={"Content-Type": "application/json"})
    CASES[label or url] += 1
    assert r.status_code < 500, (method, url, r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.json()["detail"], r.text[:300]
        assert len(r.content) < 10_000  # no echo of a large input
    return r


def documents(client) -> int:
    return client.get("/indexes/tiny").json()["documents"]


@given(
    query=TEXT,
    k=optional(KNOB),
    nprobe=optional(KNOB),
    with_text=optional(st.one_of(st.booleans(), KNOB)),
    filter=optional(st.one_of(st.dictionaries(TEXT, SCALAR, max_size=3), JSONISH)),
)
@settings(FUZZ, max_examples=150)
def test_search(shared_client, query, k, nprobe, with_text, filter):
    body = body_of({"query": query, "k": k, "nprobe": nprobe, "with_text": with_text, "filter": filter})
    r = call(shared_client, "POST", SEARCH, body, "search")
    if r.status_code == 200:
        assert len(r.json()["results"]) <= (k if isinstance(k, int) else 10)


@given(queries=st.one_of(st.lists(TEXT, max_size=4), JSONISH), k=optional(KNOB), filter=optional(JSONISH))
@settings(FUZZ, max_examples=80)
def test_batch_search(shared_client, queries, k, filter):
    r = call(shared_client, "POST", BATCH, body_of({"queries": queries, "k": k, "filter": filter}), "search/batch")
    if r.status_code == 200:
        assert len(r.json()["results"]) == len(queries)


DOCUMENT = st.fixed_dictionaries(
    {"id": DOC_ID, "text": st.one_of(PLAIN, TEXT, JSONISH)},
    optional={"title": st.one_of(TEXT, st.integers()), "metadata": METADATA},
)
PLAIN_JSON = st.recursive(
    st.one_of(PLAIN, st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PLAIN, inner, max_size=3),
    max_leaves=8,
)
#: documents that should be stored: the store must give back exactly what went in
STORABLE = st.fixed_dictionaries(
    {"id": PLAIN, "text": st.one_of(PLAIN, LONG.map(lambda t: t[:50_000]))},
    optional={"title": PLAIN, "metadata": st.dictionaries(PLAIN, PLAIN_JSON, max_size=3)},
)


@given(docs=st.one_of(st.lists(STORABLE, min_size=1, max_size=3), st.lists(DOCUMENT, max_size=3), JSONISH))
@settings(FUZZ, max_examples=100)
def test_upsert_stores_exactly_or_changes_nothing(shared_client, docs):
    before = documents(shared_client)
    r = call(shared_client, "POST", DOCS, {"documents": docs}, "upsert")
    if r.status_code != 200:
        assert documents(shared_client) == before  # a refused batch writes nothing
        return
    handle = shared_client.app.state.registry.handles["tiny"]
    for d in docs:
        metadata = {**(d.get("metadata") or {}), **({"title": d["title"]} if d.get("title") else {})}
        stored = handle.read(lambda index, doc_id=d["id"]: index.get(doc_id))
        assert (stored.id, stored.metadata) == (d["id"], metadata)
        # over HTTP too, except where the test client mangles the URL: it percent-decodes paths twice,
        # and URL clients resolve the segments "." and ".." away
        if "%" not in d["id"] and d["id"] not in (".", ".."):
            got = call(shared_client, "GET", f"{DOCS}/{quote(d['id'], safe='')}", label="get stored").json()
            assert (got["id"], got["text"], got["metadata"]) == (d["id"], stored.text, metadata)


KNOWN_IDS = st.lists(st.sampled_from([f"d{i}" for i in range(120)]), min_size=1, max_size=3)


@given(ids=st.one_of(KNOWN_IDS, st.lists(st.one_of(DOC_ID, KNOWN_IDS.map(lambda x: x[0])), max_size=4), JSONISH))
@settings(FUZZ, max_examples=60)
def test_delete_is_all_or_nothing(shared_client, ids):
    before = documents(shared_client)
    r = call(shared_client, "DELETE", DOCS, {"ids": ids}, "delete")
    after = documents(shared_client)
    assert after == (before - r.json()["deleted"] if r.status_code == 200 else before)
    if r.status_code == 200:  # put the deleted documents back so later cases still find some
        docs = [{"id": i, "text": "cancer cells"} for i in dict.fromkeys(ids)]
        assert call(shared_client, "POST", DOCS, {"documents": docs}, "upsert back").status_code == 200


@given(doc_id=st.one_of(SHORT, PLAIN, st.sampled_from(["d1", "d1/", "/d1", "..", "%00", "a%2Fb", "x" * 5000])))
@settings(FUZZ, max_examples=60)
def test_get_document(shared_client, doc_id):
    path = quote(doc_id.encode("utf-8", "surrogatepass"), safe="")
    call(shared_client, "GET", f"{DOCS}/{path}", label="get")


@given(raw=st.one_of(st.binary(max_size=200), st.text(CHARS, max_size=200).map(lambda t: t.encode("utf-8", "replace"))))
@settings(FUZZ, max_examples=60)
def test_raw_bytes_as_body(shared_client, raw):
    for method, url in (("POST", SEARCH), ("POST", DOCS)):
        r = shared_client.request(method, url, content=raw, headers={"Content-Type": "application/json"})
        CASES["raw body"] += 1
        assert r.status_code < 500, r.text[:300]


#: filters from empty to far past the cap (64 fields); sqlite refuses an expression of ~1000 clauses
BIG_FILTER = st.builds(
    lambda n, v: {f"f{i}": v for i in range(n)}, st.integers(0, 3000), st.one_of(st.integers(), PLAIN, st.booleans())
)


@given(filter=BIG_FILTER, batch=st.booleans())
@settings(FUZZ, max_examples=40)
def test_filter_size(shared_client, filter, batch):
    body = {"queries": ["bone", "cells"]} if batch else {"query": "bone"}
    r = call(shared_client, "POST", BATCH if batch else SEARCH, body | {"filter": filter}, "filter size")
    assert r.status_code == (200 if len(filter) <= 64 else 422), r.text[:300]  # {}: no filter


@given(n=st.integers(1, 80), k=st.integers(1, 3000), with_text=st.booleans())
@settings(FUZZ, max_examples=40)
def test_response_size(shared_client, n, k, with_text):
    body = {"queries": [f"bone {i}" for i in range(n)], "k": k, "with_text": with_text}
    r = call(shared_client, "POST", BATCH, body, "response size")
    too_many = n > 64 or k > 1000 or n * k > (1_000 if with_text else 10_000)
    assert r.status_code == (200 if not too_many else 413 if n > 64 else 422), r.text[:300]
    if r.status_code == 200:
        assert [len(hits) for hits in r.json()["results"]] == [min(k, documents(shared_client))] * n


@pytest.fixture(scope="module")
def corrupt_client(tmp_path_factory, tiny_encoder, tiny_docs):
    """An app whose index gets a truncated segment from another process's commit after it opened."""
    from fastapi.testclient import TestClient

    from pooledir import Document, PooledIndex
    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings
    from tests.service.conftest import tiny_index

    path = tiny_index(tmp_path_factory.mktemp("corrupt") / "tiny", tiny_encoder, tiny_docs)
    with TestClient(create_app(Settings(indexes=[path], device="cpu"))) as client:
        before = set((path / "segments").iterdir())
        with PooledIndex.open(path, device="cpu", encoder=tiny_encoder) as other:
            other.add([Document("late", "bone density", {})])
        (new,) = set((path / "segments").iterdir()) - before
        new.write_bytes(new.read_bytes()[:200])
        yield client


@given(
    request=st.one_of(
        st.builds(lambda q, k: ("POST", SEARCH, {"query": q, "k": k}), TEXT, KNOB),
        st.builds(lambda q, f: ("POST", BATCH, {"queries": q, "filter": f}), st.lists(TEXT, max_size=3), JSONISH),
        st.builds(lambda d: ("POST", DOCS, {"documents": d}), st.lists(STORABLE, min_size=1, max_size=2)),
        st.builds(lambda ids: ("DELETE", DOCS, {"ids": ids}), KNOWN_IDS),
        st.builds(lambda i: ("GET", f"{DOCS}/{quote(i, safe='')}", None), PLAIN),
        st.just(("GET", "/indexes/tiny", None)),
    )
)
@settings(FUZZ, max_examples=40)
def test_corrupt_index(corrupt_client, request):
    method, url, body = request
    content = None if body is None else json.dumps(body, allow_nan=True)
    r = corrupt_client.request(method, url, content=content, headers={"Content-Type": "application/json"})
    CASES["corrupt index"] += 1
    assert r.status_code < 500 or r.status_code == 503, (method, url, r.status_code, r.text[:300])
    assert r.status_code >= 400 and r.json()["detail"]  # nothing is served from a corrupt commit
    if r.status_code == 503:
        CASES["corrupt index: 503"] += 1
        assert "corrupt or truncated" in r.json()["detail"]


def test_case_counts():
    """Runs last (pytest keeps file order): every strategy above really reached the app."""
    print(f"\nHTTP fuzz: {sum(CASES.values())} requests, none a 5xx: {dict(sorted(CASES.items()))}")
    assert CASES["search"] >= 100 and CASES["upsert"] >= 60 and CASES["delete"] >= 40
    assert CASES["get stored"] >= 10 and CASES["upsert back"] >= 5  # stored documents were read back, deletes happened
    assert CASES["filter size"] >= 30 and CASES["response size"] >= 30
    assert CASES["corrupt index"] >= 30 and CASES["corrupt index: 503"] >= 10
