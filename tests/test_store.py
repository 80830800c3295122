"""The document store refuses filters and ids that sqlite cannot match, with InputError (not sqlite's errors)."""

from __future__ import annotations

import pytest

from pooledir.errors import InputError
from pooledir.store import DocStore, check_filter


@pytest.mark.parametrize(
    "where",
    [
        {},
        [("a", 1)],
        {"n": 1 << 63},
        {"n": -(1 << 63) - 1},
        {"n": float("nan")},
        {"n": float("inf")},
        {'a"b': 1},
        {"a\\b": 1},
        {"a\x00b": 1},
        {"": 1},
        {"a\ud800": 1},
        {"a": "b\ud800"},
        {"a": [1, 2]},
        {"a": None},
    ],
)
def test_bad_filters_are_input_errors(where):
    with pytest.raises(InputError):
        check_filter(where)


def test_good_filters_pass():
    check_filter({"n": (1 << 63) - 1, "m": -(1 << 63), "s": "x", "b": True, "f": 0.5})


def test_store_matching_and_lookup_refuse_what_sqlite_cannot_hold(tmp_path):
    store = DocStore.create(tmp_path / "docs.sqlite")
    try:
        with pytest.raises(InputError, match="64-bit"):
            store.matching({"n": 1 << 64})
        with pytest.raises(InputError, match="surrogate"):
            store.lookup(["ok", "a\ud800b"])
        assert store.lookup(["missing"]) == {}
    finally:
        store.close()
