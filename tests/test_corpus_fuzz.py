"""Documents that cannot be stored are refused with InputError; everything else stores and reads back unchanged."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pooledir.corpus import MAX_METADATA_DEPTH, Document, check_documents, check_metadata
from pooledir.errors import InputError

#: any str, lone surrogates and NULs included
TEXT = st.text(st.characters(codec=None), max_size=20)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3))


def nested(depth: int) -> dict:
    root = cur = {}
    for _ in range(depth - 1):
        cur["a"] = {}
        cur = cur["a"]
    return root


@pytest.mark.parametrize(
    "args, message",
    [
        (("a\ud800", "text"), r"document id is not valid Unicode: a lone surrogate '\\ud800' at character 1"),
        (("a", "x\udfffy"), r"document 'a': text is not valid Unicode"),
        (("a", "x", {"k\ud800": 1}), r"metadata key 'k\\ud800' is not valid Unicode"),
        (("a", "x", {"k": ["\ud800"]}), r"metadata value is not valid Unicode"),
        (("a", "x", {"k": math.nan}), r"holds nan; JSON has no NaN"),
        (("a", "x", {"k": [1, -math.inf]}), r"holds -inf"),
        (("a", "x", {"k": {1, 2}}), r"holds a set"),
        (("a", "x", nested(MAX_METADATA_DEPTH + 1)), rf"nested more than {MAX_METADATA_DEPTH} levels"),
        (("a", "x", nested(100_000)), r"nested more than"),  # no RecursionError
        (("a", "x", ["not", "a", "dict"]), r"must be an object"),
        ((5, "x"), r"document id is int, expected a string"),
    ],
)
def test_unstorable_documents_are_refused_with_the_reason(args, message):
    # a Document checks its fields when it is built; check_documents refuses the same on anything it is given
    with pytest.raises(InputError, match=message):
        check_documents([Document("ok", "fine"), Document(*args)], "docs")


def test_nul_huge_ints_and_the_depth_limit_are_storable():
    doc = Document("a\x00b", "x\x00y", {"n": 2**80, "z": "\x00", "deep": nested(MAX_METADATA_DEPTH - 1)})
    assert check_documents([doc]) == [doc]


def test_metadata_is_refused_or_round_trips_through_sqlite_json():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (m TEXT)")

    @given(metadata=st.dictionaries(TEXT, JSONISH, max_size=4))
    @settings(max_examples=150, deadline=None, database=None)
    def check(metadata):
        try:
            check_metadata(metadata)
        except InputError:
            return
        stored = json.dumps(metadata, ensure_ascii=False, allow_nan=False)
        conn.execute("DELETE FROM t")
        conn.execute("INSERT INTO t VALUES (?)", (stored,))
        assert conn.execute("SELECT json_valid(m) FROM t").fetchone() == (1,)
        assert json.loads(conn.execute("SELECT m FROM t").fetchone()[0]) == metadata

    check()
    conn.close()


def test_index_add_refuses_or_stores_exactly(tmp_path, tiny_encoder):
    """Through the library: a clear InputError with nothing written, or the document back unchanged."""
    from pooledir import IndexConfig, PooledIndex

    with PooledIndex.create(
        tmp_path / "i", config=IndexConfig(backend="flat"), device="cpu", encoder=tiny_encoder
    ) as idx:
        idx.add([Document("base", "cancer cells study", {"n": 1})])

        @given(doc_id=TEXT.filter(str.strip), text=TEXT, metadata=st.dictionaries(TEXT, JSONISH, max_size=3))
        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(doc_id, text, metadata):
            before = len(idx)
            try:
                doc = Document(doc_id, text, metadata)  # a Document checks its fields when it is built
                idx.add([doc])
            except InputError as e:
                assert str(e) and len(idx) == before
                return
            assert idx.get(doc_id) == doc
            assert [h.id for h in idx.search("cancer", k=1, filter={"n": 1})[0]] == ["base"] or doc_id == "base"

        check()
