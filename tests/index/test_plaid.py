"""The centroid lane (PLAID's candidate generation over the mapped pq3 codes) against exhaustive MaxSim.

Random data here is clustered, as token embeddings are (documents about topics, queries about one of them):
on uniform random vectors centroid scores say little about MaxSim, on any lane's data they are the point.
"""

from __future__ import annotations

import numpy as np
import pytest

from pooledir.corpus import Document
from pooledir.index.plaid import (
    LONG_RUNS,
    PLAID_THRESHOLDS,
    THRESHOLDS,
    CentroidLane,
    _interaction,
    _max_by_rank,
    _max_by_token,
    _pruned,
    _stable_order,
    lane_depths,
    plaid_ndocs,
    threshold_for,
)
from pooledir.pooled_index import IndexConfig, PooledIndex
from pooledir.search import SearchParams, exact_search, search_embeddings
from tests.conftest import FakeEncoder
from tests.engine import engine

DIM = 32
TOPICS = 40
N_DOCS = 900


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def topics() -> np.ndarray:
    return unit_rows(np.random.default_rng(0).standard_normal((TOPICS, DIM)))


def clustered_docs(seed: int = 1) -> list[np.ndarray]:
    """Documents of 3-12 vectors, each near one of the document's two topics."""
    rng, centres = np.random.default_rng(seed), topics()
    out = []
    for _ in range(N_DOCS):
        mine = rng.choice(TOPICS, 2, replace=False)
        n = int(rng.integers(3, 13))
        out.append(unit_rows(centres[rng.choice(mine, n)] + 0.6 * rng.standard_normal((n, DIM)) / np.sqrt(DIM)))
    return out


def clustered_queries(n: int, seed: int = 2, tokens: int = 8) -> np.ndarray:
    rng, centres = np.random.default_rng(seed), topics()
    about = rng.integers(0, TOPICS, n)
    return unit_rows(centres[about][:, None, :] + 0.6 * rng.standard_normal((n, tokens, DIM)) / np.sqrt(DIM))


def build(path, docs: list[np.ndarray], parts: int = 3, deleted: list[str] = ()) -> PooledIndex:
    config = IndexConfig(
        backend="ivfpq",
        pool_factor=1,
        train_min_vectors=1000,
        pq_m=8,
        max_segments=64,
        max_dead_fraction=0.9,
        retrain_factor=100.0,
    )
    idx = PooledIndex.create(path, config=config, device="cpu", encoder=FakeEncoder(DIM))
    for part in np.array_split(np.arange(len(docs)), parts):
        idx.add([Document(f"d{i}", "") for i in part], embeddings=[docs[i] for i in part], pooled=True)
    if deleted:
        idx.delete(list(deleted))
    return idx


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    idx = build(
        tmp_path_factory.mktemp("plaid") / "i", clustered_docs(), deleted=[f"d{i}" for i in range(0, N_DOCS, 5)]
    )
    snap = engine(idx).snapshot
    assert {s.kind for s in snap.segments} == {"pq3"} and len(snap.segments) == 3
    yield idx
    idx.close()


def test_depths_grow_with_k_as_plaids():
    assert [plaid_ndocs(k) for k in (1, 10, 11, 100, 101, 2000)] == [256, 256, 1024, 1024, 4096, 8000]
    d = lane_depths(100, ncells=4)
    assert (d.ncells, d.ndocs, d.rescore) == (4, 1024, 256)
    assert lane_depths(10, 4, depth=0.5, rerank=64).rescore == 64  # rerank is a floor on what is decoded
    assert lane_depths(500, 4, depth=0.01).rescore == 500  # never fewer than k


@pytest.mark.parametrize("k", [10, 100])
def test_the_lane_finds_the_exhaustive_top_k(index, k):
    """Recall of the exact top k (exhaustive MaxSim over the same decoded vectors) among the unpruned lane's
    candidates and in its answers: >= 0.95 (0.99-1.0 measured), answers of length k, never a dead doc.
    (Pruning lists by an absolute centroid score is opt-in: see the pruning tests below.)"""
    snap = engine(index).snapshot
    Q = clustered_queries(20)
    live = snap.live_docs()
    truth = exact_search(Q, live, snap.fetch, k)
    (default,) = snap.sources()
    assert isinstance(default, CentroidLane) and default.thresholds is None  # pruning is opt-in
    lane = CentroidLane(default.centroids, list(snap.segments), thresholds=None)
    cands = lane.candidates(Q, SearchParams(k=k))
    store = engine(index).store
    answers = [store.ext_ids(d) for d, _ in search_embeddings(Q, lane, snap.fetch, SearchParams(k=k), live)]
    found = [len(set(c.tolist()) & set(t.tolist())) / k for c, (t, _) in zip(cands, truth)]
    ext = [set(store.ext_ids(t)) for t, _ in truth]
    got = [len(set(hits) & want) / k for hits, want in zip(answers, ext)]
    assert np.mean(found) >= 0.95 and np.mean(got) >= 0.95, (np.mean(found), np.mean(got))
    assert all(len(c) <= lane_depths(k, 32, rerank=64).rescore for c in cands)
    assert all(len(h) == k for h in answers)
    dead = {f"d{i}" for i in range(0, N_DOCS, 5)}
    assert not any(h in dead for hits in answers for h in hits)


def test_dead_vectors_never_come_back(index):
    """Probing every list as deep as there are documents yields exactly the live documents: no deleted one."""
    snap = engine(index).snapshot
    assert all(s.live is not None for s in snap.segments)  # every segment holds dead vectors
    (lane,) = snap.sources()
    nlist = len(snap.centroids())
    everything = lane_depths(10, ncells=nlist, depth=N_DOCS, rerank=N_DOCS)
    for c in lane.at_depths(clustered_queries(3), everything):
        assert sorted(c.tolist()) == snap.live_docs().tolist()


def test_min_k_live_with_deletions_and_several_segments(tmp_path):
    """Shallow lanes and a nearly emptied segment: every search still returns min(k, live) unique live documents."""
    gone = [f"d{i}" for i in range(0, N_DOCS, 3)] + [f"d{i}" for i in range(720, 895)]
    idx = build(tmp_path / "i", clustered_docs(seed=3), parts=5, deleted=gone)
    try:
        n_live = len(idx)
        assert len(engine(idx).snapshot.segments) == 5 and n_live == N_DOCS - len(set(gone))
        Q = clustered_queries(4, seed=5, tokens=2)
        for k in (1, 10, 100, n_live - 1, n_live + 10):
            for knobs in ({"nprobe": 1, "candidates_per_token": 1, "rerank": 1}, {}):
                for hits in idx.search_embeddings(Q, SearchParams(k=k, **knobs)):
                    ids = [h.id for h in hits]
                    assert len(ids) == min(k, n_live) and len(set(ids)) == len(ids)
                    assert not set(ids) & set(gone)
                    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    finally:
        idx.close()


def test_searching_a_pq3_index_builds_no_faiss_copy_of_its_codes(index, monkeypatch):
    """The codes stay in the file's memory map: no IndexIVFPQ (8-byte id a vector) is built to search them."""
    import faiss

    def refuse(*args, **kwargs):
        raise AssertionError("built a faiss IndexIVFPQ while searching")

    monkeypatch.setattr(faiss, "IndexIVFPQ", refuse)
    index.search_embeddings(clustered_queries(3), SearchParams(k=10))
    index.search_embeddings(clustered_queries(3), SearchParams(k=100))
    snap = engine(index).snapshot
    snap.ann(clustered_queries(1)[0], 10, 4)  # the per-token lane over a pq3 segment reads the map too
    for seg in snap.segments:
        assert isinstance(seg.file.codes.base, np.memmap) and not hasattr(seg.file, "_ivf")


def test_candidates_of_several_lanes_are_ranked_together(index):
    """An index with pq3 and older segments asks each lane; their candidates are scored by one exact MaxSim."""
    snap = engine(index).snapshot
    (lane,) = snap.sources()
    live = snap.live_docs()
    half = set(live[: len(live) // 2].tolist())

    class Part:  # a lane that only sees some documents, as each lane sees only its segments
        def __init__(self, keep: bool) -> None:
            self.keep = keep

        def candidates(self, queries, params):
            return [
                np.array([d for d in c if (d in half) == self.keep], np.int64) for c in lane.candidates(queries, params)
            ]

    Q = clustered_queries(5)
    both = search_embeddings(Q, [Part(True), Part(False)], snap.fetch, SearchParams(k=10), live)
    alone = search_embeddings(Q, lane, snap.fetch, SearchParams(k=10), live)
    for (a, sa), (b, sb) in zip(both, alone):
        assert np.array_equal(a, b) and np.allclose(sa, sb)


def test_a_merged_segment_keeps_every_document_findable(tmp_path):
    """Tiered merges leave a segment's documents in merge order, not sorted: the lane must still find each one.

    Failed before the fix (recall 0.68: stage c looked documents up as if a segment's doc_ints were sorted).
    """
    docs = clustered_docs()
    config = IndexConfig(backend="ivfpq", pool_factor=1, train_min_vectors=1000, pq_m=8, max_segments=4)
    idx = PooledIndex.create(tmp_path / "i", config=config, device="cpu", encoder=FakeEncoder(DIM))
    try:
        for part in np.array_split(np.arange(len(docs)), 60):
            idx.add([Document(f"d{i}", "") for i in part], embeddings=[docs[i] for i in part], pooled=True)
        snap = engine(idx).snapshot
        assert any(np.any(np.diff(s.doc_ints) < 0) for s in snap.segments)  # the case under test is there
        Q = clustered_queries(20)
        truth = exact_search(Q, snap.live_docs(), snap.fetch, 10)
        answers = idx.search_embeddings(Q, SearchParams(k=10))
        want = [set(engine(idx).store.ext_ids(t)) for t, _ in truth]
        assert np.mean([len({h.id for h in a} & w) / 10 for a, w in zip(answers, want)]) >= 0.95
    finally:
        idx.close()


def naive_interaction(S: np.ndarray, docs: np.ndarray, lists: np.ndarray) -> dict[int, float]:
    """Per document: sum over tokens of the max of S[token, list] over the document's lists (a double loop)."""
    out = {}
    for d in np.unique(docs):
        mine = lists[docs == d]
        out[int(d)] = float(sum(max(S[t, c] for c in mine) for t in range(S.shape[0])))
    return out


@pytest.mark.parametrize("per_doc", [1, 3, LONG_RUNS, 5 * LONG_RUNS])
def test_the_centroid_interaction_equals_a_double_loop(per_doc):
    """Both ways of reducing the pairs (token by token for long runs, rank by rank for short ones) give the
    naive double loop's scores, bit for bit equal to each other, whatever order the pairs come in."""
    rng = np.random.default_rng(per_doc)
    S = rng.standard_normal((7, 50)).astype(np.float32)
    n_docs = 40
    docs = np.repeat(rng.permutation(1000)[:n_docs], rng.integers(1, 2 * per_doc + 1, n_docs))
    lists = rng.integers(0, 50, len(docs))
    shuffle = rng.permutation(len(docs))
    got_docs, got = _interaction(S, np.ascontiguousarray(S.T), docs[shuffle], lists[shuffle])
    want = naive_interaction(S, docs, lists)
    assert got_docs.tolist() == sorted(want)
    np.testing.assert_allclose(got, [want[d] for d in got_docs.tolist()], rtol=1e-5)
    o = np.argsort(docs, kind="stable")
    first = np.flatnonzero(np.r_[True, docs[o][1:] != docs[o][:-1]])
    by_token, by_rank = _max_by_token(S, lists[o], first), _max_by_rank(np.ascontiguousarray(S.T), lists[o], first)
    assert np.array_equal(by_token, by_rank)


@pytest.mark.parametrize("top", [40, 1 << 16, 1 << 31, 1 << 40])
def test_the_radix_order_is_numpys_stable_argsort(top):
    """16-bit keys (one radix pass), up to 2**32 (two), beyond (timsort): always the stable argsort."""
    keys = np.random.default_rng(top).integers(0, top, 5000)
    keys[::7] = keys[0]  # ties: stability is what the rank-wise reduction relies on
    assert np.array_equal(_stable_order(keys), np.argsort(keys, kind="stable"))
    assert len(_stable_order(np.empty(0, np.int64))) == 0


def test_runs_hold_each_live_documents_vectors_in_the_probed_lists(index):
    """Grouping by row ranges equals looking each row's document up and testing its live bit (deletions, three
    segments): the same (document, list) pairs, one run per document, never a deleted document."""
    snap = engine(index).snapshot
    lane = CentroidLane(snap.centroids(), list(snap.segments))
    cells = np.arange(0, snap.quantizer.nlist, 3)
    docs, lists, first = lane._runs(cells)
    got = sorted(zip(np.repeat(docs, np.diff(np.r_[first, len(lists)])).tolist(), lists.tolist()))
    want = []
    for seg in lane.segments:
        rows, of_list = seg.file.rows_of_lists(cells)
        keep = seg.alive(rows)
        want += zip(seg.docs_of(rows[keep]).tolist(), of_list[keep].tolist())
    assert got == sorted(want) and len(got) > 0
    assert len(np.unique(docs)) == len(docs)
    assert set(docs.tolist()) <= set(snap.live_docs().tolist())


def test_padded_tokens_change_no_candidate(index):
    """Queries of 3-8 tokens zero-padded to 8 in one batch: the same candidates as each query alone, unpadded
    (the lane scores only the used rows against the centroids, in one product for the batch)."""
    snap = engine(index).snapshot
    (lane,) = snap.sources()
    Q = clustered_queries(6)
    lengths = [3, 8, 5, 1, 7, 4]
    for q, n in enumerate(lengths):
        Q[q, n:] = 0
    batch = lane.candidates(Q, SearchParams(k=10))
    for q, n in enumerate(lengths):
        np.testing.assert_array_equal(batch[q], lane.candidates(Q[q : q + 1, :n], SearchParams(k=10))[0])
    assert len(lane.candidates(np.zeros((1, 8, DIM), np.float32), SearchParams(k=10))[0]) == 0


def test_pruning_drops_the_lists_below_the_threshold_unless_it_would_drop_all():
    S = np.array([[0.9, 0.3, 0.55, 0.1], [0.2, 0.49, 0.4, 0.6]], np.float32)
    cells = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(_pruned(S, cells, 0.5), [0, 2, 3])  # best over the tokens: .9 .49 .55 .6
    np.testing.assert_array_equal(_pruned(S, cells[[1]], 0.5), [1])  # none reaches it: nothing is cut
    assert [threshold_for(k, PLAID_THRESHOLDS) for k in (1, 10, 11, 100, 101, 5000)] == [0.5, 0.5, 0.45, 0.45, 0.4, 0.4]
    assert [threshold_for(k, THRESHOLDS) for k in (10, 100, 101)] == [0.45, 0.4, 0.35]
    assert threshold_for(10, None) is None


@pytest.mark.parametrize(("k", "floor"), [(10, 0.95), (100, 0.9)])
def test_the_pruned_lane_cuts_lists_and_still_finds_the_top_k(index, k, floor):
    """The tuned thresholds (0.45 at k=10, 0.4 at k=100, over the fixture's 32-d unit vectors) cut probed lists;
    a pruned search's answers keep >= 0.95 of the exact top 10 and >= 0.9 of the top 100 (measured: 1.0 and
    0.914; unpruned 0.95+ as above: an absolute threshold depends on the vectors' score scale, which is why
    pruning is opt-in). A threshold no list reaches prunes nothing."""
    snap = engine(index).snapshot
    (default,) = snap.sources()
    Q = clustered_queries(20)
    live = snap.live_docs()
    truth = exact_search(Q, live, snap.fetch, k)
    ext = [set(engine(index).store.ext_ids(t)) for t, _ in truth]
    pruned = CentroidLane(default.centroids, list(snap.segments), THRESHOLDS)
    found = search_embeddings(Q, pruned, snap.fetch, SearchParams(k=k), live)
    answers = [engine(index).store.ext_ids(d) for d, _ in found]
    got = [len(set(hits) & want) / k for hits, want in zip(answers, ext)]
    assert np.mean(got) >= floor, np.mean(got)
    assert all(len(h) == k for h in answers)
    S = Q[0] @ default.centroids.T
    cells = np.unique(np.argpartition(-S, 7, axis=1)[:, :8])
    assert 0 < len(_pruned(S, cells, threshold_for(k, THRESHOLDS))) < len(cells)
    plain = CentroidLane(default.centroids, list(snap.segments), thresholds=None)
    never = CentroidLane(default.centroids, list(snap.segments), ((None, 2.0),))
    for a, b in zip(never.candidates(Q, SearchParams(k=k)), plain.candidates(Q, SearchParams(k=k))):
        np.testing.assert_array_equal(a, b)


def test_search_params_prune_turns_on_the_tuned_thresholds(index):
    """``SearchParams(prune=True)`` (the CLI's ``--prune``, the service's ``"prune": true``) gives the candidates
    of a lane built with :data:`THRESHOLDS`, and the facade's answers are those of that lane; off by default."""
    snap = engine(index).snapshot
    (default,) = snap.sources()
    assert default.thresholds is None
    Q = clustered_queries(20)
    pruned = CentroidLane(default.centroids, list(snap.segments), THRESHOLDS)
    on, off = SearchParams(k=10, prune=True), SearchParams(k=10)
    got, want, plain = default.candidates(Q, on), pruned.candidates(Q, off), default.candidates(Q, off)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(got, plain))  # the knob changes the lists
    found = search_embeddings(Q, pruned, snap.fetch, off, snap.live_docs())
    answers = index.search_embeddings(Q, on)
    assert [[h.id for h in hits] for hits in answers] == [engine(index).store.ext_ids(d) for d, _ in found]


def test_pairs_already_in_document_order_are_not_sorted_again(monkeypatch):
    """One segment's (doc, list) pairs come in ascending document order: the interaction skips the sort and
    scores exactly as on the same pairs shuffled."""
    rng = np.random.default_rng(5)
    S = rng.standard_normal((6, 50)).astype(np.float32)
    docs = np.repeat(np.arange(0, 200, 7), rng.integers(1, 30, 29))
    lists = rng.integers(0, 50, len(docs))
    shuffled = rng.permutation(len(docs))
    want = _interaction(S, np.ascontiguousarray(S.T), docs[shuffled], lists[shuffled])
    sorts = []
    real = np.argsort
    monkeypatch.setattr(np, "argsort", lambda a, *args, **kw: sorts.append(a is docs) or real(a, *args, **kw))
    got = _interaction(S, np.ascontiguousarray(S.T), docs, lists)
    assert not any(sorts)  # the ranks of _max_by_rank are still sorted, the documents not
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
