"""Late-interaction search: per-token ANN candidates, then MaxSim on the best of them.

1. Every query token asks the index for its ``candidates_per_token`` nearest
   vectors (``nprobe`` lists for IVF-PQ, over every segment); their documents
   are the candidates.
2. Each candidate gets an approximate MaxSim from those hits alone: per query
   token, its best hit, or, where none of its vectors came back, that token's
   lowest returned score (an upper bound on what it could have had). The best
   ``rerank`` candidates go on.
3. Those are scored by full MaxSim over all their vectors (decoded from PQ,
   or the exact float16 copy) and the top ``k`` are returned.

With a metadata filter, :func:`exact_search` instead scores every matching
document by full MaxSim.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np

from pooledir.errors import InputError
from pooledir.maxsim import maxsim

#: query tokens up to which a search runs its BLAS calls (coarse assignment, MaxSim) on one thread
SMALL_SEARCH_TOKENS = 512
_blas = None

#: fetch(doc_ints) -> (packed vectors (N, d), offsets (len(doc_ints) + 1,))
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: ann(tokens (n, d), k, nprobe) -> (scores (n, k), doc_ints (n, k)); -1 = no hit
Ann = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SearchParams:
    """Knobs of one search.

    Attributes
    ----------
    k : documents returned per query.
    nprobe : IVF lists visited per query token (ignored by the flat backend).
    candidates_per_token : nearest vectors fetched per query token.
    rerank : candidate documents scored by full MaxSim (at least ``k``).
    """

    k: int = 10
    # tuned on SciFact train qrels (eval/results/tune_scifact_train.json): more candidates or reranked
    # documents bought no nDCG@10 there, only time; see the README's "Tuning" for how these were chosen
    nprobe: int = 32
    candidates_per_token: int = 32
    rerank: int = 64

    @classmethod
    def from_optional(
        cls,
        k: int = 10,
        nprobe: int | None = None,
        candidates_per_token: int | None = None,
        rerank: int | None = None,
    ) -> SearchParams:
        """These defaults for every knob given as None (an option the CLI or an HTTP request left out)."""
        knobs = {"nprobe": nprobe, "candidates_per_token": candidates_per_token, "rerank": rerank}
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


def one_blas_thread():
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
    return _blas.limit(limits=1, user_api="blas")


def search_embeddings(
    queries: np.ndarray, ann: Ann, fetch: Fetch, params: SearchParams
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Search encoded queries (nq, Lq, d); returns per query (doc_ints, scores), best first."""
    small = queries.shape[0] * queries.shape[1] <= SMALL_SEARCH_TOKENS
    with one_blas_thread() if small else nullcontext():
        return _search(queries, ann, fetch, params)


def _search(queries: np.ndarray, ann: Ann, fetch: Fetch, params: SearchParams) -> list[tuple[np.ndarray, np.ndarray]]:
    nq, lq, dim = queries.shape
    kp = params.candidates_per_token
    tokens = queries.reshape(nq * lq, dim)
    # zero rows (padding of queries encoded without augmentation) match nothing: they fetch no candidates
    live = np.flatnonzero(np.any(tokens != 0, axis=1))
    scores, docs = np.zeros((nq * lq, kp), np.float32), np.full((nq * lq, kp), -1, np.int64)
    if len(live):
        scores[live], docs[live] = ann(tokens[live], kp, params.nprobe)
    scores, docs = scores.reshape(nq, lq, kp), docs.reshape(nq, lq, kp)
    results = []
    for q in range(nq):
        cands, approx = approximate_scores(scores[q], docs[q])
        depth = max(params.rerank, params.k)
        if len(cands) > depth:
            cands = cands[np.argpartition(-approx, depth - 1)[:depth]]
        if len(cands) == 0:
            results.append((np.empty(0, np.int64), np.empty(0, np.float32)))
            continue
        vectors, offsets = fetch(cands)
        exact = maxsim(queries[q : q + 1], vectors, offsets)[0]
        top = np.argsort(-exact, kind="stable")[: params.k]
        results.append((cands[top], exact[top]))
    return results


def exact_search(queries: np.ndarray, doc_ints: np.ndarray, fetch: Fetch, k: int, chunk: int = 1024):
    """Rank ``doc_ints`` (e.g. those a filter matched) by exact MaxSim, in chunks to bound memory.

    Returns per query (doc_ints, scores), best first, at most ``k``.
    """
    scores = np.empty((len(queries), len(doc_ints)), dtype=np.float32)
    for start in range(0, len(doc_ints), chunk):
        part = doc_ints[start : start + chunk]
        vectors, offsets = fetch(part)
        scores[:, start : start + len(part)] = maxsim(queries, vectors, offsets)
    out = []
    for row in scores:
        top = np.argsort(-row, kind="stable")[:k]
        out.append((doc_ints[top], row[top]))
    return out
