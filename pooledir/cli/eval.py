"""``pooledir eval beir`` and ``pooledir eval report``: the evaluation harness (:mod:`pooledir.evaluation`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pooledir.cli._app import app
from pooledir.cli._common import Candidates, Checkpoint, Device, NProbe, Rerank, default_checkpoint

if TYPE_CHECKING:
    from pooledir.fusion import Fusion

eval_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Evaluate on BEIR datasets and report.")
app.add_typer(eval_app, name="eval")


def _int_list(value: str, what: str) -> list[int]:
    from pooledir.errors import InputError

    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {value!r}") from None


def _fusions(spec: str) -> list[Fusion | None]:
    """``method:weight[:depth],...`` as Fusion settings; empty: [None] (the library's default)."""
    from pooledir.errors import InputError
    from pooledir.fusion import Fusion

    out: list[Fusion | None] = []
    for item in [x for x in spec.split(",") if x.strip()]:
        parts = item.strip().split(":")
        try:
            f = Fusion(parts[0], float(parts[1]), *[int(p) for p in parts[2:3]])
        except (IndexError, ValueError):
            raise InputError(f"--fusion items are method:weight[:depth], got {item!r}") from None
        f.check()
        out.append(f)
    return out or [None]


@eval_app.command("beir")
def eval_beir(
    dataset: Annotated[Path, typer.Argument(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results JSON; TREC run files go beside it.")],
    checkpoint: Checkpoint = None,
    pool_factors: Annotated[str, typer.Option(help="Comma-separated pool factors.")] = "1,2,3,4",
    index_types: Annotated[str, typer.Option("--index", help="Comma-separated: ivfpq, flat.")] = "ivfpq,flat",
    split: Annotated[str, typer.Option(help="qrels split to score.")] = "test",
    corpus_sample: Annotated[int | None, typer.Option(help="Judged documents plus a seeded sample up to N.")] = None,
    queries_sample: Annotated[int | None, typer.Option(help="A seeded sample of N judged queries.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    compare: Annotated[
        str, typer.Option(help="Peer systems on the same vectors, pooled at every pool factor: plaid, fast-plaid.")
    ] = "",
    plaid_nbits: Annotated[str, typer.Option(help="PLAID (and fast-plaid) residual bits to run.")] = "2,4",
    pool_thresholds: Annotated[
        str, typer.Option(help="Comma-separated Ward merge heights for adaptive pooling (extra pooledir runs).")
    ] = "",
    pq_m: Annotated[
        str, typer.Option(help="Comma-separated PQ sub-quantizer counts for IVF-PQ (default: the index default).")
    ] = "",
    refine: Annotated[str, typer.Option(help="IVF-PQ refine stage (float16 copy): off, on or off,on.")] = "off",
    modes: Annotated[str, typer.Option(help="Comma-separated search modes: dense, lexical, hybrid.")] = "dense",
    fusion: Annotated[
        str,
        typer.Option(
            help="Hybrid settings to run, method:weight[:depth] (e.g. rrf:0.5,convex:0.3:64); default: the library's."
        ),
    ] = "",
    nprobe: NProbe = None,
    candidates: Candidates = None,
    rerank: Rerank = None,
    latency_queries: Annotated[int, typer.Option(help="Queries timed one by one.")] = 100,
    cache_dir: Annotated[Path, typer.Option(help="Embedding cache.")] = Path(".cache/pooledir-eval"),
    device: Device = "auto",
) -> None:
    """Score a BEIR dataset (nDCG@10, Recall@100) across pool factors and index types."""
    from pooledir.errors import InputError
    from pooledir.evaluation import EvalConfig, evaluate, markdown_table
    from pooledir.hybrid import check_mode
    from pooledir.search import SearchParams

    factors = _int_list(pool_factors, "--pool-factors")
    peers: dict[str, dict[str, Any]] = {c: {} for c in compare.split(",") if c}
    for name in ("plaid", "fast-plaid"):
        if name in peers:
            peers[name] = {"nbits": _int_list(plaid_nbits, "--plaid-nbits"), "pool_factors": factors}
    try:
        thresholds = [float(x) for x in pool_thresholds.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--pool-thresholds must be comma-separated numbers, got {pool_thresholds!r}") from None
    pq_ms: list[int | None] = [*_int_list(pq_m, "--pq-m")] or [None]
    refine_modes = {"off": False, "on": True}
    if any(x not in refine_modes for x in refine.split(",")):
        raise InputError(f"--refine must be off, on or off,on, got {refine!r}")
    cfg = EvalConfig(
        dataset=dataset,
        checkpoint=str(checkpoint or default_checkpoint()),
        pool_factors=factors,
        pool_thresholds=thresholds,
        pq_ms=pq_ms,
        refine=[refine_modes[x] for x in refine.split(",")],
        modes=[check_mode(m) for m in modes.split(",") if m],
        fusions=_fusions(fusion),
        indexes=[x for x in index_types.split(",") if x],
        split=split,
        corpus_sample=corpus_sample,
        queries_sample=queries_sample,
        seed=seed,
        search=SearchParams.from_optional(100, nprobe, candidates, rerank),
        latency_queries=latency_queries,
        compare=peers,
        device=device,
        cache_dir=cache_dir,
        runs_dir=out.parent / "runs",
        show_progress=True,
    )
    result = evaluate(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(markdown_table([result]))
    typer.echo(f"wrote {out}")


@eval_app.command("report")
def eval_report(
    results: Annotated[
        list[Path] | None, typer.Argument(metavar="[RESULTS...]", help="JSON files from `eval beir`.")
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the table and plots go.")] = Path("eval/results"),
    site: Annotated[
        Path | None, typer.Option(help="Write the docs' results pages here (e.g. docs/results) from --results-dir.")
    ] = None,
    readme: Annotated[Path | None, typer.Option(help="Rewrite this README's generated headline block.")] = None,
    results_dir: Annotated[Path, typer.Option(help="The committed results, for --site/--readme.")] = Path(
        "eval/results"
    ),
) -> None:
    """Write a Markdown table and PNG plots from evaluation results (files of one experiment are merged).

    With --site and/or --readme, render the documentation's results pages and the README's headline
    numbers from every committed result under --results-dir instead.
    """
    from pooledir.errors import InputError
    from pooledir.evaluation import load_results, markdown_table, merge_results, plots
    from pooledir.evaluation.report import results_site, rewrite_readme

    if site is not None or readme is not None:
        for p in results_site(results_dir, site) if site is not None else []:
            typer.echo(f"wrote {p}")
        if readme is not None:
            typer.echo(f"{'rewrote' if rewrite_readme(readme, results_dir) else 'unchanged'} {readme}")
        return
    if not results:
        raise InputError("give result JSON files, or --site DIR / --readme FILE")
    data = merge_results(load_results(results))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(markdown_table(data))
    for p in [out_dir / "report.md", *plots(data, out_dir)]:
        typer.echo(f"wrote {p}")
