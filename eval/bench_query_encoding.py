"""Single-query latency on CPU: where it goes, and the query backends against torch, in one process.

    python eval/bench_query_encoding.py INDEX [--beir ../shared/data/beir/scifact] [--queries 100] [--rounds 3]
    python eval/bench_query_encoding.py --checkpoint CKPT [--beir ...] [--queries 100] [--out J]  (encoding only)

1. The split of one search per backend: encode / candidate search (the ANN over the
   index's segments) / fetching the candidates' vectors / MaxSim / the rest (approximate
   scores, ids), p50 of each part in ms.
2. Query encoding p50 per backend (torch as ColBERTEncoder does it today, ONNX Runtime fp32,
   ONNX Runtime INT8, and torch limited to one thread), the backends interleaved query by query
   over several rounds so they share the machine's noise; ratios are against torch.
3. Whole single-query search p50 (encoding included) per backend.
4. nDCG@10 per backend on the BEIR test queries whose relevant documents all lie in the
   index (the index may hold a sample of the corpus: the number is only comparable between
   backends, not to full-corpus results).

With ``--checkpoint`` instead of an index, only part 2 runs (torch against ONNX fp32, no index needed), with
the largest |difference| between the two backends' vectors over every timed query: the measurement behind
the default query backend ("auto": ONNX fp32 where ONNX Runtime is installed).

The machine these numbers come from is shared with other work: read the ratios, which compare
runs made in the same process at the same time, rather than the absolute milliseconds; the
1-minute load average is recorded before and after. OpenMP threads wait passively, as in
``pooledir`` (CLI) and the service, which set OMP_WAIT_POLICY=PASSIVE before torch loads: with
busy-waiting threads on a crowded machine, torch's query encoding measured 5-7x slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI and the service run; before torch loads

import numpy as np  # noqa: E402

import pooledir.pooled_index  # noqa: E402
import pooledir.search  # noqa: E402
from pooledir import ColBERTEncoder, DocumentNotFoundError, PooledIndex, load_qrels, load_queries  # noqa: E402

BACKENDS = ("torch", "onnx", "onnx-int8")


def p(values: list[float], q: float = 50) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def split_latency(index: PooledIndex, queries: list[str]) -> dict[str, float]:
    """Time the parts of index.search by wrapping what it calls: the ANN, the vector fetch, MaxSim."""
    parts: dict[str, list[float]] = {"encode": [], "candidates": [], "fetch": [], "maxsim": [], "total": []}
    search_fn, maxsim = pooledir.pooled_index.search_embeddings, pooledir.search.maxsim

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            parts[name][-1] += time.perf_counter() - t
            return out

        return wrapper

    def search_timed(Q, ann, fetch, params):
        return search_fn(Q, timed("candidates", ann), timed("fetch", fetch), params)

    pooledir.pooled_index.search_embeddings = search_timed
    pooledir.search.maxsim = timed("maxsim", maxsim)
    try:
        for q in queries:
            for name in parts:
                parts[name].append(0.0)
            t = time.perf_counter()
            Q = index.encoder.encode_queries([q])
            parts["encode"][-1] = time.perf_counter() - t
            index.search_embeddings(Q)
            parts["total"][-1] = time.perf_counter() - t
    finally:
        pooledir.pooled_index.search_embeddings, pooledir.search.maxsim = search_fn, maxsim
    named = ("encode", "candidates", "fetch", "maxsim")
    rest = [t - sum(parts[n][i] for n in named) for i, t in enumerate(parts["total"])]
    return {name: round(p(v), 2) for name, v in parts.items()} | {"rest": round(p(rest), 2)}


def interleaved(
    fns: dict[str, callable], queries: list[str], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per name, the wall seconds and the process CPU seconds of each call, the names taking turns query by query.

    CPU seconds count the work a call did on all its threads; with one thread and an idle
    machine they are what its wall time would be, which this shared machine cannot show.
    """
    times: dict[str, list[float]] = {n: [] for n in fns}
    cpu: dict[str, list[float]] = {n: [] for n in fns}
    for fn in fns.values():  # warm-up
        fn(queries[0])
    for _ in range(rounds):
        for q in queries:
            for name, fn in fns.items():
                t, c = time.perf_counter(), time.process_time()
                fn(q)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    return times, cpu


def with_torch_threads(fn, n: int):
    import torch

    def call(q):
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn(q)
        finally:
            torch.set_num_threads(before)

    return call


def padded_to_query_maxlen(encoder: ColBERTEncoder):
    """The torch query path before queries were padded only to their own length: every query to query_maxlen.

    Rebuilt here from the encoder's parts (not public API) so that the old path and today's run in one
    process, taking turns; its vectors are today's (checked by the caller).
    """
    s = encoder.settings

    def encode(q: str) -> np.ndarray:
        enc = encoder._tokenize([q], True, s.query_maxlen, padding="max_length", return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        out = encoder._forward(ids, mask).numpy()
        out[mask == 0] = 0.0
        return out

    return encode


def in_index(index: PooledIndex, doc_id: str) -> bool:
    try:
        index.get(doc_id)
        return True
    except DocumentNotFoundError:
        return False


def ndcg_at_10(index: PooledIndex, qids: list[str], texts: list[str], qrels: dict) -> float:
    import pytrec_eval

    hits = index.search(texts, k=10)
    run = {qid: {h.id: h.score for h in hs} for qid, hs in zip(qids, hits)}
    scores = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in qids}, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([s["ndcg_cut_10"] for s in scores.values()]))


def encode_only(args: argparse.Namespace) -> dict:
    """Part 2 alone, for the default backend choice: torch vs ONNX fp32 p50 in one process, and their max |diff|."""
    import torch

    queries = list(load_queries(args.beir / "queries.jsonl").items())
    texts = [t for _, t in sorted(queries)][: args.queries]
    encoders = {b: ColBERTEncoder(args.checkpoint, device="cpu", query_backend=b) for b in ("torch", "onnx")}
    result: dict = {
        "checkpoint": str(args.checkpoint),
        "queries_timed": len(texts),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_avg_1min_start": round(os.getloadavg()[0], 2),
    }
    diff = max(
        float(np.abs(encoders["onnx"].encode_queries([q]) - encoders["torch"].encode_queries([q])).max()) for q in texts
    )
    result["max_abs_diff_onnx_vs_torch"] = diff
    fns = {b: (lambda q, e=e: e.encode_queries([q])) for b, e in encoders.items()}
    times, cpu = interleaved(fns, texts, args.rounds)
    ref = p(times["torch"])
    result["encode_ms"] = {
        n: {"p50": round(p(t), 2), "p90": round(p(t, 90), 2), "cpu_p50": round(p(cpu[n]), 2)} for n, t in times.items()
    }
    result["ratio_to_torch_p50"] = {n: round(p(t) / ref, 3) for n, t in times.items()}
    result["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", type=Path, nargs="?", help="an index folder (all four parts)")
    ap.add_argument("--checkpoint", help="instead of an index: time query encoding only, torch vs ONNX fp32")
    ap.add_argument("--beir", type=Path, default=Path("../shared/data/beir/scifact"))
    ap.add_argument("--queries", type=int, default=100, help="test queries timed (all are scored for nDCG)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    ap.add_argument("--skip-ndcg", action="store_true")
    args = ap.parse_args()
    import torch

    if args.checkpoint:
        if args.threads:
            torch.set_num_threads(args.threads)
        result = encode_only(args)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
        return
    if args.index is None:
        ap.error("give an index folder, or --checkpoint for query encoding alone")

    if args.threads:
        torch.set_num_threads(args.threads)  # the ONNX backends take torch's thread count

    index = PooledIndex.open(args.index, device="cpu")
    qrels = load_qrels(args.beir, "test")
    all_queries = load_queries(args.beir / "queries.jsonl")
    indexed = {d for d in {d for rel in qrels.values() for d in rel} if in_index(index, d)}
    qids = sorted(q for q in qrels if q in all_queries and set(qrels[q]) <= indexed)
    texts = [all_queries[q] for q in qids]
    timed = texts[: args.queries]
    ckpt, enc_kw = index.manifest.checkpoint, index.manifest.encoder.settings()
    encoders = {b: ColBERTEncoder(ckpt, device="cpu", query_backend=b, **enc_kw) for b in BACKENDS}

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared with other work)")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; index {args.index}, {len(index)} docs"
    )
    result: dict = {
        "index": str(args.index),
        "documents": len(index),
        "queries_timed": len(timed),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_avg_1min_start": round(os.getloadavg()[0], 2),
    }
    print(f"load average (1 min) at the start: {result['load_avg_1min_start']}")

    result["split_ms_p50"] = {}
    for b, e in encoders.items():  # one backend after another (not interleaved): compare with care
        idx = PooledIndex.open(args.index, device="cpu", encoder=e)
        idx.search([timed[0]], k=10)  # warm-up
        result["split_ms_p50"][b] = split_latency(idx, timed)
        print(f"1. split of one search, {b} encoder (p50 ms):", json.dumps(result["split_ms_p50"][b]))

    fns = {b: (lambda q, e=e: e.encode_queries([q])) for b, e in encoders.items()}
    if torch.get_num_threads() > 1:
        fns["torch-1-thread"] = with_torch_threads(fns["torch"], 1)
    before = "torch-padded-to-query-maxlen (before)"
    if not encoders["torch"].settings.query_augmentation:
        fns[before] = padded_to_query_maxlen(encoders["torch"])
        diff = float(np.abs(fns[before](timed[0]) - fns["torch"](timed[0])).max())
        result["before_vs_today_max_diff"] = diff
        print(f"   torch padded to query_maxlen (before) vs today: max |diff| {diff:.2e}")
    times, cpu = interleaved(fns, timed, args.rounds)
    ref = p(times["torch"])
    result["encode_ms"] = {
        n: {"p50": round(p(t), 2), "p90": round(p(t, 90), 2), "cpu_p50": round(p(cpu[n]), 2)} for n, t in times.items()
    }
    print(f"2. query encoding, {len(timed)} queries x {args.rounds} rounds, interleaved:")
    for n, t in times.items():
        print(
            f"   {n:15s} p50 {p(t):8.2f} ms  p90 {p(t, 90):8.2f} ms  ratio to torch {p(t) / ref:.3f}  "
            f"CPU p50 {p(cpu[n]):7.2f} ms"
        )
    if before in times:
        result["encode_ratio_to_before"] = {n: round(p(t) / p(times[before]), 3) for n, t in times.items()}
        ratios = json.dumps(result["encode_ratio_to_before"])
        print("   ratio to the torch path before (padded to query_maxlen):", ratios)

    searches = {}
    for b, e in encoders.items():
        idx = PooledIndex.open(args.index, device="cpu", encoder=e)
        searches[b] = lambda q, idx=idx: idx.search([q], k=10)
    times, cpu = interleaved(searches, timed, args.rounds)
    ref = p(times["torch"])
    result["search_ms"] = {
        n: {"p50": round(p(t), 2), "p90": round(p(t, 90), 2), "cpu_p50": round(p(cpu[n]), 2)} for n, t in times.items()
    }
    print("3. single-query search, encoding included:")
    for n, t in times.items():
        print(
            f"   {n:15s} p50 {p(t):8.2f} ms  p90 {p(t, 90):8.2f} ms  ratio to torch {p(t) / ref:.3f}  "
            f"CPU p50 {p(cpu[n]):7.2f} ms"
        )

    result["ndcg@10"] = {}
    for b, e in ({} if args.skip_ndcg else encoders).items():
        idx = PooledIndex.open(args.index, device="cpu", encoder=e)
        result["ndcg@10"][b] = round(ndcg_at_10(idx, qids, [all_queries[q] for q in qids], qrels), 4)
    print(f"4. nDCG@10 on the {len(qids)} test queries whose relevant documents are all in the index:")
    print("  ", json.dumps(result["ndcg@10"]))
    result["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(f"load average (1 min) at the end: {result['load_avg_1min_end']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
