"""Single-query latency on CPU: where it goes, and the query backends against torch, in one process.

    python eval/bench_query_encoding.py INDEX [--beir ../shared/data/beir/scifact] [--queries 100] [--rounds 3]

1. The split of one search (torch query encoder): encode / candidate search (the vector
   backend's ANN) / MaxSim / the rest (approximate scores, fetching vectors, ids), p50 in ms.
2. Query encoding p50 per backend (torch as ColBERTEncoder does it today, ONNX Runtime fp32,
   ONNX Runtime INT8, and torch limited to one thread), the backends interleaved query by query
   over several rounds so they share the machine's noise; ratios are against torch.
3. Whole single-query search p50 (encoding included) per backend.
4. nDCG@10 per backend on the BEIR test queries whose relevant documents all lie in the
   index (the index may hold a sample of the corpus: the number is only comparable between
   backends, not to full-corpus results).

The machine these numbers come from is shared with other work: read the ratios, which compare
runs made in the same process at the same time, rather than the absolute milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

import pooledir.search
from pooledir import ColBERTEncoder, DocumentNotFoundError, PooledIndex, load_qrels, load_queries

BACKENDS = ("torch", "onnx", "onnx-int8")


def p(values: list[float], q: float = 50) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def split_latency(index: PooledIndex, queries: list[str]) -> dict[str, float]:
    """Time the parts of index.search by wrapping the functions it calls."""
    parts: dict[str, list[float]] = {"encode": [], "candidates": [], "maxsim": [], "total": []}
    backend_search, maxsim = index.backend.search, pooledir.search.maxsim

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            parts[name][-1] += time.perf_counter() - t
            return out

        return wrapper

    index.backend.search = timed("candidates", backend_search)
    pooledir.search.maxsim = timed("maxsim", maxsim)
    try:
        for q in queries:
            for name in parts:
                parts[name].append(0.0)
            t = time.perf_counter()
            Q = index.encoder.encode_queries([q])
            parts["encode"][-1] = time.perf_counter() - t
            index.search_embeddings(Q)
            parts["total"][-1] = time.perf_counter() - t
    finally:
        index.backend.search, pooledir.search.maxsim = backend_search, maxsim
    rest = [t - e - c - m for t, e, c, m in zip(parts["total"], parts["encode"], parts["candidates"], parts["maxsim"])]
    return {name: round(p(v), 2) for name, v in parts.items()} | {"rest": round(p(rest), 2)}


def interleaved(fns: dict[str, callable], queries: list[str], rounds: int) -> dict[str, list[float]]:
    """Per name, the seconds of each call, the names taking turns query by query."""
    times: dict[str, list[float]] = {n: [] for n in fns}
    for fn in fns.values():  # warm-up
        fn(queries[0])
    for _ in range(rounds):
        for q in queries:
            for name, fn in fns.items():
                t = time.perf_counter()
                fn(q)
                times[name].append(time.perf_counter() - t)
    return times


def with_torch_threads(fn, n: int):
    import torch

    def call(q):
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn(q)
        finally:
            torch.set_num_threads(before)

    return call


def in_index(index: PooledIndex, doc_id: str) -> bool:
    try:
        index.get(doc_id)
        return True
    except DocumentNotFoundError:
        return False


def ndcg_at_10(index: PooledIndex, qids: list[str], texts: list[str], qrels: dict) -> float:
    import pytrec_eval

    hits = index.search(texts, k=10)
    run = {qid: {h.id: h.score for h in hs} for qid, hs in zip(qids, hits)}
    scores = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in qids}, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([s["ndcg_cut_10"] for s in scores.values()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", type=Path)
    ap.add_argument("--beir", type=Path, default=Path("../shared/data/beir/scifact"))
    ap.add_argument("--queries", type=int, default=100, help="test queries timed (all are scored for nDCG)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    index = PooledIndex.open(args.index, device="cpu")
    qrels = load_qrels(args.beir, "test")
    all_queries = load_queries(args.beir / "queries.jsonl")
    indexed = {d for d in {d for rel in qrels.values() for d in rel} if in_index(index, d)}
    qids = sorted(q for q in qrels if q in all_queries and set(qrels[q]) <= indexed)
    texts = [all_queries[q] for q in qids]
    timed = texts[: args.queries]
    ckpt, enc_kw = index.manifest["checkpoint"], {k: v for k, v in index.manifest["encoder"].items() if k != "dim"}
    encoders = {b: ColBERTEncoder(ckpt, device="cpu", query_backend=b, **enc_kw) for b in BACKENDS}
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared with other work)")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; index {args.index}, {len(index)} docs"
    )
    result: dict = {"index": str(args.index), "documents": len(index), "queries_timed": len(timed)}

    index = PooledIndex.open(args.index, device="cpu", encoder=encoders["torch"])
    result["split_ms_p50"] = split_latency(index, timed)
    print("1. split of one search with the torch encoder (p50 ms):", json.dumps(result["split_ms_p50"]))

    fns = {b: (lambda q, e=e: e.encode_queries([q])) for b, e in encoders.items()}
    fns["torch-1-thread"] = with_torch_threads(fns["torch"], 1)
    times = interleaved(fns, timed, args.rounds)
    ref = p(times["torch"])
    result["encode_ms"] = {n: {"p50": round(p(t), 2), "p90": round(p(t, 90), 2)} for n, t in times.items()}
    print(f"2. query encoding, {len(timed)} queries x {args.rounds} rounds, interleaved:")
    for n, t in times.items():
        print(f"   {n:15s} p50 {p(t):8.2f} ms  p90 {p(t, 90):8.2f} ms  ratio to torch {p(t) / ref:.3f}")

    searches = {}
    for b, e in encoders.items():
        idx = PooledIndex.open(args.index, device="cpu", encoder=e)
        searches[b] = lambda q, idx=idx: idx.search([q], k=10)
    times = interleaved(searches, timed, args.rounds)
    ref = p(times["torch"])
    result["search_ms"] = {n: {"p50": round(p(t), 2), "p90": round(p(t, 90), 2)} for n, t in times.items()}
    print("3. single-query search, encoding included:")
    for n, t in times.items():
        print(f"   {n:15s} p50 {p(t):8.2f} ms  p90 {p(t, 90):8.2f} ms  ratio to torch {p(t) / ref:.3f}")

    result["ndcg@10"] = {}
    for b, e in encoders.items():
        idx = PooledIndex.open(args.index, device="cpu", encoder=e)
        result["ndcg@10"][b] = round(ndcg_at_10(idx, qids, [all_queries[q] for q in qids], qrels), 4)
    print(f"4. nDCG@10 on the {len(qids)} test queries whose relevant documents are all in the index:")
    print("  ", json.dumps(result["ndcg@10"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
