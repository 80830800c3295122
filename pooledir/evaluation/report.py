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


def merge_results(results: list[dict]) -> list[dict]:
    """Files of one experiment (same dataset, split, documents and queries) as one result, runs in file order.

    A later check (a new codec, a peer) then shares the table and plot panel of the rows it is compared
    with, as they were measured on the same vectors; a system measured in several files keeps its first row.
    """
    merged: dict[tuple, dict] = {}
    for res in results:
        key = (res["dataset"], res.get("split") or "test", res.get("documents"), res.get("queries"))
        if key not in merged:
            merged[key] = {**res, "runs": [], "skipped": []}
        into = merged[key]
        seen = {_label(r) for r in into["runs"]}
        into["runs"] += [r for r in res["runs"] if _label(r) not in seen]
        done = {r["system"] for r in into["runs"]}
        skipped = {}
        for s in into["skipped"] + list(res.get("skipped") or []):
            skipped.setdefault(s["system"], s)
        into["skipped"] = [s for name, s in skipped.items() if name not in done]
    return list(merged.values())


#: how a peer system's name is printed (any other name is printed as it is)
DISPLAY_NAMES = {"plaid": "PLAID", "fast-plaid": "fast-plaid"}


def _label(run: dict, short: bool = False) -> str:
    """``pooledir ivfpq pool x2`` / ``PLAID nbits=2`` for tables; ``ivfpq x2`` / ``PLAID 2b`` for plots."""
    pf = run.get("pool_factor") or 1
    if run["system"] == "pooledir":
        t = run.get("pool_threshold")
        pool = (f"t{t:g}" if short else f"pool <= {t:g}") if t is not None else (f"x{pf}" if short else f"pool x{pf}")
        codec = (f" m{run['pq_m']}" if run.get("pq_m") else "") + (" refine" if run.get("refine") else "")
        if run.get("mode") not in (None, "dense"):
            f = run.get("fusion")
            codec += f" {run['mode']}" + (f" {f['method']} w{f['weight']:g} d{f['depth']}" if f else "")
        return f"{run['index']} {pool}{codec}" if short else f"pooledir {run['index']} {pool}{codec}"
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
            "| system | vectors | index MB | B/token | nDCG@10 | vs flat x1 | Recall@100 | p50 ms | p95 ms | QPS "
            "| pool s | build s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in res["runs"]:
            rel = f"{r['ndcg@10'] / base['ndcg@10']:.1%}" if base and base["ndcg@10"] else "-"
            lines.append(
                f"| {_label(r)} | {r['vectors']:,} | {r['index_bytes'] / 1e6:.1f} | {_per_token(r)} | "
                f"{r['ndcg@10']:.4f} | {rel} | "
                f"{r['recall@100']:.4f} | {r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} | {r['qps']:.1f} | "
                f"{r['pool_s'] or 0:.1f} | {r['build_s']:.1f} |"
            )
        lines.append("")
        for s in res.get("skipped", []):
            lines += [f"- {DISPLAY_NAMES.get(s['system'], s['system'])} not run: {s['reason']}", ""]
    return "\n".join(lines)


def _per_token(run: dict) -> str:
    v = run.get("bytes_per_token")
    return "-" if v is None else f"{v:.1f}"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (fewer bytes, higher quality), by bytes."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plots(results: list[dict], out_dir: Path) -> list[Path]:
    """nDCG@10 vs pool factor, vs index bytes, vs bytes per original token (Pareto), latency vs nDCG@10."""
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
    with_unit = [res for res in results if any(r.get("bytes_per_token") for r in res["runs"])]
    if with_unit:
        written.append(_pareto_plot(plt, with_unit, out_dir / "ndcg_vs_bytes_per_token.png"))
    return written


#: marker and colour per kind of run in the Pareto plot
STYLES = {
    "ivfpq": ("o", "tab:blue"),
    "ivfpq refine": ("P", "tab:purple"),
    "ivfpq adaptive": ("v", "tab:cyan"),
    "flat": ("^", "tab:gray"),
    "flat adaptive": ("<", "tab:olive"),
    "plaid": ("s", "tab:red"),
    "fast-plaid": ("D", "tab:orange"),
}


def _kind(run: dict) -> str:
    if run["system"] != "pooledir":
        return run["system"]
    if run.get("pool_threshold") is not None:
        return f"{run['index']} adaptive"
    return f"{run['index']} refine" if run.get("refine") else run["index"]


def _pareto_plot(plt, results: list[dict], path: Path) -> Path:
    """nDCG@10 against bytes a query needs per original (unpooled) token, one panel per dataset."""
    from matplotlib.lines import Line2D

    cols = min(3, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    for ax, res in zip(axes.flat, results):
        runs = [r for r in res["runs"] if r.get("bytes_per_token")]
        kinds = []
        for r in runs:
            kind = _kind(r)
            kinds.append(kind)
            marker, colour = STYLES.get(kind, ("X", "tab:green"))
            ax.scatter(r["bytes_per_token"], r["ndcg@10"], marker=marker, color=colour, s=30)
            ax.annotate(
                _label(r, short=True),
                (r["bytes_per_token"], r["ndcg@10"]),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
        for name, colour, style in (("pooledir", "tab:blue", "-"), ("plaid", "tab:red", "--")):
            pts = [(r["bytes_per_token"], r["ndcg@10"]) for r in runs if r["system"] == name]
            front = pareto_front(pts)
            if len(front) > 1:
                ax.plot(*zip(*front), linestyle=style, color=colour, alpha=0.5, linewidth=1)
        exact = next((r for r in runs if _kind(r) == "flat" and r.get("pool_factor") == 1), None)
        if exact:  # the quality target: 99% of exact unpooled search
            ax.axhline(0.99 * exact["ndcg@10"], color="black", linestyle=":", linewidth=0.8)
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        split = res.get("split", "test")
        sample = f", sample {res['documents']} docs" if res.get("corpus_sample") else ""
        ax.set(
            xlabel="bytes a query needs per original token (text apart)",
            ylabel=f"nDCG@10 ({split})",
            title=f"{res['dataset']} ({split}{sample})",
        )
        ax.grid(alpha=0.3)
        legend = [
            Line2D([], [], marker=STYLES[k][0], color=STYLES[k][1], linestyle="", label=k) for k in STYLES if k in kinds
        ]
        legend += [Line2D([], [], color="tab:blue", alpha=0.5, label="pooledir Pareto front")]
        if exact:
            legend += [Line2D([], [], color="black", linestyle=":", linewidth=0.8, label="99% of flat x1")]
        if any(r["system"] == "plaid" for r in runs):
            legend += [Line2D([], [], color="tab:red", linestyle="--", alpha=0.5, label="PLAID Pareto front")]
        ax.legend(handles=legend, fontsize=7, loc="lower right")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
