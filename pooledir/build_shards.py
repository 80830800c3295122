"""Encoding a corpus into shard folders (:mod:`pooledir.shards`): read → encode → pool → write, no index.

The first half of a build, run apart: a shard folder holds each document's vectors (pooled, or not
for an index to pool) with the encoder's record, so :func:`pooledir.build.build_index_from_shards`
indexes it later without a model. Each shard is written, fsynced and then listed, so a stopped
encode resumes at the first shard not complete; several processes may each write every ``parts``-th
shard of one folder. :func:`encode_shard_folder` is what ``pooledir encode`` runs: the folder claimed first
(:func:`pooledir.outdir.claim_shard_folder`), removed again if the encode fails before completing a shard,
and kept, with how to continue, if it fails later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pooledir import pipeline
from pooledir.build import DEFAULT_CHUNK_DOCS, batches, check_positive
from pooledir.build_folder import BuildHooks, Corpus, checked_documents
from pooledir.corpus import Document
from pooledir.errors import InputError, PooledirError
from pooledir.index.manifest import EncoderRecord, record_encoder
from pooledir.outdir import claim_shard_folder
from pooledir.shards import ShardError, ShardInfo, ShardSpec, ShardWriter, ids_digest

if TYPE_CHECKING:
    from pooledir.encoder import ColBERTEncoder

#: documents per shard of ``encode_corpus``; a shard is streamed to disk, so this sets the unit of resume
DEFAULT_SHARD_DOCS = 10_000


@dataclass(frozen=True)
class EncodeConfig:
    """How :func:`encode_corpus` turns a corpus into shards.

    Attributes
    ----------
    pool_factor : pool the vectors before writing them (1 = keep every token vector, pool at index time).
    protected_tokens : leading vectors never pooled.
    shard_docs : documents per shard (shard n holds corpus positions [n·shard_docs, (n+1)·shard_docs)).
    chunk_docs : documents encoded at a time (memory grows with it, not with the shard).
    limit : encode only the first ``limit`` documents.
    part, parts : write only the shards whose number is ``part`` modulo ``parts`` (for several processes).
    """

    pool_factor: int = 2
    protected_tokens: int = 1
    shard_docs: int = DEFAULT_SHARD_DOCS
    chunk_docs: int = DEFAULT_CHUNK_DOCS
    limit: int | None = None
    part: int = 0
    parts: int = 1

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        for name in ("pool_factor", "shard_docs", "chunk_docs", "parts"):
            check_positive(name, getattr(self, name))
        check_positive("limit", self.limit, optional=True)
        if self.protected_tokens < 0:
            raise InputError(f"protected_tokens={self.protected_tokens} must be >= 0")
        if not 0 <= self.part < self.parts:
            raise InputError(f"part={self.part} must be between 0 and parts - 1 = {self.parts - 1}")

    def shard_spec(self, checkpoint: str, record: EncoderRecord) -> ShardSpec:
        """The spec every shard of this encode carries: the encoder's (checkpoint, record) and this pooling.

        The one place a :class:`ShardSpec` is made from an encoder, so a local and a Ray encode of the same
        corpus with the same encoder write shards that index together.
        """
        return ShardSpec(
            dim=record.dim,
            pool_factor=self.pool_factor,
            protected_tokens=self.protected_tokens,
            checkpoint=checkpoint,
            encoder=record,
            shard_docs=self.shard_docs,
        )


@dataclass
class EncodeReport:
    """What :func:`encode_corpus` did: documents read, shards written and skipped, vectors written."""

    documents: int = 0
    encoded: int = 0
    shards_written: list[int] = field(default_factory=list)
    shards_skipped: int = 0
    tokens: int = 0
    vectors: int = 0
    seconds: float = 0.0


def encoder_record(encoder: ColBERTEncoder) -> tuple[str, EncoderRecord]:
    """(checkpoint, record) as an index records them, so shards can be indexed without the encoder."""
    return record_encoder(encoder)


def encode_corpus(
    documents: Iterable[Document],
    out: str | Path,
    encoder: ColBERTEncoder,
    config: EncodeConfig | None = None,
    *,
    resume: bool = False,
    show_progress: bool = True,
    total: int | None = None,
) -> EncodeReport:
    """Encode (and pool) a document stream into a shard folder; see :mod:`pooledir.shards` for the format.

    With ``resume`` (implied when ``config.parts > 1``), shards already complete in ``out`` are skipped
    after checking that they hold the same document ids as the input at their positions; a shard cut
    short by a crash is written again.
    """
    from tqdm.auto import tqdm

    config = config or EncodeConfig()
    config.check()
    spec = config.shard_spec(*encoder_record(encoder))
    pooling = pipeline.PoolSpec(config.pool_factor, config.protected_tokens)
    # several parts share one folder: each goes on beside the shards the others already wrote
    writer = ShardWriter.open(out, spec, resume=resume or config.parts > 1, parts=config.parts)
    done = writer.completed()
    report = EncodeReport()
    t_start = time.perf_counter()
    docs = iter(documents) if config.limit is None else islice(documents, config.limit)
    if total is not None and config.limit is not None:
        total = min(total, config.limit)
    bar = tqdm(total=total, desc="encode", unit="doc", disable=not show_progress, smoothing=0.05)
    number = 0
    try:
        while True:
            start = number * config.shard_docs
            shard_docs = islice(docs, config.shard_docs)
            if number in done or number % config.parts != config.part:
                n = _skip_shard(shard_docs, done.get(number), writer.path, start)
                report.shards_skipped += number in done
                bar.update(n)
            else:
                n = _write_shard(
                    batches(shard_docs, config.chunk_docs), (number, start), writer, encoder, pooling, report, bar
                )
            report.documents += n
            if n < config.shard_docs:
                break
            number += 1
        if report.documents == 0:
            raise InputError("the input holds no documents")
        writer.finish(report.documents)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t_start
    return report


def _write_shard(
    batches: Iterable[list[Document]],
    at: tuple[int, int],
    writer: ShardWriter,
    encoder: ColBERTEncoder,
    pooling: pipeline.PoolSpec,
    report: EncodeReport,
    bar: Any,
) -> int:
    """Encode, pool and write shard ``at`` = (number, first document's position); returns its documents."""
    number, start = at
    n, ids = 0, set()  # duplicates are caught here within a shard, across shards by the index build
    for batch in batches:
        for i, d in enumerate(batch, start + n):
            if d.id in ids:
                raise InputError(f"duplicate document id {d.id!r} (again at document {i} of the input)")
            ids.add(d.id)
        if n == 0:
            writer.begin(number, start)
        vectors = pipeline.encode([d.text for d in batch], encoder)
        n_tokens = [len(v) for v in vectors]
        if pooling.pools:
            vectors = pipeline.pool(vectors, pooling, encoder.device)
        writer.append(batch, vectors, n_tokens)
        report.tokens += sum(n_tokens)
        report.vectors += sum(len(v) for v in vectors)
        n += len(batch)
        bar.update(len(batch))
        del vectors
    if n:
        writer.commit()
        report.shards_written.append(number)
        report.encoded += n
    return n


def _skip_shard(docs: Iterable[Document], info: ShardInfo | None, folder: Path, start: int) -> int:
    """Read past one shard's documents; for a completed shard, check they are the ones it holds."""
    if info is None:
        return sum(1 for _ in docs)
    n, digest = ids_digest(d.id for d in docs)
    if n != info.documents or digest != info.ids_sha256:
        raise ShardError(
            f"cannot resume {folder}: shard {info.number} holds other documents than positions {start} to "
            f"{start + n - 1} of the input (the input changed, or its order, or the limit); "
            "resume with the same input, or encode into a new folder"
        )
    return n


def encode_shard_folder(
    corpus: Corpus,
    out: str | Path,
    encoder: ColBERTEncoder | Callable[[], ColBERTEncoder],
    config: EncodeConfig | None = None,
    *,
    resume: bool = False,
    hooks: BuildHooks | None = None,
    show_progress: bool = True,
) -> EncodeReport:
    """Encode a corpus into the shard folder ``out``, claimed first; what ``pooledir encode`` runs.

    Parameters
    ----------
    corpus
        A corpus path (:func:`pooledir.corpus.iter_corpus`) or an iterable of documents, read once, lazily.
    out
        A new or empty folder; with ``resume`` (implied when ``config.parts > 1``), one holding shards of
        the same input to continue. A second encode into it (or into the same part) is refused at once.
    encoder
        The encoder, or a callable that makes one: called once the folder is claimed, so a model loads only
        for an encode that can go ahead.
    config
        As for :func:`encode_corpus`.
    resume
        Continue the encode in ``out``: completed shards are checked against the input and skipped.
    show_progress
        A progress bar on stderr.
    hooks
        ``resume_hint`` (quoted in the message of an encode that stopped after completing shards) and
        ``stopped`` (told of an interruption that kept shards) of :class:`pooledir.build_folder.BuildHooks`.

    An encode that fails before completing a shard leaves nothing it made; one that fails later keeps its
    completed shards, and the same call with ``resume=True`` continues after them.
    """
    from pooledir.corpus import count_documents

    config = config or EncodeConfig()
    config.check()
    hooks = hooks or BuildHooks()
    docs = checked_documents(corpus)  # a missing or empty corpus fails here, before anything is created
    total = count_documents(corpus) if isinstance(corpus, str | Path) else None
    out = Path(out)
    with claim_shard_folder(out, resume or config.parts > 1, config.part, config.parts):
        try:
            loaded = encoder() if callable(encoder) else encoder
            # resume=True: the claim checked the folder (it holds its lock files now)
            return encode_corpus(docs, out, loaded, config, resume=True, show_progress=show_progress, total=total)
        except BaseException as e:
            raise_keeping_shards(e, out, hooks)
            raise


def raise_keeping_shards(error: BaseException, out: Path, hooks: BuildHooks) -> None:
    """For an encode that completed shards: say they are kept and how to continue (a pooledir error, reworded).

    Called with the error that stopped a claimed encode (local or Ray); an interruption is told to
    ``hooks.stopped`` and left for the caller to raise again.
    """
    done = len(list(out.glob("shard-*.json"))) if out.is_dir() else 0
    if not done:
        return  # the claim removes what this encode made
    kept = f"the {done} completed shards in {out} are kept"
    if isinstance(error, PooledirError):
        raise type(error)(f"{error} ({kept}: fix that, then continue with: {hooks.resume_hint})") from None
    hooks.stopped(f"stopped; {kept}; continue with: {hooks.resume_hint}")
