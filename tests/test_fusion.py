"""Fusion of two ranked lists: properties of reciprocal rank fusion and the convex combination."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledir.errors import InputError
from pooledir.fusion import Fusion, convex, fuse, minmax, rrf

ids = st.sampled_from([f"d{i}" for i in range(12)])
scores = st.floats(min_value=-50, max_value=50, allow_nan=False)


@st.composite
def lane(draw):
    """A ranked list: distinct ids, scores best first."""
    docs = draw(st.lists(ids, unique=True, max_size=10))
    values = sorted(draw(st.lists(scores, min_size=len(docs), max_size=len(docs))), reverse=True)
    return list(zip(docs, values))


methods = st.sampled_from([rrf, convex])
weights = st.floats(min_value=0, max_value=1)


@settings(max_examples=300, deadline=None)
@given(lane(), lane(), weights, methods)
def test_every_id_once_best_first(dense, lexical, w, method):
    out = method(dense, lexical, w)
    got = [d for d, _ in out]
    assert len(got) == len(set(got)) and set(got) == {d for d, _ in dense} | {d for d, _ in lexical}
    values = [s for _, s in out]
    assert values == sorted(values, reverse=True)


@settings(max_examples=300, deadline=None)
@given(lane(), weights, methods)
def test_one_lane_alone_keeps_its_order(dense, w, method):
    assert [d for d, _ in method(dense, [], max(w, 0.01))] == [d for d, _ in dense]
    assert [d for d, _ in method([], dense, min(w, 0.99))] == [d for d, _ in dense]


@settings(max_examples=300, deadline=None)
@given(lane(), lane(), methods)
def test_weight_one_is_the_dense_order_first(dense, lexical, method):
    out = [d for d, _ in method(dense, lexical, 1.0)]
    assert out[: len(dense)] == [d for d, _ in dense]


@settings(max_examples=300, deadline=None)
@given(lane(), lane(), methods)
def test_symmetric_at_half_weight(a, b, method):
    left, right = dict(method(a, b, 0.5)), dict(method(b, a, 0.5))
    assert left.keys() == right.keys() and all(abs(left[k] - right[k]) < 1e-12 for k in left)


@settings(max_examples=300, deadline=None)
@given(lane(), lane(), weights, methods)
def test_first_in_both_lanes_is_first(dense, lexical, w, method):
    if not dense or not lexical:
        return
    top = dense[0][0]
    lexical = [(top, lexical[0][1] + 1)] + [x for x in lexical if x[0] != top]
    dense_top_unique = len(dense) == 1 or dense[0][1] > dense[1][1]
    lex_top_unique = len(lexical) == 1 or lexical[0][1] > lexical[1][1]
    if method is rrf or (dense_top_unique and lex_top_unique):
        assert method(dense, lexical, w)[0][0] == top


def approx_pairs(pairs):
    return [(d, pytest.approx(v)) for d, v in pairs]


def test_scale_does_not_matter():
    dense = [("a", 30.0), ("b", 20.0), ("c", 10.0)]
    lexical = [("c", 9.0), ("a", 1.0)]
    scaled = [(d, s * 1000 + 7) for d, s in dense]
    for method in (rrf, convex):
        assert method(dense, lexical, 0.4) == approx_pairs(method(scaled, lexical, 0.4))


def test_known_values():
    dense, lexical = [("a", 5.0), ("b", 3.0), ("c", 1.0)], [("c", 8.0), ("d", 2.0)]
    assert rrf(dense, lexical, 0.5, 60) == approx_pairs(
        [("c", 0.5 / 63 + 0.5 / 61), ("a", 0.5 / 61), ("b", 0.5 / 62), ("d", 0.5 / 62)]
    )
    assert convex(dense, lexical, 0.25) == approx_pairs([("c", 0.75), ("a", 0.25), ("b", 0.125), ("d", 0.0)])
    assert minmax([2.0, 2.0]) == [1.0, 1.0] and minmax([]) == []
    assert fuse(dense, lexical, Fusion(method="convex", weight=0.25), 2) == approx_pairs([("c", 0.75), ("a", 0.25)])


def test_duplicates_in_a_lane_count_once():
    assert rrf([("a", 2.0), ("a", 1.0)], [], 1.0) == approx_pairs([("a", 1 / 61)])


@pytest.mark.parametrize(
    "bad, message",
    [
        (Fusion(method="max"), "fusion method 'max' is not one of rrf, convex"),
        (Fusion(weight=-0.1), r"fusion weight=-0.1 must be a number in \[0, 1\]"),
        (Fusion(weight=True), "fusion weight=True"),
        (Fusion(depth=0), "fusion depth=0 must be a positive integer"),
        (Fusion(rrf_c=1.5), "fusion rrf_c=1.5 must be a positive integer"),
    ],
)
def test_bad_settings_say_the_value(bad, message):
    with pytest.raises(InputError, match=message):
        bad.check()


def test_the_tuning_rule_picks_the_best_worst_case_setting():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("hybrid_tune", Path(__file__).parents[1] / "eval" / "hybrid_tune.py")
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)

    def sweep(name, dense, lexical, hybrid):
        rows = [{"setting": "dense", "ndcg@10": dense}, {"setting": "lexical", "ndcg@10": lexical}]
        rows += [{"setting": "hybrid", "method": m, "weight": w, "depth": d, "ndcg@10": v} for (m, w, d), v in hybrid]
        return {"dataset": name, "split": "dev", "rows": rows}

    a = sweep("a", 0.50, 0.40, [(("rrf", 0.5, 100), 0.56), (("convex", 0.3, 50), 0.60), (("rrf", 0.7, 20), 0.52)])
    b = sweep("b", 0.30, 0.35, [(("rrf", 0.5, 100), 0.37), (("convex", 0.3, 50), 0.33), (("rrf", 0.7, 20), 0.38)])
    # worst-case margins: rrf 0.5 +0.02, convex 0.3 -0.02, rrf 0.7 +0.02 -> tie; mean margin 0.04 vs 0.025
    choice = tune.choose([a, b])
    assert (choice["method"], choice["weight"], choice["depth"]) == ("rrf", 0.5, 100)
    assert choice["min_margin"] == pytest.approx(0.02) and choice["tied_settings"] == 2
