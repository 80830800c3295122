"""Format 3's quantizer costs on real vectors: k-means training time and assignment (sa_encode) speed.

Trains the shared IVF-PQ quantizer as :func:`pooledir.index.segments.train_quantizer` does (PLAID's nlist rule,
dim/8 sub-quantizers, ``COARSE_NITER`` iterations, the k-means on numpy's BLAS) on a sample of cached document
vectors, then encodes vectors with faiss's ``sa_encode`` (its flat coarse quantizer), with
:func:`pooledir.index.segments.sa_encode` (lists assigned by GEMM) and with an HNSW graph over the same centroids,
and reports vectors/s and how often each assigns faiss's list. ``--compare-kmeans`` also times faiss's own
spherical ``Clustering`` (what ``IndexIVF.train`` ran before) against ``coarse.spherical_kmeans`` at the
same list count and reports each one's mean squared residual on the encoded (held-out) vectors. Prints one
JSON object.

    PYTHONPATH=. python eval/format3_probe.py --vectors .cache/pooledir-eval/<key>/vectors.npy --n 694000

(``PYTHONPATH=.``: run from a checkout, so that ``pooledir`` is that checkout's, not an installed one.)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", required=True, help="a cached vectors.npy (float16 rows)")
    ap.add_argument("--n", type=int, default=694_000, help="N the index holds (sizes nlist)")
    ap.add_argument("--train", type=int, default=262_144, help="training sample (IndexConfig.train_sample)")
    ap.add_argument("--encode", type=int, default=100_000, help="vectors encoded for the speed test")
    ap.add_argument("--nlist", type=int, default=None)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef", default="16,32,64")
    ap.add_argument("--compare-kmeans", action="store_true")
    args = ap.parse_args()
    import faiss

    from pooledir.index.segments import sa_encode, train_quantizer

    raw = np.load(args.vectors, mmap_mode="r")
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(raw), min(len(raw), args.train + args.encode), replace=False))
    x = np.asarray(raw[rows], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rng.shuffle(x)
    sample, enc = x[: args.train], x[args.train : args.train + args.encode]
    out: dict = {"threads": faiss.omp_get_max_threads(), "load": os.getloadavg()[0], "train_vectors": len(sample)}
    t = time.perf_counter()
    q = train_quantizer(sample, args.n, args.nlist, None, 8)
    out |= {"nlist": int(q.nlist), "pq_m": int(q.pq.M), "train_s": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    flat_codes = q.sa_encode(enc)
    out["flat_encode_vps"] = round(len(enc) / (time.perf_counter() - t))
    coarse = q.coarse_code_size()
    flat_lists = flat_codes[:, :coarse].copy().view(np.uint16 if coarse == 2 else np.uint8).ravel()
    t = time.perf_counter()
    blas_codes = sa_encode(q, enc)
    out["blas_encode_vps"] = round(len(enc) / (time.perf_counter() - t))
    out["blas_same_code"] = round(float(np.mean((blas_codes == flat_codes).all(axis=1))), 6)
    centroids = q.quantizer.reconstruct_n(0, q.nlist)
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(q.d, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(centroids)
    out["hnsw_build_s"] = round(time.perf_counter() - t, 2)
    for ef in map(int, args.ef.split(",")):
        hnsw.hnsw.efSearch = ef
        t = time.perf_counter()
        _, lists = hnsw.search(enc, 1)
        out[f"hnsw_ef{ef}_assign_vps"] = round(len(enc) / (time.perf_counter() - t))
        out[f"hnsw_ef{ef}_same_list"] = round(float(np.mean(lists.ravel() == flat_lists)), 4)
    if args.compare_kmeans:
        out |= compare_kmeans(sample, enc, int(q.nlist))
    print(json.dumps(out))


def compare_kmeans(sample: np.ndarray, held: np.ndarray, nlist: int) -> dict:
    """Seconds and held-out mean squared residual (2 - 2·max q·c for unit vectors) of both k-means."""
    import faiss

    from pooledir.index.coarse import spherical_kmeans
    from pooledir.index.segments import COARSE_NITER

    def fit(c: np.ndarray) -> float:
        best = np.concatenate([(held[i : i + 8192] @ c.T).max(axis=1) for i in range(0, len(held), 8192)])
        return round(float(np.mean(2 - 2 * best)), 5)

    t = time.perf_counter()
    mine = spherical_kmeans(sample, nlist, COARSE_NITER)
    out = {"kmeans_blas_s": round(time.perf_counter() - t, 1), "kmeans_blas_residual": fit(mine)}
    cp = faiss.ClusteringParameters()
    cp.niter, cp.spherical, cp.min_points_per_centroid = COARSE_NITER, True, 1
    clus = faiss.Clustering(sample.shape[1], nlist, cp)
    t = time.perf_counter()
    clus.train(sample, faiss.IndexFlatIP(sample.shape[1]))
    out["kmeans_faiss_s"] = round(time.perf_counter() - t, 1)
    out["kmeans_faiss_residual"] = fit(faiss.vector_to_array(clus.centroids).reshape(nlist, -1))
    out["load_after"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    main()
