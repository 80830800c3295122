"""What one search may ask for: results per response, their text, and filter fields (issue 22, items 10-11)."""

from __future__ import annotations

import numpy as np
import pytest

SEARCH = "/indexes/tiny/search"
BATCH = "/indexes/tiny/search/batch"


@pytest.mark.parametrize(
    "body, message",
    [
        (
            {"queries": ["q"] * 64, "k": 1000},
            "64 queries x k=1000 asks for 64000 results; this service returns at most 10000",
        ),
        ({"queries": ["q"] * 11, "k": 1000}, "11 queries x k=1000 asks for 11000 results"),
        ({"queries": ["q"] * 2, "k": 501, "with_text": True}, "asks for 1002 results with with_text; this service"),
        ({"query": "q", "k": 1000, "with_text": True, "filter": {"n": 1}}, None),  # 1000 with text: allowed
    ],
)
def test_results_per_request_are_bounded(shared_client, body, message):
    r = shared_client.post(BATCH if "queries" in body else SEARCH, json=body)
    if message is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert "lower k or send fewer queries" in r.json()["detail"]


def test_batch_at_the_bound_is_answered(shared_client):
    r = shared_client.post(BATCH, json={"queries": ["bone"] * 10, "k": 1000})
    assert r.status_code == 200
    assert [len(hits) for hits in r.json()["results"]] == [120] * 10  # the whole tiny index, per query


def test_text_returned_is_bounded(make_client):
    client = make_client(max_response_text_chars=300)
    r = client.post(SEARCH, json={"query": "bone", "k": 50, "with_text": True})
    assert r.status_code == 422, r.text
    assert "characters; this service returns at most 300" in r.json()["detail"]
    assert client.post(SEARCH, json={"query": "bone", "k": 50}).status_code == 200  # without the text: fine
    small = client.post(SEARCH, json={"query": "bone", "k": 1, "with_text": True})
    assert small.status_code == 200 and small.json()["results"][0]["text"]


@pytest.mark.parametrize("fields", [65, 999, 5000])
def test_filter_fields_are_bounded(shared_client, fields):
    r = shared_client.post(SEARCH, json={"query": "bone", "filter": {f"f{i}": i for i in range(fields)}})
    assert r.status_code == 422, r.text
    assert "at most 64 items" in str(r.json()["detail"])


def test_filter_at_the_bound_is_answered(shared_client):
    r = shared_client.post(SEARCH, json={"query": "bone", "filter": {"n": 3} | {f"f{i}": i for i in range(63)}})
    assert r.status_code == 200 and r.json()["results"] == []


def test_the_library_refuses_a_filter_sqlite_cannot_run(served_index, tiny_encoder):
    from pooledir import InputError, PooledIndex
    from pooledir.pooled_index import MAX_FILTER_FIELDS

    with PooledIndex.open(served_index, device="cpu", encoder=tiny_encoder) as index:
        Q = np.ones((1, 4, index.dim), np.float32)
        with pytest.raises(InputError, match=f"the filter names 999 fields; pass at most {MAX_FILTER_FIELDS}"):
            index.search_embeddings(Q, filter={f"f{i}": i for i in range(999)})
        assert index.search_embeddings(Q, filter={"n": 3} | {f"f{i}": i for i in range(MAX_FILTER_FIELDS - 1)}) == [[]]
