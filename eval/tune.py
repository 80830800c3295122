"""Choose the IVF-PQ search defaults on tuning qrels (train/dev), never on test.

    python eval/tune.py ../shared/data/beir/scifact --checkpoint CKPT --split train [--pool-factor 2]
                        [--queries-sample 300] [--out eval/results/tune_scifact.json]

Builds an IVF-PQ index per nlist from cached vectors, then sweeps nprobe x candidates_per_token x rerank:
nDCG@10 from k=10 searches (one query at a time, timed; query encoding excluded, it is the same for
every setting) and Recall@100 from k=100 searches.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from pooledir import ColBERTEncoder, IndexConfig, PooledIndex, SearchParams
from pooledir.evaluation import encode_cached, load_beir, run_from_hits, score_run


def sweep_point(index, data, Q, nprobe: int, cands: int, rerank: int) -> dict:
    """nDCG@10 from k=10 searches at this rerank depth (timed one query at a time), Recall@100 from k=100."""
    p10 = SearchParams(k=10, nprobe=nprobe, candidates_per_token=cands, rerank=rerank)
    times, results = [], []
    for i in range(len(Q)):
        t = time.perf_counter()
        results.extend(index.search_embeddings(Q[i : i + 1], p10))
        times.append(time.perf_counter() - t)
    run10 = run_from_hits(data.queries, results)
    p100 = SearchParams(k=100, nprobe=nprobe, candidates_per_token=cands, rerank=max(rerank, 100))
    hits100 = index.search_embeddings(Q, p100)
    run100 = run_from_hits(data.queries, hits100)
    return {
        "nlist": index.info()["backend"]["nlist"],
        "nprobe": nprobe,
        "candidates_per_token": cands,
        "rerank": rerank,
        "ndcg@10": score_run(run10, data.qrels)["ndcg@10"],
        "recall@100": score_run(run100, data.qrels)["recall@100"],
        "search_ms_p50": float(np.median(times) * 1000),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--pool-factor", type=int, default=2)
    ap.add_argument("--queries-sample", type=int)
    ap.add_argument("--nlist", default="auto", help="comma-separated; auto = the library default")
    ap.add_argument("--nprobe", default="8,16,32")
    ap.add_argument("--candidates", default="16,32,64")
    ap.add_argument("--rerank", default="32,64,128,256")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.split == "test":
        raise SystemExit("tune on train or dev qrels, never on test")

    data = load_beir(args.dataset, args.split, queries_sample=args.queries_sample)
    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    docs, _, Q = encode_cached(encoder, data, args.cache_dir, show_progress=True)

    rows = []
    for nlist in [int(x) if x != "auto" else None for x in args.nlist.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            config = IndexConfig(pool_factor=args.pool_factor, nlist=nlist)
            index = PooledIndex.create(Path(tmp) / "i", config=config, device="cpu", encoder=encoder)
            index.add(data.documents, embeddings=docs)
            print(
                f"{data.name} {args.split}: {len(data.documents)} documents, {len(data.queries)} queries, "
                f"{index.info()['backend']}"
            )
            grid = itertools.product(*(map(int, g.split(",")) for g in (args.nprobe, args.candidates, args.rerank)))
            for nprobe, cands, rerank in grid:
                rows.append(sweep_point(index, data, Q, nprobe, cands, rerank))
                print(json.dumps(rows[-1]), flush=True)
            index.close()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "dataset": data.name,
                    "split": args.split,
                    "pool_factor": args.pool_factor,
                    "documents": len(data.documents),
                    "queries": len(data.queries),
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
