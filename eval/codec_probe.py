"""How much of nDCG@10 each faiss codec keeps when MaxSim runs on its decoded vectors (issue 11's codec study).

    python eval/codec_probe.py ../shared/data/beir/nfcorpus --split dev --queries-sample 120 --corpus-sample 1
        --checkpoint CKPT --codecs "IVF,PQ16;OPQ32,IVF,PQ32;IVF,SQ4" --out eval/results/codec_probe.json  (one line)

Every document of the (sampled) corpus is scored by exhaustive MaxSim over its pooled vectors as the codec
decodes them, so the number isolates the codec's precision: no candidate search, no rerank depth. "flat"
is the pooled float vectors themselves. Codecs are faiss ``index_factory`` strings; a bare ``IVF,`` gets
the engine's list count (≈4·√N). Tune on train/dev qrels only. Each codec is trained on the same seeded
sample of up to ``--train-sample`` vectors; the JSON is rewritten after each codec.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import faiss
import numpy as np

from pooledir import ColBERTEncoder, maxsim, pool_embeddings
from pooledir.evaluation import encode_cached, load_beir, machine_info, score_run


def engine_nlist(n_vectors: int) -> int:
    """The engine's default list count (≈4·√N), repeated here because eval/ uses the public API only."""
    return max(1, min(int(round(4 * math.sqrt(n_vectors))), n_vectors // 39))


def decode(codec: str, X: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, int]:
    """``X`` encoded and decoded by ``codec``; returns (decoded vectors, code bytes per vector)."""
    if codec == "flat":
        return X, 4 * X.shape[1]
    factory = codec.replace("IVF,", f"IVF{engine_nlist(len(X))},")
    index = faiss.index_factory(X.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.add(X)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
        code_size = ivf.code_size
    else:
        code_size = index.sa_code_size()
    return index.reconstruct_n(0, len(X)), int(code_size)


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--codecs", required=True, help="';'-separated faiss index_factory strings, or flat")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--corpus-sample", type=int)
    ap.add_argument("--queries-sample", type=int)
    ap.add_argument("--pool-factor", type=int, default=2)
    ap.add_argument("--pool-threshold", type=float, help="adaptive pooling at this Ward merge height instead")
    ap.add_argument("--protected-tokens", type=int, default=1, help="leading vectors never pooled (1 = [CLS])")
    ap.add_argument("--train-sample", type=int, default=200_000)
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    args = ap.parse_args()

    data = load_beir(args.dataset, args.split, args.corpus_sample, args.queries_sample)
    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    docs, _, Q = encode_cached(encoder, data, args.cache_dir)
    pooled = pool_embeddings(docs, args.pool_factor, args.protected_tokens, pool_threshold=args.pool_threshold)
    X = np.concatenate(pooled).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pooled])])
    rng = np.random.default_rng(0)
    sample = np.ascontiguousarray(X[rng.choice(len(X), min(len(X), args.train_sample), replace=False)])
    ids, qids = [d.id for d in data.documents], list(data.queries)
    n_tokens = sum(len(d) for d in docs)
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
        "machine": machine_info(),
        "note": "exhaustive MaxSim over decoded vectors: codec precision only, not the engine's search",
        "codecs": [],
    }
    for codec in args.codecs.split(";"):
        t = time.perf_counter()
        decoded, code_bytes = decode(codec, X, sample)
        scores = np.concatenate([maxsim(Q[i : i + 16], decoded, offsets) for i in range(0, len(Q), 16)])
        run = {}
        for qi, q in enumerate(qids):
            top = np.argpartition(-scores[qi], min(99, len(ids) - 1))[:100]
            run[q] = {ids[j]: float(scores[qi, j]) for j in top}
        metrics = score_run(run, data.qrels)
        row = {
            "codec": codec,
            "code_bytes_per_vector": code_bytes,
            "code_bytes_per_token": code_bytes * len(X) / n_tokens,
            "mse": float(np.mean(np.sum((decoded - X) ** 2, axis=1))),
            **metrics,
            "seconds": round(time.perf_counter() - t, 1),
        }
        result["codecs"].append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
