"""Hybrid search's costs on a real index: single-query latency per mode, and the lexical lane's cost per upsert.

    python eval/bench_hybrid.py --index IDX --beir ../shared/data/beir/scifact --out OUT.json

Latency: the same queries searched one at a time at k=10 in every mode, interleaved (dense, lexical, hybrid,
hybrid_sequential, rotating which goes first), so that the load of a shared machine falls on all modes alike;
encoding included. ``hybrid`` runs the lexical lane in a thread beside the dense one (what search does),
``hybrid_sequential`` runs the lanes in turn (``pooledir.hybrid.search(..., parallel=False)``): same results.
Upsert: two copies of the index in one process, one as made by this pooledir (lexical table + triggers),
one with the table and its triggers dropped (the write path before the lexical lane); one-document upserts
alternate between them, the same documents (text and vectors) in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pooledir import Document, PooledIndex, hybrid
from pooledir.evaluation import load_queries, machine_info
from pooledir.fusion import Fusion
from pooledir.lexical import TABLE
from pooledir.search import SearchParams

MODES = ("dense", "lexical", "hybrid", "hybrid_sequential")


def search(index: PooledIndex, q: str, mode: str, fusion: Fusion) -> None:
    if mode == "hybrid_sequential":
        hybrid.search(index, [q], SearchParams(k=10), "hybrid", fusion=fusion, parallel=False)
    else:
        index.search(q, k=10, mode=mode, fusion=fusion)


def latency(index: PooledIndex, queries: list[str], fusion: Fusion) -> dict:
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for m in MODES:  # warm-up: the encoder, the mapped segments, the FTS5 pages
        search(index, queries[0], m, fusion)
    for i, q in enumerate(queries):
        order = MODES[i % len(MODES) :] + MODES[: i % len(MODES)]
        for m in order:
            t = time.perf_counter()
            search(index, q, m, fusion)
            times[m].append((time.perf_counter() - t) * 1000)
    out = {m: {"p50_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95))} for m, v in times.items()}
    out["hybrid_minus_dense_p50_ms"] = out["hybrid"]["p50_ms"] - out["dense"]["p50_ms"]
    out["hybrid_over_dense_p50"] = out["hybrid"]["p50_ms"] / out["dense"]["p50_ms"]
    diffs = np.array(times["hybrid"]) - np.array(times["dense"])  # paired, same query
    out["hybrid_minus_dense_paired_median_ms"] = float(np.median(diffs))
    out["hybrid_sequential_minus_dense_p50_ms"] = out["hybrid_sequential"]["p50_ms"] - out["dense"]["p50_ms"]
    out["hybrid_sequential_over_dense_p50"] = out["hybrid_sequential"]["p50_ms"] / out["dense"]["p50_ms"]
    saved = np.array(times["hybrid_sequential"]) - np.array(times["hybrid"])  # paired, same query
    out["parallel_saves_paired_median_ms"] = float(np.median(saved))
    return out


def drop_lexical(index: PooledIndex) -> None:
    conn = index.doc_store.conn
    for trigger in ("docs_lex_insert", "docs_lex_delete", "docs_lex_update"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def upserts(path: Path, n: int, dim: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-hybrid-"))
    try:
        with_lex, without = tmp / "with", tmp / "without"
        shutil.copytree(path, with_lex)
        shutil.copytree(path, without)
        a = PooledIndex.open(with_lex, device="cpu")
        b = PooledIndex.open(without, device="cpu")
        drop_lexical(b)
        rows = a.doc_store.rows(list(range(1, n + 1)))  # real texts of the corpus' size
        rng = np.random.default_rng(0)
        times: dict[str, list[float]] = {"with_lexical": [], "without_lexical": []}
        for i, r in enumerate(rows):
            doc = Document(f"bench-{i}", r.text, r.metadata)
            vec = rng.standard_normal((max(r.n_vectors, 1), dim)).astype(np.float32)
            vec /= np.linalg.norm(vec, axis=1, keepdims=True)
            pair = [("with_lexical", a), ("without_lexical", b)]
            for name, idx in pair if i % 2 else pair[::-1]:
                t = time.perf_counter()
                idx.add([doc], embeddings=[vec], pooled=True)
                times[name].append((time.perf_counter() - t) * 1000)
        assert a.doc_store.conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0] == len(a)
        a.close()
        b.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "n": n,
        "median_ms": med,
        "p95_ms": {k: float(np.percentile(v, 95)) for k, v in times.items()},
        "extra_ms": med["with_lexical"] - med["without_lexical"],
        "ratio": med["with_lexical"] / med["without_lexical"],
        "paired_median_extra_ms": float(
            np.median(np.array(times["with_lexical"]) - np.array(times["without_lexical"]))
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--beir", type=Path, required=True, help="BEIR folder whose queries.jsonl is searched")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--upserts", type=int, default=60)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    queries = list(load_queries(a.beir).values())[: a.queries]
    load_before = os.getloadavg()[0]  # a shared machine: the load says what the milliseconds mean
    with PooledIndex.open(a.index, device="cpu") as index:
        info = index.info()
        lat = latency(index, queries, Fusion())
        dim = index.dim
    lat["load_avg_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    up = upserts(a.index, a.upserts, dim)
    out = {
        "index": str(a.index),
        "documents": info["documents"],
        "backend": info["backend"],
        "fusion_default": Fusion().__dict__,
        "queries": len(queries),
        "latency": lat,
        "upsert_one_document": up,
        "machine": machine_info(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({"latency": lat, "upsert": up}, indent=1))


if __name__ == "__main__":
    main()
