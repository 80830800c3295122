"""The size/quality frontier on identical vectors (issue 11): pooledir variants and peers, one JSON per dataset.

Unlike ``pooledir eval beir`` (a full product of options), this runs a hand-picked list, so that one
encoding serves the codec/refine study, adaptive pooling at the vector counts of the fixed factors, and
PLAID / fast-plaid on the same pooled vectors, without a combinatorial number of builds on 2 cores:

    python eval/frontier.py ../shared/data/beir/scifact --split train --corpus-sample 1500
        --checkpoint CKPT --out eval/results/frontier_scifact_train1500.cpu.json --plaid  (one line)

Tune on train/dev qrels (``--split train`` / ``dev``); test-only datasets are for checking.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pooledir.evaluation import EvalConfig, evaluate, markdown_table
from pooledir.evaluation.systems import SystemUnavailable, get_system
from pooledir.search import SearchParams

#: Ward merge heights giving about the vector counts of pool factors 2, 3, 4 (measured on 300 SciFact
#: documents' vectors, no qrels involved: 1.94x at 0.2, 3.04x at 0.5, 3.62x at 0.6)
THRESHOLDS = (0.21, 0.49, 0.62)


@dataclass
class FrontierConfig(EvalConfig):
    """An :class:`EvalConfig` whose systems are an explicit list of (factory, options)."""

    entries: tuple = ()

    def plan(self):  # noqa: D102
        out, skipped = [], []
        for name, options in self.entries:
            try:
                out += get_system(name)(**options)
            except SystemUnavailable as e:
                skipped.append({"system": name, "reason": str(e)})
        return out, skipped


def entries(params: SearchParams, plaid: bool, fast_plaid: bool, quick: bool) -> list[tuple[str, dict]]:
    """The systems of one frontier run (``quick``: the default and its oracle only, for checks)."""
    if quick:
        return [
            ("pooledir", {"indexes": ["flat"], "pool_factors": [1, 2], "params": params}),
            ("pooledir", {"indexes": ["ivfpq"], "pool_factors": [2, 3], "params": params}),
            ("pooledir", {"indexes": ["ivfpq"], "pool_factors": [2], "refine": [True], "params": params}),
        ]
    own = [
        ("pooledir", {"indexes": ["flat"], "pool_factors": [1, 2, 3], "params": params}),
        ("pooledir", {"indexes": ["ivfpq"], "pool_factors": [1, 2, 3, 4], "params": params}),
    ]
    own += [
        ("pooledir", {"indexes": ["ivfpq"], "pool_factors": [2, 3], "pq_ms": [32], "params": params}),
        ("pooledir", {"indexes": ["ivfpq"], "pool_factors": [2, 3], "refine": [True], "params": params}),
        ("pooledir", {"indexes": ["flat"], "pool_factors": [], "pool_thresholds": THRESHOLDS[:2], "params": params}),
        ("pooledir", {"indexes": ["ivfpq"], "pool_factors": [], "pool_thresholds": THRESHOLDS, "params": params}),
    ]
    if plaid:
        own += [("plaid", {"nbits": [2], "pool_factors": [1, 2, 3]}), ("plaid", {"nbits": [4], "pool_factors": [2]})]
    if fast_plaid:
        own += [("fast-plaid", {"nbits": [2, 4], "pool_factors": [1, 2, 3]})]
    return own


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--corpus-sample", type=int)
    ap.add_argument("--latency-queries", type=int, default=50)
    ap.add_argument("--plaid", action="store_true", help="colbert-ai's PLAID on the same (pooled) vectors")
    ap.add_argument("--fast-plaid", action="store_true", help="fast-plaid (skipped with its reason if absent)")
    ap.add_argument("--quick", action="store_true", help="checks: flat x1/x2, IVF-PQ x2/x3, x2 with refine")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    params = SearchParams(k=100)
    cfg = FrontierConfig(
        dataset=args.dataset,
        checkpoint=args.checkpoint,
        split=args.split,
        corpus_sample=args.corpus_sample,
        latency_queries=args.latency_queries,
        search=params,
        device="cpu",
        cache_dir=args.cache_dir,
        runs_dir=args.out.parent / "runs",
        entries=tuple(entries(params, args.plaid, args.fast_plaid, args.quick)),
    )
    result = evaluate(cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown_table([result]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
