"""Tables and plots from evaluation JSON files (``pooledir eval report``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pooledir.errors import InputError


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
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


def merge_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Files of one experiment (same dataset, split, documents and queries) as one result, runs in file order.

    A later check (a new codec, a peer) then shares the table and plot panel of the rows it is compared
    with, as they were measured on the same vectors; a system measured in several files keeps its first row.
    """
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for res in results:
        key = (res["dataset"], res.get("split") or "test", res.get("documents"), res.get("queries"))
        if key not in merged:
            merged[key] = {**res, "runs": [], "skipped": []}
        into = merged[key]
        seen = {_label(r) for r in into["runs"]}
        into["runs"] += [r for r in res["runs"] if _label(r) not in seen]
        done = {r["system"] for r in into["runs"]}
        skipped: dict[str, Any] = {}
        for s in into["skipped"] + list(res.get("skipped") or []):
            skipped.setdefault(s["system"], s)
        into["skipped"] = [s for name, s in skipped.items() if name not in done]
    return list(merged.values())


#: how a peer system's name is printed (any other name is printed as it is)
DISPLAY_NAMES = {"plaid": "PLAID", "fast-plaid": "fast-plaid"}


def _label(run: dict[str, Any], short: bool = False) -> str:
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
    name: str = DISPLAY_NAMES.get(run["system"], run["system"])
    if run.get("nbits") is not None:
        name += f" {run['nbits']}b" if short else f" nbits={run['nbits']}"
    if pf > 1:
        name += f" x{pf}" if short else f" pool x{pf}"
    return name


def markdown_table(results: list[dict[str, Any]]) -> str:
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
            mb = None if r.get("index_bytes") is None else r["index_bytes"] / 1e6
            cells = [_label(r), _num(r.get("vectors"), ","), _num(mb, ".1f"), _per_token(r)]
            cells += [_num(r["ndcg@10"], ".4f"), rel, _num(r.get("recall@100"), ".4f")]
            cells += [_num(r.get(key), ".1f") for key in ("latency_ms_p50", "latency_ms_p95", "qps")]
            cells += [_num(r.get("pool_s") or 0, ".1f"), _num(r.get("build_s"), ".1f")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for s in res.get("skipped", []):
            lines += [f"- {DISPLAY_NAMES.get(s['system'], s['system'])} not run: {s['reason']}", ""]
    return "\n".join(lines)


def _num(v: float | int | None, spec: str) -> str:
    """``v`` formatted by ``spec``; "-" where a run has no such number (a lexical run has no vectors)."""
    return "-" if v is None else format(v, spec)


def _per_token(run: dict[str, Any]) -> str:
    v = run.get("bytes_per_token")
    return "-" if v is None else f"{v:.1f}"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (fewer bytes, higher quality), by bytes."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plots(results: list[dict[str, Any]], out_dir: Path) -> list[Path]:
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


def _kind(run: dict[str, Any]) -> str:
    if run["system"] != "pooledir":
        return str(run["system"])
    if run.get("pool_threshold") is not None:
        return f"{run['index']} adaptive"
    return f"{run['index']} refine" if run.get("refine") else run["index"]


def _pareto_plot(plt: Any, results: list[dict[str, Any]], path: Path) -> Path:
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


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# --- the documentation's results pages and the README's headline (issue 20) -------------------------------
#
# Every number on docs/results/*.md and in README.md's generated block comes from the committed
# eval/results/*.json through the functions below: nothing is copied by hand, and a test regenerates the
# pages and compares them with the committed ones.


@dataclass(frozen=True)
class ResultsPage:
    """One generated page: its file name, title, a sentence on what it holds and the JSON files it shows."""

    slug: str
    title: str
    about: str
    files: tuple[str, ...]
    #: harness files (``pooledir eval beir``) merged into the plots drawn under the page; none: no plots
    plot_files: tuple[str, ...] = ()
    #: a table computed from the files, shown above them (the page's verdict), or None
    summary: Callable[[Path], list[str]] | None = None


_CHECK_SETS = ("cranfield", "cisi", "med", "vaswani", "agentset-dbpedia-5k")

#: datasets of the format-3 checks (issue 21), and the files each has under eval/results/format3/
FORMAT3_SETS = ("scifact", "nfcorpus", "cranfield", "cisi", "med", "vaswani", "agentset-dbpedia-5k")
FORMAT3_KINDS = ("code3", "default", "exact", "peers", "plaid4", "peers_x3")
#: the runs of today's format-3 default (PQ32x6 since session 11, eval/results/code_rule.md); ``default`` holds
#: those of the default before it (PQ16x8, eval/results/format_rule.md), kept beside it
CURRENT = "code3"
#: datasets whose format-3 default also ran at pool x3 (``format3/<CURRENT or default>_x3_<dataset>.cpu.json``)
FORMAT3_X3_SETS: tuple[str, ...] = FORMAT3_SETS


def format3_files(kinds: tuple[str, ...] = FORMAT3_KINDS) -> tuple[str, ...]:
    """``format3/<kind>_<dataset>.cpu.json`` for every dataset and kind, and both defaults' pool-x3 runs."""
    files = [f"format3/{k}_{d}.cpu.json" for d in FORMAT3_SETS for k in kinds]
    return tuple(files + [f"format3/{k}_x3_{d}.cpu.json" for k in ("default", CURRENT) for d in FORMAT3_X3_SETS])


def _cell(run: dict[str, Any] | None) -> str:
    """nDCG@10 / bytes per original token / Recall@100 of one run ("not run" where there is none)."""
    if run is None:
        return "not run"
    return f"{run['ndcg@10']:.4f} / {run['bytes_per_token']:.1f} / {run['recall@100']:.3f}"


def format3_more(results_dir: Path) -> list[str]:
    """Per dataset: PLAID nbits=4 at pool x2, and every system at pool x3 (the issue's other peer settings)."""
    rows = []
    x3 = _DEFAULT3 | {"pool_factor": 3}  # the default's run at pool x3
    for d in FORMAT3_SETS:
        before, ours = (
            (_run(results_dir, f"format3/{k}_x3_{d}.cpu.json", **x3) for k in ("default", CURRENT))
            if d in FORMAT3_X3_SETS
            else (None, None)
        )
        rows.append(
            [
                d,
                _cell(_run(results_dir, f"format3/plaid4_{d}.cpu.json", system="plaid", nbits=4, pool_factor=2)),
                _cell(ours),
                _cell(before),
                _cell(_run(results_dir, f"format3/peers_x3_{d}.cpu.json", system="plaid", nbits=2, pool_factor=3)),
                _cell(_run(results_dir, f"format3/peers_x3_{d}.cpu.json", system="fast-plaid", nbits=2, pool_factor=3)),
            ]
        )
    header = [
        "dataset (test qrels)",
        "PLAID nbits=4, pool x2",
        "default (PQ32x6), pool x3",
        "PQ16x8 default before s11, pool x3",
        "PLAID nbits=2, pool x3",
        "fast-plaid nbits=2, pool x3",
    ]
    lines = ["## PLAID nbits 4, and pool x3", "", "Each cell: nDCG@10 / B per original token / Recall@100.", ""]
    return lines + _table(header, rows)


def format3_summary(results_dir: Path) -> list[str]:
    """Per dataset: the format-3 default against exact unpooled search, PLAID and fast-plaid (nbits 2), PQ16x8."""
    rows = []
    for d in FORMAT3_SETS:
        ours = _run(results_dir, f"format3/{CURRENT}_{d}.cpu.json", **_DEFAULT3)
        before = _run(results_dir, f"format3/default_{d}.cpu.json", **_DEFAULT3)
        exact = _run(results_dir, f"format3/exact_{d}.cpu.json", **_EXACT)
        plaid = _run(results_dir, f"format3/peers_{d}.cpu.json", **_PLAID2)
        fast = _run(results_dir, f"format3/peers_{d}.cpu.json", system="fast-plaid", nbits=2, pool_factor=2)
        share = ours["ndcg@10"] / exact["ndcg@10"]
        both = ours["bytes_per_token"] <= plaid["bytes_per_token"] and ours["ndcg@10"] >= plaid["ndcg@10"]
        rows.append(
            [
                d,
                f"{ours['ndcg@10']:.4f} ({share:.1%})",
                f"{plaid['ndcg@10']:.4f}",
                f"{fast['ndcg@10']:.4f}",
                f"{ours['bytes_per_token']:.1f} / {plaid['bytes_per_token']:.1f} / {fast['bytes_per_token']:.1f}",
                f"{ours['bytes_per_token'] / plaid['bytes_per_token']:.2f}",
                f"{ours['recall@100']:.3f} / {plaid['recall@100']:.3f}",
                "yes" if both else "no",
                f"{before['ndcg@10']:.4f} ({before['ndcg@10'] / exact['ndcg@10']:.1%}) / "
                f"{before['bytes_per_token']:.1f} / {before['recall@100']:.3f}",
            ]
        )
    header = [
        "dataset (test qrels, pool x2)",
        "default nDCG@10 (share of exact unpooled)",
        "PLAID nbits=2",
        "fast-plaid nbits=2",
        "B/original token: default / PLAID / fast-plaid",
        "default / PLAID bytes",
        "Recall@100: default / PLAID",
        "PLAID beaten on both axes",
        "PQ16x8 (the default before s11): nDCG@10 (share) / B per token / Recall@100",
    ]
    lines = ["## Summary", ""] + _table(header, rows) + [""] + format3_more(results_dir)
    return [ln.replace("\\|", "|") for ln in lines]


#: the results pages, in the order of the site's navigation
RESULTS_PAGES = (
    ResultsPage(
        "format3",
        "Format 3 against PLAID and fast-plaid on every dataset",
        "The default index (format 3: PLAID's list-count rule, PQ32x6 residual codes stored document-major, uint32 "
        "inverted rows, pool x2; rules in `eval/results/format_rule.md` and `eval/results/code_rule.md`, whose "
        "s11 rule replaced PQ16x8 codes) on the test qrels of every dataset, "
        "beside exact unpooled search and the peers fed the same cached, pooled vectors. The default, the "
        "exact runs and the peers ran in separate processes over the same embedding cache.",
        format3_files(),
        format3_files(),
        format3_summary,
    ),
    ResultsPage(
        "beir",
        "BEIR sweeps: pool factors, backends, PLAID",
        "The first sweeps (`make eval`): every pool factor on both backends beside colbert-ai's PLAID, "
        "SciFact and NFCorpus test qrels. The IVF-PQ rows are the codec of the time (pq_m 16).",
        ("scifact.cpu.json", "nfcorpus.cpu.json"),
        ("scifact.cpu.json", "nfcorpus.cpu.json"),
    ),
    ResultsPage(
        "frontier",
        "Frontier on identical vectors: codecs, tuning sets, checks, peers",
        "Every system on the same cached, pooled vectors. Tuning sets first (SciFact train, NFCorpus dev), "
        "then the checks on test qrels at the default codec (pq_m 64) and before it, then the peers.",
        (
            "tune_scifact_train300.cpu.json",
            "tune_nfcorpus_dev120.cpu.json",
            "frontier_scifact_train1500.cpu.json",
            "pareto_scifact_train1500.cpu.json",
            "fastplaid_scifact_train1500.cpu.json",
            *(f"check_{d}_m64.cpu.json" for d in _CHECK_SETS + ("scifact",)),
            "check_scifact_full.cpu.json",
            "check_nfcorpus_full.cpu.json",
            "check_cranfield.cpu.json",
            "check_cisi.cpu.json",
            "check_med.cpu.json",
            "check_agentset-dbpedia-5k_sample1500.cpu.json",
            "check_vaswani_codec.cpu.json",
            *(f"check_{d}_m32.cpu.json" for d in ("cranfield", "cisi", "med")),
            "check_agentset-dbpedia-5k_sample1500_m32.cpu.json",
            "check_med_adaptive_flat.cpu.json",
            "check_med_adaptive_ivfpq.cpu.json",
            "peers_scifact_test.cpu.json",
            "peers_nfcorpus_test.cpu.json",
            "latency_quiet_scifact.cpu.json",
            "latency_quiet_scifact_m64.cpu.json",
            "check_k.cpu.json",
        ),
        (
            "frontier_scifact_train1500.cpu.json",
            "pareto_scifact_train1500.cpu.json",
            "fastplaid_scifact_train1500.cpu.json",
            "tune_nfcorpus_dev120.cpu.json",
            "tune_scifact_train300.cpu.json",
            "check_scifact_full.cpu.json",
            "check_scifact_m64.cpu.json",
            "check_nfcorpus_full.cpu.json",
            *(f"check_{d}.cpu.json" for d in ("cranfield", "cisi", "med")),
            "check_agentset-dbpedia-5k_sample1500.cpu.json",
            "check_vaswani_codec.cpu.json",
            *(f"check_{d}_m64.cpu.json" for d in _CHECK_SETS),
        ),
    ),
    ResultsPage(
        "tuning",
        "Tuning: search knobs, pooling and codec probes",
        "What chose the defaults, on train/dev qrels: nprobe and rerank depth, the search grid, the pooling "
        "variants and encoder conventions, and the codec probe (exhaustive MaxSim over decoded vectors).",
        (
            *(f"nprobe/{d}_nprobe{n}.cpu.json" for d in ("nfcorpus_dev120", "scifact_train300") for n in (32, 16, 8)),
            *(f"rerank/tune_nfcorpus_dev120_rerank{n}.cpu.json" for n in (32, 128, 256)),
            "tune_scifact_train.json",
            "pooling_variants_scifact_train.json",
            "conventions_scifact_train.json",
            "codec_probe_nfcorpus_dev120.cpu.json",
            "codec_probe_nfcorpus_dev120_part2.cpu.json",
            "codec_probe_scifact_train300.cpu.json",
            *(
                f"format_study/{f}.cpu.json"  # issue 21: list count rule x residual code in format-3 bytes
                for f in (
                    "nfcorpus_dev120_full_corpus",
                    "nfcorpus_dev120_full_corpus_plaid",
                    "nfcorpus_dev120_full_corpus_x3",
                    "scifact_train300_flat",
                    "code_scifact_train_all",  # eval/results/code_rule.md: 20-24 B codes, all tuning queries
                    "code_nfcorpus_dev_all",
                    "code_confirm_nfcorpus_dev_PQ16x8",
                    "code_confirm_scifact_train_PQ16x8",
                    "assign_nfcorpus_dev_PQ16x8",  # code_rule.md: 6,721 vs 8,192 lists x L2 vs spherical/IP
                    "assign_nfcorpus_dev_PQ16x8_seed7",
                    "assign_confirm_nfcorpus_dev_PQ16x8",  # the engine with L2 centroids (experiment, reverted)
                    "gap_nfcorpus_dev_seed1234",  # code_rule.md (s10): the PQ's training residuals, in/out of sample
                    "gap_split_nfcorpus_dev_seed1234",
                    "gap_nfcorpus_dev_seed7",
                    "gap_split_nfcorpus_dev_seed7",
                    "gap_engine_faiss_nfcorpus_dev",  # the engine's own quantizer, 2 draws; faiss k-means
                    "gap_confirm_nfcorpus_dev_PQ16x8",  # the engine's index at today's code, with diagnostics
                    "gap_split_confirm_nfcorpus_dev_PQ16x8",  # the engine with factor 3 (experiment, reverted)
                    "gap_codestudy_nfcorpus_dev",  # the code study's 98.10% row re-run: another PQ draw
                    "code3_nfcorpus_dev",  # code_rule.md (s11): the engine at PQ16x8, PQ16x10, PQ32x6
                    "code3_scifact_train",
                    "code3_speed_nfcorpus_dev",  # code_rule.md (s11 addendum): the speed guard, interleaved
                    "code3_speed_scifact_train",
                )
            ),
            *(
                f"pooling_probe/{d}_{v}.cpu.json"
                for d in ("nfcorpus_dev120", "scifact_train300")
                for v in ("protect4", "adaptive021")
            ),
            # issue 21: pq3 search lanes (eval/results/search_rule.md)
            *(f"search_study/{f}.cpu.json" for f in ("nfcorpus_dev120", "scifact_train150")),
            # centroid-score pruning (search_rule.md, 10:44 UTC)
            *(f"search_study/{f}_pruning.cpu.json" for f in ("nfcorpus_dev120", "scifact_train150")),
            # the k <= 10 depth (eval/results/depth_rule.md, session 13)
            *(f"search_study/{f}_depth.cpu.json" for f in ("nfcorpus_dev", "scifact_train")),
            *(f"search_study/{f}_depth_deeper.cpu.json" for f in ("nfcorpus_dev", "scifact_train")),  # x2, x4
        ),
    ),
    ResultsPage(
        "hybrid",
        "Hybrid search: the lexical lane and fusion",
        "The FTS5 lexical lane (BM25) beside bm25s on the same tokens, and hybrid fusion with the dense lane: "
        "the tuning sweeps that chose the defaults (SciFact train, NFCorpus dev; rule in "
        "`eval/results/hybrid_rule.md`), the checks on the test qrels of every dataset, and latency on SciFact.",
        (
            "hybrid_tune/scifact_train.cpu.json",
            "hybrid_tune/nfcorpus_dev.cpu.json",
            "hybrid_tune/sweep_scifact_train.json",
            "hybrid_tune/sweep_nfcorpus_dev.json",
            "hybrid_tune/choice.json",
            "hybrid_tune/choice_rrf_only.json",
            *(f"hybrid_test/{d}.cpu.json" for d in ("scifact", "nfcorpus") + _CHECK_SETS),
            "hybrid_bench_scifact.cpu.json",
            "hybrid_bench_scifact_run2.cpu.json",
            "hybrid_bench_scifact_run3.cpu.json",
            "hybrid_bench_scifact_run4.cpu.json",
        ),
    ),
    ResultsPage(
        "scale",
        "Scale: the segment engine",
        "Synthetic vectors from 10^5 to 5·10^7 (`eval/bench_scale.py`), where a build's time goes "
        "(`eval/bench_coarse.py`), and SciFact on identical vectors, single-file design against segments.",
        (
            "bench_scale.cpu.json",
            "bench_scale_format3.cpu.json",  # the format-3 defaults (pq3, PLAID's list rule), issue 21
            "bench_scale_code3.cpu.json",  # the PQ32x6 default: 10^5 and 10^6 (s11), 10^7 and 5·10^7 (s12)
            "bench_scale_lists.cpu.json",  # train_sample 1,277,952: lists past the 6,721 cap (s12, opt-in)
            "bench_scale_stream.cpu.json",  # the default with streamed pq3 merges, peak anonymous memory (s12)
            "bench_scale_stream_before.cpu.json",  # 10^7 at the engine before them, measured the same way
            "bench_scale_assign.cpu.json",  # 16 MB assignment blocks (s13): 10^6, 10^7 and 5·10^7
            "bench_scale_assign_before.cpu.json",  # the engine before them, the runs interleaved with those
            "bench_scale_search100.cpu.json",  # the same engine, search p50 over 100 queries instead of 20
            "scale_check/scifact_train_pf1_capped_lists.cpu.json",  # scale_rule.md's check: 6,721 lists
            "scale_check/scifact_train_pf1_grown_lists.cpu.json",  # and 16,384 two-level lists
            "quantizer_fp16_nfcorpus_dev120.cpu.json",  # float16 coarse centroids: bytes, nDCG@10, assignment
            "bench_scale.before_perf.cpu.json",
            "bench_coarse.cpu.json",
            "check_segments_scifact.cpu.json",
        ),
    ),
    ResultsPage(
        "speed",
        "Speed: encoding, HTTP load, Ray",
        "Query and document encoding backends, single-query latency against PLAID in one process, the HTTP "
        "service under load, and Ray on a local cluster.",
        (
            "query_encoding_scifact_full_1thread.cpu.json",
            "query_encoding_scifact_full.cpu.json",
            "query_encoding_scifact1k.cpu.json",
            "query_backend/scifact100.cpu.json",
            "query_backend/scifact100_run2.cpu.json",
            "query_backend/scifact300.cpu.json",  # the rule of query_backend/rule.md
            "latency/scifact_test.cpu.json",  # pooledir's default vs PLAID nbits 2, one process, encoding included
            "latency/scifact_test_run2.cpu.json",
            "latency/scifact_test_f26bb5e.cpu.json",  # the same benchmark at the code before the lane's speed-up
            # second speed pass (pruning, padding rows cut): this branch and 259f252, alternated run by run
            *(f"latency/scifact_test_pass2_run{i}.cpu.json" for i in (1, 2, 3, 4)),
            *(f"latency/scifact_test_259f252_run{i}.cpu.json" for i in (1, 2, 3)),
            # PQ16x8 with pruning opt-in (since 7df61a5), then the PQ32x6 default: four runs back to back each
            *(f"latency/scifact_test_s10_run{i}.cpu.json" for i in (1, 2, 3, 4)),
            *(f"latency/scifact_test_s11_run{i}.cpu.json" for i in (1, 2, 3, 4)),  # at the PQ32x6 default
            *(f"latency/scifact_test_s13_run{i}.cpu.json" for i in (1, 2, 3, 4)),  # s13's exact-path speed-ups
            "doc_encoding_scifact192.cpu.json",
            "doc_encoding_scifact200.cpu.json",
            "load_scifact_m64.cpu.json",
            "load_scifact_m16.cpu.json",
            "load_scifact_cpu.json",
            "distributed_scifact_cpu.json",
            "distributed_scifact_cpu.own-quantizers.json",
        ),
    ),
)

PROVENANCE = "provenance.json"


def _fmt(v: Any) -> str:
    """A cell: integers with thousands separators, floats to a precision that suits their size."""
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 100:
            return f"{v:,.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.4f}" if a >= 1e-3 else f"{v:.2e}"
    if isinstance(v, list) and all(_is_scalar(x) and not isinstance(x, list) for x in v):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, (list, dict)):
        v = json.dumps(v, separators=(", ", ": "))
    return str(v).replace("|", "\\|").replace("\n", " ")


def _is_scalar(v: Any) -> bool:
    return not isinstance(v, (dict, list)) or (isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v))


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows] + [""]


def _records_table(records: dict[str, dict[str, Any]] | list[dict[str, Any]], first: str | None) -> list[str]:
    """Rows of dicts as one table (nested values printed as compact JSON), keys in first-seen order."""
    items = list(records.items()) if isinstance(records, dict) else [(None, r) for r in records]
    cols = list(dict.fromkeys(k for _, r in items for k in r))
    named = first is not None
    header = ([first] if first is not None else []) + cols
    return _table(header, [([name] if named else []) + [r.get(c) for c in cols] for name, r in items])


def render_value(data: dict[str, Any], level: int = 3) -> list[str]:
    """Any result JSON as Markdown: scalar fields in one table, records and lists of records as tables."""
    h = "#" * min(level, 6)
    scalars = {k: v for k, v in data.items() if _is_scalar(v) and k != "machine"}
    records = {k: v for k, v in data.items() if isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values())}
    lines = _table(["field", "value"], [[k, v] for k, v in scalars.items()]) if scalars else []
    if len(records) > 1:
        lines += _records_table(records, "")
    for key, value in data.items():
        if key == "machine" or key in scalars or (len(records) > 1 and key in records):
            continue
        lines += [f"{h} {key}", ""]
        if isinstance(value, list):
            lines += _records_table([v if isinstance(v, dict) else {"value": v} for v in value], None)
        else:
            lines += render_value(value, level + 1)
    return lines


def _is_harness(data: dict[str, Any]) -> bool:
    return (
        isinstance(data, dict)
        and "dataset" in data
        and isinstance(data.get("runs"), list)
        and all("ndcg@10" in r for r in data["runs"])
    )


def _machine(data: dict[str, Any]) -> str:
    m = data.get("machine")
    if isinstance(m, dict):
        return f"{m.get('cpu')}, GPU: {m.get('gpu') or 'none'}"
    return str(m) if m else "not recorded in the file"


def _machine_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The file's ``machine`` object, or {} where it records none (or only a string)."""
    m = data.get("machine")
    return m if isinstance(m, dict) else {}


def _load(data: dict[str, Any], prov: dict[str, Any]) -> str:
    """The 1-minute load average: the file's own fields where it records them, else provenance.json's."""
    own = sorted({k for k in _walk_keys(data) if "load_avg" in k})
    machine = _machine_fields(data)
    for where in (data, machine):  # a file that records one load for the whole run
        if "load_avg_1min" in where and _is_scalar(where["load_avg_1min"]):
            return _fmt(where["load_avg_1min"])
    if own:
        return "recorded in the file (" + ", ".join(f"`{k}`" for k in own) + ")"
    return prov.get("load_avg_1min") or "not recorded"


def _walk_keys(v: Any) -> Iterator[str]:
    if isinstance(v, dict):
        for k, x in v.items():
            yield k
            yield from _walk_keys(x)
    elif isinstance(v, list):
        for x in v:
            yield from _walk_keys(x)


def _provenance_lines(name: str, data: dict[str, Any], prov: dict[str, Any]) -> list[str]:
    machine = _machine_fields(data)
    ran_at = data.get("commit") or machine.get("commit")  # where a result records the commit it ran at
    commits = sorted({str(r["commit"]) for r in data.get("runs", []) if isinstance(r, dict) and r.get("commit")})
    commit = (f"; ran at {ran_at}" if ran_at else "") + ("; rows at " + ", ".join(commits) if commits else "")
    return [
        f"- machine: {_machine(data)}; 1-minute load: {_load(data, prov)}",
        f"- commit: committed in {prov.get('committed_in', 'not recorded')}{commit}",
        f"- file: `eval/results/{name}`; regenerate: `{prov.get('command') or 'not recorded'}`",
        "",
    ]


def render_file(name: str, data: dict[str, Any], prov: dict[str, Any]) -> list[str]:
    """One result file's section: its provenance, then its tables."""
    lines = [f"## {name}", ""] + _provenance_lines(name, data, prov)
    if _is_harness(data):
        return lines + markdown_table([data]).splitlines() + [""]
    return lines + render_value(data)


def results_site(results_dir: Path, out_dir: Path, with_plots: bool = True) -> list[Path]:
    """Write ``out_dir/<page>.md`` for every :data:`RESULTS_PAGES` entry (and its plots under ``img/``)."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    prov = json.loads((results_dir / PROVENANCE).read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_write(out_dir / "index.md", _index_page(prov))]
    for page in RESULTS_PAGES:
        lines = [f"# {page.title}", "", page.about, "", _GENERATED_NOTE, ""]
        if page.summary is not None:
            lines += page.summary(results_dir)
        if page.plot_files:
            images = [f"img/{page.slug}/{n}" for n in _plot_names(page)]
            lines += [f"![{Path(i).stem.replace('_', ' ')}]({i})" for i in images] + [""]
            if with_plots:
                data = merge_results(load_results([results_dir / f for f in page.plot_files]))
                shown = set(_plot_names(page))
                for png in plots(data, out_dir / "img" / page.slug):
                    if png.name in shown:
                        written.append(png)
                    else:  # drawn by the same call, not on the page
                        png.unlink()
        for name in page.files:
            data = json.loads((results_dir / name).read_text())
            lines += render_file(name, data, prov.get(name, {}))
        written.append(_write(out_dir / f"{page.slug}.md", "\n".join(lines).rstrip() + "\n"))
    home = out_dir.parent / "index.md"  # the site's home page carries the README's headline block too
    if home.is_file() and README_BLOCK[0] in home.read_text():
        rewrite_readme(home, results_dir, f"{out_dir.name}/")
        written.append(home)
    return written


_GENERATED_NOTE = (
    '!!! note "Generated"\n    This page is written by `pooledir eval report --site docs/results` from the committed '
    "`eval/results/*.json`; edit the JSON (by re-running its command), never the page."
)


def _plot_names(page: ResultsPage) -> list[str]:
    if page.slug in ("frontier", "format3"):
        return ["ndcg_vs_bytes_per_token.png"]
    return ["ndcg_vs_pool_factor.png", "ndcg_vs_bytes.png", "latency_vs_ndcg.png"]


def _index_page(prov: dict[str, Any]) -> str:
    lines = ["# Results", "", _GENERATED_NOTE, ""]
    lines += [f"- [{p.title}]({p.slug}.md): {p.about}" for p in RESULTS_PAGES] + [""]
    lines += [
        "Every table names the machine and load it ran at and the commit its JSON was committed in "
        "(`eval/results/provenance.json` holds the load where the file does not, and the command that "
        "regenerates each file and its TREC runs; the `.trec` files themselves are not kept in git).",
        "",
        "All results so far ran on 2 CPU cores without a GPU, with the zero-shot MiniLM checkpoint "
        "(`pooledir convert-checkpoint --minilm`): they compare engines, pool factors and codecs on identical "
        "vectors, not the best quality a trained ColBERT model reaches.",
        "",
        f"{len(prov)} result files:",
        "",
    ]
    pages = {f: p.slug for p in RESULTS_PAGES for f in p.files}
    lines += _table(
        ["file", "page", "committed in"],
        [[f"`{f}`", f"[{pages[f]}]({pages[f]}.md)" if f in pages else "-", v["committed_in"]] for f, v in prov.items()],
    )
    return "\n".join(lines).rstrip() + "\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _run(results_dir: Path, name: str, **match: Any) -> dict[str, Any]:
    """The first run of a harness file whose fields equal ``match``."""
    runs: list[dict[str, Any]] = json.loads((Path(results_dir) / name).read_text())["runs"]
    for r in runs:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    raise InputError(f"{name}: no run with {match}")


_EXACT = {"system": "pooledir", "index": "flat", "pool_factor": 1}
_PLAID2 = {"system": "plaid", "nbits": 2, "pool_factor": 2}
_DEFAULT3 = {"system": "pooledir", "index": "ivfpq", "pool_factor": 2}


#: the bench_scale runs at the current engine and defaults whose largest row the README headline quotes
HEADLINE_SCALE = "bench_scale_assign.cpu.json"
#: the same-process latency runs (at the current search code and defaults) the README headline quotes
HEADLINE_LATENCY = tuple(f"latency/scifact_test_s13_run{i}.cpu.json" for i in range(1, 5))


def _headline_ndcg_rows(f3: Callable[..., dict[str, Any]]) -> list[tuple[str, str, str]]:
    """SciFact's and NFCorpus's nDCG@10: exact unpooled, the default and PLAID on the same pooled vectors."""
    rows = []
    for name, label in (("scifact", "SciFact"), ("nfcorpus", "NFCorpus")):
        exact, default = f3("exact", name, **_EXACT), f3(CURRENT, name, **_DEFAULT3)
        plaid = f3("peers", name, **_PLAID2)
        rows.append(
            (
                f"{label} test, nDCG@10 (MiniLM zero-shot)",
                f"exact unpooled {exact['ndcg@10']:.4f}; default (pool x2, format 3) {default['ndcg@10']:.4f}; "
                f"PLAID nbits=2 on the same pooled vectors {plaid['ndcg@10']:.4f}",
                "format3",
            )
        )
    return rows


def _headline_latency_row(d: Path, fast: dict[str, Any]) -> tuple[str, str, str]:
    """The README's latency row: the :data:`HEADLINE_LATENCY` runs, with the load they ran at."""
    runs = [json.loads((d / f).read_text()) for f in HEADLINE_LATENCY]

    def span(values: list[float], fmt: str) -> str:
        return f"{min(values):{fmt}} to {max(values):{fmt}}"

    loads = [r[k] for r in runs for k in ("load_avg_1min_start", "load_avg_1min_end")]
    return (
        f"single-query p50 latency, encoding included (SciFact test, same vectors, pooledir and PLAID in one "
        f"process, {len(runs)} runs, 2 cores at 1-minute load {span(loads, '.1f')})",
        f"default {span([r['latency']['pooledir']['p50_ms'] for r in runs], '.1f')} ms; PLAID nbits=2 "
        f"{span([r['latency']['plaid']['p50_ms'] for r in runs], '.1f')} ms; ratio "
        f"{span([r['p50_ratio_pooledir_to_plaid'] for r in runs], '.2f')}; query encoding alone "
        f"{span([r['latency']['encode']['p50_ms'] for r in runs], '.1f')} ms; "
        f"fast-plaid (CPU, separate run) {fast['latency_ms_p50']:.1f} ms",
        "speed",
    )


def headline_rows(results_dir: Path) -> list[tuple[str, str, str]]:
    """The README's headline table: (what, result, results page) rows computed from the committed JSON."""
    d = Path(results_dir)

    def f3(kind: str, name: str, **match: Any) -> dict[str, Any]:
        return _run(d, f"format3/{kind}_{name}.cpu.json", **match)

    rows = _headline_ndcg_rows(f3)
    kept = {s: f3(CURRENT, s, **_DEFAULT3)["ndcg@10"] / f3("exact", s, **_EXACT)["ndcg@10"] for s in FORMAT3_SETS}
    ratio = {
        s: f3(CURRENT, s, **_DEFAULT3)["bytes_per_token"] / f3("peers", s, **_PLAID2)["bytes_per_token"]
        for s in FORMAT3_SETS
    }
    low = min(kept, key=lambda s: kept[s])
    rows.append(
        (
            f"share of exact unpooled nDCG@10 the default keeps, {len(kept)} test sets",
            f"{min(kept.values()):.2%} ({low}) to {max(kept.values()):.2%}",
            "format3",
        )
    )
    ours, plaid = f3(CURRENT, "scifact", **_DEFAULT3), f3("peers", "scifact", **_PLAID2)
    rows.append(
        (
            "index bytes a query needs per original token (SciFact, pool x2)",
            f"default {ours['bytes_per_token']:.1f}; PLAID nbits=2 {plaid['bytes_per_token']:.1f}; "
            f"exact float32 unpooled {f3('exact', 'scifact', **_EXACT)['bytes_per_token']:.1f}; default / PLAID "
            f"{min(ratio.values()):.2f} to {max(ratio.values()):.2f} over the {len(ratio)} test sets",
            "format3",
        )
    )
    rows.append(_headline_latency_row(d, f3("peers", "scifact", system="fast-plaid", nbits=2, pool_factor=2)))
    scale_runs = json.loads((d / HEADLINE_SCALE).read_text())["runs"]
    big3 = max((r for r in scale_runs if r["design"] == "segments" and not r["pinned"]), key=lambda r: r["vectors"])
    rows.append(
        (
            f"segment engine at {big3['vectors']:,} synthetic vectors (the PQ32x6 default, {big3['nlist']:,} lists)",
            f"build {big3['build_vectors_per_s']:,.0f} vectors/s; search p50 {big3['search_p50_ms']:.1f} ms; "
            f"upsert p50 {big3['upsert_p50_ms']:.1f} ms; delete p50 {big3['delete_p50_ms']:.1f} ms; "
            f"build peak RSS {big3['build_peak_rss_mb'] / 1000:.2f} GB, "
            f"peak anonymous memory {big3['build_peak_anon_mb'] / 1000:.2f} GB",
            "scale",
        )
    )
    return rows


def headline_markdown(results_dir: Path, link_prefix: str = "docs/results/") -> str:
    """The headline table as Markdown, each row linking to the page it was measured on."""
    machines = {
        _machine(json.loads((Path(results_dir) / f).read_text()))
        for f in ("format3/peers_scifact.cpu.json", f"format3/{CURRENT}_scifact.cpu.json")
    }
    lines = _table(
        ["what", "result", "measured"],
        [[what, result, f"[{page}]({link_prefix}{page}.md)"] for what, result, page in headline_rows(results_dir)],
    )
    lines = [ln.replace("\\|", "|") for ln in lines]  # the link cells hold no pipes; keep them clickable
    return "\n".join(lines).rstrip() + f"\n\nMachine: {'; '.join(sorted(machines))}.\n"


README_BLOCK = ("<!-- generated:headline (pooledir eval report --readme README.md) -->", "<!-- /generated:headline -->")


def rewrite_readme(readme: Path, results_dir: Path, link_prefix: str = "docs/results/") -> bool:
    """Replace the text between the README's generated-block markers; True when it changed."""
    text = Path(readme).read_text()
    start, end = README_BLOCK
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise InputError(f"{readme}: no generated block ({start} ... {end}); add the two markers where it goes")
    new = text[: i + len(start)] + "\n" + headline_markdown(results_dir, link_prefix) + text[j:]
    if new != text:
        Path(readme).write_text(new)
    return new != text
