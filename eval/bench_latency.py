"""Issue 21's latency target: pooledir's default and PLAID nbits 2, single queries, encoding included, one process.

    nice -n 5 python eval/bench_latency.py ../shared/data/beir/scifact --checkpoint CKPT
        --work /work/s9-speed-data --out eval/results/latency/scifact_test.cpu.json  (one line)

Both engines index the same cached, pooled (x2) vectors; the indexes are kept under ``--work`` and reused by a
later run (PLAID's build takes ~10 minutes on 2 cores). Each query text is searched by both engines back to back,
who goes first alternating, each with encoding included and the same encoder object (PLAID's ``Searcher.encode``
is pooledir's encoder, as in the evaluation harness); the query's encoding alone is timed in the same loop.
Recorded: per engine p50/p90/mean (ms), the ratio of the p50s, the load average, threads. Only query texts are
read (no qrels): latency does not tune anything.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI and the service run; before torch loads

import numpy as np  # noqa: E402

from pooledir import ColBERTEncoder, IndexConfig, PooledIndex, pool_embeddings  # noqa: E402
from pooledir.evaluation import encode_cached, load_beir, machine_info  # noqa: E402
from pooledir.evaluation.systems.base import Context  # noqa: E402


def pooledir_index(path: Path, encoder: ColBERTEncoder, data, vectors: list[np.ndarray]) -> PooledIndex:
    """The default index of the cached vectors at ``path``: opened when a previous run built it."""
    if (path / "done").is_file():
        return PooledIndex.open(path, device="cpu", encoder=encoder)
    pooled = pool_embeddings(vectors, pool_factor=IndexConfig.pool_factor)
    index = PooledIndex.create(path, config=IndexConfig(), device="cpu", encoder=encoder)
    index.add(data.documents, embeddings=pooled, pooled=True, n_tokens=[len(v) for v in vectors])
    (path / "done").write_text("built\n")
    return index


def plaid_system(work: Path, encoder: ColBERTEncoder, data, vectors: list[np.ndarray], nbits: int = 2):
    """colbert-ai's PLAID at ``nbits`` on the same vectors pooled x2, its index reused when ``work`` has it."""
    from colbert import Indexer

    from pooledir.evaluation.systems.plaid import PlaidSystem

    system = PlaidSystem(nbits, pool_factor=IndexConfig.pool_factor)
    original = Indexer.index

    def reuse(self: Any, name: str, collection: Any, overwrite: Any = False) -> Any:
        return original(self, name, collection, overwrite="reuse")  # an index a previous run built is kept

    Indexer.index = reuse
    try:
        system.build(Context(encoder, "cpu", work), data.documents, vectors)
    finally:
        Indexer.index = original
    return system


def summary(times: list[tuple[float, float]]) -> dict[str, float]:
    """p50, p90 and mean of (wall, process CPU) seconds, in ms: CPU counts every thread of the process."""
    ms, cpu = (np.asarray(t) * 1000 for t in zip(*times))
    return {
        "p50_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "cpu_p50_ms": float(np.median(cpu)),
    }


def timed(fn: Any, q: str) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``fn(q)``."""
    t, c = time.perf_counter(), time.process_time()
    fn(q)
    return time.perf_counter() - t, time.process_time() - c


def interleaved(index: PooledIndex, plaid, encoder: ColBERTEncoder, texts: list[str], k: int) -> dict[str, list]:
    """(wall, CPU) seconds per query of each engine (encoding included) and of encoding alone, order rotating."""
    runs = {
        "pooledir": lambda q: index.search(q, k=k),
        "plaid": lambda q: plaid.search([q], k),
        "encode": lambda q: encoder.encode_queries([q]),
    }
    names = list(runs)
    for q in texts[:5]:  # warm-up: PLAID loads its searcher and compiles its extensions on first use
        for n in names:
            runs[n](q)
    times: dict[str, list] = {n: [] for n in names}
    for i, q in enumerate(texts):
        for n in names[i % len(names) :] + names[: i % len(names)]:
            times[n].append(timed(runs[n], q))
    return times


def parse_args() -> argparse.Namespace:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--work", type=Path, required=True, help="where both indexes are kept between runs")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--split", default="test", help="whose queries are timed (their qrels are not read)")
    ap.add_argument("--queries", type=int, help="time only the first N queries")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--no-plaid", action="store_true", help="time pooledir and encoding only")
    return ap.parse_args()


def main() -> None:  # noqa: D103
    args = parse_args()
    data = load_beir(args.dataset, args.split)
    encoder = ColBERTEncoder(args.checkpoint, device="cpu")
    vectors, _, _ = encode_cached(encoder, data, args.cache_dir)
    args.work.mkdir(parents=True, exist_ok=True)
    index = pooledir_index(args.work / f"pooledir-{data.name}", encoder, data, vectors)
    plaid = None if args.no_plaid else plaid_system(args.work / f"plaid-{data.name}", encoder, data, vectors)
    if args.build_only:
        return
    texts = list(data.queries.values())[: args.queries]
    load = os.getloadavg()[0]
    if plaid is not None:
        times = interleaved(index, plaid, encoder, texts, args.k)
    else:
        times = _without_plaid(index, encoder, texts, args.k)
    rows = {n: summary(t) for n, t in times.items()}
    result = {
        "dataset": data.name,
        "split": args.split,
        "queries": len(texts),
        "k": args.k,
        "documents": len(data.documents),
        "pooledir": index.info()["backend"] | {"vectors": index.info()["vectors"]},
        "plaid": plaid.describe() if plaid else None,
        "query_backend": encoder.query_backend,  # "auto" resolved on the first query
        "latency": rows,
        "p50_ratio_pooledir_to_plaid": _ratio(rows, "p50_ms"),
        "cpu_p50_ratio_pooledir_to_plaid": _ratio(rows, "cpu_p50_ms"),
        "machine": machine_info(),
        "torch_threads": _torch_threads(),
        "load_avg_1min_start": round(load, 2),
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(rows, indent=2), result["p50_ratio_pooledir_to_plaid"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def _without_plaid(index: PooledIndex, encoder: ColBERTEncoder, texts: list[str], k: int) -> dict[str, list]:
    times: dict[str, list] = {"pooledir": [], "encode": []}
    for q in texts[:5]:
        index.search(q, k=k)
    for q in texts:
        times["pooledir"].append(timed(lambda x: index.search(x, k=k), q))
        times["encode"].append(timed(lambda x: encoder.encode_queries([x]), q))
    return times


def _ratio(rows: dict[str, dict[str, float]], key: str) -> float | None:
    """The ratio of ``key``, pooledir over PLAID (None without PLAID)."""
    return rows["pooledir"][key] / rows["plaid"][key] if "plaid" in rows else None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
