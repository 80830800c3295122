"""Scale benchmark of the index engine: synthetic pooled vectors straight into the index (no encoder).

For each size (pooled 128-d vectors, ~100 per document, clustered unit vectors) one subprocess
builds the index in chunks of ``--chunk-docs`` documents through ``PooledIndex.add(pooled=True)``
(its peak RSS is the build's), and a second subprocess opens it and measures: open time and RSS
after open, search p50 (same SearchParams at every size), p50 of 20 single-document upserts and of
20 deletes, and compaction time. ``--design single`` runs the same steps against the previous
single-file engine (commit 6e06448, checked out with ``git worktree`` into ``--old-tree``).

The index is built with its own defaults (the format-3 codec, list count and sub-quantizers it picks);
``--pinned`` pins what eval/results/bench_scale.cpu.json (format 2) ran at: ≈4·√N lists capped at 4,096
and pq_m 16. ``--train-sample N`` trains on up to N vectors instead of the default 262,144, which lets the
list count follow PLAID's rule past 6,721 lists (N/39 at most; two-level training from 16,384 lists on,
eval/results/scale_rule.md).

    python eval/bench_scale.py --sizes 100000,1000000 --design both
    python eval/bench_scale.py --sizes 10000000 --design segments
    python eval/bench_scale.py --plot-only

Results are merged into ``--results`` (default eval/results/bench_scale_format3.cpu.json; keyed by design
and size) and plotted beside it (same name, .png). This is a benchmark, never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results" / "bench_scale_format3.cpu.json"
OLD_COMMIT = "6e06448"
DIM = 128
PER_DOC = 100
N_CLUSTERS = 4096
SEARCH = {"k": 10, "nprobe": 32, "candidates_per_token": 32, "rerank": 64}
#: single-query searches timed after SEARCH_WARMUP untimed ones; runs before session 13 timed 20 after 10 (their
#: rows have no ``search_queries``), whose p50 moved by up to a third between runs of the same engine
SEARCH_QUERIES = 100
SEARCH_WARMUP = 10


class FakeEncoder:
    """What an index records of an encoder; vectors are given directly."""

    path = "."
    dim = DIM

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.settings = SimpleNamespace(
            layout="colbert-ai",
            doc_maxlen=300,
            query_maxlen=32,
            query_augmentation=False,
            markers=False,
            mask_punctuation=False,
        )


def centers() -> np.ndarray:
    rng = np.random.default_rng(12345)
    c = rng.standard_normal((N_CLUSTERS, DIM)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def make_docs(start: int, n: int, c: np.ndarray):
    """Documents start..start+n: each draws ~100 vectors around a few topic centres (seeded by index)."""
    from pooledir.corpus import Document

    rng = np.random.default_rng(start)
    lens = rng.integers(PER_DOC - 20, PER_DOC + 21, n)
    docs, vecs = [], []
    for i, length in enumerate(lens):
        topics = rng.integers(0, N_CLUSTERS, 4)
        v = (
            c[rng.choice(topics, length)]
            + 0.35 * rng.standard_normal((length, DIM)).astype(np.float32) / np.sqrt(DIM) * 4
        )
        vecs.append((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32))
        docs.append(Document(f"doc{start + i}", f"synthetic document {start + i}", {}))
    return docs, vecs


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def anon_mb() -> float:
    """Anonymous resident memory of this process (RssAnon): its own arrays, not the pages of mapped files."""
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1e3
    return float("nan")


class AnonPeak:
    """The highest :func:`anon_mb` seen, sampled every ``interval`` s by a daemon thread.

    ``ru_maxrss`` (``peak_mb``) counts the resident pages of memory-mapped segment files too (a merge reads its
    sources through their maps, an open checks them): page cache the kernel may drop, not memory the build holds.
    """

    def __init__(self, interval: float = 0.05) -> None:
        import threading

        self.peak = anon_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, anon_mb())

    def stop(self) -> float:
        """Stop sampling; the peak in MB."""
        self._stop.set()
        self._thread.join()
        return max(self.peak, anon_mb())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def n_docs_for(size: int) -> int:
    return max(1, size // PER_DOC)


def nlist_for(size: int) -> int:
    from math import sqrt

    # faiss's 4*sqrt(N), capped at 4096: at 10^7 the uncapped 12,649 lists cost ~3e13 flops of
    # assignment alone on 2 CPU cores; the cap is the same for both designs
    return min(int(round(4 * sqrt(size))), 4096)


def add(index, docs, vecs, design: str):
    if design == "segments":
        index.add(docs, embeddings=vecs, pooled=True)
    else:
        index.add(docs, embeddings=vecs)  # the old engine pools; pool_factor=1 keeps the vectors as they are


# -- workers ------------------------------------------------------------------------------------------------------
def build_config(size: int, pinned: bool, train_sample: int | None = None):
    """The index's defaults, or (``pinned``) what bench_scale.cpu.json and the single-file design ran at."""
    from pooledir.pooled_index import IndexConfig

    # pq_m 16 and ≈4·√N lists capped at 4,096: format 2's runs (bench_scale.cpu.json) and 6e06448's
    if pinned:
        return IndexConfig(pool_factor=1, nlist=nlist_for(size), pq_m=16)
    return IndexConfig(pool_factor=1, **({"train_sample": train_sample} if train_sample else {}))


def worker_build(
    design: str, size: int, folder: Path, chunk_docs: int, pinned: bool, train_sample: int | None = None
) -> dict:
    from pooledir.pooled_index import PooledIndex

    c = centers()
    n_docs = n_docs_for(size)
    config = build_config(size, pinned or design == "single", train_sample)
    index = PooledIndex.create(folder, config=config, device="cpu", encoder=FakeEncoder())
    anon = AnonPeak()
    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    vectors, build_s = 0, 0.0  # build_s: time in add() only; generating the synthetic vectors is not the index's
    for start in range(0, n_docs, chunk_docs):
        docs, vecs = make_docs(start, min(chunk_docs, n_docs - start), c)
        vectors += sum(len(v) for v in vecs)
        t = time.perf_counter()
        add(index, docs, vecs, design)
        build_s += time.perf_counter() - t
        print(
            f"[{design} {size}] {start + len(docs)}/{n_docs} docs, add {build_s:.0f} s, "
            f"wall {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
            flush=True,
        )
    wall_s = time.perf_counter() - t0
    shape = index.info()["backend"] if design == "segments" else {"nlist": config.nlist, "pq_m": config.pq_m}
    index.close()
    load.append(os.getloadavg()[0])
    return {
        "vectors": vectors,
        "documents": n_docs,
        "pinned": pinned or design == "single",
        "train_sample": config.train_sample,
        "nlist": shape.get("nlist"),
        "pq_m": shape.get("pq_m"),
        "codec": shape.get("codec", "single-file ivfpq"),
        "build_s": build_s,
        "build_wall_s": wall_s,
        "build_vectors_per_s": vectors / build_s,
        "build_load_avg_1min": load,
        "build_peak_rss_mb": peak_mb(),
        "build_peak_anon_mb": anon.stop(),
        "disk_bytes": folder_bytes(folder),
    }


def worker_ops(design: str, size: int, folder: Path) -> dict:
    import faiss  # noqa: F401 - loaded before the clock starts: open time is the index's, not the import's

    from pooledir.pooled_index import PooledIndex
    from pooledir.search import SearchParams

    c = centers()
    load = [os.getloadavg()[0]]
    base, base_anon = rss_mb(), anon_mb()
    t = time.perf_counter()
    index = PooledIndex.open(folder, device="cpu", encoder=FakeEncoder())
    open_s = time.perf_counter() - t
    open_rss, open_anon = rss_mb(), anon_mb() - base_anon
    rng = np.random.default_rng(7)
    n_docs = n_docs_for(size)
    params = SearchParams(**SEARCH)
    n_q = SEARCH_WARMUP + SEARCH_QUERIES
    qdocs, qvecs = make_docs(int(rng.integers(0, max(1, n_docs - n_q))), n_q, c)
    lat = []
    for v in qvecs:  # warm-up, then SEARCH_QUERIES timed single-query searches
        Q = v[None, :32] + 0.02 * rng.standard_normal((1, 32, DIM)).astype(np.float32)
        t = time.perf_counter()
        index.search_embeddings(Q, params)
        lat.append(time.perf_counter() - t)
    search_ms = 1000 * float(np.median(lat[SEARCH_WARMUP:]))
    up = []
    for i in range(20):
        target = int(rng.integers(0, n_docs))
        docs, vecs = make_docs(n_docs + 1000 + i, 1, c)
        docs = [type(docs[0])(f"doc{target}", docs[0].text, {})]  # replace an existing document
        t = time.perf_counter()
        add(index, docs, vecs, design)
        up.append(time.perf_counter() - t)
    de = []
    victims = rng.choice(n_docs, 40, replace=False)
    for i in range(20):
        t = time.perf_counter()
        index.delete([f"doc{victims[i]}"])
        de.append(time.perf_counter() - t)
    out = {
        "open_s": open_s,
        "open_rss_mb": open_rss - base,
        "process_rss_after_open_mb": open_rss,
        "open_anon_mb": open_anon,
        "search_p50_ms": search_ms,
        "search_queries": SEARCH_QUERIES,
        "upsert_p50_ms": 1000 * float(np.median(up)),
        "upsert_max_ms": 1000 * float(np.max(up)),
        "delete_p50_ms": 1000 * float(np.median(de)),
        "delete_max_ms": 1000 * float(np.max(de)),
        "compact_s": None,
        "ops_load_avg_1min": load,
    }
    if design == "segments":
        t = time.perf_counter()
        index.compact(retrain=False)
        out["compact_s"] = time.perf_counter() - t
        out["segments_after_compact"] = len(index.info()["segments"])
    index.close()
    out["ops_load_avg_1min"].append(os.getloadavg()[0])
    return out


# -- driver -------------------------------------------------------------------------------------------------------
def run_worker(args: list[str], design: str, old_tree: Path, pre: list[str] = ()) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = str(old_tree if design == "single" else ROOT)
    cmd = [sys.executable, str(Path(__file__).resolve()), *pre, "--worker", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(ROOT))
    sys.stderr.write(proc.stderr[-2000:])
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed with {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_old_tree(old_tree: Path) -> None:
    if not (old_tree / "pooledir" / "pooled_index.py").is_file():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), OLD_COMMIT], check=True)


def load_results(results: Path) -> dict:
    return json.loads(results.read_text()) if results.is_file() else {"runs": []}


def save_result(row: dict, results: Path) -> None:
    import fcntl

    with open(Path("/tmp") / "pooledir-bench-scale.lock", "w") as lock:  # several sizes may run side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        _save_result(row, results)


def head_commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _save_result(row: dict, results: Path) -> None:
    if row["design"] == "single":
        row.setdefault("commit", f"{OLD_COMMIT} (run by bench_scale at {head_commit()})")
    row.setdefault("commit", head_commit())
    data = load_results(results)
    data["runs"] = [r for r in data["runs"] if (r["design"], r["size"]) != (row["design"], row["size"])] + [row]
    data["runs"].sort(key=lambda r: (r["design"], r["size"]))
    data["machine"] = f"{os.cpu_count()} CPU cores shared with other jobs (load averages in each run), no GPU"
    data["search_params"] = SEARCH
    data["vectors"] = f"{DIM}-d unit vectors, ~{PER_DOC} per document, around {N_CLUSTERS} random centres"
    results.write_text(json.dumps(data, indent=2))


def plot(results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_results(results)["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for design, style in (("segments", "o-"), ("single", "s--")):
        rows = sorted((r for r in runs if r["design"] == design and "open_s" in r), key=lambda r: r["vectors"])
        if not rows:
            continue
        x = [r["vectors"] for r in rows]
        label = "segments (this engine)" if design == "segments" else "single file (6e06448)"
        axes[0].plot(x, [r["build_peak_rss_mb"] for r in rows], style, label=f"{label}: build peak")
        axes[0].plot(x, [r["process_rss_after_open_mb"] for r in rows], style, alpha=0.5, label=f"{label}: after open")
        if all("build_peak_anon_mb" in r for r in rows):  # recorded from session 12 on
            anon = [r["build_peak_anon_mb"] for r in rows]
            axes[0].plot(x, anon, style, alpha=0.8, label=f"{label}: build peak, anonymous")
        axes[1].plot(x, [r["upsert_p50_ms"] for r in rows], style, label=f"{label}: upsert")
        axes[1].plot(x, [r["delete_p50_ms"] for r in rows], style, alpha=0.5, label=f"{label}: delete")
        axes[2].plot(x, [r["search_p50_ms"] for r in rows], style, label=label)
    titles = ["RSS (MB)", "single-document write p50 (ms)", "search p50 (ms)"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pooled vectors in the index")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    loads = []
    for design in ("segments", "single"):
        seen = [x for r in runs if r["design"] == design for x in r.get("ops_load_avg_1min", [])]
        if seen:
            loads.append(f"{design}: {min(seen):.1f}-{max(seen):.1f}")
    fig.suptitle(
        "pooledir index engine at scale (synthetic 128-d vectors, 2 CPU cores shared with other jobs)\n"
        f"1-min load average while timing writes and searches: {'; '.join(loads) or 'not recorded'}"
    )
    fig.tight_layout()
    fig.savefig(results.with_name(results.name.removesuffix(".cpu.json") + ".png"), dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--design", choices=["segments", "single", "both"], default="segments")
    ap.add_argument("--chunk-docs", type=int, default=2000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pooledir-bench-scale"))
    ap.add_argument("--old-tree", type=Path, default=Path("/tmp/pooledir-old-6e06448"))
    ap.add_argument("--keep", action="store_true", help="keep the built index folders")
    ap.add_argument("--pinned", action="store_true", help="nlist ≈4·√N (<= 4096) and pq_m 16, as format 2's runs")
    ap.add_argument("--train-sample", type=int, help="vectors the quantizer trains on (default: the index's)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the JSON the rows are merged into")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--worker", nargs=4, metavar=("STEP", "DESIGN", "SIZE", "FOLDER"))
    args = ap.parse_args()
    if args.worker:
        step, design, size, folder = args.worker
        fn = worker_build if step == "build" else worker_ops
        extra = (args.chunk_docs, args.pinned, args.train_sample) if step == "build" else ()
        print(json.dumps(fn(design, int(float(size)), Path(folder), *extra)))
        return
    if not args.plot_only:
        designs = ["segments", "single"] if args.design == "both" else [args.design]
        if "single" in designs:
            ensure_old_tree(args.old_tree)
        for size in [int(float(s)) for s in args.sizes.split(",")]:
            for design in designs:
                folder = args.work / f"{design}-{size}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.parent.mkdir(parents=True, exist_ok=True)
                chunk = ["--chunk-docs", str(args.chunk_docs)] + (["--pinned"] if args.pinned else [])
                chunk += ["--train-sample", str(args.train_sample)] if args.train_sample else []
                row = {"design": design, "size": size}
                row |= run_worker(["build", design, str(size), str(folder)], design, args.old_tree, chunk)
                row |= run_worker(["ops", design, str(size), str(folder)], design, args.old_tree)
                save_result(row, args.results)
                print(json.dumps(row), flush=True)
                if not args.keep:
                    shutil.rmtree(folder, ignore_errors=True)
    plot(args.results)


if __name__ == "__main__":
    main()
