"""Load test: a real `pooledir serve` on 127.0.0.1, searched at several concurrency levels.

    python eval/load.py INDEX_DIR --queries ../shared/data/beir/scifact [--concurrency 1,8,32]
                        [--requests 200] [--max-seconds 60] [--compare-batching] [--out eval/results/load.json]

Each level sends at most ``--requests`` searches (BEIR queries, k=10) and stops after ``--max-seconds``;
it prints QPS, p50/p95/p99 latency and the error count. The load generator runs on the same machine
as the server, so on a small machine they share its cores. Traffic goes to loopback only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from pooledir.evaluation import load_queries, machine_info, running_server


def level(url: str, name: str, queries: list[str], concurrency: int, n_requests: int, max_s: float) -> dict:
    counter = itertools.count()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + max_s

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.perf_counter() < deadline:
                i = next(counter)
                if i >= n_requests:
                    return
                t = time.perf_counter()
                try:
                    r = c.post(f"/indexes/{name}/search", json={"query": queries[i % len(queries)], "k": 10})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - t)
                    errors[0] += not ok

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors[0],
        "seconds": round(wall, 2),
        "qps": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def run(index_dir: Path, queries: list[str], levels: list[int], n: int, max_s: float, micro_batching: bool) -> list:
    env = {"POOLEDIR_MICRO_BATCHING": str(micro_batching).lower()}
    with running_server([index_dir], env=env, ready_timeout=120) as server:
        level(server.url, index_dir.name, queries, 2, 10, 30)  # warm-up
        rows = []
        for c in levels:
            row = level(server.url, index_dir.name, queries, c, n, max_s) | {"micro_batching": micro_batching}
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", type=Path)
    ap.add_argument("--queries", type=Path, required=True, help="BEIR folder or queries.jsonl")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=200, help="searches per level, at most")
    ap.add_argument("--max-seconds", type=float, default=60, help="time per level, at most")
    ap.add_argument("--compare-batching", action="store_true", help="also run with micro-batching off")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    queries = list(load_queries(args.queries).values())
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = run(args.index, queries, levels, args.requests, args.max_seconds, micro_batching=True)
    if args.compare_batching:
        rows += run(args.index, queries, levels, args.requests, args.max_seconds, micro_batching=False)

    print("\n| micro-batching | concurrency | requests | errors | QPS | p50 ms | p95 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {'on' if r['micro_batching'] else 'off'} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{r['qps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} |"
        )
    if args.out:
        info = json.loads(
            subprocess.run(
                [sys.executable, "-m", "pooledir.cli", "info", str(args.index), "--json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "index": {k: info[k] for k in ("documents", "vectors", "pool_factor", "index_bytes", "backend")},
                    "machine": machine_info(),
                    "note": "load generator and server on the same machine; loopback only",
                    "runs": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
