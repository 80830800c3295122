"""Pooling variants on identical vectors: which clustering input, and whether to re-normalise the means.

    python eval/pooling_variants.py ../shared/data/beir/scifact --checkpoint CKPT [--factors 2,3,4]
                                    [--split test] [--corpus-sample N] [--out eval/results/pooling_variants.json]

With --out, rows already in that file (same factor, method and means) are kept and skipped, so a long sweep can
be finished in parts; the file and a Markdown table beside it (same name, .md) are rewritten after every row.

Every variant pools the same cached document vectors (one [CLS] vector protected, max(1, n // factor)
clusters), the pooled vectors go into an exact (flat) index as they are (pool factor 1), and the judged
queries are scored by MaxSim. Variants:

* ward-unit: Ward on the unit vectors themselves (Euclidean) -- pooledir's default until this comparison
* ward-cosine: Ward on condensed cosine distances (PyLate 1.6) -- pooledir's default since (best at factor 4)
* ward-square: Ward with the rows of the n x n (1 - cos) matrix as observations (colbert-ai / PyLate before 2026)
* kmeans: k-means on the unit vectors (the Token Pooling paper's weaker baseline)

each with re-normalised cluster means (+renorm) or raw means (raw).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.cluster.vq import kmeans2
from scipy.spatial.distance import pdist

from pooledir import ColBERTEncoder, IndexConfig, PooledIndex, SearchParams
from pooledir.evaluation import encode_cached, load_beir, run_from_hits, score_run


def labels_for(method: str, X: np.ndarray, k: int) -> np.ndarray:
    X64 = X.astype(np.float64)
    if method == "ward-unit":
        Z = linkage(X64, "ward")
    elif method == "ward-cosine":
        Z = linkage(np.maximum(pdist(X64, "cosine"), 0), "ward")
    elif method == "ward-square":
        Z = linkage(1.0 - X64 @ X64.T, "ward")
    elif method == "kmeans":
        return kmeans2(X64, k, seed=0, minit="++")[1]
    else:
        raise ValueError(method)
    return fcluster(Z, k, "maxclust") - 1


def pool(X: np.ndarray, factor: int, method: str, renorm: bool) -> np.ndarray:
    head, rest = X[:1].astype(np.float32), X[1:].astype(np.float32)
    k = max(1, len(rest) // factor)
    if len(rest) <= k:
        return X.astype(np.float16)
    labels = labels_for(method, rest, k)
    used = np.unique(labels)
    means = np.stack([rest[labels == c].mean(0) for c in used])
    if renorm:
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return np.concatenate([head, means]).astype(np.float16)


def score(data, encoder, vectors, Q, params) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        index = PooledIndex.create(
            Path(tmp) / "i", config=IndexConfig(backend="flat", pool_factor=1), device="cpu", encoder=encoder
        )
        index.add(data.documents, embeddings=vectors)
        results = index.search_embeddings(Q, params)
        run = run_from_hits(data.queries, results)
        index.close()
    return score_run(run, data.qrels)["ndcg@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--factors", default="2,3,4")
    ap.add_argument("--split", default="test")
    ap.add_argument("--corpus-sample", type=int)
    ap.add_argument("--methods", default="ward-unit,ward-cosine,ward-square,kmeans")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    data = load_beir(args.dataset, args.split, args.corpus_sample)
    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    docs, _, Q = encode_cached(encoder, data, args.cache_dir, show_progress=True)
    # exact MaxSim over every candidate a query token can reach: a flat index with deep candidate lists
    params = SearchParams(k=10, candidates_per_token=256, rerank=300)

    base = score(data, encoder, docs, Q, params)
    print(f"{data.name}: {len(data.documents)} documents, {len(data.queries)} queries; unpooled nDCG@10 {base:.4f}")
    rows = json.loads(args.out.read_text())["rows"] if args.out and args.out.exists() else []
    done = {(r["factor"], r["method"], r["renorm"]) for r in rows}
    for factor in [int(f) for f in args.factors.split(",")]:
        for method in args.methods.split(","):
            for renorm in (True, False):
                if (factor, method, renorm) in done:
                    continue
                t = time.perf_counter()
                pooled = [pool(x, factor, method, renorm) for x in docs]
                pool_s = time.perf_counter() - t
                ndcg = score(data, encoder, pooled, Q, params)
                row = {
                    "factor": factor,
                    "method": method,
                    "renorm": renorm,
                    "ndcg@10": ndcg,
                    "relative": ndcg / base,
                    "vectors": int(sum(len(p) for p in pooled)),
                    "pool_s": pool_s,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
                if args.out:
                    write(args.out, data, args.split, base, rows)
    print(table(data, args.split, base, rows))


def table(data, split: str, base: float, rows: list[dict]) -> str:
    """Markdown table of the rows, ordered by factor, method, then re-normalised before raw means."""
    order = {m: i for i, m in enumerate(["ward-unit", "ward-cosine", "ward-square", "kmeans"])}
    rows = sorted(rows, key=lambda r: (r["factor"], order.get(r["method"], 99), not r["renorm"]))
    lines = [
        f"Unpooled exact nDCG@10 {base:.4f} ({data.name} {split} qrels, {len(data.queries)} queries, "
        f"{len(data.documents):,} documents)",
        "",
        "| factor | Ward input / method | means | nDCG@10 | vs unpooled | pool s (1 core) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        means = "re-normalised" if r["renorm"] else "raw"
        score = f"{r['ndcg@10']:.4f} | {r['relative']:.1%}"
        lines.append(f"| {r['factor']} | {r['method']} | {means} | {score} | {r['pool_s']:.0f} |")
    return "\n".join(lines) + "\n"


def write(out: Path, data, split: str, base: float, rows: list[dict]) -> None:
    """Rewrite the JSON and its Markdown table (temp file + replace, so an interrupted sweep keeps its rows)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "dataset": data.name,
        "split": split,
        "documents": len(data.documents),
        "queries": len(data.queries),
        "unpooled_ndcg@10": base,
        "rows": rows,
    }
    for path, text in ((out, json.dumps(payload, indent=2)), (out.with_suffix(".md"), table(data, split, base, rows))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


if __name__ == "__main__":
    main()
