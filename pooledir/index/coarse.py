"""The coarse quantizer's numerics: spherical k-means and the nearest list of each vector.

Both run on numpy's BLAS (one GEMM per block of rows), which on 2 cores was 2-3x faster than faiss's own flat
search and clustering. From :data:`TWO_LEVEL_LISTS` lists on (an index whose ``train_sample`` lets PLAID's list
rule go past the default 6,721: 39 training vectors a list) a flat GEMM over every centroid no longer fits a
build on 2 cores, so training is two-level (:func:`two_level_kmeans`, the scheme of
``faiss.contrib.clustering.two_level_clustering``) and batches are assigned through groups of centroids
(faiss's ``IndexIVFFlat`` over the centroids, :data:`GROUP_PROBE` groups probed): eval/results/scale_rule.md.
Any list is a valid list for a vector (its code is the residual to that list's centroid), so an approximate
assignment costs precision, never correctness.

This module knows arrays and faiss only; :mod:`pooledir.index.segments` builds quantizers with it.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np

#: bytes of the float32 score block one GEMM of :func:`exact_lists` fills (rows per block = this / 4·nlist);
#: the argmax then reads a block that is still in cache: on 2 cores, 300k SciFact vectors against 6,721
#: centroids were assigned at 93-110k vectors/s with 16 MB blocks and 56-71k with 64 MB (the same lists)
ASSIGN_BLOCK_BYTES = 1 << 24
#: from this many lists on, training is two-level and batches are assigned through centroid groups
#: (eval/results/scale_rule.md: PLAID's rule asks for 16,384 lists from 2**20 vectors on, which a
#: ``train_sample`` of at least 16,384·39 = 638,976 vectors allows; the default 262,144 caps lists at 6,721)
TWO_LEVEL_LISTS = 16384
#: centroid groups searched for a vector's list past TWO_LEVEL_LISTS (scale_rule.md: at 16,384 lists 98.1% of
#: SciFact vectors got their exact nearest centroid, 0.0016 lower inner product on average, 2.7x faster)
GROUP_PROBE = 8
#: level-1 points a centroid in :func:`two_level_kmeans` (faiss's two_level_clustering uses the same 2,000)
LEVEL1_POINTS_PER_CENTROID = 2000
#: group indexes kept for the quantizers last used (a folder and one re-training)
_GROUP_CACHE_SIZE = 2


def spherical_kmeans(x: np.ndarray, k: int, niter: int, max_points_per_centroid: int = 256) -> np.ndarray:
    """(k, d) float32 unit centroids: Lloyd's iterations with inner-product assignment, means re-normalised.

    faiss's ``Clustering`` with ``spherical`` (what ``IndexIVF.train`` runs for inner product): seeded on
    random distinct points, at most ``max_points_per_centroid`` points a centroid, an empty cluster split off
    a large one. On 200k SciFact-style vectors and 4,096 lists it fit as well (held-out squared residual
    0.4332 vs 0.4326) in 74 s against faiss's 204 s on 2 loaded cores.
    """
    rng = np.random.default_rng(1234)
    if len(x) > k * max_points_per_centroid:  # faiss's own cap on the points k-means looks at
        x = x[np.sort(rng.choice(len(x), k * max_points_per_centroid, replace=False))]
    centroids = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(niter):
        sums, counts = cluster_sums(x, exact_lists(centroids, x), k)
        centroids = sums.astype(np.float32)
        split_clusters(centroids, counts, rng)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(centroids, dtype=np.float32)


def train_centroids(x: np.ndarray, k: int, niter: int, max_points_per_centroid: int = 256) -> np.ndarray:
    """(k, d) unit centroids of ``x``: :func:`two_level_kmeans` from :data:`TWO_LEVEL_LISTS` on, else flat."""
    if k >= TWO_LEVEL_LISTS:
        return two_level_kmeans(x, k, niter)
    return spherical_kmeans(x, k, niter, max_points_per_centroid)


def two_level_kmeans(x: np.ndarray, k: int, niter: int) -> np.ndarray:
    """(k, d) unit centroids: √k groups by :func:`spherical_kmeans`, then each group's share of the k lists.

    ``faiss.contrib.clustering.two_level_clustering`` with ``rebalance``: a group's share is proportional to
    its points (never more centroids than points). About 2·√k instead of k inner products a point and
    iteration: on SciFact's vectors 16,384 lists trained in 5.5 s and fit held-out vectors better (mean inner
    product 0.817) than flat k-means' 6,721 lists on the 262,144-vector sample (0.788, 44 s).
    """
    if k > len(x):
        raise ValueError(f"{k} centroids need at least {k} training vectors, got {len(x)}")
    n_groups = max(1, math.isqrt(k))
    groups = spherical_kmeans(x, n_groups, niter, LEVEL1_POINTS_PER_CENTROID)
    of = exact_lists(groups, x)
    sizes = np.bincount(of, minlength=n_groups)
    order = np.argsort(of, kind="stable")
    out, at = [], 0
    for size, share in zip(sizes.tolist(), _shares(sizes, k).tolist()):
        if share:
            out.append(spherical_kmeans(x[order[at : at + size]], share, niter))
        at += size
    return np.ascontiguousarray(np.vstack(out), dtype=np.float32)


def _shares(sizes: np.ndarray, k: int) -> np.ndarray:
    """Split ``k`` centroids over groups of ``sizes`` points, in proportion, never more than a group's points."""
    total = int(sizes.sum())
    share = sizes * k // total  # <= sizes, since k <= total
    by_remainder = np.argsort(-(sizes * k % total), kind="stable")
    while (rest := k - int(share.sum())) > 0:
        spare = by_remainder[share[by_remainder] < sizes[by_remainder]][:rest]
        share[spare] += 1
    return share


def split_clusters(centroids: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> None:
    """Give each empty cluster half of a cluster drawn by size (faiss's ``split_clusters``): two nudged copies.

    ``centroids`` holds the clusters' sums (normalised after): scaling a sum only scales its direction.
    """
    sign = np.where(np.arange(centroids.shape[1]) % 2 == 0, 1.0, -1.0).astype(np.float32) / 1024
    for e in np.flatnonzero(counts == 0):
        weights = np.maximum(counts - 1, 0).astype(np.float64)
        if weights.sum() == 0:
            return
        j = rng.choice(len(counts), p=weights / weights.sum())
        centroids[e] = centroids[j] * (1 + sign)
        centroids[j] = centroids[j] * (1 - sign)
        counts[e] = counts[j] // 2
        counts[j] -= counts[e]


def cluster_sums(x: np.ndarray, assign: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster, the sum of its points (one sparse one-hot product) and their count."""
    import scipy.sparse as sp

    onehot = sp.csr_matrix((np.ones(len(x), np.float32), (assign, np.arange(len(x)))), shape=(k, len(x)))
    return np.asarray(onehot @ x, dtype=np.float32), np.bincount(assign, minlength=k)


def exact_lists(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The list (highest inner product with a centroid) of each row of ``x``, int64: one GEMM per block of rows."""
    out = np.empty(len(x), dtype=np.int64)
    block = max(64, ASSIGN_BLOCK_BYTES // (4 * max(len(centroids), 1)))
    for i in range(0, len(x), block):
        out[i : i + block] = np.argmax(x[i : i + block] @ centroids.T, axis=1)
    return out


def assign_lists(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The list of each row of ``x``, int64: exact, or past :data:`TWO_LEVEL_LISTS` lists grouped.

    Grouped: the best centroid of the :data:`GROUP_PROBE` groups closest to the row (:func:`group_index`).
    """
    if len(centroids) < TWO_LEVEL_LISTS or not len(x):
        return exact_lists(centroids, x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    _, found = group_index(centroids).search(x, 1)
    lists = np.asarray(found[:, 0], dtype=np.int64)
    none = lists < 0  # every probed group empty (faiss answers -1): rare, and exact assignment always answers
    if none.any():
        lists[none] = exact_lists(centroids, x[none])
    return lists


_groups: OrderedDict[tuple[tuple[int, ...], int], Any] = OrderedDict()
_groups_lock = threading.Lock()


def group_index(centroids: np.ndarray) -> Any:
    """Faiss's ``IndexIVFFlat`` (inner product) holding the centroids in √nlist groups, probing GROUP_PROBE.

    Built once per set of centroids (keyed by their CRC-32: a quantizer's centroids never change after
    training) and kept for the last few: 0.06 s to build for 6,721 centroids here.
    """
    import faiss

    c = np.ascontiguousarray(centroids, dtype=np.float32)
    key = (c.shape, zlib.crc32(c.view(np.uint8).data))
    with _groups_lock:
        if key in _groups:
            _groups.move_to_end(key)
            return _groups[key]
    n_groups = max(1, math.isqrt(len(c)))
    quantizer: Any = faiss.IndexFlatIP(c.shape[1])  # owned by the IVF below (the stubs lack ``this``)
    index = faiss.IndexIVFFlat(quantizer, c.shape[1], n_groups, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    index.cp.min_points_per_centroid = 1  # fewer than 39 centroids a group only in tests; no stderr warning
    index.train(c)
    index.add(c)  # ids 0..nlist-1: a hit's id is the list number
    index.nprobe = min(GROUP_PROBE, n_groups)
    with _groups_lock:
        _groups[key] = index
        while len(_groups) > _GROUP_CACHE_SIZE:
            _groups.popitem(last=False)
    return index
