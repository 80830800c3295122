"""Float16 coarse centroids (issue 21): the default index's quantizer file bytes, nDCG@10 and assignment speed.

Builds the default pooledir system (IVF-PQ, pool x2: what ``pooledir eval beir --index ivfpq --pool-factors 2``
builds) from the cached embeddings of one tuning set, scores it, and reports the quantizer file's bytes, the
bytes the evaluation counts per original token, and how fast the coarse quantizer read back assigns vectors.
Run it once per code version: the ``pooledir`` on ``PYTHONPATH`` is the one measured (a ``git archive`` of the
commit before float16 centroids for "before"), then merge the rows. Prints one JSON object.

    PYTHONPATH=. python eval/quantizer_fp16.py ../shared/data/beir/nfcorpus --split dev --queries-sample 120
        --checkpoint CKPT --cache-dir .cache/pooledir-eval --work /tmp/q --label after --out row.json

``--compare A B``: interleaved assignment timing of two quantizer files (both read with this ``pooledir``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def measure_default(args: argparse.Namespace) -> dict:
    """Build, score and size the default index; time its quantizer's assignment."""
    import faiss

    from pooledir.encoder import ColBERTEncoder
    from pooledir.evaluation import encode_cached, load_beir
    from pooledir.evaluation.harness import measure
    from pooledir.evaluation.systems.base import Context
    from pooledir.evaluation.systems.pooledir import PooledirSystem
    from pooledir.index.segments import read_quantizer
    from pooledir.search import SearchParams

    data = load_beir(args.dataset, args.split, None, args.queries_sample, 0)
    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    docs, _, Q = encode_cached(encoder, data, args.cache_dir)
    system = PooledirSystem("ivfpq", 2)
    context = Context(encoder=encoder, device="cpu", workdir=args.work)
    row, _ = measure(system, context, data, docs, Q, SimpleNamespace(search=SearchParams(), latency_queries=0))
    qfile = sorted((args.work / system.subdir).glob("quantizer.*.faiss"))[-1]
    t = time.perf_counter()
    q = read_quantizer(qfile)
    read_s = time.perf_counter() - t
    on_disk = faiss.read_index(str(qfile))
    centroids = faiss.downcast_index(q.quantizer).reconstruct_n(0, q.nlist)
    keys = ("ndcg@10", "recall@100", "bytes_per_token", "search_bytes", "vector_bytes", "pq_m", "vectors")
    return {k: row.get(k) for k in keys} | {
        "label": args.label,
        "quantizer_bytes": qfile.stat().st_size,
        "quantizer_on_disk": type(faiss.downcast_index(on_disk.quantizer)).__name__,
        "quantizer_in_memory": type(faiss.downcast_index(q.quantizer)).__name__,
        "centroids_are_float16_values": bool(
            np.array_equal(centroids.astype(np.float16).astype(np.float32), centroids)
        ),
        "nlist": int(q.nlist),
        "read_quantizer_s": read_s,
        "tokens": sum(len(v) for v in docs),
    }


def compare_assignment(a_path: Path, b_path: Path, n: int = 20_000, reps: int = 5) -> dict:
    """Seconds for the coarse quantizers of two files to assign the same ``n`` vectors (4 lists each), interleaved."""
    import faiss

    from pooledir.index.segments import read_quantizer

    a, b = read_quantizer(a_path), read_quantizer(b_path)
    x = np.random.default_rng(0).standard_normal((n, a.d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(reps):
        for q, t in zip((a, b), times):
            s = time.perf_counter()
            q.quantizer.search(x, 4)
            t.append(time.perf_counter() - s)
    ca = faiss.downcast_index(a.quantizer).reconstruct_n(0, a.nlist)
    cb = faiss.downcast_index(b.quantizer).reconstruct_n(0, b.nlist)
    return {
        "vectors": n,
        "a": {
            "file": str(a_path),
            "median_s": float(np.median(times[0])),
            "vectors_per_s": n / float(np.median(times[0])),
        },
        "b": {
            "file": str(b_path),
            "median_s": float(np.median(times[1])),
            "vectors_per_s": n / float(np.median(times[1])),
        },
        "types": [type(faiss.downcast_index(q.quantizer)).__name__ for q in (a, b)],
        "max_abs_centroid_difference": float(np.abs(ca - cb).max()) if ca.shape == cb.shape else None,
    }


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, nargs="?")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--queries-sample", type=int, default=120)
    ap.add_argument("--checkpoint")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/pooledir-quantizer-fp16"))
    ap.add_argument("--label", default="")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = compare_assignment(*args.compare) if args.compare else measure_default(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
