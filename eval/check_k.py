"""Check that k is honoured: every test query of every BEIR dataset gets min(k, documents) hits.

    nice python eval/check_k.py --checkpoint CKPT --cache-dir CACHE [--beir ../shared/data/beir] [--k 100 1000]

For each dataset folder under ``--beir``, builds the default index (IVF-PQ, pool factor 2) from the
evaluation's embedding cache (``pooledir.evaluation.encode_cached``; a dataset whose vectors are not
cached yet is skipped and listed, never encoded here) and searches every test query at each ``k``
with the default search knobs. Writes per dataset the queries, the documents in the index, and per
``k`` the fewest and mean hits returned, how many queries fell short, and the seconds per query, to
``eval/results/check_k.cpu.json`` (a run over some datasets replaces their entries and keeps the
others); exits 1 if any query got fewer than min(k, documents). Run it from the repository root with
``PYTHONPATH=.`` so that it measures this checkout's library.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pooledir import ColBERTEncoder, IndexConfig, PooledIndex, SearchParams, pool_embeddings, search
from pooledir.evaluation import encode_cached, load_beir
from pooledir.evaluation.cache import cache_key
from pooledir.evaluation.machine import machine_info

BATCH = 32


def is_cached(encoder: ColBERTEncoder, data, cache_dir: Path) -> bool:
    """Whether both the documents' and the queries' vectors are in the cache (encode_cached would only read)."""
    docs = cache_key(encoder.path, [d.text for d in data.documents], encoder.settings.__dict__ | {"kind": "documents"})
    queries = cache_key(encoder.path, list(data.queries.values()), encoder.settings.__dict__ | {"kind": "queries"})
    return all((cache_dir / key / "meta.json").is_file() for key in (docs, queries))


@contextmanager
def counting_exhaustive():
    """Count the queries ranked by exhaustive MaxSim (k near the document count, or candidates that ran out)."""
    real, seen = search.exact_search, [0]

    def counted(queries, *args, **kwargs):
        seen[0] += len(queries)
        return real(queries, *args, **kwargs)

    search.exact_search = counted
    try:
        yield seen
    finally:
        search.exact_search = real


def check_k(index: PooledIndex, Q: np.ndarray, k: int) -> dict:
    """Hits per query at ``k`` with the default knobs, against the min(k, documents) a search owes."""
    want = min(k, len(index))
    counts, t = [], time.perf_counter()
    with counting_exhaustive() as exhaustive:
        for start in range(0, len(Q), BATCH):
            for hits in index.search_embeddings(Q[start : start + BATCH], SearchParams(k=k)):
                ids = [h.id for h in hits]
                assert len(set(ids)) == len(ids), "a document came back twice"
                counts.append(len(ids))
    seconds = time.perf_counter() - t
    counts = np.array(counts)
    return {
        "k": k,
        "expected": want,
        "min_returned": int(counts.min()),
        "mean_returned": round(float(counts.mean()), 3),
        "short_queries": int((counts < want).sum()),
        "exhaustive_queries": exhaustive[0],
        "ms_per_query": round(1000 * seconds / len(Q), 1),
    }


def check_dataset(folder: Path, encoder: ColBERTEncoder, cache_dir: Path, ks: list[int]) -> dict | None:
    """Build the default index of one dataset from the cache and check every k; None when not cached."""
    data = load_beir(folder, "test")
    if not is_cached(encoder, data, cache_dir):
        return None
    vectors, _, Q = encode_cached(encoder, data, cache_dir)
    t = time.perf_counter()
    config = IndexConfig()
    pooled = pool_embeddings(vectors, pool_factor=config.pool_factor, protected_tokens=config.protected_tokens)
    with tempfile.TemporaryDirectory(prefix="check-k-") as tmp:
        with PooledIndex.create(Path(tmp) / "index", config=config, device="cpu", encoder=encoder) as index:
            index.add(data.documents, embeddings=pooled, pooled=True, n_tokens=[len(v) for v in vectors])
            build_s = time.perf_counter() - t
            info = index.info()
            runs = [check_k(index, Q, k) for k in ks]
    live_tokens = (np.abs(Q).sum(axis=2) > 0).sum(axis=1)
    return {
        "dataset": folder.name,
        "commit": commit(),
        "queries": len(Q),
        "query_tokens_mean": round(float(live_tokens.mean()), 2),
        "query_tokens_min": int(live_tokens.min()),
        "documents": info["documents"],
        "vectors": info["vectors"],
        "backend": info["backend"],
        "build_s": round(build_s, 1),
        "runs": runs,
    }


def merged(path: Path, results: list[dict], checkpoint: str) -> list[dict]:
    """``results`` plus the entries of an earlier run in ``path`` (same checkpoint) for other datasets."""
    if not path.is_file():
        return results
    earlier = json.loads(path.read_text())
    if earlier.get("checkpoint") != checkpoint:
        return results
    fresh = {row["dataset"] for row in results}
    kept = [row for row in earlier.get("datasets", []) if row["dataset"] not in fresh]
    return sorted(kept + results, key=lambda row: row["dataset"])


def commit() -> str | None:
    """The checkout's git commit (and ``+dirty`` with uncommitted changes), recorded beside each dataset."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--beir", type=Path, default=Path("../shared/data/beir"))
    ap.add_argument("--datasets", nargs="*", help="folder names under --beir (default: all)")
    ap.add_argument("--k", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--out", type=Path, default=Path("eval/results/check_k.cpu.json"))
    args = ap.parse_args()

    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    names = args.datasets or sorted(p.name for p in args.beir.iterdir() if (p / "corpus.jsonl").is_file())
    skipped: list[str] = []
    for name in names:
        row = check_dataset(args.beir / name, encoder, args.cache_dir, args.k)
        if row is None:
            print(f"{name}: not in the cache yet, skipped", flush=True)
            skipped.append(name)
            continue
        for r in row["runs"]:
            print(
                f"{name}: k={r['k']} {row['queries']} queries, {row['documents']} documents: "
                f"min {r['min_returned']} mean {r['mean_returned']} of {r['expected']}, "
                f"{r['short_queries']} short, {r['exhaustive_queries']} exhaustive, {r['ms_per_query']} ms/query",
                flush=True,
            )
        write(args.out, [row], skipped, str(encoder.path))  # after each dataset: a run cut short keeps it
    honoured = write(args.out, [], skipped, str(encoder.path))
    print(f"k honoured: {honoured}; wrote {args.out}")
    sys.exit(0 if honoured else 1)


def write(path: Path, rows: list[dict], skipped: list[str], checkpoint: str) -> bool:
    """Merge ``rows`` into the JSON at ``path``; returns whether every dataset there honours k."""
    results = merged(path, rows, checkpoint)
    honoured = all(r["short_queries"] == 0 for row in results for r in row["runs"])
    out = {
        "checkpoint": checkpoint,
        "machine": machine_info(),
        "honoured": honoured,
        "datasets": results,
        "skipped": [n for n in skipped if n not in {row["dataset"] for row in results}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return honoured


if __name__ == "__main__":
    main()
