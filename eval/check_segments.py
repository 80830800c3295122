"""Quality check of the segment engine (issue 10): SciFact nDCG@10 on identical vectors, engine by engine.

One encoding (the shared eval cache), pooled once (factor 2, one protected token); every variant
gets the same pooled float16 vectors, default ``IndexConfig`` (IVF-PQ) and the same ``SearchParams``
(defaults, ``k=100``), so the engine is the only difference:

(a) ``single``: the previous single-file design (commit 6e06448, a ``git worktree`` at ``--old-tree``),
    run in a subprocess with that tree on ``PYTHONPATH``; its ``add(docs, embeddings=...)`` pools, so
    its ``pool_embeddings`` is replaced by the identity there (the vectors are already pooled);
(b) ``one_segment``: this engine, every document in one ``add``;
(c) ``ten_segments``: the corpus in 10 ``add`` calls, then 10% of the documents (seeded) deleted and
    added again in one more ``add``, searched before and after ``compact()``.

Target: each within 0.002 nDCG@10 of (a). The script also says which quantizer each variant ended
with (lists, vectors trained on) and whether (a) and (b) trained identical centroids.

    python eval/check_segments.py            # writes eval/results/check_segments_scifact.cpu.json

This is a benchmark, never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "6e06448"
TOLERANCE = 0.002

#: the single-file design (6e06448) trains dim/8 = 16 sub-quantizers; the segment engine's default became 64 by
#: codec rule 2, so both sides are pinned to 16 to keep the comparison on identical training
OLD_PQ_M = 16


# -- the old design, in its own process ---------------------------------------------------------------------------
def worker_old(work: Path) -> None:
    """Build and search the single-file index from the vectors in ``work``; writes run + quantizer there."""
    import faiss

    import pooledir.pooled_index as old
    from pooledir.corpus import Document
    from pooledir.search import SearchParams

    meta = json.loads((work / "input.json").read_text())
    flat = np.load(work / "pooled.npy", mmap_mode="r")
    offsets = np.concatenate([[0], np.cumsum(meta["lengths"])])
    vectors = [np.asarray(flat[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    Q = np.load(work / "queries.npy")
    docs = [Document(i, t, {}) for i, t in zip(meta["ids"], meta["texts"])]
    old.pool_embeddings = lambda embeddings, *a, **k: list(embeddings)  # already pooled: give them as they are

    class Encoder:  # what the old manifest records of an encoder; no vectors are encoded here
        path = meta["checkpoint"]
        dim = Q.shape[2]
        settings = type("S", (), meta["encoder_settings"])

    folder = work / "single"
    shutil.rmtree(folder, ignore_errors=True)
    index = old.PooledIndex.create(folder, config=old.IndexConfig(), device="cpu", encoder=Encoder())
    t = time.perf_counter()
    index.add(docs, embeddings=vectors)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    hits = index.search_embeddings(Q, SearchParams(k=meta["k"]))
    search_s = time.perf_counter() - t
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index.backend.index))
    out = {
        "hits": [[(h.id, h.score) for h in row] for row in hits],
        "nlist": int(ivf.nlist),
        "vectors": int(ivf.ntotal),
        "build_s": build_s,
        "search_s": search_s,
    }
    (work / "single.json").write_text(json.dumps(out))
    np.save(work / "single.coarse.npy", ivf.quantizer.reconstruct_n(0, ivf.nlist))
    np.save(work / "single.pq.npy", faiss.vector_to_array(ivf.pq.centroids))
    index.close()


def ensure_old_tree(old_tree: Path) -> None:
    if not (old_tree / "pooledir" / "pooled_index.py").is_file():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), OLD_COMMIT], check=True)


def run_old(work: Path, old_tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(old_tree))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-old", str(work)]
    subprocess.run(cmd, env=env, check=True, cwd=str(old_tree))
    return json.loads((work / "single.json").read_text())


# -- this engine --------------------------------------------------------------------------------------------------
def describe(index) -> dict:
    """The quantizer and segments a variant ended with."""
    info = index.info()
    return {
        "nlist": info["backend"].get("nlist"),
        "trained_vectors": info["trained_vectors"],
        "segments": [s["vectors"] for s in info["segments"]],
        "deleted_vectors": info["deleted_vectors"],
        "documents": info["documents"],
        "vectors": info["vectors"],
    }


def quantizer_arrays(index) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    q = index.quantizer
    return q.quantizer.reconstruct_n(0, q.nlist), faiss.vector_to_array(q.pq.centroids)


def search(index, Q: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    from pooledir.search import SearchParams

    return [[(h.id, h.score) for h in row] for row in index.search_embeddings(Q, SearchParams(k=k))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=Path("/work/shared/data/beir/scifact"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--checkpoint", default="/work/cache/minilm-colbert-128-plain")
    ap.add_argument("--cache-dir", type=Path, default=Path("/work/cache/pooledir-eval"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/pooledir-check-segments"))
    ap.add_argument("--old-tree", type=Path, default=Path("/tmp/pooledir-old-6e06448"))
    ap.add_argument("--k", type=int, default=100, help="documents per query (nDCG@10, Recall@100)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "check_segments_scifact.cpu.json")
    ap.add_argument("--docs", type=int, help="only the first N documents (a smoke test of the script, not a result)")
    ap.add_argument("--reuse-old", action="store_true", help="reuse the old design's run left in --work")
    ap.add_argument(
        "--exact-variant", action="store_true", help="also (c) with keep_exact (re-training from exact vectors)"
    )
    ap.add_argument("--worker-old", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_old:
        worker_old(args.worker_old)
        return

    from pooledir.encoder import ColBERTEncoder
    from pooledir.evaluation import encode_cached, load_beir
    from pooledir.evaluation.metrics import drop_self_hits, score_run
    from pooledir.index.manifest import ENCODER_SETTINGS
    from pooledir.pooled_index import IndexConfig, PooledIndex
    from pooledir.pooling import pool_embeddings

    load = [os.getloadavg()[0]]
    data = load_beir(args.dataset, args.split)
    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    doc_vecs, _, Q = encode_cached(encoder, data, args.cache_dir)
    if args.docs:
        data.documents, doc_vecs = data.documents[: args.docs], doc_vecs[: args.docs]
    t = time.perf_counter()
    config = IndexConfig(pq_m=OLD_PQ_M)
    pooled = pool_embeddings(doc_vecs, config.pool_factor, config.protected_tokens, device="cpu")
    pool_s = time.perf_counter() - t
    n_tokens = [len(v) for v in doc_vecs]
    docs, qids = data.documents, list(data.queries)
    k = min(args.k, len(docs))
    print(f"{len(docs)} documents, {sum(n_tokens)} tokens, {sum(map(len, pooled))} pooled vectors", flush=True)

    reuse = args.reuse_old and (args.work / "single.json").is_file()
    if reuse:  # the old design's run of the same pooled vectors (pooling is deterministic): keep it
        for name in ("one", "ten", "ten_exact", "shuffled"):
            shutil.rmtree(args.work / name, ignore_errors=True)
    else:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
    np.save(args.work / "pooled.npy", np.concatenate(pooled).astype(np.float16))
    np.save(args.work / "queries.npy", Q)
    settings = {s: getattr(encoder.settings, s) for s in ENCODER_SETTINGS if s != "layout"}
    (args.work / "input.json").write_text(
        json.dumps(
            {
                "ids": [d.id for d in docs],
                "texts": [d.text for d in docs],
                "lengths": [len(v) for v in pooled],
                "k": k,
                "checkpoint": str(encoder.path),
                "encoder_settings": settings,
            }
        )
    )

    def scored(hits: list[list[tuple[str, float]]]) -> dict:
        run = {q: drop_self_hits(q, dict(row)) for q, row in zip(qids, hits)}
        return score_run(run, data.qrels)

    variants: dict[str, dict] = {}

    def ten_segments(name: str, exact: bool) -> None:
        """(c): ten adds, 10% deleted and re-added; compacted with codes copied, then as ``compact()`` decides."""
        t = time.perf_counter()
        index = PooledIndex.create(
            args.work / name.replace("_segments", ""),
            config=IndexConfig(keep_exact=exact, pq_m=OLD_PQ_M),
            device="cpu",
            encoder=encoder,
        )
        bounds = np.linspace(0, len(docs), 11).astype(int)
        for a, b in zip(bounds[:-1], bounds[1:]):
            index.add(docs[a:b], embeddings=pooled[a:b], pooled=True, n_tokens=n_tokens[a:b])
        rng = np.random.default_rng(0)
        again = np.sort(rng.choice(len(docs), len(docs) // 10, replace=False))
        index.delete([docs[i].id for i in again])
        index.add(
            [docs[i] for i in again],
            embeddings=[pooled[i] for i in again],
            pooled=True,
            n_tokens=[n_tokens[i] for i in again],
        )
        build_s = time.perf_counter() - t
        variants[name] = scored(search(index, Q, k)) | describe(index) | {"build_s": build_s, "re_added": len(again)}
        print(name, variants[name], flush=True)
        t = time.perf_counter()
        index.compact(retrain=False)  # every segment into one, deleted vectors dropped, codes copied
        copied = scored(search(index, Q, k)) | describe(index) | {"compact_s": time.perf_counter() - t}
        variants[f"{name}_compacted_codes_copied"] = copied
        print(f"{name}_compacted_codes_copied", copied, flush=True)
        recommended = index.info()["retrain_recommended"]
        t = time.perf_counter()
        index.compact()  # what compaction does by default: re-trains when info() recommends it
        variants[f"{name}_compacted"] = (
            scored(search(index, Q, k))
            | describe(index)
            | {"compact_s": time.perf_counter() - t, "retrained": recommended}
        )
        print(f"{name}_compacted", variants[f"{name}_compacted"], flush=True)
        index.close()

    # (a) the single-file design
    if reuse:
        old = json.loads((args.work / "single.json").read_text()) | {"reused_from_an_earlier_run": True}
    else:
        ensure_old_tree(args.old_tree)
        old = run_old(args.work, args.old_tree)
    variants["single"] = scored(old.pop("hits")) | old
    print("single", variants["single"], flush=True)

    # (b) one segment
    t = time.perf_counter()
    index = PooledIndex.create(args.work / "one", config=IndexConfig(pq_m=OLD_PQ_M), device="cpu", encoder=encoder)
    index.add(docs, embeddings=pooled, pooled=True, n_tokens=n_tokens)
    build_s = time.perf_counter() - t
    coarse, pq = quantizer_arrays(index)
    old_coarse, old_pq = np.load(args.work / "single.coarse.npy"), np.load(args.work / "single.pq.npy")
    same_shape = coarse.shape == old_coarse.shape and pq.shape == old_pq.shape
    training = {
        "same_shape": same_shape,
        "max_abs_diff_coarse": float(np.abs(coarse - old_coarse).max()) if same_shape else None,
        "max_abs_diff_pq": float(np.abs(pq - old_pq).max()) if same_shape else None,
    }
    variants["one_segment"] = scored(search(index, Q, k)) | describe(index) | {"build_s": build_s}
    index.close()
    print("one_segment", variants["one_segment"], training, flush=True)

    # (b') one segment, documents in another (seeded) order: another training sample of the same vectors
    order = np.random.default_rng(1).permutation(len(docs))
    index = PooledIndex.create(args.work / "shuffled", config=IndexConfig(pq_m=OLD_PQ_M), device="cpu", encoder=encoder)
    index.add([docs[i] for i in order], [pooled[i] for i in order], pooled=True, n_tokens=[n_tokens[i] for i in order])
    variants["one_segment_shuffled"] = scored(search(index, Q, k)) | describe(index)
    index.close()
    print("one_segment_shuffled", variants["one_segment_shuffled"], flush=True)

    for name, exact in (("ten_segments", False), ("ten_segments_keep_exact", True)):
        if exact and not args.exact_variant:
            continue
        ten_segments(name, exact)

    load.append(os.getloadavg()[0])

    base = variants["single"]["ndcg@10"]
    checks = {
        name: {
            "ndcg@10": v["ndcg@10"],
            "delta": v["ndcg@10"] - base,
            "met": abs(v["ndcg@10"] - base) <= TOLERANCE,
        }
        for name, v in variants.items()
        if name not in ("single", "one_segment_shuffled")
    }
    ndcgs = [variants[n]["ndcg@10"] for n in ("single", "one_segment", "one_segment_shuffled")]
    result = {
        "dataset": data.name,
        "split": args.split,
        "documents": len(docs),
        "queries": len(qids),
        "tokens": sum(n_tokens),
        "pooled_vectors": int(sum(map(len, pooled))),
        "pool_s": pool_s,
        "checkpoint": str(encoder.path),
        "config": "IndexConfig() defaults (ivfpq, pool_factor 2) at pq_m 16, the single-file design's default",
        "search_params": {"k": k, "others": "SearchParams defaults"},
        "old_design": OLD_COMMIT,
        "tolerance": TOLERANCE,
        "variants": variants,
        "checks": checks,
        "training_sample_spread": max(ndcgs) - min(ndcgs),
        "single_vs_one_segment_training": training,
        "machine": f"{os.cpu_count()} CPU cores shared with other jobs, no GPU",
        "load_avg_1min": load,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(checks, indent=2))


if __name__ == "__main__":
    main()
