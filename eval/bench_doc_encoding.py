"""Document encoding throughput on CPU: settings against today's, in one process, same vectors checked.

    python eval/bench_doc_encoding.py CHECKPOINT [--corpus ../shared/data/beir/scifact] [--docs 500] [--rounds 2]

Encodes the first ``--docs`` documents of a corpus with each setting (batch size, backend),
the settings taking turns chunk by chunk over ``--rounds`` rounds so they share the machine's
noise, and prints docs/s with the ratio to today's setting (torch, batch 32) and the largest
difference of the float32 vectors from today's. The machine is shared with other work: read
the ratios rather than the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from pooledir import ColBERTEncoder, iter_corpus

SETTINGS = {
    "torch bs32 (today)": {"document_backend": "torch", "batch_size": 32},
    "torch bs8": {"document_backend": "torch", "batch_size": 8},
    "torch bs64": {"document_backend": "torch", "batch_size": 64},
    "onnx bs8": {"document_backend": "onnx", "batch_size": 8},
    "onnx bs32": {"document_backend": "onnx", "batch_size": 32},
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
    seconds = {name: 0.0 for name in SETTINGS}
    vectors: dict[str, list[np.ndarray]] = {}
    for r in range(args.rounds):
        for start in range(0, len(texts), args.chunk):
            chunk = texts[start : start + args.chunk]
            for name, enc in encoders.items():
                t = time.perf_counter()
                out = enc.encode_documents(chunk, dtype="float32")
                seconds[name] += time.perf_counter() - t
                if r == 0:
                    vectors.setdefault(name, []).extend(out)
    ref_name = next(iter(SETTINGS))
    ref = vectors[ref_name]
    n = len(texts) * args.rounds
    print(f"{len(texts)} documents x {args.rounds} rounds, {os.cpu_count()} CPUs shared with other work")
    result = {}
    for name in SETTINGS:
        same_lengths = [len(a) for a in vectors[name]] == [len(b) for b in ref]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(vectors[name], ref) if len(a)) if same_lengths else None
        rate = n / seconds[name]
        result[name] = {
            "docs_per_s": round(rate, 2),
            "ratio": round(rate / (n / seconds[ref_name]), 3),
            "max_diff": diff,
        }
        print(f"  {name:20s} {rate:8.2f} docs/s  ratio {result[name]['ratio']:.3f}  max |diff| {diff}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
