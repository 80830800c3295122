"""Where a build's time goes, and what faiss's faster coarse quantizers buy (issue 10, build throughput).

Two parts, on bench_scale's synthetic clustered 128-d vectors (no encoder):

1. ``profile``: one build of ``--size`` vectors through ``PooledIndex.add(pooled=True)`` in chunks of
   2,000 documents, with the engine's steps timed from outside (training, encoding segments, writing
   files, sqlite), and the coarse assignment of every chunk after the first timed on its own (a k=1
   search of the flat quantizer: what ``add_with_ids`` does first).
2. ``coarse``: for each list count, a quantizer trained on the first 200k vectors, then the k=1
   assignment of 100k other vectors (what an add does) and the top-32 lists of 2,000 vectors (what a
   search does), by the exact flat quantizer, an HNSW32 graph over the same centroids
   (``IndexHNSWFlat``, faiss's choice for 10^6-10^8 vectors) at several ``efSearch``, and a small IVF
   over the centroids (``IVF{√nlist}`` as the quantizer's quantizer) at several ``nprobe``: speed,
   and agreement with the exact lists.

    python eval/bench_coarse.py --size 1000000 --nlists 4096,12649

Results go to eval/results/bench_coarse.cpu.json, with the 1-minute load average next to every timing.
A benchmark, never part of the tests.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale as B  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "eval" / "results" / "bench_coarse.cpu.json"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def profile(size: int, folder: Path) -> dict:
    """Build ``size`` vectors with the engine's steps timed from outside."""
    import pooledir.index.folder as F
    import pooledir.store as ST
    from pooledir.pooled_index import IndexConfig, PooledIndex

    spent: collections.Counter = collections.Counter()

    def timed(owner, name: str, key: str) -> None:
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t

        setattr(owner, name, wrapper)

    timed(F, "train_quantizer", "training (k-means + PQ codebooks)")
    timed(F, "encode_segment", "encoding segments (coarse assignment + PQ codes)")
    timed(F, "write_segment", "writing segment files")
    timed(F, "merge_pq", "merging segments (codes copied)")
    for name in ("insert_many", "move", "checkpoint", "lookup", "segment_layout"):
        timed(ST.DocStore, name, "sqlite")
    timed(F.IndexFolder, "_commit", "commit (sqlite transaction)")

    shutil.rmtree(folder, ignore_errors=True)
    nlist = B.nlist_for(size)
    index = PooledIndex.create(
        folder, config=IndexConfig(pool_factor=1, nlist=nlist), device="cpu", encoder=B.FakeEncoder()
    )
    c = B.centers()
    n_docs = B.n_docs_for(size)
    loads, add_s, assign_s, vectors, first = [load()], 0.0, 0.0, 0, 0
    for start in range(0, n_docs, 2000):
        docs, vecs = B.make_docs(start, min(2000, n_docs - start), c)
        q = index.quantizer
        if q is not None:
            x = np.concatenate(vecs).astype(np.float32)
            t = time.perf_counter()
            q.quantizer.search(x, 1)
            assign_s += time.perf_counter() - t
        t = time.perf_counter()
        index.add(docs, embeddings=vecs, pooled=True)
        add_s += time.perf_counter() - t
        vectors += sum(len(v) for v in vecs)
        first = first or vectors
        loads.append(load())
        print(f"profile: {vectors} vectors, add {add_s:.0f} s, load {loads[-1]}", file=sys.stderr, flush=True)
    index.close()
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "vectors": vectors,
        "nlist": nlist,
        "first_chunk_vectors": first,
        "add_s": add_s,
        "vectors_per_s": vectors / add_s,
        "seconds": {k: round(v, 2) for k, v in spent.most_common()},
        "coarse_assignment_of_later_chunks_s": round(assign_s, 2),
        "load_avg_1min": loads,
    }


def coarse(nlist: int) -> dict:
    """Exact flat vs HNSW vs IVF-over-centroids coarse quantizers of one trained IVF-PQ: speed and agreement."""
    import faiss

    from pooledir.index.segments import train_quantizer

    c = B.centers()
    _, vecs = B.make_docs(0, 2000, c)
    sample = np.concatenate(vecs).astype(np.float32)
    _, vecs = B.make_docs(50_000, 1000, c)
    x = np.concatenate(vecs).astype(np.float32)
    xq = x[:2000]
    out: dict = {"nlist": nlist, "train_vectors": len(sample), "assign_vectors": len(x), "load_avg_1min": [load()]}
    t = time.perf_counter()
    q = train_quantizer(sample, len(sample), nlist, None, 8)
    out["train_s"] = time.perf_counter() - t
    cent = q.quantizer.reconstruct_n(0, q.nlist)
    flat = q.quantizer

    def rate(fn, x, k, **kw) -> tuple[float, tuple]:
        t = time.perf_counter()
        r = fn(x, k, **kw)
        return len(x) / (time.perf_counter() - t), r

    speed, (D1, ids1) = rate(flat.search, x, 1)
    _, (Dq, idq) = rate(flat.search, xq, 32)
    qspeed, _ = rate(flat.search, xq, 32)
    out["flat"] = {"assign_per_s": speed, "top32_per_s": qspeed}

    def agreement(D, ids, Dt, idt) -> dict:
        top32 = np.mean([len(set(a) & set(b)) / 32 for a, b in zip(idq, idt)])
        return {
            "same_list": float(np.mean(ids[:, 0] == ids1[:, 0])),
            "ip_lost": float(np.mean(D1[:, 0] - D[:, 0])),
            "top32_recall": float(top32),
        }

    hnsw = faiss.IndexHNSWFlat(q.d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    t = time.perf_counter()
    hnsw.add(cent)
    out["hnsw32_build_s"] = time.perf_counter() - t
    for ef in (16, 32, 64, 128):
        p, p32 = faiss.SearchParametersHNSW(efSearch=ef), faiss.SearchParametersHNSW(efSearch=max(ef, 32))
        speed, (D, ids) = rate(hnsw.search, x, 1, params=p)
        qspeed, (Dt, idt) = rate(hnsw.search, xq, 32, params=p32)
        out[f"hnsw32_ef{ef}"] = {"assign_per_s": speed, "top32_per_s": qspeed} | agreement(D, ids, Dt, idt)
    nc1 = int(round(np.sqrt(nlist)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(q.d), q.d, nc1, faiss.METRIC_INNER_PRODUCT)
    ivf.train(cent)
    ivf.add(cent)
    for nprobe in (4, 8, 16, 32):
        ivf.nprobe = nprobe
        speed, (D, ids) = rate(ivf.search, x, 1)
        qspeed, (Dt, idt) = rate(ivf.search, xq, 32)
        out[f"ivf{nc1}_nprobe{nprobe}"] = {"assign_per_s": speed, "top32_per_s": qspeed} | agreement(D, ids, Dt, idt)
    out["load_avg_1min"].append(load())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, default=1e6, help="vectors of the profiled build (0: skip)")
    ap.add_argument("--nlists", default="4096,12649")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pooledir-bench-coarse"))
    args = ap.parse_args()
    result = json.loads(OUT.read_text()) if OUT.is_file() else {}
    result["machine"] = f"{os.cpu_count()} CPU cores shared with other jobs (load averages in each part), no GPU"
    if args.size:
        result["profile"] = profile(int(args.size), args.work)
        OUT.write_text(json.dumps(result, indent=2))
    for nlist in [int(n) for n in args.nlists.split(",") if n]:
        result.setdefault("coarse", {})[str(nlist)] = coarse(nlist)
        OUT.write_text(json.dumps(result, indent=2))
        print(json.dumps(result["coarse"][str(nlist)], indent=1), flush=True)
    print(json.dumps(result.get("profile"), indent=1))


if __name__ == "__main__":
    main()
