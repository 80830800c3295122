"""What a run is scored by: BEIR's metrics and self-hit rule, TREC run files, latency and bytes on disk."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pooledir.errors import InputError
from pooledir.search import Hit


def score_run(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean nDCG@10 and Recall@100 over the judged queries (pytrec_eval)."""
    try:
        import pytrec_eval
    except ImportError:
        raise InputError('metrics need the eval extra: pip install "pooledir[eval]"') from None
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    per_query = evaluator.evaluate({q: run.get(q, {}) for q in qrels})
    return {
        "ndcg@10": float(np.mean([m["ndcg_cut_10"] for m in per_query.values()])),
        "recall@100": float(np.mean([m["recall_100"] for m in per_query.values()])),
    }


def drop_self_hits(qid: str, hits: dict[str, float]) -> dict[str, float]:
    """BEIR's rule: a document with the query's own id is not a result."""
    return {d: s for d, s in hits.items() if d != qid}


def run_from_hits(qids: Iterable[str], results: Iterable[Iterable[Hit]]) -> dict[str, dict[str, float]]:
    """A run (qid -> doc id -> score) from one ranked list of hits per query, BEIR's self-hit rule applied."""
    return {q: drop_self_hits(q, {h.id: h.score for h in hits}) for q, hits in zip(qids, results)}


def write_trec_run(path: Path, run: dict[str, dict[str, float]], tag: str) -> None:
    """A TREC run file: ``qid Q0 docid rank score tag``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for qid, hits in run.items():
            for rank, (doc, score) in enumerate(sorted(hits.items(), key=lambda x: -x[1]), 1):
                f.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


def latency(search_one: Callable[[str], object], queries: list[str]) -> dict[str, float]:
    """Single-query latency (encoding included): p50, p95 in ms and queries per second."""
    search_one(queries[0])  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        search_one(q)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p95": float(np.percentile(ms, 95)),
        "qps": float(len(times) / sum(times)),
    }


def folder_bytes(path: Path, pattern: str = "*") -> int:
    """Bytes of the files under ``path`` matching ``pattern``."""
    return sum(p.stat().st_size for p in Path(path).rglob(pattern) if p.is_file())
