"""Tables and plots from evaluation JSON files (``pooledir eval report``)."""

from __future__ import annotations

import json
from pathlib import Path

from pooledir.errors import InputError


def load_results(paths: list[Path]) -> list[dict]:
    """Read evaluation JSON files, checking they look like ``pooledir eval beir`` output."""
    out = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{p}: cannot read results ({e})") from None
        if not isinstance(data, dict) or "runs" not in data or "dataset" not in data:
            raise InputError(f"{p}: not a pooledir evaluation file (no 'dataset'/'runs')")
        out.append(data)
    return out


#: how a peer system's name is printed (any other name is printed as it is)
DISPLAY_NAMES = {"plaid": "PLAID"}


def _label(run: dict, short: bool = False) -> str:
    """``pooledir ivfpq pool x2`` / ``PLAID nbits=2`` for tables; ``ivfpq x2`` / ``PLAID 2b`` for plots."""
    pf = run.get("pool_factor") or 1
    if run["system"] == "pooledir":
        return f"{run['index']} x{pf}" if short else f"pooledir {run['index']} pool x{pf}"
    name = DISPLAY_NAMES.get(run["system"], run["system"])
    if run.get("nbits") is not None:
        name += f" {run['nbits']}b" if short else f" nbits={run['nbits']}"
    if pf > 1:
        name += f" x{pf}" if short else f" pool x{pf}"
    return name


def markdown_table(results: list[dict]) -> str:
    """One row per run, per dataset, with quality relative to the unpooled flat run."""
    lines = []
    for res in results:
        base = next(
            (r for r in res["runs"] if r["system"] == "pooledir" and r["index"] == "flat" and r["pool_factor"] == 1),
            None,
        )
        m = res.get("machine", {})
        lines += [
            f"### {res['dataset']} ({res['documents']} documents, {res['queries']} queries; "
            f"{m.get('cpu')}, GPU: {m.get('gpu') or 'none'})",
            "",
            "| system | vectors | index MB | nDCG@10 | vs flat x1 | Recall@100 | p50 ms | p95 ms | QPS | pool s "
            "| build s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in res["runs"]:
            rel = f"{r['ndcg@10'] / base['ndcg@10']:.1%}" if base and base["ndcg@10"] else "-"
            lines.append(
                f"| {_label(r)} | {r['vectors']:,} | {r['index_bytes'] / 1e6:.1f} | {r['ndcg@10']:.4f} | {rel} | "
                f"{r['recall@100']:.4f} | {r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} | {r['qps']:.1f} | "
                f"{r['pool_s'] or 0:.1f} | {r['build_s']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plots(results: list[dict], out_dir: Path) -> list[Path]:
    """nDCG@10 vs pool factor, nDCG@10 vs index bytes (with PLAID), latency vs nDCG@10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for res in results:
        for backend in ("flat", "ivfpq"):
            rs = sorted(
                (r for r in res["runs"] if r["system"] == "pooledir" and r["index"] == backend),
                key=lambda r: r["pool_factor"],
            )
            if rs:
                ax.plot(
                    [r["pool_factor"] for r in rs],
                    [r["ndcg@10"] for r in rs],
                    marker="o",
                    label=f"{res['dataset']} {backend}",
                )
    ax.set(xlabel="pool factor", ylabel="nDCG@10", title="Quality vs pool factor")
    ax.set_xticks(sorted({r["pool_factor"] for res in results for r in res["runs"]}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out_dir / "ndcg_vs_pool_factor.png"))

    for name, x, xlabel, logx in (
        ("ndcg_vs_bytes.png", "index_bytes", "index size on disk (MB)", True),
        ("latency_vs_ndcg.png", "latency_ms_p50", "p50 latency, one query (ms)", True),
    ):
        fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
        for ax, res in zip(axes[0], results):
            for r in res["runs"]:
                xv = r[x] / 1e6 if x == "index_bytes" else r[x]
                style = {"ivfpq": ("o", "tab:blue"), "flat": ("^", "tab:gray"), "plaid": ("s", "tab:red")}
                key = r["index"] if r["system"] == "pooledir" else r["system"]
                marker, colour = style.get(key, ("D", "tab:green"))  # any other peer
                ax.scatter(xv, r["ndcg@10"], marker=marker, color=colour)
                ax.annotate(
                    _label(r, short=True), (xv, r["ndcg@10"]), fontsize=7, xytext=(4, -3), textcoords="offset points"
                )
            if logx:
                from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

                ax.set_xscale("log")
                # plain numbers at 1, 2, 5 x 10^k: matplotlib's labelled minor ticks (2x10^1, 3x10^1...) overlap
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(xlabel=xlabel, ylabel="nDCG@10", title=f"{res['dataset']}: quality vs {xlabel.split(' (')[0]}")
            ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / name))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
