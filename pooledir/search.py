"""Late-interaction search: candidate documents per kind of segment, then MaxSim on the best of them.

Candidates come from one lane per kind of segment (``Snapshot.sources()``), ranked together:

* **pq3 segments** (format 3, the default): the centroid lane, PLAID's candidate generation over the mapped
  codes (:mod:`pooledir.index.plaid`): per query token its ``nprobe / 4`` best lists by q·centroid, the documents
  in them ranked by centroid interaction, the best PLAID-``ndocs`` (256 for k <= 10, 1,024 for k <= 100, then
  max(4k, 4,096), times ``candidates_per_token / 32``) ranked again over all their vectors' lists, and the best
  ``max(ndocs / 4, rerank, k)`` go on.
* **format-2 pq and flat segments**: per-token ANN (:class:`TokenAnn`): every query token asks for its
  ``max(candidates_per_token, k)`` nearest vectors (``nprobe`` lists for IVF-PQ); each candidate gets an
  approximate MaxSim from those hits alone (per query token its best hit or, where none of its vectors came
  back, that token's lowest returned score); the best ``max(rerank, k)`` go on.

Then:

1. The candidates are scored by full MaxSim over all their vectors (decoded from PQ, or the exact float16
   copy) and the top ``k`` are returned.
2. A query whose candidates hold fewer than ``min(k, live documents)`` documents (a short query, sparse
   lists, many deleted vectors) asks again with 4x, then 16x ``nprobe`` and ``candidates_per_token``; if still
   short, it is ranked by :func:`exact_search` over every live document. Every search returns
   ``min(k, live documents)`` documents.

With a metadata filter, or ``exhaustive=True``, or ``k`` at least half the
documents, :func:`exact_search` scores every (matching) document by full MaxSim.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

import numpy as np

from pooledir.errors import InputError
from pooledir.maxsim import maxsim

log = logging.getLogger(__name__)

#: k from which on a search scores every document, as a fraction (1 / this) of the live documents: re-scoring
#: that many candidates decodes about as much as scoring them all, and the ANN step would come on top
EXHAUSTIVE_FRACTION = 2
#: how much more nearest vectors and IVF lists a query asks for, round by round, while its candidates
#: hold fewer than k documents; after the last round it is ranked exhaustively
WIDEN = (4, 16)
#: query tokens up to which a search runs its BLAS calls (coarse assignment, MaxSim) on one thread
SMALL_SEARCH_TOKENS = 512
_blas = None

#: fetch(doc_ints) -> (packed vectors (N, d), offsets (len(doc_ints) + 1,))
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: ann(tokens (n, d), k, nprobe) -> (scores (n, k), doc_ints (n, k)); -1 = no hit
Ann = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True)
class SearchParams:
    """Knobs of one search.

    Attributes
    ----------
    k : documents returned per query.
    nprobe : IVF lists visited per query token by per-token ANN; the centroid lane (pq3) probes nprobe / 4
        (PLAID's ncells: 8 at the default); ignored by flat segments.
    candidates_per_token : per-token ANN: nearest vectors fetched per query token (at least ``k``); centroid
        lane: its depth, PLAID's ndocs for ``k`` times ``candidates_per_token / 32``.
    rerank : candidate documents scored by full MaxSim, at least (and at least ``k``; the centroid lane
        scores at least ndocs / 4).
    exhaustive : score every document by full MaxSim, no ANN step (the exact oracle; slow).
    prune : the centroid lane (pq3) drops query-token x centroid scores under PLAID's thresholds less 0.05
        before its candidate lists (0.45 / 0.4 / 0.35 for k <= 10 / 100 / more). Off by default: the thresholds
        are absolute scores, so they suit an encoder whose scores sit as MiniLM-ColBERT's do; on its tuning
        sets pruning kept 99.8-100% of the unpruned lane's nDCG@10 and Recall@100 at 0.92-0.98x its p50
        (eval/results/search_rule.md).
    """

    k: int = 10
    # tuned on SciFact train qrels (eval/results/tune_scifact_train.json): more candidates or reranked
    # documents bought no nDCG@10 there, only time; see the README's "Tuning" for how these were chosen
    nprobe: int = 32
    candidates_per_token: int = 32
    rerank: int = 64
    exhaustive: bool = False
    prune: bool = False

    @classmethod
    def from_optional(
        cls,
        k: int = 10,
        nprobe: int | None = None,
        candidates_per_token: int | None = None,
        rerank: int | None = None,
        prune: bool | None = None,
    ) -> SearchParams:
        """These defaults for every knob given as None (an option the CLI or an HTTP request left out)."""
        knobs: dict[str, Any] = {
            "nprobe": nprobe,
            "candidates_per_token": candidates_per_token,
            "rerank": rerank,
            "prune": prune,
        }
        return replace(cls(k=k), **{n: v for n, v in knobs.items() if v is not None})

    def check(self, n_documents: int | None = None) -> None:
        """Raise :class:`InputError` naming the bad value and the allowed range.

        A ``k`` above the index's document count is fine: a search returns the documents there are
        (``n_documents`` is accepted for older callers and not used).
        """
        for name in ("k", "nprobe", "candidates_per_token", "rerank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise InputError(f"{name}={value!r} must be a positive integer")
        for name in ("exhaustive", "prune"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"{name}={getattr(self, name)!r} must be true or false")

    def depths(self) -> tuple[int, int]:
        """(nearest vectors per query token, documents re-scored by MaxSim): both grow with ``k``."""
        return max(self.candidates_per_token, self.k), max(self.rerank, self.k)


def approximate_scores(scores: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate documents of one query and their approximate MaxSim.

    Parameters
    ----------
    scores, docs : (Lq, k') arrays
        Per query token, the scores of its nearest vectors and their documents (-1: no hit).

    Returns
    -------
    (candidates (n,), approx (n,))
    """
    lq, kp = scores.shape
    valid = docs >= 0
    if not valid.any():
        return np.empty(0, np.int64), np.empty(0, np.float32)
    token = np.broadcast_to(np.arange(lq)[:, None], (lq, kp))[valid]
    cands, inverse = np.unique(docs[valid], return_inverse=True)
    floor = np.where(valid, scores, np.inf).min(axis=1)  # a token's worst returned score bounds what it missed
    floor[~np.isfinite(floor)] = 0.0
    best = np.broadcast_to(floor, (len(cands), lq)).copy()
    np.maximum.at(best, (inverse, token), scores[valid])
    return cands, best.sum(axis=1)


def one_blas_thread() -> AbstractContextManager[Any]:
    """A context that runs BLAS on one thread (numpy's and faiss's OpenBLAS).

    A search's matrix products are small (32 tokens x a few thousand centroids or vectors):
    measured on 2 cores shared with other jobs, a 32x128 by 128x6,400 product took 1.9 ms on
    one thread and 47 ms on two (the second thread waits for a busy core); on an idle machine
    the second thread saves well under a millisecond.
    """
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return cast(AbstractContextManager[Any], _blas.limit(limits=1, user_api="blas"))


class CandidateSource(Protocol):
    """Step 1-2 of a search for one kind of segment: the documents worth scoring by exact MaxSim."""

    def candidates(self, queries: np.ndarray, params: SearchParams) -> list[np.ndarray]:
        """Per query (nq, Lq, d) the doc_ints to re-score (unique)."""
        ...


class TokenAnn:
    """Per-token vector ANN (format-2 ``pq`` and ``flat`` segments): steps 1 and 2 of the module docstring."""

    def __init__(self, ann: Ann) -> None:
        self.ann = ann

    def candidates(self, queries: np.ndarray, params: SearchParams) -> list[np.ndarray]:
        """The best ``max(rerank, k)`` documents of each query by the approximate MaxSim of its tokens' hits."""
        nq, lq, dim = queries.shape
        kp, depth = params.depths()
        tokens = queries.reshape(nq * lq, dim)
        # zero rows (padding of queries encoded without augmentation) match nothing: they fetch no candidates
        live = np.flatnonzero(np.any(tokens != 0, axis=1))
        scores, docs = np.zeros((nq * lq, kp), np.float32), np.full((nq * lq, kp), -1, np.int64)
        if len(live):
            scores[live], docs[live] = self.ann(tokens[live], kp, params.nprobe)
        scores, docs = scores.reshape(nq, lq, kp), docs.reshape(nq, lq, kp)
        out = []
        for q in range(nq):
            cands, approx = approximate_scores(scores[q], docs[q])
            if len(cands) > depth:
                cands = cands[np.argpartition(-approx, depth - 1)[:depth]]
            out.append(cands)
        return out


Sources = CandidateSource | Sequence[CandidateSource] | Ann


def candidate_sources(sources: Sources) -> list[CandidateSource]:
    """A list of sources; a bare ``ann`` callable (the per-token lane over every segment) is wrapped in TokenAnn."""
    if hasattr(sources, "candidates"):
        return [sources]
    if callable(sources):
        return [TokenAnn(sources)]
    return list(sources)


def search_embeddings(
    queries: np.ndarray, sources: Sources, fetch: Fetch, params: SearchParams, live: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Search encoded queries (nq, Lq, d) among the ``live`` documents (every one the index holds).

    ``sources`` generate candidates, one per kind of segment (e.g. ``Snapshot.sources()``: the centroid
    lane for pq3 segments, per-token ANN for the others); their candidates are ranked together by exact
    MaxSim. Returns per query (doc_ints, scores), best first: exactly ``min(k, len(live))`` documents.
    """
    if params.exhaustive or params.k * EXHAUSTIVE_FRACTION >= len(live):
        return exact_search(queries, live, fetch, params.k)
    sources = candidate_sources(sources)
    small = queries.shape[0] * queries.shape[1] <= SMALL_SEARCH_TOKENS
    want = min(params.k, len(live))
    with one_blas_thread() if small else nullcontext():
        results = _search(queries, sources, fetch, params)
        kp, _ = params.depths()
        for factor in WIDEN:  # a short query's few tokens may share their nearest vectors among few documents
            short = [q for q, (docs, _) in enumerate(results) if len(docs) < want]
            if not short:
                break
            wider = replace(params, candidates_per_token=factor * kp, nprobe=factor * params.nprobe)
            for q, ranked in zip(short, _search(queries[short], sources, fetch, wider)):
                results[q] = ranked
    return _fill_up(queries, results, live, fetch, params.k)


def _search(
    queries: np.ndarray, sources: list[CandidateSource], fetch: Fetch, params: SearchParams
) -> list[tuple[np.ndarray, np.ndarray]]:
    found = [source.candidates(queries, params) for source in sources]
    results = []
    for q in range(len(queries)):
        parts = [c[q] for c in found]
        cands = parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts or [np.empty(0, np.int64)]))
        if len(cands) == 0:
            results.append((np.empty(0, np.int64), np.empty(0, np.float32)))
            continue
        vectors, offsets = fetch(cands)
        exact = maxsim(trailing_zeros_cut(queries[q : q + 1]), vectors, offsets)[0]
        top = np.argsort(-exact, kind="stable")[: params.k]
        results.append((cands[top], exact[top]))
    return results


def trailing_zeros_cut(query: np.ndarray) -> np.ndarray:
    """One query (1, Lq, d) without its trailing zero rows (padding without augmentation), at least one row.

    A zero row adds a MaxSim term of exactly 0.0, so the scores stay the same up to float32 rounding (a product
    or sum of fewer rows may be ordered differently); the product and the per-document max cost fewer rows.
    """
    rows = np.flatnonzero(np.any(query[0] != 0, axis=1))
    return query[:, : int(rows[-1]) + 1 if len(rows) else 1]


def _fill_up(
    queries: np.ndarray, results: list[tuple[np.ndarray, np.ndarray]], live: np.ndarray, fetch: Fetch, k: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rank the queries whose candidates ran out before ``min(k, len(live))`` documents exhaustively.

    Scoring every live document is a superset of what the candidates were scored on, so such a
    query gets the exact top ``k``; the short queries of a batch share one pass over the vectors.
    """
    want = min(k, len(live))
    short = [q for q, (docs, _) in enumerate(results) if len(docs) < want]
    if not short:
        return results
    log.debug("%d of %d queries found fewer than %d candidates: exhaustive MaxSim", len(short), len(results), want)
    out = list(results)
    for q, ranked in zip(short, exact_search(queries[short], live, fetch, k)):
        out[q] = ranked
    return out


#: query-token x document-vector similarities (float32 bytes) one MaxSim product may hold
BLOCK_BYTES = 64 << 20


def exact_search(
    queries: np.ndarray, doc_ints: np.ndarray, fetch: Fetch, k: int, chunk: int = 512
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rank ``doc_ints`` (e.g. every live document, or those a filter matched) by exact MaxSim.

    Documents are decoded ``chunk`` at a time and each query keeps a running top ``k``, so memory
    stays O(chunk's vectors + queries x (k + chunk)) whatever the index size. Returns per query
    (doc_ints, scores), best first: ``min(k, len(doc_ints))`` documents; among equal scores the
    earlier in ``doc_ints`` comes first.
    """
    doc_ints = np.asarray(doc_ints, dtype=np.int64)
    nq = len(queries)
    best_docs = np.empty((nq, 0), np.int64)
    best_scores = np.empty((nq, 0), np.float32)
    for start in range(0, len(doc_ints), chunk):
        part = doc_ints[start : start + chunk]
        vectors, offsets = fetch(part)
        scores = np.hstack([best_scores, _maxsim_blocked(queries, vectors, offsets)])
        docs = np.hstack([best_docs, np.broadcast_to(part, (nq, len(part)))])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # the running top k precede this chunk: ties kept
        best_scores, best_docs = np.take_along_axis(scores, order, 1), np.take_along_axis(docs, order, 1)
    return list(zip(best_docs, best_scores))


def _maxsim_blocked(queries: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """:func:`maxsim` of (nq, Lq, d) queries, a group of queries at a time so the similarities fit BLOCK_BYTES."""
    nq, lq, _ = queries.shape
    group = max(1, BLOCK_BYTES // (4 * lq * max(len(vectors), 1)))
    if group >= nq:
        return maxsim(queries, vectors, offsets)
    return np.vstack([maxsim(queries[a : a + group], vectors, offsets) for a in range(0, nq, group)])
