"""``pooledir index`` and ``pooledir encode``: the command line over :mod:`pooledir.build_folder` and shards.

The library builds and resumes; this module turns options into its records and prints what happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pooledir.cli._app import app, open_index
from pooledir.cli._common import (
    CHECKPOINT_HELP,
    Checkpoint,
    Device,
    DocumentBackend,
    PassageStride,
    RayAddress,
    SplitPassages,
    UseRay,
    default_checkpoint,
    holding,
    holding_counts,
    plural,
    print_long_documents,
    print_summary,
    resume_command,
    return_freed_memory,
)

if TYPE_CHECKING:
    from pooledir.build_folder import BuildHooks, BuildOptions, FolderBuildReport
    from pooledir.build_shards import EncodeConfig
    from pooledir.pooled_index import IndexConfig


@app.command(epilog=CHECKPOINT_HELP)
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
    nlist: Annotated[
        int | None,
        typer.Option(
            help="IVF lists (default: PLAID's 2^floor(log2(16·√N)) for N vectors, at most 1 per 39 trained on)."
        ),
    ] = None,
    pq_m: Annotated[
        int | None,
        typer.Option(help="PQ sub-quantizers (default: dim/4, 32 for 128-d vectors; dim/8 with --pq-nbits 8)."),
    ] = None,
    pq_nbits: Annotated[
        int | None,
        typer.Option(
            help="Bits per sub-quantizer code (default 6: 24-byte codes at 128-d, eval/results/code_rule.md); 8 gives "
            "the 16-byte codes of indexes made before, at less nDCG@10."
        ),
    ] = None,
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
    from pooledir.build_folder import BuildOptions
    from pooledir.encoder import check_backends

    check_backends(document_backend=document_backend)
    _check_sources(corpus, embeddings, use_ray, split_passages or passage_stride is not None)
    config = _index_config(
        index_type, pool_factor, pool_threshold, keep_exact, (nlist, pq_m, pq_nbits), passage_stride, train_sample
    )
    options = BuildOptions(
        checkpoint=checkpoint,
        pooling_chosen=pool_factor is not None or pool_threshold is not None,
        chunk_docs=chunk_docs or BuildOptions.chunk_docs,
        limit=limit,
        device=device,
        batch_size=batch_size,
        document_backend=document_backend,
        split_passages=split_passages,
    )
    if partitions is not None:
        _index_partitions(embeddings, out, partitions, config, options)
        return
    options.check()
    return_freed_memory()
    if corpus is not None:
        report = _index_corpus(corpus, out, config, options, resume)
    else:
        report = _index_shards(embeddings or [], out, config, options, resume, (address, segments) if use_ray else None)
    if report.build.skipped:
        typer.echo(f"resumed: {report.build.skipped} documents were already in the index; added {report.build.added}")
    print_summary(report.info, holding_counts(report.documents, report.rows, report.passage_stride))
    if report.long_documents is not None and report.doc_maxlen is not None:
        print_long_documents(report.long_documents, report.doc_maxlen, report.passage_stride)


def _check_sources(corpus: Path | None, embeddings: list[Path] | None, use_ray: bool, passages: bool) -> None:
    """Refuse a combination of inputs that cannot build, before anything is read."""
    from pooledir.errors import InputError

    if (corpus is None) == (not embeddings):
        raise InputError("give either a corpus or --embeddings (shard folders), not both and not neither")
    if use_ray:
        from pooledir.distributed import require_ray

        require_ray()
        if not embeddings:
            raise InputError("--ray builds from encoded shards: run `pooledir encode --ray` first, then --embeddings")
    if embeddings and passages:
        raise InputError("passages are split from a corpus's text: give the corpus, not --embeddings")


def _index_config(
    backend: str,
    pool_factor: int | None,
    pool_threshold: float | None,
    keep_exact: bool,
    shape: tuple[int | None, int | None, int | None],
    passage_stride: int | None,
    train_sample: int | None,
) -> IndexConfig:
    """The new index's settings from the options, checked (pool factor 2 unless told).

    ``shape``: nlist, pq_m, pq_nbits (None: the index's defaults).
    """
    from pooledir.errors import InputError
    from pooledir.pooled_index import IndexConfig

    nlist, pq_m, pq_nbits = shape
    if pool_threshold is not None and pool_factor is not None:
        raise InputError(
            f"--pool-threshold {pool_threshold:g} and --pool-factor {pool_factor} both choose how far documents "
            "are pooled: give one of them"
        )
    config = IndexConfig(
        backend=backend,
        pool_factor=2 if pool_factor is None else pool_factor,
        pool_threshold=pool_threshold,
        keep_exact=keep_exact,
        nlist=nlist,
        pq_m=pq_m,
        pq_nbits=pq_nbits,
        passage_stride=passage_stride,
    )
    if train_sample is not None:
        config = replace(config, train_sample=train_sample)
    config.check()
    return config


def _index_partitions(
    embeddings: list[Path] | None, out: Path, partitions: int, config: IndexConfig, options: BuildOptions
) -> None:
    from pooledir.build_folder import build_partitions_from_shards
    from pooledir.errors import InputError

    if not embeddings:
        raise InputError("--partitions builds from encoded shards: give --embeddings (from `pooledir encode`)")
    layout = build_partitions_from_shards(embeddings, out, partitions, config, options)
    typer.echo(f"wrote {layout.partitions} partitions into {out}; serve them with: pooledir serve {out} --ray")


def _hooks() -> BuildHooks:
    """Messages of a build for a person at a terminal: warnings and stops on stderr, the resume command spelled out."""
    from pooledir.build_folder import BuildHooks

    return BuildHooks(
        resume_hint=resume_command(),
        warn=lambda line: typer.secho(f"warning: {line}", err=True),
        stopped=lambda line: typer.secho(line, err=True, fg="yellow"),  # main() then prints 'interrupted'
        default_checkpoint=default_checkpoint,
    )


def _index_corpus(
    corpus: Path, out: Path, config: IndexConfig, options: BuildOptions, resume: bool
) -> FolderBuildReport:
    from pooledir.build_folder import build_index_folder

    with _resume_conflicts_in_flags():
        return build_index_folder(corpus, out, config, options, resume=resume, hooks=_hooks())


def _index_shards(
    embeddings: list[Path],
    out: Path,
    config: IndexConfig,
    options: BuildOptions,
    resume: bool,
    ray: tuple[str | None, int | None] | None,
) -> FolderBuildReport:
    from pooledir.build_folder import RayBuild, build_index_folder_from_shards

    on_ray = None if ray is None else RayBuild(*ray)
    with _resume_conflicts_in_flags():
        return build_index_folder_from_shards(
            embeddings, out, config, options, resume=resume, hooks=_hooks(), ray=on_ray
        )


@contextmanager
def _resume_conflicts_in_flags() -> Iterator[None]:
    """The library's resume conflicts, worded with the options that set them."""
    from pooledir.build_folder import ResumeConflict
    from pooledir.errors import InputError

    try:
        yield
    except ResumeConflict as e:
        if e.setting != "pooling":
            raise
        raise InputError(
            f"the index in {e.path} pools {e.index_value}, not {e.given}; resume it without "
            "--pool-factor/--pool-threshold or with its own setting"
        ) from None


@app.command(epilog=CHECKPOINT_HELP)
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
    from pooledir.build_shards import DEFAULT_SHARD_DOCS, EncodeConfig
    from pooledir.encoder import check_backends
    from pooledir.errors import InputError
    from pooledir.shards import read_shard_manifest

    check_backends(document_backend=document_backend)
    k, n = _part(part)
    if use_ray:
        from pooledir.distributed import require_ray

        require_ray()  # before anything is read or created
    return_freed_memory()
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
    settings = have.encoder.settings() if have and checkpoint is None else {}
    ckpt = checkpoint or (have.checkpoint if have else None)  # None: default_checkpoint(), once out is checked
    if use_ray:
        if n > 1:
            raise InputError("--ray writes every shard itself: drop --part")
        kwargs: dict[str, Any] = {"settings": settings, "actors": actors, "device": device, "batch_size": batch_size}
        _encode_ray(corpus, out, ckpt, config, resume, address, kwargs)
        return
    encoder_kwargs = {"device": device, "batch_size": batch_size, "document_backend": document_backend, **settings}
    _encode_here(corpus, out, ckpt, config, resume, encoder_kwargs)


def _encode_ray(
    corpus: Path,
    out: Path,
    ckpt: str | Path | None,
    config: EncodeConfig,
    resume: bool,
    address: str | None,
    kwargs: dict[str, Any],
) -> None:
    """``pooledir encode --ray``: the shards written by Ray actors; completed ones are kept when it fails.

    The folder is claimed as a local encode claims it, before the cluster is joined or the checkpoint read.
    """
    from pooledir.distributed.encode import encode_corpus_ray

    checkpoint = ckpt or default_checkpoint  # called once the folder is claimed
    report = encode_corpus_ray(
        corpus, out, checkpoint, config, resume=resume, address=address, hooks=_hooks(), **kwargs
    )
    typer.echo(
        f"encoded {report.encoded} documents into {len(report.shards_written)} shards with {report.actors} Ray "
        f"actors ({report.tokens} token vectors -> {report.vectors} after pooling x{config.pool_factor})"
        + (f"; {report.shards_skipped} shards were already complete" if report.shards_skipped else "")
        + (f"; {report.abandoned_tries} tries of dead actors were redone" if report.abandoned_tries else "")
    )


def _encode_here(
    corpus: Path, out: Path, ckpt: str | Path | None, config: EncodeConfig, resume: bool, encoder_kwargs: dict[str, Any]
) -> None:
    """``pooledir encode`` in this process (:func:`pooledir.build_shards.encode_shard_folder`)."""
    from pooledir.build_shards import encode_shard_folder
    from pooledir.encoder import ColBERTEncoder
    from pooledir.shards import read_shard_manifest

    def load() -> ColBERTEncoder:  # once the folder is claimed: a model takes seconds to load
        return ColBERTEncoder(ckpt or default_checkpoint(), **encoder_kwargs)

    local = encode_shard_folder(corpus, out, load, config, resume=resume, hooks=_hooks())
    manifest = read_shard_manifest(out)
    typer.echo(
        f"encoded {local.encoded} documents into {len(local.shards_written)} shards "
        f"({local.tokens} token vectors -> {local.vectors} after pooling x{config.pool_factor})"
        + (f"; {local.shards_skipped} shards were already complete" if local.shards_skipped else "")
        + f"; {out} holds {len(manifest.shards)} shards, {manifest.documents} documents"
        + ("" if manifest.complete else " (not complete: other parts or a resume still to run)")
    )


def _part(part: str | None) -> tuple[int, int]:
    from pooledir.errors import InputError

    if part is None:
        return 0, 1
    try:
        k, n = (int(x) for x in part.split("/"))
    except ValueError:
        raise InputError(f"--part {part!r} must be K/N, e.g. 0/4 for the first of 4 processes") from None
    return k, n


@app.command(epilog=CHECKPOINT_HELP)
def add(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    corpus: Annotated[Path, typer.Argument(help="Documents to add (same formats as `index`); ids replace.")],
    document_backend: DocumentBackend = "torch",
    device: Device = "auto",
) -> None:
    """Add documents to an index (an existing id is replaced), without retraining."""
    from pooledir.corpus import read_corpus

    docs = read_corpus(corpus)
    with open_index(index_dir, encodes=True, device=device, document_backend=document_backend) as idx:
        n_long = idx.encoder.count_truncated([d.text for d in docs])
        n = idx.add(docs, show_progress=True).documents
        typer.echo(f"added {plural(n, 'document')}; the index now holds {holding(idx)}")
        print_long_documents(n_long, idx.encoder.settings.doc_maxlen, idx.config.passage_stride)


@app.command()
def delete(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    ids: Annotated[list[str], typer.Argument(metavar="ID...", help="External document ids.")],
) -> None:
    """Delete documents by id; unknown ids fail before anything is deleted."""
    with open_index(index_dir, device="cpu") as idx:
        n = idx.delete(ids)
        typer.echo(f"deleted {plural(n, 'document')}; the index now holds {holding(idx)}")
