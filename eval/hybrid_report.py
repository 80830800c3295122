"""Tables and a plot of the hybrid checks: nDCG@10 per mode and dataset, the targets met or missed.

    python eval/hybrid_report.py eval/results/hybrid_test/*.json --out eval/results/hybrid_test/report.md

Reads ``eval beir --modes dense,lexical,hybrid --compare bm25s`` results; writes a markdown table
(nDCG@10, Recall@100, p50 latency) and ``hybrid_ndcg.png`` beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def lanes(result: dict) -> dict[str, dict]:
    """The runs of one result by lane: dense, lexical, hybrid (the default fusion), bm25s-<method>."""
    out: dict[str, dict] = {}
    for r in result["runs"]:
        if r["system"] == "bm25s":
            out["bm25s-" + r["index"].split()[0]] = r
        elif r["mode"] == "hybrid" and "hybrid" in out:
            out.setdefault("hybrid-" + r["fusion"]["method"], r)  # the first hybrid row is the default setting
        else:
            out[r["mode"]] = r
    return out


def table(results: list[dict]) -> tuple[str, dict]:
    head = (
        "| dataset | docs | queries | dense | lexical | hybrid | hybrid - best lane | RRF w0.8 d100 "
        "| bm25s (FTS5 settings) "
        "| lexical - bm25s | bm25s lucene | R@100 dense / lexical / hybrid | p50 ms dense / lexical / hybrid |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows, wins, worst, bm25_gap = [], 0, 0.0, 0.0
    for res in sorted(results, key=lambda r: r["dataset"]):
        ln = lanes(res)
        nd = {k: v["ndcg@10"] for k, v in ln.items()}
        margin = nd["hybrid"] - max(nd["dense"], nd["lexical"])
        gap = nd["lexical"] - nd.get("bm25s-robertson", float("nan"))
        wins += margin >= 0
        worst = min(worst, margin)
        bm25_gap = max(bm25_gap, abs(gap))
        rec = " / ".join(f"{ln[m]['recall@100']:.3f}" for m in ("dense", "lexical", "hybrid"))
        lat = " / ".join(f"{ln[m]['latency_ms_p50']:.1f}" for m in ("dense", "lexical", "hybrid"))
        rows.append(
            f"| {res['dataset']} | {res['documents']} | {res['queries']} | {nd['dense']:.4f} | {nd['lexical']:.4f} "
            f"| **{nd['hybrid']:.4f}** | {100 * margin:+.2f} pt | {nd.get('hybrid-rrf', float('nan')):.4f} "
            f"| {nd.get('bm25s-robertson', float('nan')):.4f} "
            f"| {100 * gap:+.2f} pt | {nd.get('bm25s-lucene', float('nan')):.4f} | {rec} | {lat} |"
        )
    summary = {"datasets": len(results), "hybrid_at_least_best": wins, "worst_margin_pt": 100 * worst}
    summary["max_abs_lexical_minus_bm25s_pt"] = 100 * bm25_gap
    return head + "\n".join(rows) + "\n", summary


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    results = sorted(results, key=lambda r: r["dataset"])
    modes = ["dense", "lexical", "hybrid", "bm25s-robertson"]
    x = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, m in enumerate(modes):
        ax.bar(x + (i - 1.5) * 0.2, [lanes(r).get(m, {}).get("ndcg@10", 0) for r in results], 0.2, label=m)
    ax.set_xticks(x, [r["dataset"] for r in results], rotation=20)
    ax.set(ylabel="nDCG@10", title="Dense, lexical (FTS5 BM25) and hybrid search, BEIR test qrels")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    results = [json.loads(p.read_text()) for p in a.results]
    text, summary = table(results)
    a.out.write_text(text + "\n```\n" + json.dumps(summary, indent=1) + "\n```\n")
    plot(results, a.out.parent / "hybrid_ndcg.png")
    print(text)
    print(summary)


if __name__ == "__main__":
    main()
