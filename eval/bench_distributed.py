"""Ray against one process, on a SciFact sample: encode, build and serve (issue 13's benchmark).

    python eval/bench_distributed.py --corpus ../shared/data/beir/scifact \
        --checkpoint /work/cache/minilm-colbert-128-plain --docs 500 --out eval/results/distributed_scifact_cpu.json

1. Encode the sample into 4 shards: one process (the library's ``encode_corpus``), then Ray with 1 and
   2 encoder actors on a local cluster (``ray.init(num_cpus=CPUs)``), in the same run; the Ray shards
   are checked equal to the single-process ones.
2. Build an IVF-PQ index from those shards: serially (``build_index_from_shards``) and with 4 Ray
   tasks (``build_index_ray``, one segment per shard).
3. Serve the same documents: ``pooledir serve`` on the serial index, and ``pooledir serve --ray`` on 2
   partitions (IVF-PQ each); every SciFact test query once at concurrency 1 (p50, QPS, nDCG@10 over
   the sample), then at concurrency 4 (QPS).

The sample is every document judged by the test qrels plus the first corpus documents up to
``--docs``, so nDCG@10 means something on it (it is not the full-corpus nDCG). Everything runs on
this machine; the load average is recorded beside each timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pooledir import IndexConfig
from pooledir.build import build_index_from_shards, create_index_for_shards
from pooledir.build_shards import EncodeConfig, encode_corpus
from pooledir.corpus import iter_corpus
from pooledir.encoder import ColBERTEncoder
from pooledir.evaluation import free_port, load_qrels, load_queries, machine_info, running_server
from pooledir.evaluation.metrics import score_run
from pooledir.shards import iter_shards, read_shard_manifest


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def make_sample(corpus: Path, n: int, out: Path) -> int:
    judged = {d for q in load_qrels(corpus, "test").values() for d in q}
    lines = (corpus / "corpus.jsonl").read_text().splitlines()
    keep = [ln for ln in lines if json.loads(ln)["_id"] in judged]
    for ln in lines:
        if len(keep) >= max(n, len(judged)):
            break
        if json.loads(ln)["_id"] not in judged:
            keep.append(ln)
    out.write_text("\n".join(keep) + "\n")
    return len(keep)


def same_shards(a: Path, b: Path) -> dict:
    ids_equal, max_diff = True, 0.0
    for x, y in zip(iter_shards(a), iter_shards(b), strict=True):
        ids_equal &= [d.id for d in x.documents()] == [d.id for d in y.documents()]
        ids_equal &= bool(np.array_equal(x.lengths, y.lengths))
        diff = np.abs(np.asarray(x.vectors, np.float32) - np.asarray(y.vectors, np.float32)).max()
        max_diff = max(max_diff, float(diff))
    return {"ids_and_lengths_equal": ids_equal, "max_abs_vector_diff": max_diff}


def bench_encode(sample: Path, ckpt: Path, work: Path, docs: int) -> tuple[dict, Path]:
    from pooledir.distributed.encode import encode_corpus_ray

    config = EncodeConfig(shard_docs=-(-docs // 4), chunk_docs=250)
    encoder = ColBERTEncoder(ckpt, device="cpu")
    single = work / "shards-single"
    load = load1()
    t = time.perf_counter()
    encode_corpus(iter_corpus(sample), single, encoder, config, show_progress=False)
    wall = time.perf_counter() - t
    out = {
        "single_process": {
            "seconds": round(wall, 2),
            "docs_per_s": round(docs / wall, 2),
            "torch_threads": __import__("torch").get_num_threads(),
            "load1_before": load,
        }
    }
    del encoder
    print(json.dumps(out), flush=True)
    for actors in (1, 2):
        folder = work / f"shards-ray-{actors}"
        load = load1()
        t = time.perf_counter()
        rep = encode_corpus_ray(sample, folder, ckpt, config, actors=actors, device="cpu", show_progress=False)
        wall = time.perf_counter() - t
        out[f"ray_{actors}_actors"] = {
            "seconds": round(wall, 2),
            "docs_per_s": round(docs / wall, 2),
            "shard_seconds_in_actors": {str(k): round(v, 2) for k, v in sorted(rep.shard_seconds.items())},
            "per_actor_docs_per_s": round(docs / sum(rep.shard_seconds.values()), 2),
            "vs_single_process": round(wall / out["single_process"]["seconds"], 3),
            "load1_before": load,
            **same_shards(folder, single),
        }
        print(json.dumps({f"ray_{actors}_actors": out[f"ray_{actors}_actors"]}), flush=True)
    return out, single


def bench_build(shards: Path, work: Path) -> tuple[dict, Path]:
    from pooledir.distributed.build import build_index_ray

    spec = read_shard_manifest(shards).spec
    config = IndexConfig(pool_factor=spec.pool_factor)
    out = {}
    serial = work / "index-serial"
    load = load1()
    t = time.perf_counter()
    with create_index_for_shards(serial, spec, config, device="cpu") as idx:
        build_index_from_shards([shards], idx, show_progress=False)
        info = idx.info()
    out["serial"] = {"seconds": round(time.perf_counter() - t, 2), "load1_before": load, "vectors": info["vectors"]}
    load = load1()
    t = time.perf_counter()
    with create_index_for_shards(work / "index-ray", spec, config, device="cpu") as idx:
        t_ray = time.perf_counter()
        rep = build_index_ray([shards], idx, segments=4, show_progress=False)
        info_ray = idx.info()
    out["ray_4_segments"] = {
        "seconds": round(time.perf_counter() - t, 2),
        "attach_seconds": round(rep.add_s, 2),
        "build_index_ray_seconds": round(time.perf_counter() - t_ray, 2),
        "load1_before": load,
        "vectors": info_ray["vectors"],
        "documents": info_ray["documents"],
        "same_documents_and_vectors": info_ray["documents"] == info["documents"]
        and info_ray["vectors"] == info["vectors"],
    }
    out["ray_vs_serial"] = round(out["ray_4_segments"]["seconds"] / out["serial"]["seconds"], 3)
    print(json.dumps(out), flush=True)
    return out, serial


def measure(url: str, name: str, queries: dict[str, str], qrels: dict) -> dict:
    import httpx

    from pooledir.evaluation.metrics import drop_self_hits

    qids = list(queries)
    run, lat = {}, []
    with httpx.Client(base_url=url, timeout=120) as c:
        for q in qids[:10]:  # warm-up
            c.post(f"/indexes/{name}/search", json={"query": queries[q], "k": 10}).raise_for_status()
        load = load1()
        t0 = time.perf_counter()
        for q in qids:
            t = time.perf_counter()
            r = c.post(f"/indexes/{name}/search", json={"query": queries[q], "k": 10})
            lat.append(time.perf_counter() - t)
            r.raise_for_status()
            run[q] = drop_self_hits(q, {h["id"]: h["score"] for h in r.json()["results"]})
        wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    from load import level  # eval/load.py, beside this script

    conc = level(url, name, [queries[q] for q in qids], 4, 200, 120)
    return {
        "requests": len(qids),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "qps_concurrency_1": round(len(qids) / wall, 2),
        "qps_concurrency_4": conc["qps"],
        "p50_ms_concurrency_4": conc["p50_ms"],
        "errors_concurrency_4": conc["errors"],
        "load1_before": load,
        "ndcg@10": round(score_run(run, qrels)["ndcg@10"], 4),  # k=10: recall@100 would mean nothing
    }, run


def start_ray_server(folder: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pooledir.cli", "serve", str(folder), "--ray", "--port", str(port), "--device", "cpu"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    import urllib.request

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Ray server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    raise RuntimeError(f"the Ray server was not ready in 300 s: {log.read_text()[-3000:]}")


def bench_serve(shards: Path, single_index: Path, corpus: Path, work: Path) -> dict:
    from pooledir.distributed.partition import build_partitions

    spec = read_shard_manifest(shards).spec
    split = work / "split"
    t = time.perf_counter()
    build_partitions([shards], split, 2, IndexConfig(pool_factor=spec.pool_factor), show_progress=False)
    partitions_s = time.perf_counter() - t
    queries = load_queries(corpus / "queries.jsonl")
    qrels = load_qrels(corpus, "test")
    queries = {q: queries[q] for q in qrels}
    out = {"partitions": 2, "partition_build_seconds": round(partitions_s, 2)}
    with running_server([single_index], ready_timeout=180) as server:
        out["pooledir_serve"], run_one = measure(server.url, single_index.name, queries, qrels)
    print(json.dumps(out), flush=True)
    port = free_port()
    proc = start_ray_server(split, port, work / "ray-serve.log")
    try:
        out["ray_serve_2_partitions"], run_split = measure(f"http://127.0.0.1:{port}", "split", queries, qrels)
    except Exception:
        print((work / "ray-serve.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        proc.send_signal(signal.SIGTERM)  # as Ctrl-C: Serve and its local cluster shut down
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out["ingress_added_p50_ms"] = round(out["ray_serve_2_partitions"]["p50_ms"] - out["pooledir_serve"]["p50_ms"], 1)
    out["ndcg@10_difference"] = round(out["ray_serve_2_partitions"]["ndcg@10"] - out["pooledir_serve"]["ndcg@10"], 4)
    overlap = [len(set(run_one[q]) & set(run_split[q])) / max(1, len(run_one[q])) for q in run_one]
    out["top10_overlap"] = round(float(np.mean(overlap)), 4)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=Path("../shared/data/beir/scifact"))
    p.add_argument("--checkpoint", type=Path, default=Path("/work/cache/minilm-colbert-128-plain"))
    p.add_argument("--docs", type=int, default=500)
    p.add_argument("--out", type=Path, default=Path("eval/results/distributed_scifact_cpu.json"))
    p.add_argument("--skip-serve", action="store_true")
    args = p.parse_args()

    import ray

    result: dict = {"machine": machine_info(), "cpus": os.cpu_count(), "ray": ray.__version__}
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        work = Path(tmp)
        sample = work / "sample.jsonl"
        docs = make_sample(args.corpus, args.docs, sample)
        result["documents"] = docs
        ray_tmp = tempfile.mkdtemp(prefix="pdr-")  # short: Ray's socket paths must stay under 107 bytes
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
        try:
            result["encode"], shards = bench_encode(sample, args.checkpoint, work, docs)
            result["build"], single_index = bench_build(shards, work)
        finally:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
        if not args.skip_serve:
            result["serve"] = bench_serve(shards, single_index, args.corpus, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
