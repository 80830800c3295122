"""Document encoding throughput on CPU: settings against today's, in one process, same vectors checked.

    python eval/bench_doc_encoding.py CHECKPOINT [--corpus ../shared/data/beir/scifact] [--docs 500] [--rounds 2]

Encodes the first ``--docs`` documents of a corpus with each setting (batch size, backend),
the settings taking turns chunk by chunk over ``--rounds`` rounds so they share the machine's
noise, and prints docs/s with the ratio to today's setting (torch, batch 32) and the largest
difference of the float32 vectors from today's. It also counts the process's CPU seconds per
document (all threads): the work a setting costs, which other jobs on the machine disturb less
than wall time (but it does not see threads idling while they wait for each other). The
machine is shared with other work: read the ratios rather than the absolute numbers (the
1-minute load average is recorded). OpenMP threads wait passively, as in the CLI and the
service (OMP_WAIT_POLICY=PASSIVE).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI and the service run; before torch loads

import numpy as np  # noqa: E402

from pooledir import ColBERTEncoder, iter_corpus  # noqa: E402

SETTINGS = {
    "torch bs32 (today)": {"document_backend": "torch", "batch_size": 32},
    "torch bs16": {"document_backend": "torch", "batch_size": 16},
    "torch bs64": {"document_backend": "torch", "batch_size": 64},
    "onnx bs32": {"document_backend": "onnx", "batch_size": 32},
    "onnx bs16": {"document_backend": "onnx", "batch_size": 16},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--corpus", type=Path, default=Path("../shared/data/beir/scifact"))
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    texts = [d.text for _, d in zip(range(args.docs), iter_corpus(args.corpus))]
    encoders = {name: ColBERTEncoder(args.checkpoint, device="cpu", **kw) for name, kw in SETTINGS.items()}
    for enc in encoders.values():  # warm-up (ONNX Runtime allocates on its first runs)
        enc.encode_documents(texts[:8])
    load_start = os.getloadavg()[0]
    seconds = {name: 0.0 for name in SETTINGS}
    cpu = {name: 0.0 for name in SETTINGS}
    vectors: dict[str, list[np.ndarray]] = {}
    for r in range(args.rounds):
        for start in range(0, len(texts), args.chunk):
            chunk = texts[start : start + args.chunk]
            for name, enc in encoders.items():
                t, c = time.perf_counter(), time.process_time()
                out = enc.encode_documents(chunk, dtype="float32")
                seconds[name] += time.perf_counter() - t
                cpu[name] += time.process_time() - c
                if r == 0:
                    vectors.setdefault(name, []).extend(out)
    ref_name = next(iter(SETTINGS))
    ref = vectors[ref_name]
    n = len(texts) * args.rounds
    loads = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    print(f"{len(texts)} documents x {args.rounds} rounds, {os.cpu_count()} CPUs shared with other work")
    print(f"load average (1 min) at the start and the end: {loads}")
    result: dict = {"documents": len(texts), "rounds": args.rounds, "chunk": args.chunk, "load_avg_1min": loads}
    for name in SETTINGS:
        same_lengths = [len(a) for a in vectors[name]] == [len(b) for b in ref]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(vectors[name], ref) if len(a)) if same_lengths else None
        rate = n / seconds[name]
        result[name] = {
            "docs_per_s": round(rate, 2),
            "ratio": round(rate / (n / seconds[ref_name]), 3),
            "cpu_s_per_doc": round(cpu[name] / n, 4),
            "cpu_ratio": round(cpu[ref_name] / cpu[name], 3),
            "max_diff": diff,
        }
        print(
            f"  {name:20s} {rate:8.2f} docs/s  ratio {result[name]['ratio']:.3f}  "
            f"CPU s/doc {cpu[name] / n:.3f} (ratio {result[name]['cpu_ratio']:.3f})  max |diff| {diff}"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
