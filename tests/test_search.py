"""k is honoured: a search returns min(k, live matching documents), unique, by score, and the exhaustive
fill-up agrees with a naive MaxSim oracle over the same (decoded) vectors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pooledir.corpus import Document
from pooledir.maxsim import maxsim
from pooledir.pooled_index import IndexConfig, PooledIndex
from pooledir.search import SearchParams, exact_search, search_embeddings, trailing_zeros_cut
from tests.conftest import FakeEncoder
from tests.engine import engine

DIM = 16
N_DOCS = 160
GROUPS = 4
DELETED = [f"d{i}" for i in range(0, N_DOCS, 7)]  # tombstones spread over every segment
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def unit_rows(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_maxsim(q: np.ndarray, doc: np.ndarray) -> float:
    return float(sum(max(float(t @ v) for v in doc) for t in q))


def corpus() -> tuple[list[Document], list[np.ndarray]]:
    rng = np.random.default_rng(7)
    docs = [Document(f"d{i}", f"text {i}", {"grp": i % GROUPS}) for i in range(N_DOCS)]
    vectors = [unit_rows(rng, int(rng.integers(1, 6))) for _ in range(N_DOCS)]
    return docs, vectors


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """A flat and an IVF-PQ index of the same documents, in three segments, with some deleted."""
    docs, vectors = corpus()
    out = {}
    for backend in ("flat", "ivfpq"):
        config = IndexConfig(backend=backend, pool_factor=1, train_min_vectors=100, max_segments=64)
        idx = PooledIndex.create(
            tmp_path_factory.mktemp(backend), config=config, device="cpu", encoder=FakeEncoder(DIM)
        )
        for part in np.array_split(np.arange(N_DOCS), 3):
            idx.add([docs[i] for i in part], embeddings=[vectors[i] for i in part], pooled=True)
        idx.delete(DELETED)
        out[backend] = idx
    assert out["ivfpq"].info()["backend"]["trained"] and len(engine(out["ivfpq"]).snapshot.segments) == 3
    yield out
    for idx in out.values():
        idx.close()


def oracle(idx: PooledIndex, q: np.ndarray) -> dict[str, float]:
    """Naive MaxSim of every live document, over the vectors the index stores (decoded for IVF-PQ)."""
    snap = engine(idx).snapshot
    live = np.flatnonzero(snap.seg_of >= 0)
    vectors, offsets = snap.fetch(live)
    ids = engine(idx).store.ext_ids(live)
    return {i: naive_maxsim(q, vectors[a:b]) for i, a, b in zip(ids, offsets[:-1], offsets[1:])}


def query(seed: int, n_tokens: int) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed), n_tokens)[None]


def check_hits(hits, want: int, scores: dict[str, float]) -> None:
    ids = [h.id for h in hits]
    assert len(hits) == want
    assert len(set(ids)) == len(ids)
    got = np.array([h.score for h in hits])
    assert np.all(np.diff(got) <= 1e-6)
    assert np.allclose(got, [scores[i] for i in ids], atol=1e-4)


@given(
    backend=st.sampled_from(["flat", "ivfpq"]),
    n_tokens=st.integers(1, 3),
    k=st.integers(1, N_DOCS + 20),
    seed=st.integers(0, 10_000),
    nprobe=st.sampled_from([1, 2, 32]),
    candidates=st.sampled_from([1, 4, 32]),
    rerank=st.sampled_from([1, 8, 64]),
    group=st.one_of(st.none(), st.integers(0, GROUPS)),
)
@SETTINGS
def test_search_returns_min_k_live_matching_documents(
    indexes, backend, n_tokens, k, seed, nprobe, candidates, rerank, group
):
    idx = indexes[backend]
    Q = query(seed, n_tokens)
    params = SearchParams(k=k, nprobe=nprobe, candidates_per_token=candidates, rerank=rerank)
    hits = idx.search_embeddings(Q, params, filter=None if group is None else {"grp": group})[0]
    scores = oracle(idx, Q[0])
    live = [f"d{i}" for i in range(N_DOCS) if f"d{i}" not in DELETED and (group is None or i % GROUPS == group)]
    assert len(scores) == N_DOCS - len(DELETED)
    check_hits(hits, min(k, len(live)), scores)
    assert {h.id for h in hits} <= set(live)


@pytest.mark.parametrize("backend", ["flat", "ivfpq"])
def test_default_params_honour_k_for_one_token_queries(indexes, backend):
    """The issue's case: short queries and k above the candidates one token brings in."""
    idx = indexes[backend]
    n_live = N_DOCS - len(DELETED)
    for seed, k in [(1, 100), (2, 120), (3, n_live - 1), (4, n_live), (5, 1000)]:
        Q = query(seed, 1)
        check_hits(idx.search_embeddings(Q, SearchParams(k=k))[0], min(k, n_live), oracle(idx, Q[0]))


@pytest.mark.parametrize("backend", ["flat", "ivfpq"])
def test_exhaustive_params_give_the_oracle_ranking(indexes, backend):
    idx = indexes[backend]
    Q = query(11, 2)
    scores = oracle(idx, Q[0])
    hits = idx.search_embeddings(Q, SearchParams(k=25, candidates_per_token=1, rerank=1, exhaustive=True))[0]
    assert np.allclose([h.score for h in hits], sorted(scores.values(), reverse=True)[:25], atol=1e-4)


# -- the search function alone: candidates from a fake ANN that brings in only some documents ----------------------
def packed(docs: list[np.ndarray]):
    lengths = np.array([len(d) for d in docs])
    flat = np.concatenate(docs)
    starts = np.concatenate([[0], np.cumsum(lengths)])

    def fetch(doc_ints: np.ndarray):
        doc_ints = np.asarray(doc_ints, dtype=np.int64)
        counts = lengths[doc_ints]
        rows = np.concatenate([np.arange(starts[d], starts[d] + lengths[d]) for d in doc_ints])
        return flat[rows], np.concatenate([[0], np.cumsum(counts)])

    return fetch


@given(
    n_docs=st.integers(1, 40),
    n_tokens=st.integers(1, 3),
    n_queries=st.integers(1, 3),
    k=st.integers(1, 50),
    brought=st.integers(0, 40),
    seed=st.integers(0, 10_000),
)
@SETTINGS
def test_the_fill_up_agrees_with_the_oracle(n_docs, n_tokens, n_queries, k, brought, seed):
    """However few documents the ANN step finds, the answer has min(k, live) documents; short answers are
    completed by exhaustive MaxSim, so they equal the oracle's top scores."""
    rng = np.random.default_rng(seed)
    docs = [unit_rows(rng, int(rng.integers(1, 5))) for _ in range(n_docs)]
    fetch = packed(docs)
    live = np.sort(rng.choice(n_docs, size=int(rng.integers(1, n_docs + 1)), replace=False))
    found = rng.permutation(live)[: min(brought, len(live))]
    Q = unit_rows(rng, n_queries * n_tokens).reshape(n_queries, n_tokens, DIM)

    def ann(tokens: np.ndarray, kp: int, nprobe: int):
        hits = np.resize(found, kp) if len(found) else np.full(kp, -1)
        docs_ = np.broadcast_to(hits, (len(tokens), kp)).copy()
        return np.where(docs_ >= 0, 0.5, 0.0).astype(np.float32), docs_.astype(np.int64)

    ranked = search_embeddings(Q, ann, fetch, SearchParams(k=k, candidates_per_token=2, rerank=2), live)
    want = min(k, len(live))
    for q, (doc_ints, scores) in enumerate(ranked):
        truth = {int(d): naive_maxsim(Q[q], docs[d]) for d in live}
        assert len(doc_ints) == want and len(set(doc_ints.tolist())) == want
        assert set(doc_ints.tolist()) <= set(truth)
        assert np.all(np.diff(scores) <= 1e-6)
        assert np.allclose(scores, [truth[int(d)] for d in doc_ints], atol=1e-4)
        if len(found) < want:  # filled up: exhaustive over every live document
            assert np.allclose(scores, sorted(truth.values(), reverse=True)[:want], atol=1e-4)


def test_a_short_query_asks_for_more_candidates_before_scoring_everything(monkeypatch):
    """One token whose nearest vectors come two per document: wider rounds find k documents, no full scan."""
    import pooledir.search as search

    rng = np.random.default_rng(4)
    docs = [unit_rows(rng, 2) for _ in range(500)]
    asked = []

    def ann(tokens: np.ndarray, kp: int, nprobe: int):
        asked.append((kp, nprobe))
        hits = np.repeat(np.arange(kp // 2), 2)[:kp]  # kp nearest vectors, from kp / 2 documents
        return np.full((len(tokens), kp), 0.5, np.float32), np.broadcast_to(hits, (len(tokens), kp)).copy()

    def no_full_scan(*args, **kwargs):
        raise AssertionError("scored every document")

    monkeypatch.setattr(search, "exact_search", no_full_scan)
    Q = unit_rows(rng, 1)[None]
    ranked = search_embeddings(Q, ann, packed(docs), SearchParams(k=100), np.arange(500))
    assert len(ranked[0][0]) == 100 and len(set(ranked[0][0].tolist())) == 100
    assert asked == [(100, 32), (400, 128)]


def test_exact_search_in_small_blocks_equals_one_block():
    rng = np.random.default_rng(3)
    docs = [unit_rows(rng, int(rng.integers(1, 5))) for _ in range(57)]
    fetch = packed(docs)
    Q = unit_rows(rng, 8).reshape(4, 2, DIM)
    live = np.arange(57)
    for k in (1, 10, 57, 80):
        whole = exact_search(Q, live, fetch, k, chunk=1000)
        for a, b in zip(whole, exact_search(Q, live, fetch, k, chunk=5)):
            assert len(a[0]) == min(k, 57)
            assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1])


# -- passages: k documents, not k passages ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["flat", "ivfpq"])
def test_a_passage_index_returns_min_k_live_matching_documents(tmp_path, tiny_encoder, backend):
    from tests.conftest import WORDS

    rng = np.random.default_rng(5)
    docs = [Document(f"long{i}", " ".join(rng.choice(WORDS, 300)), {"grp": i % 2}) for i in range(8)]
    docs += [Document(f"short{i}", " ".join(rng.choice(WORDS, 12)), {"grp": i % 2}) for i in range(10)]
    config = IndexConfig(backend=backend, passage_stride=30, train_min_vectors=100)
    idx = PooledIndex.create(tmp_path / "i", config=config, device="cpu", encoder=tiny_encoder)
    idx.add(docs)
    idx.delete(["long0", "long3", "short1", "short4"])
    assert idx.n_rows > 3 * 14 and len(idx) == 14  # the long documents' passages outnumber the documents
    parents = {d.id: d.metadata["grp"] for d in docs if d.id not in ("long0", "long3", "short1", "short4")}
    Q = tiny_encoder.encode_queries(["cancer", "vitamin bone"])
    for n_tokens in (1, 2, Q.shape[1]):
        q = Q[:, :n_tokens]
        for k in (1, 3, 10, 13, 14, 40):
            for where in (None, {"grp": 0}, {"grp": 1}):
                want = min(k, sum(where is None or g == where["grp"] for g in parents.values()))
                for hits in idx.search_embeddings(q, SearchParams(k=k, candidates_per_token=1, rerank=1), filter=where):
                    ids = [h.id for h in hits]
                    assert len(ids) == want and len(set(ids)) == want and set(ids) <= set(parents)
                    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


# -- the evaluation's exact baseline ------------------------------------------------------------------------------
def test_the_evaluations_flat_system_scores_every_document(tmp_path):
    from pooledir.evaluation.systems.base import Context
    from pooledir.evaluation.systems.pooledir import PooledirSystem, systems

    docs, vectors = corpus()
    exact = PooledirSystem("flat", 1)
    exact.build(Context(FakeEncoder(DIM), "cpu", tmp_path), docs, vectors)
    try:
        assert exact.params.exhaustive
        assert [s.params.exhaustive for s in systems(pool_factors=[1])] == [False, True]  # ivfpq, flat
        Q = np.concatenate([query(s, 1) for s in range(5)])
        for q, hits in zip(Q, exact.search(["q"] * 5, 100, vectors=Q)):
            stored = [v.astype(np.float16).astype(np.float32) for v in vectors]  # a flat index keeps float16
            truth = sorted((naive_maxsim(q, v) for v in stored), reverse=True)[:100]
            assert np.allclose([h.score for h in hits], truth, atol=1e-4)
    finally:
        exact.close()


@settings(max_examples=40, deadline=None)
@given(used=st.integers(0, 32), gap=st.booleans(), docs=st.integers(1, 30), seed=st.integers(0, 10**6))
def test_cutting_a_querys_trailing_zero_rows_keeps_its_maxsim(used, gap, docs, seed):
    """Padding rows (zero, at the end) are cut before MaxSim; an interior zero row stays; every score is equal up
    to float32 rounding (BLAS and numpy's sum may order a product or a sum of fewer rows differently)."""
    rng = np.random.default_rng(seed)
    query = np.zeros((1, 32, 16), np.float32)
    query[0, :used] = rng.standard_normal((used, 16))
    if gap and used > 2:
        query[0, used // 2] = 0
    counts = rng.integers(1, 40, docs)
    vectors = rng.standard_normal((int(counts.sum()), 16)).astype(np.float32)
    offsets = np.r_[0, np.cumsum(counts)]
    cut = trailing_zeros_cut(query)
    assert cut.shape[1] == max(used, 1)
    np.testing.assert_allclose(maxsim(cut, vectors, offsets), maxsim(query, vectors, offsets), rtol=1e-6, atol=1e-6)
