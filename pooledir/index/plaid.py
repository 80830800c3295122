"""PLAID-style candidate generation over the mapped pq3 segments (centroid interaction, no per-vector ANN).

For one query (Lq tokens), over every pq3 segment of a snapshot (colbert-ai's ``IndexScorer.retrieve`` /
``score_pids``, with pooledir's per-segment inverted rows in place of PLAID's centroid -> passage lists):

a. ``S = Q·Cᵀ``: query tokens x every centroid of the shared quantizer, one BLAS call (run as C·Qᵀ; the float32
   centroids are copied once per quantizer, :class:`CentroidLane`);
b. per token its ``ncells`` best lists, less those whose best score over the tokens is under a threshold by
   k (PLAID's centroid-score pruning, 0.05 lower, opt-in: :data:`THRESHOLDS`); the documents in the union of
   those lists (the mapped ``lists``, ``starts``, ``rows`` of each segment; dead rows dropped) each get a cheap
   score, the centroid
   interaction over the probed lists they hold (per token the best ``S`` of those lists, summed); the
   best ``ndocs`` go on;
c. those get the full centroid interaction: the list number of **every** vector of theirs (the first
   ``coarse_size`` bytes of its code; codes are document-major, so a document's codes are one slice),
   per token the best ``S`` over them, summed; the best ``rescore`` go on;
d. the caller decodes those (``sa_decode``) and ranks them by exact MaxSim.

Depths grow with k as PLAID's (``colbert/searcher.py``): ndocs 256 for k <= 10, 1,024 for k <= 100, else
max(4k, 4,096); ``rescore`` is ndocs / 4 (at least k). Nothing here builds a faiss index: the codes are
read from the memory map where they lie.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

import numpy as np

from pooledir.index.codecs import list_numbers
from pooledir.index.segments import SegmentReader, ranges

if TYPE_CHECKING:
    import faiss

    from pooledir.index.codecs import PQ3File
    from pooledir.search import SearchParams

#: (largest k, documents kept after the cheap centroid score) from colbert-ai's searcher.py; above: max(4k, 4096)
NDOCS_BY_K = ((10, 256), (100, 1024))
#: ``SearchParams.candidates_per_token`` at which the lane goes PLAID's depth; twice that goes twice as deep
REFERENCE_CANDIDATES = 32
#: ``SearchParams.nprobe`` per list a query token probes here (ncells = nprobe / 4: the default nprobe 32, tuned
#: for per-token ANN, probes 8 lists a token, the best Recall@100 on NFCorpus dev: eval/results/search_study/)
NPROBE_PER_CELL = 4
#: PLAID's centroid_score_threshold by k (colbert-ai searcher.py): (largest k, threshold); None: every larger k
PLAID_THRESHOLDS: tuple[tuple[int | None, float], ...] = ((10, 0.5), (100, 0.45), (None, 0.4))
#: opt-in (CentroidLane(thresholds=THRESHOLDS)), 0.05 under PLAID's: PLAID's own lost 0.009 of Recall@100
#: (share of exhaustive) on NFCorpus dev, these 0.002 and no nDCG@10, for a p50 0.92-0.98x
#: (eval/results/search_rule.md, pruning)
THRESHOLDS: tuple[tuple[int | None, float], ...] = ((10, 0.45), (100, 0.4), (None, 0.35))
#: share of the centroid-scored documents that are decoded and scored by exact MaxSim (PLAID: ndocs / 4)
RESCORE_SHARE = 4


@dataclass(frozen=True)
class LaneDepths:
    """How deep one search of the centroid lane goes.

    Attributes
    ----------
    ncells : lists probed per query token (PLAID's ncells; ``SearchParams.nprobe / 4``).
    ndocs : documents kept after the cheap score of step b (PLAID's ndocs).
    rescore : documents kept after the full centroid interaction, decoded and scored by exact MaxSim.
    threshold : step b drops the probed lists whose best score over the query's tokens is below this
        (PLAID's centroid-score pruning); None keeps every probed list.
    """

    ncells: int
    ndocs: int
    rescore: int
    threshold: float | None = None


def plaid_ndocs(k: int) -> int:
    """PLAID's ndocs for ``k``: 256 up to k = 10, 1,024 up to 100, then max(4k, 4,096)."""
    for most, ndocs in NDOCS_BY_K:
        if k <= most:
            return ndocs
    return max(4 * k, 4096)


def lane_depths(k: int, ncells: int, depth: float = 1.0, rerank: int = 0) -> LaneDepths:
    """Depths for ``k``: PLAID's ndocs scaled by ``depth``, ndocs / 4 (at least ``rerank`` and ``k``) re-scored."""
    ndocs = max(int(round(plaid_ndocs(k) * depth)), k)
    return LaneDepths(ncells=ncells, ndocs=ndocs, rescore=max(ndocs // RESCORE_SHARE, rerank, k))


def depths_for(params: SearchParams) -> LaneDepths:
    """The lane's depths for a ``SearchParams``: nprobe / 4 lists a token, PLAID's ndocs x candidates_per_token / 32."""
    ncells = -(-params.nprobe // NPROBE_PER_CELL)
    return lane_depths(params.k, ncells, params.candidates_per_token / REFERENCE_CANDIDATES, params.rerank)


def threshold_for(k: int, table: tuple[tuple[int | None, float], ...] | None) -> float | None:
    """The pruning threshold for ``k`` from a (largest k, threshold) table (None: no pruning)."""
    if table is None:
        return None
    return next(t for most, t in table if most is None or k <= most)


def centroids_of(quantizer: faiss.IndexIVFPQ) -> np.ndarray:
    """The shared quantizer's coarse centroids as one float32 (nlist, d) array (a copy, made once)."""
    return np.ascontiguousarray(quantizer.quantizer.reconstruct_n(0, quantizer.nlist), dtype=np.float32)


class CentroidLane:
    """Candidate documents of the pq3 segments of one snapshot by PLAID's centroid interaction.

    ``centroids`` is shared by every snapshot of the same quantizer; ``segments`` are the snapshot's pq3
    readers (their files mapped, their live bitmaps and document tables as of that commit); ``thresholds``
    the centroid-score pruning of step b by k (None: :data:`THRESHOLDS` where ``SearchParams.prune`` asks, else none).
    """

    def __init__(
        self,
        centroids: np.ndarray,
        segments: list[SegmentReader],
        thresholds: tuple[tuple[int | None, float], ...] | None = None,
    ) -> None:
        self.centroids = centroids
        self.segments = [s for s in segments if s.n_live > 0]
        self.thresholds = thresholds

    def candidates(self, queries: np.ndarray, params: SearchParams) -> list[np.ndarray]:
        """Per query (nq, Lq, d) the doc_ints to score by exact MaxSim, at the depths of ``params`` (SearchParams)."""
        table = self.thresholds if self.thresholds is not None else THRESHOLDS if params.prune else None
        depths = replace(depths_for(params), threshold=threshold_for(params.k, table))
        return self.at_depths(queries, depths)

    def at_depths(self, queries: np.ndarray, depths: LaneDepths) -> list[np.ndarray]:
        """Per query (nq, Lq, d) the doc_ints to score by exact MaxSim (at most ``depths.rescore``)."""
        used = np.any(queries != 0, axis=2)  # (nq, Lq): zero rows (padding without augmentation) match nothing
        # (nlist, used rows): only the used rows, as a query without augmentation uses about half; OpenBLAS runs
        # this shape faster than queries @ centroids.T (6,721 lists x 32 tokens on one thread: 0.74 vs 1.22 ms)
        ST = self.centroids @ queries[used].T
        ends = np.cumsum(used.sum(axis=1))
        starts = ends - used.sum(axis=1)
        return [self._one(ST[:, a:b], depths) if b > a else np.empty(0, np.int64) for a, b in zip(starts, ends)]

    def _one(self, ST: np.ndarray, depths: LaneDepths) -> np.ndarray:
        """Steps b and c for one query's centroid scores, given transposed: ST (nlist, Lq)."""
        ST = np.ascontiguousarray(ST)  # a list's scores are one row (no copy for a batch of one query)
        S = np.ascontiguousarray(ST.T)  # (Lq, nlist): a token's scores are one row
        ncells = min(depths.ncells, S.shape[1])
        cells = np.unique(np.argpartition(-S, ncells - 1, axis=1)[:, :ncells])
        if depths.threshold is not None:
            cells = _pruned(S, cells, depths.threshold)
        docs, lists, first = self._runs(cells)
        if len(docs) == 0:
            return docs
        cheap = _run_scores(S, ST, lists, first)
        if np.any(docs[1:] < docs[:-1]):  # merged or several segments: ascending, as _top's ties expect
            order = np.argsort(docs)
            docs, cheap = docs[order], cheap[order]
        docs = np.sort(docs[_top(cheap, depths.ndocs)])
        if len(docs) <= depths.rescore:
            return docs
        docs, full = _interaction(S, ST, *self._all_lists(docs))
        return np.asarray(docs[_top(full, depths.rescore)])

    def _runs(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The live vectors in the lists ``cells`` grouped by document, over every segment.

        Returns (doc_int of each run, list of each vector, first vector of each run). A segment's rows are
        sorted (radix on 16-bit digits) and cut at its live documents' row ranges: a deleted document's
        vectors, still in the file, lie in no live range, and no row needs a search for its document.
        """
        docs, lists, counts = [], [], []
        for seg in self.segments:
            rows, of_list = _pq3(seg).rows_of_lists(cells)
            order = _stable_order(rows)
            rows, of_list = rows[order], of_list[order]
            lo = np.searchsorted(rows, seg.starts)
            n = np.searchsorted(rows, seg.starts + seg.counts) - lo
            held = n > 0
            lists.append(of_list[ranges(lo[held], n[held])])
            docs.append(np.asarray(seg.doc_ints)[held])
            counts.append(n[held])
        if not docs:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        n_all = np.concatenate(counts)
        return np.concatenate(docs), np.concatenate(lists), np.cumsum(n_all) - n_all

    def _all_lists(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(doc_int, list) of every vector of ``docs`` (sorted, live): one slice of codes per document."""
        out_docs, out_lists = [], []
        for seg in self.segments:
            ints, order = seg.by_doc()  # doc_ints are in merge order, not sorted, in a merged segment
            j = np.searchsorted(ints, docs)
            mine = (j < len(ints)) & (ints[np.minimum(j, len(ints) - 1)] == docs)
            if not mine.any():
                continue
            j = order[j[mine]]
            rows = ranges(seg.starts[j], seg.counts[j])
            f = _pq3(seg)
            out_lists.append(list_numbers(f.codes, f.coarse_size, rows))
            out_docs.append(np.repeat(docs[mine], seg.counts[j]))
        return np.concatenate(out_docs), np.concatenate(out_lists)


def _pruned(S: np.ndarray, cells: np.ndarray, threshold: float) -> np.ndarray:
    """The ``cells`` whose best score over the query tokens (rows of S) reaches ``threshold``; all if none does."""
    keep = cells[S[:, cells].max(axis=0) >= threshold]
    return keep if len(keep) else cells


def _pq3(seg: SegmentReader) -> PQ3File:
    """A pq3 segment's mapped file (the lane is only given pq3 segments: ``Snapshot.sources``)."""
    return cast("PQ3File", seg.file)


#: pairs per document from which on the centroid interaction reduces each token's run at once (a long run per
#: call of numpy's reduceat); below, rank by rank (few calls, each over every document); measured on 2 cores,
#: the stage-c shape (256 documents, 34k pairs) took 1.3-2 ms the first way and 4 ms the second, the stage-b
#: shape (5,000 documents, 25k pairs) 8 ms and 2.5 ms; the old reduceat over rows took 6-7 ms on both
LONG_RUNS = 16


def _interaction(S: np.ndarray, ST: np.ndarray, docs: np.ndarray, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique docs ascending, per doc the sum over tokens of the best score over its lists): centroid interaction.

    ``S`` is (Lq, nlist), ``ST`` its C-contiguous transpose (a list's scores are one row). The pairs come in
    sorted runs (per list, per segment), which a stable sort merges cheaply; a list a document holds twice is
    simply counted twice (it cannot change a max). Both reductions give the same floats (max is exact; the sums
    run over the same (docs, Lq) layout).
    """
    if np.any(docs[1:] < docs[:-1]):  # one segment's pairs come in ascending order: no sort (0.3 ms at stage c)
        order = np.argsort(docs, kind="stable")
        docs, lists = docs[order], lists[order]
    first = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
    return docs[first], _run_scores(S, ST, lists, first)


def _run_scores(S: np.ndarray, ST: np.ndarray, lists: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per run of pairs (``first[j]:first[j + 1]``) the sum over tokens of the best ``S`` over its lists."""
    if len(lists) >= LONG_RUNS * len(first):
        return _max_by_token(S, lists, first)
    return _max_by_rank(ST, lists, first)


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of non-negative integers, by numpy's radix sort on 16-bit digits.

    numpy sorts 16-bit integers stably by radix, other widths by timsort: on 2 cores, 24k ranks took 0.12 ms
    as uint16 and 1.3 ms as int64; keys up to 2**32 take two passes (least significant digit first).
    """
    top = int(keys.max()) if len(keys) else 0
    if top < 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    if top >= 1 << 32:
        return np.argsort(keys, kind="stable")
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    return order[np.argsort((keys[order] >> 16).astype(np.uint16), kind="stable")]


def _max_by_token(S: np.ndarray, lists: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per run (pairs ``first[j]:first[j + 1]``) the sum over tokens of the max of S[t, lists]: token-major."""
    lq, n = S.shape[0], len(lists)
    gathered = np.take(S, lists, axis=1).ravel()  # (Lq * n,): token t's scores of every pair, contiguous
    starts = (np.arange(lq, dtype=np.int64)[:, None] * n + first[None, :]).ravel()
    best = np.maximum.reduceat(gathered, starts).reshape(lq, -1)
    return np.asarray(np.ascontiguousarray(best.T).sum(axis=1))  # summed as the rank-wise path sums: the same floats


def _max_by_rank(ST: np.ndarray, lists: np.ndarray, first: np.ndarray) -> np.ndarray:
    """As :func:`_max_by_token` over ``ST`` (nlist, Lq), for short runs: the k-th pair of every run at once."""
    n = len(lists)
    run = np.repeat(np.arange(len(first)), np.diff(np.r_[first, n]))
    rank = np.arange(n) - first[run]
    order = _stable_order(rank)
    bounds = np.searchsorted(rank[order], np.arange(int(rank.max()) + 2))
    gathered, run = ST[lists[order]], run[order]  # (n, Lq) rows, rank 0 first
    best = np.array(gathered[: bounds[1]])  # rank 0: one pair of every run, in run order
    for lo, hi in zip(bounds[1:-1], bounds[2:]):
        mine = run[lo:hi]
        best[mine] = np.maximum(best[mine], gathered[lo:hi])
    return np.asarray(best.sum(axis=1))


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` best scores (all of them when fewer), best first."""
    if len(scores) > n:
        part = np.argpartition(-scores, n - 1)[:n]
        return part[np.argsort(-scores[part], kind="stable")]
    return np.argsort(-scores, kind="stable")
