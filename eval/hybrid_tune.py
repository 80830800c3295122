"""Sweep the hybrid fusion (method x dense weight x depth) offline, from a dense and a lexical run at depth 100.

    python eval/hybrid_tune.py --dense RUN.trec --lexical RUN.trec --qrels BEIR_DIR --split train --out OUT.json

Hybrid search fuses each lane's top ``depth`` with :func:`pooledir.fusion.fuse`; given both lanes' top 100
(the runs ``eval beir --modes dense,lexical`` writes), every setting with depth <= 100 is computed here exactly
as the library would (the dense lane searched at k=100 re-ranks 100 candidates, not 64: a depth under 64 may
differ slightly from a k=depth search). Use on tuning qrels only (train/dev); the rule that picks the
default is eval/results/hybrid_rule.md.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from pooledir.evaluation import load_qrels, score_run
from pooledir.fusion import Fusion, fuse

WEIGHTS = [round(0.1 * i, 1) for i in range(1, 10)]
DEPTHS = [20, 50, 100]


def read_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    """A TREC run as qid -> [(doc, score)], best first."""
    run: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        qid, _, doc, _rank, score, _tag = line.split()
        run[qid].append((doc, float(score)))
    return {q: sorted(hits, key=lambda h: -h[1]) for q, hits in run.items()}


def sweep(dense, lexical, qrels) -> list[dict]:
    rows = [
        {"setting": "dense"} | score_run({q: dict(h[:100]) for q, h in dense.items()}, qrels),
        {"setting": "lexical"} | score_run({q: dict(h[:100]) for q, h in lexical.items()}, qrels),
    ]
    for method in ("rrf", "convex"):
        for w in WEIGHTS:
            for depth in DEPTHS:
                f = Fusion(method=method, weight=w, depth=depth)
                run = {
                    q: dict(fuse(dense.get(q, [])[:depth], lexical.get(q, [])[:depth], f, 100))
                    for q in set(dense) | set(lexical)
                }
                setting = {"setting": "hybrid", "method": method, "weight": w, "depth": depth}
                rows.append(setting | score_run(run, qrels))
    return rows


def choose(sweeps: list[dict], tie: float = 0.002) -> dict:
    """eval/results/hybrid_rule.md, step 5: the largest minimum margin over the sets, then the tie-breaks."""
    margins: dict[tuple, list[float]] = defaultdict(list)
    for sw in sweeps:
        best_lane = max(r["ndcg@10"] for r in sw["rows"] if r["setting"] in ("dense", "lexical"))
        for r in sw["rows"]:
            if r["setting"] == "hybrid":
                margins[(r["method"], r["weight"], r["depth"])].append(r["ndcg@10"] - best_lane)
    scored = [(min(m), sum(m) / len(m), key) for key, m in margins.items() if len(m) == len(sweeps)]
    top = max(s[0] for s in scored)
    tied = [s for s in scored if s[0] >= top - tie]
    _, mean, (method, weight, depth) = max(
        tied, key=lambda s: (round(s[1], 6), s[2][0] == "rrf", -abs(s[2][1] - 0.5), -s[2][2])
    )
    return {
        "method": method,
        "weight": weight,
        "depth": depth,
        "min_margin": min(margins[(method, weight, depth)]),
        "mean_margin": mean,
        "margins": dict(zip([f"{sw['dataset']}_{sw['split']}" for sw in sweeps], margins[(method, weight, depth)])),
        "tied_settings": len(tied),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", type=Path)
    ap.add_argument("--lexical", type=Path)
    ap.add_argument("--qrels", type=Path, help="BEIR folder")
    ap.add_argument("--split")
    ap.add_argument("--choose", type=Path, nargs="+", help="sweep files: apply the rule, write the choice to --out")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.choose:
        choice = choose([json.loads(p.read_text()) for p in a.choose])
        a.out.write_text(json.dumps(choice, indent=1))
        print(choice)
        return
    if a.split == "test":
        raise SystemExit("tune on train/dev qrels only")
    qrels = load_qrels(a.qrels, a.split)
    rows = sweep(read_run(a.dense), read_run(a.lexical), qrels)
    out = {"dataset": a.qrels.name, "split": a.split, "dense": str(a.dense), "lexical": str(a.lexical), "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    best = max((r for r in rows if r["setting"] == "hybrid"), key=lambda r: r["ndcg@10"])
    print(f"dense {rows[0]['ndcg@10']:.4f} lexical {rows[1]['ndcg@10']:.4f} best hybrid {best}")


if __name__ == "__main__":
    main()
