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


def entries(
    params: SearchParams, plaid: bool, fast_plaid: bool, quick: bool, codec: bool = False, pareto: bool = False
) -> list[tuple[str, dict]]:
    """The systems of one frontier run, most needed first (``quick``: checks of the defaults only)."""

    def own(index: str, pool_factor: int | None = None, threshold: float | None = None, **codec) -> tuple:
        by = (
            {"pool_factors": [pool_factor]}
            if threshold is None
            else {"pool_factors": [], "pool_thresholds": [threshold]}
        )
        return ("pooledir", {"indexes": [index], "params": params, **by, **codec})

    if pareto:  # the rows the Pareto plot lacked at the pq_m 64 default: peers at more bytes, pooledir at fewer
        return [
            own("ivfpq", 2),
            ("plaid", {"nbits": [4], "pool_factors": [2]}),
            own("ivfpq", 3),
            ("plaid", {"nbits": [2], "pool_factors": [3]}),
            ("plaid", {"nbits": [2, 4], "pool_factors": [1]}),
        ]
    if codec:  # the default codec's choice (tuning qrels): PQ sub-quantizers at pool x2, flat as the references
        return [own("flat", 1), own("ivfpq", 2, pq_ms=[16]), own("ivfpq", 2, pq_ms=[32]), own("flat", 2)]
    if quick:  # checks of the defaults, the previous default codec (pq_m 16) beside them
        return [
            own("flat", 1),
            own("ivfpq", 2),
            own("flat", 2),
            own("ivfpq", 2, pq_ms=[16]),
            own("ivfpq", 3),
            own("ivfpq", 2, refine=[True]),
        ]
    out = [own("flat", 1), own("ivfpq", 2), own("flat", 2), own("ivfpq", 2, refine=[True]), own("ivfpq", 2, pq_ms=[32])]
    out += [("plaid", {"nbits": [2], "pool_factors": [2]})] if plaid else []
    out += [("fast-plaid", {"nbits": [2, 4], "pool_factors": [1, 2, 3]})] if fast_plaid else []
    out += [own("ivfpq", threshold=THRESHOLDS[0]), own("ivfpq", 3)]
    out += [("plaid", {"nbits": [2], "pool_factors": [3]})] if plaid else []
    out += [own("ivfpq", threshold=THRESHOLDS[1]), own("flat", threshold=THRESHOLDS[0]), own("ivfpq", 3, refine=[True])]
    out += [("plaid", {"nbits": [4], "pool_factors": [2]})] if plaid else []
    out += [own("ivfpq", 4), own("ivfpq", threshold=THRESHOLDS[2]), own("ivfpq", 3, pq_ms=[32]), own("ivfpq", 1)]
    out += [("plaid", {"nbits": [2], "pool_factors": [1]})] if plaid else []
    return out


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--corpus-sample", type=int, help="judged documents plus a seeded sample up to N")
    ap.add_argument("--queries-sample", type=int, help="a seeded sample of N judged queries (before the corpus sample)")
    ap.add_argument("--latency-queries", type=int, default=50)
    ap.add_argument("--plaid", action="store_true", help="colbert-ai's PLAID on the same (pooled) vectors")
    ap.add_argument("--fast-plaid", action="store_true", help="fast-plaid (skipped with its reason if absent)")
    ap.add_argument("--quick", action="store_true", help="checks: flat x1/x2, IVF-PQ x2 (pq_m default, 16), x3, refine")
    ap.add_argument("--pareto", action="store_true", help="default x2/x3, PLAID nbits 4 x2, 2 x3, 2/4 x1")
    ap.add_argument("--fast-plaid-only", action="store_true", help="only fast-plaid: nbits 2/4 x2, nbits 2 x3, x1")
    ap.add_argument("--codec", action="store_true", help="the codec choice: flat x1/x2, IVF-PQ x2 at pq_m 16 and 32")
    ap.add_argument("--m32-only", action="store_true", help="only IVF-PQ x2 with pq_m 32 (a check of that codec)")
    ap.add_argument("--pq-m-only", type=int, help="only IVF-PQ x2 with this pq_m (a check of that codec)")
    ap.add_argument("--adaptive-only", choices=["ivfpq", "flat"], help="only this index at the x2-like threshold")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/pooledir-eval"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    params = SearchParams(k=100)
    result: dict = {}
    # one system at a time (the encoding is cached), the JSON rewritten after each: a stopped run keeps its rows
    chosen = entries(params, args.plaid, args.fast_plaid, args.quick, args.codec, args.pareto)
    if args.fast_plaid_only:
        chosen = [
            ("fast-plaid", {"nbits": [2, 4], "pool_factors": [2]}),
            ("fast-plaid", {"nbits": [2], "pool_factors": [3, 1]}),
        ]
    if args.m32_only or args.pq_m_only:
        m = args.pq_m_only or 32
        chosen = [("pooledir", {"indexes": ["ivfpq"], "pool_factors": [2], "pq_ms": [m], "params": params})]
    if args.adaptive_only:
        chosen = [
            (
                "pooledir",
                {
                    "indexes": [args.adaptive_only],
                    "pool_factors": [],
                    "pool_thresholds": [THRESHOLDS[0]],
                    "params": params,
                },
            )
        ]
    for entry in chosen:
        cfg = FrontierConfig(
            dataset=args.dataset,
            checkpoint=args.checkpoint,
            split=args.split,
            corpus_sample=args.corpus_sample,
            queries_sample=args.queries_sample,
            latency_queries=args.latency_queries,
            search=params,
            device="cpu",
            cache_dir=args.cache_dir,
            runs_dir=args.out.parent / "runs" / args.out.name.split(".")[0],  # never over `eval beir`'s run files
            entries=(entry,),
        )
        one = evaluate(cfg)
        if not result:
            result = one
        else:
            result["runs"] += one["runs"]
            result["skipped"] += one["skipped"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.out)
    print(markdown_table([result]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
