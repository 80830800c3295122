"""Single-query search time of the default index at two codes, in one process, interleaved (code_rule.md's guard).

    python eval/code_speed.py ../shared/data/beir/scifact --split train --checkpoint CKPT \
        --out eval/results/format_study/code3_speed_scifact_train.cpu.json

Both indexes are built from the evaluation's cached vectors (pooled x2 as ``pooledir index`` pools them) and
stay open; each query (encoded once beforehand) is searched on both back to back, the order alternating query by
query, over ``--rounds`` rounds of the whole query set. Per code: p50 and mean of the per-query times.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pooledir import ColBERTEncoder, IndexConfig, PooledIndex, SearchParams, pool_embeddings
from pooledir.evaluation import encode_cached, load_beir


def code_config(code: str) -> IndexConfig:
    """``PQmxB`` as the default index's config."""
    m, _, bits = code.removeprefix("PQ").partition("x")
    return IndexConfig(pq_m=int(m), pq_nbits=int(bits or 8))


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--codes", default="PQ16x8,PQ32x6")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    data = load_beir(args.dataset, args.split)
    vectors, _, _ = encode_cached(encoder, data, args.cache_dir)
    pooled = pool_embeddings(vectors, pool_factor=2)
    Q = encoder.encode_queries([data.queries[q] for q in data.queries])
    codes = args.codes.split(",")
    params = SearchParams(k=100)
    times: dict[str, list[float]] = {c: [] for c in codes}
    with tempfile.TemporaryDirectory() as tmp:
        indexes = {}
        for c in codes:
            index = PooledIndex.create(Path(tmp) / c, config=code_config(c), device="cpu", encoder=encoder)
            index.add(data.documents, embeddings=pooled, pooled=True, n_tokens=[len(v) for v in vectors])
            indexes[c] = index
        loads = [os.getloadavg()[0]]
        for _ in range(args.rounds):
            for qi in range(len(Q)):
                order = codes if qi % 2 == 0 else codes[::-1]
                for c in order:
                    t = time.perf_counter()
                    indexes[c].search_embeddings(Q[qi : qi + 1], params)
                    times[c].append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
        info = {c: indexes[c].info() for c in codes}
        for index in indexes.values():
            index.close()
    base = codes[0]
    rows = [
        {
            "code": c,
            "nlist": info[c]["backend"].get("nlist"),
            "p50_ms": 1e3 * float(np.median(times[c])),
            "mean_ms": 1e3 * float(np.mean(times[c])),
            "p50_ratio": float(np.median(times[c]) / np.median(times[base])),
            "searches": len(times[c]),
        }
        for c in codes
    ]
    out = {
        "dataset": args.dataset.name,
        "split": args.split,
        "queries": len(Q),
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "load_1min": [round(x, 2) for x in loads]},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for r in rows:
        print(f"{r['code']}: p50 {r['p50_ms']:.1f} ms ({r['p50_ratio']:.2f}x), mean {r['mean_ms']:.1f} ms")


if __name__ == "__main__":
    main()
