"""Build a default pooled index of a whole BEIR corpus from the evaluation's embedding cache.

    python eval/build_index_from_cache.py --beir ../shared/data/beir/scifact --checkpoint CKPT --out IDX

Encoding a corpus on 2 CPU cores takes minutes (SciFact: ~10); the evaluation harness keeps the
vectors in its cache (``pooledir.evaluation.encode_cached``), so a benchmark that needs the
default index (IVF-PQ, pool factor 2) builds it from there in about a minute: the same vectors
``pooledir index`` would encode, pooled as ``pooledir index`` pools them, added in one call.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pooledir import ColBERTEncoder, IndexConfig, PooledIndex, pool_embeddings
from pooledir.evaluation import encode_cached, load_beir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pool-factor", type=int, default=IndexConfig.pool_factor)
    ap.add_argument("--pq-m", type=int, help="PQ sub-quantizers (default: the index's default)")
    args = ap.parse_args()

    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    data = load_beir(args.beir, "test")
    t = time.perf_counter()
    vectors, _, _ = encode_cached(encoder, data, args.cache_dir, show_progress=True)
    print(f"{len(vectors)} documents' vectors from the cache in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    pooled = pool_embeddings(vectors, pool_factor=args.pool_factor, show_progress=True)
    print(f"pooled x{args.pool_factor} in {time.perf_counter() - t:.0f} s")
    config = IndexConfig(pool_factor=args.pool_factor, pq_m=args.pq_m)
    with PooledIndex.create(args.out, config=config, device="cpu", encoder=encoder) as index:
        t = time.perf_counter()
        index.add(data.documents, embeddings=pooled, pooled=True, n_tokens=[len(v) for v in vectors])
        info = index.info()
    print(
        f"{info['documents']} documents, {info['vectors']} vectors, {info['backend']} "
        f"in {time.perf_counter() - t:.0f} s at {args.out}"
    )


if __name__ == "__main__":
    main()
