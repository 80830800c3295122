"""An index folder built from a corpus or from encoded shards, and resumed after a stop: what ``pooledir index`` runs.

The folder is claimed first (:func:`pooledir.outdir.claim_output_folder`: new, empty, or with ``resume`` an index
to continue); the build then commits one chunk at a time (:mod:`pooledir.build`). A build that stops (an error,
Ctrl-C) after committing documents keeps the folder, and the same call with ``resume=True`` and the same input
continues it; one that committed nothing removes what it made.

Progress bars are the library's (``show_progress``); messages for people go through :class:`BuildHooks`, so the
CLI prints them and a Python caller may log them (the default).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING

from pooledir import build
from pooledir.build import BuildConfig, BuildReport
from pooledir.corpus import Document
from pooledir.errors import InputError, PooledirError
from pooledir.outdir import Claim, claim_output_folder, cleanup_on_failure

if TYPE_CHECKING:
    from pooledir.distributed.partition import PartitionedIndex
    from pooledir.encoder import ColBERTEncoder
    from pooledir.index_info import IndexInfo
    from pooledir.pooled_index import IndexConfig, PooledIndex

log = logging.getLogger(__name__)

#: a corpus: a path :func:`pooledir.corpus.iter_corpus` reads, or the documents themselves
Corpus = str | Path | Iterable[Document]


@dataclass(frozen=True)
class BuildHooks:
    """How a folder build talks to its caller; the defaults log, the CLI prints.

    Attributes
    ----------
    resume_hint : what continues a stopped build, quoted in the message of one that kept documents.
    warn : called with a warning before the build starts (e.g. an incomplete shard folder).
    stopped : called with one line when the build stops on an interruption (not a pooledir error) after
        committing documents; the interruption itself is raised again.
    default_checkpoint : the checkpoint of a new corpus build given none (None: one must be given).
    """

    resume_hint: str = "the same call with resume=True"
    warn: Callable[[str], None] = log.warning
    stopped: Callable[[str], None] = log.warning
    default_checkpoint: Callable[[], str | Path] | None = None


@dataclass(frozen=True)
class BuildOptions:
    """How a folder build runs: nothing of it is stored in the index (its :class:`IndexConfig` is).

    Attributes
    ----------
    checkpoint : the checkpoint a new corpus build encodes with; a resumed one is checked against it.
    pooling_chosen : whether the config's pooling was chosen (False: a resumed build keeps the index's
        own, unchecked, and shards pooled at a factor set it).
    chunk_docs, limit : as in :class:`pooledir.build.BuildConfig`.
    device, batch_size, document_backend : how the encoder runs.
    split_passages : a new index splits long documents into passages (the default stride when the config
        sets none).
    show_progress : a progress bar on stderr.
    """

    checkpoint: str | Path | None = None
    pooling_chosen: bool = True
    chunk_docs: int = build.DEFAULT_CHUNK_DOCS
    limit: int | None = None
    device: str = "auto"
    batch_size: int = 32
    document_backend: str = "torch"
    split_passages: bool = False
    show_progress: bool = True

    @property
    def build_config(self) -> BuildConfig:
        """The chunking of the streamed build."""
        return BuildConfig(self.chunk_docs, self.limit)

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work (before any folder is claimed)."""
        self.build_config.check()


@dataclass(frozen=True)
class RayBuild:
    """Build from shards on a Ray cluster: ``segments`` built in parallel (None: one per shard)."""

    address: str | None = None
    segments: int | None = None


@dataclass(frozen=True)
class FolderBuildReport:
    """What a folder build did and what the index holds after it.

    ``rows`` counts stored rows (a passage index stores a long document as several); ``long_documents``
    counts documents longer than ``doc_maxlen`` (None when not counted: a resumed build, a stream of
    documents or a pipe rather than a file, or a build from shards).
    """

    build: BuildReport
    info: IndexInfo
    documents: int
    rows: int
    passage_stride: int | None
    long_documents: int | None = None
    doc_maxlen: int | None = None


class ResumeConflict(InputError):
    """A resumed build was given a setting that contradicts the index it continues."""

    def __init__(self, message: str, *, setting: str, index_value: str, given: str, path: Path) -> None:
        super().__init__(message)
        self.setting, self.index_value, self.given, self.path = setting, index_value, given, path


@dataclass
class _Run:
    """One build in progress: the claimed folder and the hooks to report through."""

    out: Path
    claim: Claim
    hooks: BuildHooks
    encoder: ColBERTEncoder | None = None  # set when this build loaded one (a new corpus build)


def build_index_folder(
    corpus: Corpus,
    out: str | Path,
    config: IndexConfig | None = None,
    options: BuildOptions | None = None,
    *,
    resume: bool = False,
    hooks: BuildHooks | None = None,
) -> FolderBuildReport:
    """Build (or with ``resume`` continue) an index folder from a corpus, one committed chunk at a time.

    Parameters
    ----------
    corpus
        A corpus path (:func:`pooledir.corpus.iter_corpus`) or an iterable of documents, read once, lazily.
    out
        A new or empty folder; with ``resume``, one holding a stopped build of the same input.
    config
        The new index's settings (default :class:`IndexConfig`); a resumed index keeps its own.
    options
        Checkpoint, chunking, device and progress (:class:`BuildOptions`).
    resume
        Continue the build in ``out``, skipping the documents it committed (the input must be the same,
        in the same order).
    hooks
        Where messages go (:class:`BuildHooks`; default: the log).
    """
    from pooledir.pooled_index import IndexConfig

    options = options or BuildOptions()
    options.check()
    hooks = hooks or BuildHooks()
    bconf = options.build_config
    config = config or IndexConfig()
    docs = checked_documents(corpus)
    total = _count(corpus)
    out = Path(out)
    with claim_output_folder(out, resume) as claim:  # the folder's writer lock, held until the build ends
        run = _Run(out, claim, hooks)
        idx = _open_to_resume(out, config, options) if claim.resuming else _create_for_corpus(run, config, options)
        report = _run_build(
            idx,
            run,
            lambda: build.build_index(
                docs, idx, bconf, resume=resume, show_progress=options.show_progress, total=total
            ),
        )
    long_docs = None
    # a pipe (no total) or a stream of documents reads only once: no second pass to count the long ones
    if run.encoder is not None and total is not None and isinstance(corpus, str | Path):
        from pooledir.corpus import iter_corpus

        long_docs = count_truncated(run.encoder, iter_corpus(corpus), options.limit)
    doc_maxlen = run.encoder.settings.doc_maxlen if run.encoder is not None else None
    return replace(report, long_documents=long_docs, doc_maxlen=doc_maxlen)


def build_index_folder_from_shards(
    shards: Sequence[str | Path],
    out: str | Path,
    config: IndexConfig | None = None,
    options: BuildOptions | None = None,
    *,
    resume: bool = False,
    hooks: BuildHooks | None = None,
    ray: RayBuild | None = None,
) -> FolderBuildReport:
    """Build (or with ``resume`` continue) an index folder from shard folders of ``encode_corpus``; no encoder loads.

    As :func:`build_index_folder`, with ``shards`` (in order) as the input; ``ray`` builds on a Ray cluster.
    """
    from pooledir.pooled_index import IndexConfig

    options = options or BuildOptions()
    options.check()
    hooks = hooks or BuildHooks()
    bconf = options.build_config
    paths = [Path(p) for p in shards]
    out = Path(out)
    with claim_output_folder(out, resume) as claim:
        run = _Run(out, claim, hooks)
        idx = _open_for_shards(paths, run, config or IndexConfig(), options)

        def fill() -> BuildReport:
            if ray is not None:  # tasks build one segment per run of shards; one commit attaches them
                from pooledir.distributed import connect
                from pooledir.distributed.build import build_index_ray

                connect(ray.address)
                return build_index_ray(paths, idx, segments=ray.segments)
            return build.build_index_from_shards(paths, idx, bconf, resume=resume, show_progress=options.show_progress)

        return _run_build(idx, run, fill)


def build_partitions_from_shards(
    shards: Sequence[str | Path],
    out: str | Path,
    partitions: int,
    config: IndexConfig,
    options: BuildOptions | None = None,
) -> PartitionedIndex:
    """``partitions`` indexes split by document id from shard folders (for Ray Serve); pooled as the shards are."""
    from pooledir.distributed.partition import build_partitions

    options = options or BuildOptions()
    if not shards:
        raise InputError("partitions are built from encoded shards: give shard folders (from encode_corpus)")
    spec = build.read_shard_folders(shards)[1]
    if not options.pooling_chosen and config.pool_threshold is None and spec.pool_factor > 1:
        config = replace(config, pool_factor=spec.pool_factor)  # the shards' factor, as for one index
    return build_partitions(shards, out, partitions, config, device=options.device, show_progress=options.show_progress)


# -- the steps -------------------------------------------------------------------------------------------------
def checked_documents(corpus: Corpus) -> Iterator[Document]:
    """The corpus's documents; a missing, empty or malformed corpus fails here, before anything is created."""
    from pooledir.corpus import iter_corpus

    docs = iter_corpus(corpus) if isinstance(corpus, str | Path) else iter(corpus)
    first = next(docs, None)
    if first is None:
        raise InputError(f"{corpus}: no documents found" if isinstance(corpus, str | Path) else "no documents given")
    return chain([first], docs)


def _count(corpus: Corpus) -> int | None:
    """How many documents a corpus path holds, for the progress bar's ETA (None for a stream)."""
    from pooledir.corpus import count_documents

    return count_documents(corpus) if isinstance(corpus, str | Path) else None


def _open_to_resume(out: Path, config: IndexConfig, options: BuildOptions) -> PooledIndex:
    """The index a resumed corpus build continues, checked against the settings given again."""
    from pooledir.pooled_index import PooledIndex

    idx = PooledIndex.open(out, device=options.device, document_backend=options.document_backend)
    try:
        check_resume(idx, config if options.pooling_chosen else None, options.checkpoint)
    except BaseException:
        idx.close()
        raise
    idx.encoder.batch_size = options.batch_size
    return idx


def _create_for_corpus(run: _Run, config: IndexConfig, options: BuildOptions) -> PooledIndex:
    """A new index for a corpus build (its encoder loaded); what the claim made is removed if this fails."""
    from pooledir.encoder import ColBERTEncoder
    from pooledir.pooled_index import PooledIndex

    try:
        encoder = ColBERTEncoder(
            _checkpoint(options, run.hooks),
            device=options.device,
            batch_size=options.batch_size,
            document_backend=options.document_backend,
        )
        if options.split_passages and config.passage_stride is None:
            from pooledir.passages import default_stride

            config = replace(config, passage_stride=default_stride(encoder))
        idx = PooledIndex.create(run.out, config=config, device=options.device, encoder=encoder)
    except BaseException:
        cleanup_on_failure(run.out, run.claim.created)
        raise
    run.encoder = encoder
    return idx


def _checkpoint(options: BuildOptions, hooks: BuildHooks) -> str | Path:
    if options.checkpoint is not None:
        return options.checkpoint
    if hooks.default_checkpoint is None:
        raise InputError("a new index needs a checkpoint: pass options=BuildOptions(checkpoint=...)")
    return hooks.default_checkpoint()


def _open_for_shards(paths: list[Path], run: _Run, config: IndexConfig, options: BuildOptions) -> PooledIndex:
    """The index shard folders are built into: opened to resume, else created from the shards' spec."""
    from pooledir.pooled_index import PooledIndex

    manifests, spec = build.read_shard_folders(paths)
    for m in manifests:
        if not m.complete:
            missing = f"shards {m.missing()} are missing" if m.end is not None else "no encode finished there"
            run.hooks.warn(f"{m.path} is incomplete ({missing}); indexing the shards present")
    if not options.pooling_chosen and spec.pool_factor > 1 and config.pool_threshold is None:
        config = replace(config, pool_factor=spec.pool_factor)
    if run.claim.resuming:
        idx = PooledIndex.open(run.out, device=options.device)
        try:
            check_resume(idx, config if options.pooling_chosen else None, spec.checkpoint)
        except BaseException:
            idx.close()
            raise
        return idx
    try:
        return build.create_index_for_shards(run.out, spec, config, options.device)
    except BaseException:
        cleanup_on_failure(run.out, run.claim.created)
        raise


def _run_build(idx: PooledIndex, run: _Run, fill: Callable[[], BuildReport]) -> FolderBuildReport:
    """Fill the index; on failure keep what was committed (and say how to resume), else remove what it made."""
    with idx:
        try:
            report = fill()
        except PooledirError as e:
            if len(idx):
                raise type(e)(
                    f"{e} ({_kept(idx, run.out)}: fix that, then continue with: {run.hooks.resume_hint})"
                ) from None
            idx.close()
            cleanup_on_failure(run.out, run.claim.created)
            raise
        except BaseException:
            if len(idx):
                run.hooks.stopped(f"stopped; {_kept(idx, run.out)}; continue with: {run.hooks.resume_hint}")
            else:
                idx.close()
                cleanup_on_failure(run.out, run.claim.created)
            raise
        return FolderBuildReport(report, idx.describe(), len(idx), idx.n_rows, idx.config.passage_stride)


def _kept(idx: PooledIndex, out: Path) -> str:
    return f"the {len(idx)} documents committed to {out} are kept"


def check_resume(idx: PooledIndex, config: IndexConfig | None, checkpoint: str | Path | None) -> None:
    """A resumed build keeps the index's own settings; raise :class:`ResumeConflict` for one given that differs."""
    if config is not None and config.pooling != idx.config.pooling:
        raise ResumeConflict(
            f"the index in {idx.path} pools {idx.config.pooling}, not {config.pooling}; resume it without "
            "a pooling setting or with its own",
            setting="pooling",
            index_value=str(idx.config.pooling),
            given=str(config.pooling),
            path=idx.path,
        )
    recorded = idx.describe().checkpoint
    if checkpoint is not None and Path(checkpoint).resolve() != Path(recorded).resolve():
        raise ResumeConflict(
            f"the index in {idx.path} was built with the checkpoint {recorded}, not {checkpoint}; "
            "a resumed build must encode as the first part did",
            setting="checkpoint",
            index_value=recorded,
            given=str(checkpoint),
            path=idx.path,
        )


def count_truncated(encoder: ColBERTEncoder, docs: Iterable[Document], limit: int | None, batch: int = 1000) -> int:
    """Documents longer than doc_maxlen, counted by tokenizing them again (lazily, a batch at a time)."""
    it = islice(docs, limit)
    total = 0
    while chunk := [d.text for d in islice(it, batch)]:
        total += encoder.count_truncated(chunk)
    return total
