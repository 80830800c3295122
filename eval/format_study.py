"""Issue 21's codec study: coarse list count rule x code, in the bytes the format-3 segment would store.

    nice -n 5 python eval/format_study.py ../shared/data/beir/nfcorpus --split dev --queries-sample 120
        --corpus-sample 1 --checkpoint CKPT --rules 4,8,16,plaid --codes PQ16,PQ24,PQ32
        --out eval/results/format_study/nfcorpus_dev120.cpu.json  (one line)

Every row scores every document by exhaustive MaxSim over its pooled vectors as the codec decodes them
(``eval/codec_probe.py``'s measure: codec precision only, no candidate search). The share is against exact
unpooled MaxSim (flat, pool x1) on the same cached embeddings. Codes are IVF standalone codes: the vector's
list (L2 nearest centroid of a k-means coarse quantizer) and a code of its residual, i.e. what
``IndexIVFPQ.sa_encode`` writes. Each coarse quantizer is trained once per list count and reused by every
code; assignment is done once per list count and its time is added to every code's encode time.

Bytes per original token: (2 B list number + code + 4 B local row in the inverted list) per pooled vector
plus centroids (nlist x dim x 4) and codebooks, over the tokens before pooling; ``bytes_per_token_ids8``
is today's store for comparison (code + 8 B faiss id per vector, same centroids and codebooks).
Tune on train/dev qrels only. The JSON is rewritten after each row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from pooledir import ColBERTEncoder, IndexConfig, PooledIndex, SearchParams, maxsim, pool_embeddings
from pooledir.evaluation import encode_cached, load_beir, machine_info, run_from_hits, score_run
from pooledir.index import coarse, segments
from pooledir.lexical import TABLE as LEXICAL_TABLE

LIST_BYTES = 2  # the list number in an IVF standalone code for <= 65,536 lists
ROW_BYTES = 4  # a uint32 local row per vector in the inverted lists
ID_BYTES = 8  # today's faiss id per vector


def nlist_for(rule: str, n_vectors: int) -> int:
    """List count for ``rule``: ``k`` means k·√N, ``plaid`` PLAID's 2**floor(log2(16·√N)), ``=n`` n lists."""
    root = math.sqrt(n_vectors)
    if rule.startswith("="):
        return int(rule[1:])
    if rule == "plaid":
        return 2 ** int(math.floor(math.log2(16 * root)))
    return int(round(float(rule) * root))


@dataclass
class Coarse:
    """A trained coarse quantizer and every vector's list."""

    centroids: np.ndarray
    assign: np.ndarray
    train_s: float
    assign_s: float
    sample_rows: np.ndarray  # the rows of X the k-means trained on (sorted)
    spherical: bool  # unit centroids, inner-product assignment


@dataclass
class Code:
    """A residual code: decoded residuals, bytes per vector, codebook bytes and timings."""

    residuals: np.ndarray
    code_bytes: int
    codebook_bytes: int
    train_s: float
    encode_s: float


def l2_lists(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The nearest (L2) centroid of each row of ``x``: argmax of x·c - |c|²/2, one GEMM per block of rows."""
    half = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    block = max(64, coarse.ASSIGN_BLOCK_BYTES // (4 * len(centroids)))
    out = np.empty(len(x), dtype=np.int64)
    for i in range(0, len(x), block):
        out[i : i + block] = np.argmax(x[i : i + block] @ centroids.T - half, axis=1)
    return out


def l2_kmeans(x: np.ndarray, k: int, niter: int) -> np.ndarray:
    """Plain Lloyd's k-means on numpy's BLAS, L2 assignment, centroids left as the clusters' means.

    :func:`coarse.spherical_kmeans` without re-normalising: same seed, same split of empty clusters.
    """
    rng = np.random.default_rng(1234)
    centroids = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(niter):
        sums, counts = coarse.cluster_sums(x, l2_lists(centroids, x), k)
        centroids = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        coarse.split_clusters(centroids, counts, rng)
    return np.ascontiguousarray(centroids, dtype=np.float32)


def train_coarse(X: np.ndarray, nlist: int, niter: int, train_max: int, seed: int, kmeans: str = "faiss") -> Coarse:
    """k-means on a seeded sample of at most ``train_max`` vectors, then assign every vector.

    ``kmeans``: ``faiss`` (faiss's L2 k-means, L2 assignment), ``l2`` (:func:`l2_kmeans`, L2 assignment) or
    ``spherical`` (the engine's :func:`coarse.spherical_kmeans`, unit centroids, inner-product assignment).
    """
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows = np.arange(len(X)) if len(X) <= train_max else np.sort(rng.choice(len(X), train_max, replace=False))
    sample = np.ascontiguousarray(X[rows])
    if kmeans == "faiss":
        km = faiss.Kmeans(X.shape[1], nlist, niter=niter, seed=seed, max_points_per_centroid=train_max)
        km.train(sample)
        centroids = km.centroids
    elif kmeans == "l2":
        centroids = l2_kmeans(sample, nlist, niter)
    else:
        centroids = coarse.spherical_kmeans(sample, nlist, niter, max(1, train_max // nlist + 1))
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    assign = coarse.assign_lists(centroids, X) if kmeans == "spherical" else l2_lists(centroids, X)
    return Coarse(centroids, assign, train_s, time.perf_counter() - t, rows, kmeans == "spherical")


def pq_sample_rows(coarse: Coarse, n_vectors: int, source: str, n: int, seed: int) -> np.ndarray:
    """Rows whose residuals train the code: ``n`` drawn from ``source``.

    ``all``: every vector (this study before s10); ``kmeans``: the k-means training sample, as the engine
    (:func:`segments._train_on_cpu`) draws them; ``heldout``: vectors the k-means never saw, whose residuals are
    distributed like those of the vectors the code will encode.
    """
    if source == "kmeans":
        pool = coarse.sample_rows
    elif source == "heldout":
        pool = np.setdiff1d(np.arange(n_vectors), coarse.sample_rows)
    else:
        pool = np.arange(n_vectors)
    rng = np.random.default_rng(seed)
    return np.sort(pool[rng.choice(len(pool), min(len(pool), n), replace=False)])


def residual_code(code: str, R: np.ndarray, sample: np.ndarray, opq_niter: int = 50, opq_train: int = 65_536) -> Code:
    """Train ``code`` (PQm, OPQm, RQm; ``xB`` for B-bit codes, default 8) on ``sample`` residuals; encode ``R``.

    faiss's PQ needs m to divide the dimension: at 128 d a 24-byte PQ is PQ32x6 (32 six-bit codes), not PQ24.
    The OPQ rotation trains ``opq_niter`` rounds on at most ``opq_train`` of the sample (faiss: 50 and 65,536;
    each round trains a PQ, so it costs tens of times a PQ's training).
    """
    d = R.shape[1]
    m, _, bits = code.lstrip("OPQR").partition("x")
    m, bits = int(m), int(bits or 8)
    t = time.perf_counter()
    if code.startswith("RQ"):
        quantizer = faiss.ResidualQuantizer(d, m, bits)
        quantizer.max_beam_size = 1  # greedy: the default beam of 5 is 5x the encode time
    else:
        quantizer = faiss.ProductQuantizer(d, m, bits)
        # faiss's Clustering keeps at most 256 points a codeword (65,536 at 8 bits) unless raised: before s10 a
        # larger --code-train was silently subsampled back to 65,536
        quantizer.cp.max_points_per_centroid = max(256, -(-len(sample) // 2**bits))
    opq = faiss.OPQMatrix(d, m) if code.startswith("OPQ") else None
    if opq is not None:
        opq.niter, opq.max_train_points = opq_niter, opq_train
        opq.train(sample)
        sample = opq.apply(sample)
    quantizer.train(sample)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    codes = quantizer.compute_codes(opq.apply(R) if opq is not None else R)
    encode_s = time.perf_counter() - t
    decoded = quantizer.decode(codes)
    if opq is not None:
        decoded = opq.reverse_transform(decoded)
    codebook_bytes = 4 * 2**bits * d * (1 if code.startswith(("PQ", "OPQ")) else m) + (4 * d * d if opq else 0)
    return Code(decoded, int(codes.shape[1]), codebook_bytes, train_s, encode_s)


def ranked(Q: np.ndarray, vectors: np.ndarray, offsets: np.ndarray, ids: list[str], qids: list[str], batch: int):
    """The top 100 documents of every query by exhaustive MaxSim over ``vectors``."""
    scores = np.concatenate([maxsim(Q[i : i + batch], vectors, offsets) for i in range(0, len(Q), batch)])
    run = {}
    for qi, q in enumerate(qids):
        top = np.argpartition(-scores[qi], min(99, len(ids) - 1))[:100]
        run[q] = {ids[j]: float(scores[qi, j]) for j in top}
    return run


def confirm(
    code: str, args: argparse.Namespace, encoder: ColBERTEncoder, data, docs: list, Q: np.ndarray, probe=None
) -> list[dict]:
    """The engine itself at ``code`` (``PQmxB``): its default search and ``exhaustive=True``, k=100, every query.

    ``probe`` (``(X, offsets, ref, rank)``): also score, as this study scores its rows, the probe's pooled vectors
    through the engine's quantizer and the vectors the engine stores, to tell a loss in its quantizer from one in
    its index or its search. Sizes are the engine folder's over the tokens before pooling (:func:`folder_bytes`).
    """
    m, _, bits = code.removeprefix("PQ").partition("x")
    config = IndexConfig(
        pool_factor=args.pool_factor, protected_tokens=args.protected_tokens, pq_m=int(m), pq_nbits=int(bits or 8)
    )
    qids = list(data.queries)
    with tempfile.TemporaryDirectory() as tmp:
        index = PooledIndex.create(Path(tmp) / "i", config=config, device="cpu", encoder=encoder)
        t = time.perf_counter()
        index.add(data.documents, embeddings=docs)
        build_s = time.perf_counter() - t
        info = index.info()
        sizes = folder_bytes(index, sum(len(x) for x in docs))
        rows = []
        searches = (("default", SearchParams(k=100)), ("exhaustive", SearchParams(k=100, exhaustive=True)))
        for name, params in searches[: 1 if args.confirm_lean else 2]:
            t = time.perf_counter()
            hits = index.search_embeddings(Q, params)
            search_s = time.perf_counter() - t
            rows.append(
                {
                    "codec": f"engine {name}",
                    "code": code,
                    "pool": args.pool_factor,
                    "backend": info["backend"],
                    **sizes,
                    "build_s": round(build_s, 1),
                    "search_s": round(search_s, 1),
                    **scored(run_from_hits(qids, hits), data.qrels),
                }
            )
        if probe is not None:
            rows += engine_vs_probe(index, data, Q, *probe, lean=args.confirm_lean)
        index.close()
    return rows


def folder_bytes(index: PooledIndex, n_tokens: int) -> dict:
    """The engine folder's bytes per original token, as the harness counts them for ``format3/*`` runs.

    ``bytes_per_token``: segments + quantizer + the document store less its text, metadata and lexical (FTS5)
    tables (the harness's ``search_bytes`` of a dense search); ``vector_bytes_per_token``: segments + quantizer
    only; ``folder_bytes_per_token``: every file of the folder. (Before 2026-12-07 15:50 UTC ``bytes_per_token``
    here still counted the FTS5 tables: ``code3_*`` rows.)
    """
    files = index.describe().bytes
    vectors = sum(v for k, v in files.items() if k.startswith(("segments", "quantizer")))
    store = sum(v for k, v in files.items() if k.startswith("docs.sqlite"))
    con = sqlite3.connect(f"file:{index.path / 'docs.sqlite'}?mode=ro", uri=True)
    try:
        sql = "SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB)) + LENGTH(metadata)), 0) FROM docs"
        (text,) = con.execute(sql).fetchone()
        sql = f"SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name LIKE '{LEXICAL_TABLE}%'"
        (lexical,) = con.execute(sql).fetchone()
    finally:
        con.close()
    return {
        "bytes_per_token": (vectors + max(0, store - text - lexical)) / n_tokens,
        "vector_bytes_per_token": vectors / n_tokens,
        "folder_bytes_per_token": sum(files.values()) / n_tokens,
    }


def centroid_candidates(Q: np.ndarray, coarse: Coarse, offsets: np.ndarray, n: int) -> list[np.ndarray]:
    """Per query the ``n`` documents with the best MaxSim over their vectors' centroids (PLAID's first stage)."""
    out = []
    for q in Q:
        s = (q @ coarse.centroids.T)[:, coarse.assign]  # (Lq, N): each vector scored by its centroid
        per_doc = np.maximum.reduceat(s, offsets[:-1], axis=1).sum(axis=0)
        out.append(np.sort(np.argpartition(-per_doc, min(n, len(per_doc)) - 1)[:n]))
    return out


def ranked_among(Q: np.ndarray, vectors: np.ndarray, offsets: np.ndarray, cands: list[np.ndarray], ids, qids):
    """The top 100 of every query by MaxSim over ``vectors``, among its candidate documents only."""
    run = {}
    for qi, docs in enumerate(cands):
        lo, n = offsets[docs], offsets[docs + 1] - offsets[docs]
        rows = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(n.sum())
        s = maxsim(Q[qi : qi + 1], vectors[rows], np.concatenate([[0], np.cumsum(n)]))[0]
        top = np.argpartition(-s, min(99, len(docs) - 1))[:100]
        run[qids[qi]] = {ids[docs[j]]: float(s[j]) for j in top}
    return run


def pair_scores(Q: np.ndarray, vectors: np.ndarray, offsets: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """(nq, n) MaxSim of query i with documents ``docs[i]`` over ``vectors``."""
    out = np.empty(docs.shape, dtype=np.float32)
    for qi, dq in enumerate(docs):
        lo, n = offsets[dq], offsets[dq + 1] - offsets[dq]
        rows = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(n.sum())
        out[qi] = maxsim(Q[qi : qi + 1], vectors[rows], np.concatenate([[0], np.cumsum(n)]))[0]
    return out


@dataclass
class Reference:
    """Pooled flat MaxSim (the uncompressed vectors) over each query's 100 best documents by it.

    The yardstick of :func:`score_error`, which does not jump with one query as nDCG@10 over 324 queries does.
    """

    docs: np.ndarray  # (nq, 100) document indices, best first
    scores: np.ndarray  # (nq, 100) their pooled flat MaxSim


def reference(Q: np.ndarray, X: np.ndarray, offsets: np.ndarray, run: dict, ids: list[str], qids: list[str]):
    """The pooled flat run's top 100 of every query, as a :class:`Reference`."""
    pos = {d: i for i, d in enumerate(ids)}
    docs = np.array([[pos[d] for d, _ in sorted(run[q].items(), key=lambda x: -x[1])[:100]] for q in qids])
    return Reference(docs, pair_scores(Q, X, offsets, docs))


def score_error(ref: Reference, Q: np.ndarray, decoded: np.ndarray, offsets: np.ndarray) -> dict[str, float]:
    """How far decoded MaxSim is from pooled flat on each query's 100 best flat documents.

    ``score_mae``: mean |decoded - flat| MaxSim (summed over the query's tokens) over those 100 x queries pairs;
    ``score_bias``: the mean signed error; ``top10_kept``: share of flat's top 10 that stays in the decoded
    scores' top 10 of the same 100 documents (a rank measure that one query moves by 1/(10·nq)).
    """
    s = pair_scores(Q, decoded, offsets, ref.docs)
    err = s - ref.scores
    top = np.argsort(-s, axis=1)[:, :10]
    kept = np.mean([len(set(t) & set(range(10))) / 10 for t in top])
    return {"score_mae": float(np.mean(np.abs(err))), "score_bias": float(np.mean(err)), "top10_kept": float(kept)}


def per_query_ndcg(run: dict, qrels: dict) -> dict[str, float]:
    """nDCG@10 of every judged query (pytrec_eval), for paired comparisons between rows."""
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})
    return {q: round(m["ndcg_cut_10"], 5) for q, m in evaluator.evaluate({q: run.get(q, {}) for q in qrels}).items()}


def write(out: Path, result: dict) -> None:
    """Atomically rewrite the result JSON; rows' per-query nDCG@10 go to ``<out>.per_query.tsv`` beside it.

    The JSON's rows stay one line each on the results pages; the TSV (a query a line, a column per row that has
    them, headed by the row's index) is what paired comparisons between rows read.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if k != "ndcg10_per_query"} for r in result["rows"]]
    per_query = {i: r["ndcg10_per_query"] for i, r in enumerate(result["rows"]) if "ndcg10_per_query" in r}
    for path, text in (
        (per_query_path(out), per_query_tsv(per_query) if per_query else None),
        (out, json.dumps({**result, "rows": rows}, indent=2)),
    ):
        if text is not None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)


def per_query_path(out: Path) -> Path:
    """The per-query nDCG@10 TSV beside the result JSON ``out``."""
    return out.with_name(out.name.removesuffix(".json") + ".per_query.tsv")


def per_query_tsv(per_query: dict[int, dict[str, float]]) -> str:
    """``query`` then one column per row index, a line per query."""
    cols = sorted(per_query)
    lines = ["\t".join(["query", *(f"row{i}" for i in cols)])]
    for q in next(iter(per_query.values())):
        lines.append("\t".join([q, *(f"{per_query[i][q]:.5f}" for i in cols)]))
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--corpus-sample", type=int)
    ap.add_argument("--queries-sample", type=int)
    ap.add_argument("--pool-factor", type=int, default=2)
    ap.add_argument("--pool-threshold", type=float, help="adaptive pooling at this Ward merge height instead")
    ap.add_argument("--protected-tokens", type=int, default=1)
    ap.add_argument("--rules", default="4,8,16,plaid", help="','-separated: k (k·√N lists), plaid or =n (n lists)")
    ap.add_argument(
        "--kmeans",
        default="faiss",
        help="','-separated coarse trainings, each run for every rule: faiss (L2), l2 (numpy L2 Lloyd's, the"
        " engine's seeding) or spherical (the engine's spherical k-means, inner-product assignment)",
    )
    ap.add_argument("--codes", default="PQ16,PQ24,PQ32", help="','-separated PQm, OPQm or RQm; xB: B-bit codes")
    ap.add_argument("--niter", default="10", help="k-means iterations; ','-separated: one coarse quantizer each")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the k-means training sample")
    ap.add_argument("--points-per-centroid", type=int, default=256, help="k-means sample: this many a centroid")
    ap.add_argument("--train-max", type=int, default=200_000, help="and at most this many vectors")
    ap.add_argument(
        "--code-train", default="65536", help="residuals sampled to train each code; ','-separated: a row each"
    )
    ap.add_argument(
        "--pq-from",
        default="all",
        help="','-separated: where the code's training residuals come from: all (every vector), kmeans (the"
        " k-means sample, as the engine draws them) or heldout (vectors the k-means did not see)",
    )
    ap.add_argument("--pq-seed", type=int, default=0, help="seed of the code's training-residual draw")
    ap.add_argument("--no-score-error", action="store_true", help="skip the score error against pooled flat")
    ap.add_argument("--opq-niter", type=int, default=50, help="OPQ rotation rounds (faiss's default 50)")
    ap.add_argument("--opq-train", type=int, default=65_536, help="residuals the OPQ rotation trains on")
    ap.add_argument("--no-flat", action="store_true", help="skip the flat x1 and pooled flat rows")
    ap.add_argument("--no-exact", action="store_true", help="skip only the flat x1 row (exact unpooled)")
    ap.add_argument(
        "--candidates",
        type=int,
        help="score only each query's N best documents by centroid MaxSim (the first rule's lists), not all",
    )
    ap.add_argument(
        "--engine-quantizer",
        default="",
        help="','-separated sample seeds (0: the folder's draw): a row each for segments.train_quantizer's codes",
    )
    ap.add_argument(
        "--confirm",
        help="','-separated PQmxB: also build the engine's index at each code and score its search (the exact and"
        " flat rows are computed once for all of them)",
    )
    ap.add_argument(
        "--confirm-lean",
        action="store_true",
        help="engine rows: the default search and the stored vectors only (no exhaustive search, no probe-coded row)",
    )
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    return ap.parse_args()


def scored(run: dict, qrels: dict) -> dict:
    """:func:`score_run`'s means and every query's nDCG@10 (``ndcg10_per_query``) for paired comparisons."""
    return {**score_run(run, qrels), "ndcg10_per_query": per_query_ndcg(run, qrels)}


def code_rows(args, coarse: Coarse, X, offsets, Q, ref: Reference | None, rank, qrels, n_tokens: int):
    """One row per (code training source, code training size, code) over ``coarse``'s lists."""
    nlist, d = coarse.centroids.shape
    train_max = min(args.train_max, args.points_per_centroid * nlist)
    R = X - coarse.centroids[coarse.assign]
    held = np.ones(len(X), dtype=bool)
    held[coarse.sample_rows] = False
    energy = np.sum(R**2, axis=1)
    for source, n_train, code in [
        (s, int(n), c)
        for s in args.pq_from.split(",")
        for n in str(args.code_train).split(",")
        for c in args.codes.split(",")
        if c
    ]:
        sample = np.ascontiguousarray(R[pq_sample_rows(coarse, len(X), source, n_train, args.pq_seed)])
        enc = residual_code(code, R, sample, args.opq_niter, args.opq_train)
        decoded = coarse.centroids[coarse.assign] + enc.residuals
        sq = np.sum((decoded - X) ** 2, axis=1)
        fixed = nlist * d * 4 + enc.codebook_bytes
        yield {
            "codec": f"IVF{nlist},{code}",
            "assignment": "inner product" if coarse.spherical else "L2",
            "nlist": nlist,
            "pq_from": source,
            "code_train": len(sample),
            "residual_energy": float(np.mean(energy)),
            "residual_energy_sample": float(np.mean(energy[~held])),
            "residual_energy_heldout": float(np.mean(energy[held])) if held.any() else None,
            "code": code,
            "pool": args.pool_factor,
            "code_bytes_per_vector": enc.code_bytes,
            "bytes_per_token": (len(X) * (LIST_BYTES + enc.code_bytes + ROW_BYTES) + fixed) / n_tokens,
            "bytes_per_token_ids8": (len(X) * (enc.code_bytes + ID_BYTES) + fixed) / n_tokens,
            "fixed_bytes": fixed,
            "mse": float(np.mean(sq)),
            "mse_sample": float(np.mean(sq[~held])),
            "mse_heldout": float(np.mean(sq[held])) if held.any() else None,
            **(score_error(ref, Q, decoded, offsets) if ref is not None else {}),
            **scored(rank(decoded, offsets, 8), qrels),
            "kmeans_train_vectors": min(train_max, len(X)),
            "kmeans_s": round(coarse.train_s, 1),
            "code_train_s": round(enc.train_s, 1),
            "train_s": round(coarse.train_s + enc.train_s, 1),
            "assign_s": round(coarse.assign_s, 1),
            "code_encode_s": round(enc.encode_s, 1),
            "encode_vectors_per_s": round(len(X) / (coarse.assign_s + enc.encode_s)),
        }


def engine_vs_probe(
    index: PooledIndex, data, Q, X, offsets, ref: Reference | None, rank, lean: bool = False
) -> list[dict]:
    """Rows scoring (a) the probe's pooled vectors coded by the engine's quantizer, (b) the engine's stored vectors.

    ``lean``: (b) only, with (a)'s equality check (``max_abs_vs_probe_coded``) still made.
    """
    q = index.quantizer
    coded = np.asarray(q.sa_decode(segments.sa_encode(q, X)))
    ids = [d.id for d in data.documents]
    doc_ints = index.doc_store.lookup(ids)
    stored, offs = index._folder.snapshot.fetch(np.array([doc_ints[i] for i in ids], dtype=np.int64))
    same_layout = bool(np.array_equal(offs, offsets))
    rows = [
        {"codec": "engine quantizer, probe's pooled vectors", **score_error_or_none(ref, Q, coded, offsets)},
        {
            "codec": "engine stored vectors",
            "same_counts_as_probe": same_layout,
            "max_abs_vs_probe_coded": float(np.max(np.abs(stored - coded))) if same_layout else None,
            **(score_error_or_none(ref, Q, stored, offs) if same_layout else {}),
        },
    ]
    if not lean:
        rows[0].update(scored(rank(coded, offsets, 8), data.qrels))
    rows[1].update(scored(rank(stored, offs, 8), data.qrels))
    return rows[1:] if lean else rows


def score_error_or_none(ref: Reference | None, Q, decoded, offsets) -> dict:
    """:func:`score_error`, or nothing without a reference."""
    return score_error(ref, Q, decoded, offsets) if ref is not None else {}


def engine_row(seed: int, X, offsets, Q, ref: Reference | None, rank, qrels) -> dict:
    """The engine's own quantizer (:func:`segments.train_quantizer`) on a seeded sample, its codes decoded.

    The sample is drawn as the index folder draws it (``rng(seed).choice`` of ``IndexConfig.train_sample``
    vectors, sorted; seed 0 is the folder's own draw over one segment holding ``X``), so this row is the engine's
    index minus the folder: float16 centroids, its list count, its PQ draw from the k-means sample.
    """
    n_sample = IndexConfig().train_sample
    t = time.perf_counter()
    pick = np.sort(np.random.default_rng(seed).choice(len(X), min(len(X), n_sample), replace=False))
    q = segments.train_quantizer(np.ascontiguousarray(X[pick]), len(X), None, None, 8)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    decoded = np.asarray(q.sa_decode(segments.sa_encode(q, X)))
    encode_s = time.perf_counter() - t
    return {
        "codec": f"engine IVF{q.nlist},PQ{q.pq.M}x{q.pq.nbits}",
        "engine_sample_seed": seed,
        "nlist": int(q.nlist),
        "mse": float(np.mean(np.sum((decoded - X) ** 2, axis=1))),
        **(score_error(ref, Q, decoded, offsets) if ref is not None else {}),
        **scored(rank(decoded, offsets, 8), qrels),
        "train_s": round(train_s, 1),
        "encode_decode_s": round(encode_s, 1),
    }


def main() -> None:  # noqa: D103
    args = parse_args()
    data = load_beir(args.dataset, args.split, args.corpus_sample, args.queries_sample)
    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    docs, _, Q = encode_cached(encoder, data, args.cache_dir)
    pooled = pool_embeddings(docs, args.pool_factor, args.protected_tokens, pool_threshold=args.pool_threshold)
    X = np.ascontiguousarray(np.concatenate(pooled).astype(np.float32))
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pooled])])
    ids, qids = [d.id for d in data.documents], list(data.queries)
    n_tokens = sum(len(x) for x in docs)
    result = {
        "dataset": data.name,
        "split": args.split,
        "documents": len(ids),
        "queries": len(qids),
        "tokens": n_tokens,
        "vectors": len(X),
        "pool_factor": None if args.pool_threshold is not None else args.pool_factor,
        "pool_threshold": args.pool_threshold,
        "protected_tokens": args.protected_tokens,
        "niter": args.niter,
        "seed": args.seed,
        "points_per_centroid": args.points_per_centroid,
        "train_max": args.train_max,
        "code_train": args.code_train,
        "pq_from": args.pq_from,
        "pq_seed": args.pq_seed,
        "opq_niter": args.opq_niter,
        "opq_train": args.opq_train,
        "machine": machine_info(),
        "threads": faiss.omp_get_max_threads(),
        "note": "exhaustive MaxSim over decoded vectors: codec precision only, not the engine's search",
        "rows": [],
    }

    def emit(row: dict) -> None:
        row["load_avg_1min"] = round(os.getloadavg()[0], 2)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        write(args.out, result)

    rules = [r for r in args.rules.split(",") if r]
    coarses = {}
    niters = [int(n) for n in str(args.niter).split(",")]

    def coarse_for(rule: str, kmeans: str = "faiss", niter: int = niters[0]) -> Coarse:  # once per setting
        if (rule, kmeans, niter) not in coarses:
            nlist = nlist_for(rule, len(X))
            coarses[rule, kmeans, niter] = train_coarse(
                X, nlist, niter, min(args.train_max, args.points_per_centroid * nlist), args.seed, kmeans
            )
        return coarses[rule, kmeans, niter]

    def rank(vectors: np.ndarray, offs: np.ndarray, batch: int) -> dict:
        if cands is None:
            return ranked(Q, vectors, offs, ids, qids, batch)
        return ranked_among(Q, vectors, offs, cands, ids, qids)

    first = coarse_for(rules[0], args.kmeans.split(",")[0]) if args.candidates else None  # reused by its rows
    cands = centroid_candidates(Q, first, offsets, args.candidates) if first is not None else None
    result["candidates"] = args.candidates
    if cands is not None:
        result["note"] = (
            f"MaxSim over decoded vectors among each query's {args.candidates} best documents by centroid MaxSim"
        )
    if not (args.no_flat or args.no_exact):
        flat1 = np.concatenate(docs).astype(np.float32)
        off1 = np.concatenate([[0], np.cumsum([len(x) for x in docs])])
        emit({"codec": "flat", "pool": 1, **scored(rank(flat1, off1, 4), data.qrels)})
        del flat1
    flat2 = rank(X, offsets, 8) if not (args.no_flat and args.no_score_error) else None
    if not args.no_flat:
        emit({"codec": "flat", "pool": args.pool_factor, **scored(flat2, data.qrels)})
    ref = reference(Q, X, offsets, flat2, ids, qids) if flat2 is not None else None
    for seed in [int(x) for x in args.engine_quantizer.split(",") if x]:
        emit(engine_row(seed, X, offsets, Q, ref, rank, data.qrels))
    for rule, kmeans, niter in [(r, k, int(n)) for r in rules for k in args.kmeans.split(",") for n in niters]:
        coarse = coarse_for(rule, kmeans, niter)
        coarses.pop((rule, kmeans, niter))  # 499k assignments and centroids: keep one at a time
        setting = {"rule": rule, "kmeans": kmeans, "niter": niter}
        for row in code_rows(args, coarse, X, offsets, Q, ref, rank, data.qrels, n_tokens):
            emit({**setting, **row})
    for code in [c for c in (args.confirm or "").split(",") if c]:
        for row in confirm(code, args, encoder, data, docs, Q, (X, offsets, ref, rank)):
            emit({**row, "code": code})


if __name__ == "__main__":
    main()
