"""Pooling throughput: pooledir's poolers against per-document scipy, in one process.

    python eval/bench_pooling.py [--docs 400] [--factor 2] [--real]

The reference is the straightforward way: for each document, scipy's
``linkage(pdist(X, "cosine"), "ward")`` + ``fcluster(maxclust)`` and the cluster means, one
after another. Every row prints docs/s and its speed ratio to that reference.
Documents are unit vectors with SciFact-like lengths (150-300 tokens, 128-d),
or with ``--real`` the MiniLM checkpoint's vectors of the first SciFact
documents (needs ../shared/data/beir/scifact).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from pooledir import pool_embeddings
from pooledir.evaluation import machine_info


def reference_pool(X: np.ndarray, factor: int) -> np.ndarray:
    """Per-document scipy Ward on cosine distances (as pooledir), [CLS] protected, means re-normalised."""
    rest = X[1:].astype(np.float64)
    k = max(1, len(rest) // factor)
    labels = fcluster(linkage(pdist(rest, "cosine"), "ward"), k, "maxclust") - 1
    means = np.stack([rest[labels == c].mean(0) for c in range(labels.max() + 1)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    return np.concatenate([X[:1], means]).astype(np.float16)


def synthetic(n_docs: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for n in rng.integers(150, 301, size=n_docs):
        x = rng.standard_normal((n, 128)).astype(np.float32)
        out.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
    return out


def real(n_docs: int) -> list[np.ndarray]:
    import tempfile

    from pooledir import ColBERTEncoder, convert_checkpoint, minilm_path, read_corpus

    ckpt = convert_checkpoint(minilm_path(), os.path.join(tempfile.mkdtemp(), "ckpt"), dim=128)
    docs = read_corpus("../shared/data/beir/scifact", limit=n_docs)
    return ColBERTEncoder(ckpt, device="cpu").encode_documents([d.text for d in docs])


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--factor", type=int, default=2)
    ap.add_argument("--real", action="store_true", help="encode SciFact documents instead of random vectors")
    args = ap.parse_args()

    import torch

    docs = real(args.docs) if args.real else synthetic(args.docs)
    tokens = sum(len(d) for d in docs)
    print(f"{len(docs)} documents, {tokens / len(docs):.0f} vectors each on average, factor {args.factor}")
    machine = machine_info()
    print(f"machine: {machine['cpu']}, cuda: {machine['gpu'] or 'none'}")

    ref_s = timed(lambda: [reference_pool(d, args.factor) for d in docs])
    rows = [("scipy per document (reference)", len(docs), ref_s)]
    rows.append(("pooledir cpu, 1 thread", len(docs), timed(lambda: pool_embeddings(docs, args.factor, num_threads=1))))
    rows.append(
        (f"pooledir cpu, {os.cpu_count()} threads", len(docs), timed(lambda: pool_embeddings(docs, args.factor)))
    )
    few = docs[: max(1, len(docs) // 8)]  # the batched torch Ward is O(n^3) per document: meant for GPUs
    rows.append(
        (
            "pooledir torch batched, cpu float64",
            len(few),
            timed(lambda: pool_embeddings(few, args.factor, method="torch")),
        )
    )
    if torch.cuda.is_available():
        pool_embeddings(docs[:64], args.factor, device="cuda")  # warm-up: CUDA context, kernels
        torch.cuda.synchronize()
        rows.append(
            (
                "pooledir torch batched, cuda float32",
                len(docs),
                timed(lambda: pool_embeddings(docs, args.factor, device="cuda")),
            )
        )

    ref_rate = len(docs) / ref_s
    print(f"{'pooler':40s} {'docs':>6s} {'docs/s':>10s} {'vs reference':>13s}")
    for name, n, s in rows:
        print(f"{name:40s} {n:6d} {n / s:10.1f} {n / s / ref_rate:12.2f}x")


if __name__ == "__main__":
    main()
