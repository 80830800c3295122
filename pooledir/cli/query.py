"""``pooledir search`` and ``pooledir info``: reading an index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pooledir.cli._app import app, open_index
from pooledir.cli._common import (
    CHECKPOINT_HELP,
    Candidates,
    Device,
    NProbe,
    Prune,
    QueryBackend,
    Rerank,
    holding,
    print_summary,
)


@app.command(epilog=CHECKPOINT_HELP)
def search(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    queries: Annotated[list[str], typer.Argument(metavar="QUERY...", help="One or more queries.")],
    k: Annotated[int, typer.Option("-k", help="Results per query.")] = 10,
    nprobe: NProbe = None,
    candidates: Candidates = None,
    rerank: Rerank = None,
    prune: Prune = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    mode: Annotated[
        str, typer.Option(help="dense (MaxSim), lexical (BM25 over the text) or hybrid (both, fused).")
    ] = "dense",
    query_backend: QueryBackend = "auto",
    device: Device = "auto",
) -> None:
    """Search an index; prints rank, score, id and the start of each document."""
    from pooledir.hybrid import check_mode
    from pooledir.search import SearchParams

    check_mode(mode)
    params = SearchParams.from_optional(k, nprobe, candidates, rerank, prune)
    with open_index(index_dir, encodes=True, device=device, query_backend=query_backend) as idx:
        results = idx.search(queries, params=params, with_text=True, mode=mode)
    for query, hits in zip(queries, results):
        if as_json:
            typer.echo(json.dumps({"query": query, "results": [h.__dict__ for h in hits]}, ensure_ascii=False))
            continue
        typer.echo(f"# {query}")
        for rank, h in enumerate(hits, 1):
            text = " ".join((h.text or "").split())
            typer.echo(f"{rank:3d}  {h.score:8.3f}  {h.id}  {text[:90]}")


@app.command()
def info(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show an index's counts, sizes and settings."""
    with open_index(index_dir, device="cpu") as idx:
        data = idx.describe()
        what = holding(idx)
    if as_json:
        typer.echo(json.dumps(data.to_json(), indent=2))
        return
    print_summary(data, what)
    typer.echo(f"device: {data.device}")
    typer.echo(f"checkpoint: {data.checkpoint}")
    typer.echo(f"backend: {json.dumps(data.backend)}")
    lexical = "yes (FTS5 BM25: modes lexical, hybrid)" if data.lexical else "no (open it once with write access)"
    typer.echo(f"lexical table: {lexical}")
