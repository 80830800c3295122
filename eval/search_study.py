"""Issue 21 items 2 and 4: the pq3 search lanes on tuning qrels (rule: eval/results/search_rule.md).

    nice -n 5 python eval/search_study.py ../shared/data/beir/scifact --split train --queries-sample 300
        --checkpoint CKPT --out eval/results/search_study/scifact_train300.cpu.json  (one line)

Builds the default (format 3) index from cached vectors, then, in one process, compares today's per-token
ANN (on an in-memory faiss ``IndexIVFPQ`` copy of each pq3 segment's codes, as ``PQ3File._lists`` built it
before this study) with the centroid lane (:mod:`pooledir.index.plaid`) at several ncells x depth factors:
nDCG@10 from k=10 searches, Recall@100 from k=100 searches, each as a share of ``exhaustive=True`` on the
same index, and the p50 of single k=10 queries, the lanes interleaved query by query (encoding excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from pooledir import ColBERTEncoder, IndexConfig, PooledIndex, SearchParams
from pooledir.evaluation import encode_cached, load_beir, machine_info, run_from_hits, score_run
from pooledir.index.plaid import NPROBE_PER_CELL, PLAID_THRESHOLDS, CentroidLane
from pooledir.index.segments import Probe, search_ivf
from pooledir.search import Hit, TokenAnn, search_embeddings


def legacy_ivf(file) -> faiss.IndexIVFPQ:
    """The in-memory ``IndexIVFPQ`` copy of a pq3 segment that ``PQ3File._lists`` built before (8-byte ids)."""
    q = file.quantizer
    index = faiss.IndexIVFPQ(q.quantizer, q.d, q.nlist, q.pq.M, q.pq.nbits, faiss.METRIC_INNER_PRODUCT)
    index.pq = q.pq
    index.is_trained = True
    pq_codes = np.ascontiguousarray(file.codes[:, file.coarse_size :])
    rows, starts = np.asarray(file.rows, dtype=np.int64), file.starts.astype(np.int64)
    for j, lst in enumerate(file.lists.tolist()):
        ids = np.ascontiguousarray(rows[starts[j] : starts[j + 1]])
        codes = np.ascontiguousarray(pq_codes[ids])
        index.invlists.add_entries(lst, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    index.ntotal = len(file.codes)
    return index


def legacy_ann(snap):
    """Today's ``Snapshot.ann`` over the in-memory copies: (tokens, k, nprobe) -> (scores, doc_ints)."""
    copies = {id(s): legacy_ivf(s.file) for s in snap.segments}

    def ann(tokens: np.ndarray, k: int, nprobe: int):
        probe = Probe(np.ascontiguousarray(tokens, dtype=np.float32))
        probe.coarse, probe.assign = snap.quantizer.quantizer.search(probe.x, min(nprobe, snap.quantizer.nlist))
        S, docs = [], []
        for seg in snap.segments:
            D, ids = search_ivf(copies[id(seg)], probe, k, seg)
            S.append(D)
            docs.append(seg.docs_of(ids))
        S, ids = np.hstack(S), np.hstack(docs)
        S = np.where(ids < 0, -np.inf, S)
        part = np.argsort(-S, axis=1, kind="stable")[:, :k]
        S, ids = np.take_along_axis(S, part, 1), np.take_along_axis(ids, part, 1)
        if S.shape[1] < k:
            S = np.hstack([S, np.full((len(S), k - S.shape[1]), -np.inf, np.float32)])
            ids = np.hstack([ids, np.full((len(ids), k - ids.shape[1]), -1, np.int64)])
        return np.where(ids < 0, 0.0, S).astype(np.float32), ids

    return ann


#: centroid-score pruning variants (search_rule.md, 10:44 UTC): name -> (largest k, threshold) table
PRUNING = {"plaid": PLAID_THRESHOLDS, "plaid-0.05": tuple((k, t - 0.05) for k, t in PLAID_THRESHOLDS)}


def lanes(
    snap, ncells: list[int], depths: list[float], pruning: list[str], tokens: bool = True
) -> dict[str, tuple[object, dict]]:
    """Lane name -> (candidate source, SearchParams knobs other than k); the per-token lane first, if asked for."""
    out = {"tokens": (TokenAnn(legacy_ann(snap)), {})} if tokens else {}
    centroids = snap.centroids()
    for prune in [None, *pruning]:
        lane = CentroidLane(centroids, list(snap.segments), PRUNING[prune] if prune else None)
        for n in ncells:
            for f in depths:
                knobs = {"nprobe": n * NPROBE_PER_CELL, "candidates_per_token": max(1, round(32 * f))}
                out[f"centroid-nc{n}-x{f:g}" + (f"-{prune}" if prune else "")] = (lane, knobs)
    return out


def hits_of(store, ranked) -> list[list[Hit]]:  # noqa: D103
    return [[Hit(i, float(s)) for i, s in zip(store.ext_ids(d), sc)] for d, sc in ranked]


def measure(index, data, Q, named: dict, qids: list[str]) -> dict[str, dict]:
    """Per lane: nDCG@10 (k=10, timed one query at a time, lanes interleaved), Recall@100 (k=100)."""
    snap, store = index._folder.snapshot, index._folder.store
    fetch, live = snap.fetch, snap.live_docs()
    names = list(named)
    times = {n: [] for n in names}
    res10 = {n: [] for n in names}
    for i in range(len(Q)):
        for n in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
            source, knobs = named[n]
            t = time.perf_counter()
            ranked = search_embeddings(Q[i : i + 1], source, fetch, SearchParams(k=10, **knobs), live)
            times[n].append(time.perf_counter() - t)
            res10[n] += hits_of(store, ranked)
    exact = hits_of(store, search_embeddings(Q, [], fetch, SearchParams(k=100, exhaustive=True), live))
    ex100 = score_run(run_from_hits(qids, exact), data.qrels)
    ex10 = score_run(run_from_hits(qids, [h[:10] for h in exact]), data.qrels)
    out = {"exhaustive": {"ndcg@10": ex10["ndcg@10"], "recall@100": ex100["recall@100"]}}
    base = float(np.median(times[names[0]]))  # the per-token lane where measured, else the first lane
    for n in names:
        source, knobs = named[n]
        r100 = [
            search_embeddings(Q[i : i + 1], source, fetch, SearchParams(k=100, **knobs), live)[0] for i in range(len(Q))
        ]
        ndcg = score_run(run_from_hits(qids, res10[n]), data.qrels)["ndcg@10"]
        recall = score_run(run_from_hits(qids, hits_of(store, r100)), data.qrels)["recall@100"]
        p50 = float(np.median(times[n]))
        out[n] = {
            "knobs": knobs,
            "ndcg@10": ndcg,
            "recall@100": recall,
            "ndcg_share": ndcg / ex10["ndcg@10"],
            "recall_share": recall / ex100["recall@100"],
            "p50_ms": p50 * 1000,
            "p50_ratio_to_first": p50 / base,
        }
        print(n, json.dumps(out[n]), flush=True)
    return out


def built(path: Path, data, docs, encoder, pool_factor: int) -> tuple[PooledIndex, float | None]:
    """The default index of ``data`` at ``path`` and its build seconds (None: opened, built by an earlier run)."""
    if (path / "built").exists():
        return PooledIndex.open(path, device="cpu", encoder=encoder), None
    index = PooledIndex.create(path, config=IndexConfig(pool_factor=pool_factor), device="cpu", encoder=encoder)
    t = time.perf_counter()
    index.add(data.documents, embeddings=docs)
    (path / "built").write_text("")
    return index, time.perf_counter() - t


def parse_args() -> argparse.Namespace:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--queries-sample", type=int)
    ap.add_argument("--pool-factor", type=int, default=2)
    ap.add_argument("--ncells", default="2,4,8,16,32", help="lists a token in the centroid lane (nprobe = 4 x this)")
    ap.add_argument("--depths", default="0.5,1,2")
    ap.add_argument("--pruning", default="", help=f"centroid-score pruning variants too: {','.join(PRUNING)}")
    ap.add_argument("--no-tokens", action="store_true", help="leave the per-token lane out")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    ap.add_argument(
        "--index", type=Path, help="keep the built index here; a folder built before is opened, not rebuilt"
    )
    ap.add_argument("--build-only", action="store_true", help="build --index and stop")
    return ap.parse_args()


def main() -> None:  # noqa: D103
    args = parse_args()
    if args.split == "test":
        raise SystemExit("tune on train or dev qrels, never on test")
    data = load_beir(args.dataset, args.split, queries_sample=args.queries_sample)
    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    docs, _, Q = encode_cached(encoder, data, args.cache_dir)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        index, build_s = built(args.index or Path(tmp) / "i", data, docs, encoder, args.pool_factor)
        if args.build_only:
            return
        ncells, depths = [int(x) for x in args.ncells.split(",")], [float(x) for x in args.depths.split(",")]
        named = lanes(
            index._folder.snapshot, ncells, depths, [p for p in args.pruning.split(",") if p], not args.no_tokens
        )
        rows = measure(index, data, Q, named, list(data.queries))
        info = index.info()
        index.close()
    result = {
        "dataset": data.name,
        "split": args.split,
        "documents": len(data.documents),
        "queries": len(data.queries),
        "pool_factor": args.pool_factor,
        "vectors": info["vectors"],
        "nlist": info["backend"].get("nlist"),
        "build_s": build_s,
        "machine": machine_info(),
        "load_avg_1min_start": round(load, 2),
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
        "lanes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
