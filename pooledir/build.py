"""Streamed index builds: a corpus, or folders of encoded shards, into an index one chunk at a time.

Each chunk goes read → encode → pool → write (the steps of :mod:`pooledir.pipeline`), and every write
is one durable commit, so:

* memory holds one chunk's vectors, never the corpus's. The exception is the start of an IVF-PQ
  build: it is trained once, on a sample of the first add, so the first chunks are buffered until
  they hold ``train_sample`` pooled vectors (or the corpus ends) and go in as one add;
* a build stopped anywhere (Ctrl-C, kill -9, power loss) can resume: the documents it committed
  are a prefix of the stream, which a resumed build finds again by id in the index, chunk by
  chunk, and skips. Duplicate ids are caught the same way: within the chunk (and the training
  buffer) in memory, against everything committed before in the index's store.

:func:`pooledir.build_shards.encode_corpus` runs the first half (read → encode → pool) into shards
(:mod:`pooledir.shards`); :func:`build_index_from_shards` runs the second half from them,
without an encoder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from pooledir import pipeline
from pooledir.corpus import Document, check_documents
from pooledir.errors import InputError
from pooledir.index.manifest import EncoderRecord
from pooledir.shards import ShardError, ShardManifest, ShardSpec, check_compatible, open_shard, read_shard_manifest

if TYPE_CHECKING:
    from pooledir.encoder import ColBERTEncoder
    from pooledir.pooled_index import IndexConfig, PooledIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

#: documents per chunk: on 128-d vectors of ~250 tokens a document, about 0.1 GB of float16 token
#: vectors plus 0.06 GB of float32 pooled ones at factor 2 (see the README's memory rule)
DEFAULT_CHUNK_DOCS = 2_000


def check_positive(name: str, value: int | None, optional: bool = False) -> None:
    """Raise :class:`InputError` unless ``value`` is a positive integer (or None, when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name}={value!r} must be a positive integer")


@dataclass(frozen=True)
class BuildConfig:
    """How a streamed build walks its input.

    Attributes
    ----------
    chunk_docs : documents read, encoded, pooled and committed together (memory grows with it).
    limit : stop after the first ``limit`` documents of the input (None: all).
    """

    chunk_docs: int = DEFAULT_CHUNK_DOCS
    limit: int | None = None

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        check_positive("chunk_docs", self.chunk_docs)
        check_positive("limit", self.limit, optional=True)


@dataclass
class BuildReport:
    """What a streamed build did.

    ``documents`` counts what was read (skipped ones included); ``max_vectors_held`` is the most
    token and pooled vectors the build held at once (its memory, in vectors of ``dim`` floats).
    """

    documents: int = 0
    added: int = 0
    skipped: int = 0
    commits: int = 0
    tokens: int = 0
    vectors: int = 0
    max_vectors_held: int = 0
    encode_s: float = 0.0
    pool_s: float = 0.0
    add_s: float = 0.0
    seconds: float = 0.0

    @property
    def docs_per_s(self) -> float:
        """Documents read per second, over the whole build."""
        return self.documents / self.seconds if self.seconds else 0.0


@dataclass(eq=False)
class Chunk:
    """Consecutive documents of the input and, once encoded, their vectors: all a build holds of the corpus.

    ``vectors`` are one (n, dim) array per document, token vectors until ``pooled``.
    """

    start: int
    docs: list[Document]
    vectors: list[np.ndarray] | None = None
    n_tokens: np.ndarray | None = None
    pooled: bool = False

    @property
    def n_vectors(self) -> int:
        """Vectors held (0 before encoding)."""
        return 0 if self.vectors is None else sum(len(v) for v in self.vectors)

    def select(self, keep: Sequence[int]) -> Chunk:
        """The documents at positions ``keep`` (the chunk itself when that is all of them)."""
        if len(keep) == len(self.docs):
            return self
        pick = list(keep)
        return Chunk(
            self.start,
            [self.docs[i] for i in pick],
            None if self.vectors is None else [self.vectors[i] for i in pick],
            None if self.n_tokens is None else self.n_tokens[pick],
            self.pooled,
        )


def _merge(chunks: list[Chunk]) -> Chunk:
    return Chunk(
        chunks[0].start,
        [d for c in chunks for d in c.docs],
        [v for c in chunks for v in c.vectors or []],
        np.concatenate([c.n_tokens for c in chunks]),
        pooled=True,
    )


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def corpus_chunks(documents: Iterable[Document], chunk_docs: int, limit: int | None = None) -> Iterator[Chunk]:
    """Cut a document stream into chunks, reading one chunk ahead at most."""
    if limit is not None:
        documents = islice(documents, limit)
    start = 0
    for batch in batches(documents, chunk_docs):
        yield Chunk(start, batch)
        start += len(batch)


def shard_chunks(
    manifests: Sequence[ShardManifest], chunk_docs: int, pooled: bool, limit: int | None = None, verify: bool = True
) -> Iterator[Chunk]:
    """Chunks of documents and their vectors from shard folders, in order; one shard mapped at a time."""
    start, left = 0, limit
    for m in manifests:
        for info in m.shards:
            shard = open_shard(m.path, m.spec, info, verify=verify)
            i = 0
            for batch in batches(shard.documents(), chunk_docs):
                if left is not None:
                    batch = batch[:left]
                    left -= len(batch)
                off = shard.offsets
                vectors = [shard.vectors[off[j] : off[j + 1]] for j in range(i, i + len(batch))]
                yield Chunk(start, batch, vectors, shard.n_tokens[i : i + len(batch)].copy(), pooled)
                i += len(batch)
                start += len(batch)
                if left == 0:
                    return
            del shard


# -- which documents are new -----------------------------------------------------------------------------------
def _known_ids(index: PooledIndex, ids: Sequence[str]) -> set[str]:
    """The ids among ``ids`` the index already holds (one sqlite query per 500 ids; nothing kept)."""
    return index.known_ids(ids)


class _NewDocuments:
    """Decides, chunk by chunk, which documents of the stream to add.

    Fresh build: every id must be new (not in this chunk or the training buffer, not in the index).
    Resume: the index's documents must be the first documents of the stream; they are skipped,
    and from the first new document on the rules of a fresh build apply.
    """

    def __init__(self, index: PooledIndex, resume: bool) -> None:
        self.index = index
        self.left = len(index) if resume else 0  # committed documents not met again yet
        self.uncommitted: set[str] = set()  # ids read but not committed: this chunk and the training buffer

    def filter(self, chunk: Chunk) -> Chunk:
        known = _known_ids(self.index, [d.id for d in chunk.docs])
        keep = []
        for i, d in enumerate(chunk.docs):
            pos = chunk.start + i
            if d.id in self.uncommitted:
                raise InputError(f"duplicate document id {d.id!r} (again at document {pos} of the input)")
            if d.id in known:
                if self.left > 0:
                    self.left -= 1
                    continue
                raise InputError(
                    f"duplicate document id {d.id!r} (document {pos} of the input): an earlier document "
                    "with this id is already in the index; ids must be unique"
                )
            if self.left > 0:
                raise InputError(
                    f"cannot resume: document {pos} of the input ({d.id!r}) is not in the index, but "
                    f"{self.left} of the index's documents have not come up yet; a build resumes only with "
                    "the same input in the same order (and the same limit)"
                )
            self.uncommitted.add(d.id)
            keep.append(i)
        return chunk.select(keep)

    def committed(self) -> None:
        self.uncommitted.clear()

    def finish(self) -> None:
        if self.left:
            raise InputError(
                f"the input ended, but {self.left} documents of the index never came up in it; "
                "the index was started from a longer or different input"
            )


# -- the pipeline ----------------------------------------------------------------------------------------------
class _Progress:
    """The build's bar: documents counted as they are encoded; the postfix names the stage and what is committed.

    A first chunk of IVF-PQ is held until it can train (``train_sample`` vectors: a whole small corpus), then
    trained for minutes: the postfix says so, with the committed counts, instead of 0% or 100% and nothing.
    """

    def __init__(self, total: int | None, show: bool, report: BuildReport) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="index", unit="doc", disable=not show, smoothing=0.05)
        self.report = report
        self.counted = 0  # documents of the chunk in progress already on the bar
        self.held = 0  # documents encoded and held for training, not committed yet
        self.name = "read"

    def stage(self, name: str) -> None:
        self.name = name
        r = self.report
        held = f", {self.held:,} held for training" if self.held else ""
        self.bar.set_postfix_str(f"{name}; committed {r.added:,} documents, {r.vectors:,} vectors{held}")

    def advance(self, n: int) -> None:
        self.bar.update(n)
        self.counted += n

    def chunk_done(self, n_read: int) -> None:
        self.bar.update(n_read - self.counted)
        self.counted = 0
        self.stage("read")

    def close(self) -> None:
        self.bar.close()


def _encode(encoder: ColBERTEncoder, docs: list[Document], progress: _Progress) -> list[np.ndarray]:
    """Encode in slices of a few encoder batches, so the bar moves while a large chunk encodes."""
    progress.stage("encode")
    step = max(64, 8 * encoder.batch_size)
    out: list[np.ndarray] = []
    for i in range(0, len(docs), step):
        out += pipeline.encode([d.text for d in docs[i : i + step]], encoder)
        progress.advance(min(step, len(docs) - i))
    return out


def _chunk_batch(chunk: Chunk, index: PooledIndex) -> pipeline.WriteBatch:
    """A pooled chunk as the batch :meth:`PooledIndex.write` commits (ids checked as ``add`` checks them)."""
    prepared = pipeline.prepare(check_documents(chunk.docs, "documents"), None)
    if chunk.vectors is None or chunk.n_tokens is None:
        raise ValueError("a chunk is committed only once encoded and pooled")  # a bug, not the user's input
    return pipeline.from_embeddings(
        prepared, chunk.vectors, pipeline.PoolSpec.of(index.config), pooled=True, n_tokens=chunk.n_tokens, dim=index.dim
    )


def _check_resume(index: PooledIndex, resume: bool) -> None:
    """Refuse to resume into a passage index (its rows are not a prefix of the input's ids)."""
    if index.config.passage_stride is not None and resume and len(index):
        raise InputError(
            "resuming is not supported for an index that splits long documents into passages; "
            "build it again into a new folder"
        )


def _write_stage(chunk: Chunk, index: PooledIndex) -> str:
    """The progress bar's stage for committing ``chunk``: the first IVF-PQ write also trains."""
    cfg = index.config
    trains = cfg.backend != "flat" and not index.stats().trained
    if trains and len(index) == 0 and chunk.n_vectors >= cfg.train_min_vectors:
        return f"train IVF-PQ on {min(chunk.n_vectors, cfg.train_sample):,} vectors, write"
    return "write"


def _write_passages(chunk: Chunk, index: PooledIndex, progress: _Progress, report: BuildReport) -> None:
    """Split, encode, pool and commit a chunk for an index that stores long documents as passages."""
    if chunk.vectors is not None:
        pipeline.refuse_vectors_for_passages(index.config.passage_stride, "encoded shards")
    t = time.perf_counter()
    progress.stage("split, encode, pool, write")
    result = index.write(index.make_batch(chunk.docs))
    report.add_s += time.perf_counter() - t
    report.added += len(chunk.docs)
    report.commits += 1
    report.vectors += result.vectors


def _encode_and_pool(
    chunk: Chunk,
    index: PooledIndex,
    encoder: ColBERTEncoder | None,
    progress: _Progress,
    report: BuildReport,
    held: Callable[..., None],
) -> None:
    """Give the chunk its pooled vectors (encoded here unless it came from shards); ``held`` tracks memory."""
    if chunk.vectors is None:
        if encoder is None:
            raise InputError("an encoder is needed to encode documents")  # shards come with vectors
        t = time.perf_counter()
        chunk.vectors = _encode(encoder, chunk.docs, progress)
        chunk.n_tokens = np.array([len(v) for v in chunk.vectors], dtype=np.int64)
        report.encode_s += time.perf_counter() - t
    held(chunk.n_vectors)
    if not chunk.pooled and index.config.pools:
        t = time.perf_counter()
        progress.stage("pool")
        pooled = pipeline.pool(chunk.vectors, pipeline.PoolSpec.of(index.config), index.device)
        held(chunk.n_vectors, sum(len(p) for p in pooled))
        chunk.vectors = pooled
        del pooled
        report.pool_s += time.perf_counter() - t
    chunk.pooled = True


def _run(
    chunks: Iterator[Chunk],
    index: PooledIndex,
    encoder: ColBERTEncoder | None,
    resume: bool,
    show_progress: bool,
    total: int | None,
) -> BuildReport:

    report = BuildReport()
    t_start = time.perf_counter()
    cfg = index.config
    passages = cfg.passage_stride is not None  # the index splits long documents itself (pooledir/passages.py)
    _check_resume(index, resume)
    new = _NewDocuments(index, resume)
    # IVF-PQ trains once, on a sample of what it holds then: make the first add hold train_sample vectors
    buffering = cfg.backend != "flat" and len(index) == 0 and not passages
    buffer: list[Chunk] = []

    def add(chunk: Chunk) -> None:
        t = time.perf_counter()
        progress.stage(_write_stage(chunk, index))
        batch = _chunk_batch(chunk, index)
        index.write(batch)
        report.add_s += time.perf_counter() - t
        report.added += len(chunk.docs)
        report.commits += 1
        report.tokens += int(np.sum(batch.n_tokens))
        report.vectors += chunk.n_vectors
        new.committed()

    def held(*extra: int) -> None:
        report.max_vectors_held = max(report.max_vectors_held, sum(c.n_vectors for c in buffer) + sum(extra))

    progress = _Progress(total, show_progress, report)
    try:
        for chunk in chunks:
            n_read = len(chunk.docs)
            chunk = new.filter(chunk)
            report.skipped += n_read - len(chunk.docs)
            if chunk.docs and passages:
                _write_passages(chunk, index, progress, report)
                new.committed()
            elif chunk.docs:
                _encode_and_pool(chunk, index, encoder, progress, report, held)
                if buffering:
                    buffer.append(chunk)
                    progress.held += len(chunk.docs)
                    if sum(c.n_vectors for c in buffer) >= cfg.train_sample:
                        add(_merge(buffer))
                        buffer, buffering, progress.held = [], False, 0
                else:
                    add(chunk)
            report.documents += n_read
            progress.chunk_done(n_read)
            del chunk  # before the next one is read: at most one chunk (plus the training buffer) is alive
        if buffer:
            add(_merge(buffer))
            buffer, progress.held = [], 0
        progress.stage("done")
        new.finish()
    finally:
        progress.close()
    if report.documents == 0:
        raise InputError("the input holds no documents")
    report.seconds = time.perf_counter() - t_start
    return report


def build_index(
    documents: Iterable[Document],
    index: PooledIndex,
    config: BuildConfig | None = None,
    *,
    resume: bool = False,
    show_progress: bool = True,
    total: int | None = None,
    encoder: ColBERTEncoder | None = None,
) -> BuildReport:
    """Encode, pool and add a document stream to ``index``, one committed chunk at a time.

    Parameters
    ----------
    documents
        Any iterable, read lazily (e.g. :func:`pooledir.corpus.iter_corpus`).
    index
        The index to fill (usually new and empty).
    config
        Chunk size and document limit.
    resume
        Skip the documents a stopped build of the same input already committed.
    show_progress
        A progress bar with documents/s (and an ETA when ``total`` is given).
    total
        How many documents the input holds, for the ETA (:func:`pooledir.corpus.count_documents`).
    encoder
        Encoder to use (default: the index's own).
    """
    config = config or BuildConfig()
    config.check()
    encoder = encoder or index.encoder
    chunks = corpus_chunks(documents, config.chunk_docs, config.limit)
    if total is not None and config.limit is not None:
        total = min(total, config.limit)
    return _run(chunks, index, encoder, resume, show_progress, total)


# -- from shards -----------------------------------------------------------------------------------------------
def shards_pooled_for(spec: ShardSpec, config: IndexConfig) -> bool:
    """Whether shards made with ``spec`` go into an index with ``config`` as they are (True) or get pooled."""
    pipeline.refuse_vectors_for_passages(config.passage_stride, "encoded shards")  # shards hold no passages
    if spec.pool_factor == 1:
        return not config.pools
    if config.pool_threshold is not None:
        raise ShardError(
            f"the shards are pooled x{spec.pool_factor}; an index with pool_threshold={config.pool_threshold:g} "
            "pools adaptively and needs unpooled shards: encode with pool factor 1"
        )
    if config.pool_factor != spec.pool_factor:
        raise ShardError(
            f"the shards are pooled x{spec.pool_factor}; an index over them needs pool_factor={spec.pool_factor} "
            f"(got {config.pool_factor}); to choose the factor at index time, encode with pool factor 1"
        )
    if config.protected_tokens != spec.protected_tokens:
        raise ShardError(
            f"the shards were pooled with protected_tokens={spec.protected_tokens}; an index over them needs "
            f"the same (got {config.protected_tokens})"
        )
    return True


def read_shard_folders(paths: Sequence[str | Path]) -> tuple[list[ShardManifest], ShardSpec]:
    """Read shard folders to be indexed together, in order, and the spec they share."""
    if not paths:
        raise InputError("no shard folder given")
    manifests = [read_shard_manifest(p) for p in paths]
    return manifests, check_compatible(manifests)


@dataclass(frozen=True)
class _RecordedEncoder:
    """The encoder a shard folder records: what ``PooledIndex.create`` saves, without loading the model."""

    path: str
    dim: int
    settings: EncoderRecord  # holds the settings as attributes, as a loaded encoder's ColBERTSettings do


def create_index_for_shards(
    path: str | Path, spec: ShardSpec, config: IndexConfig, device: str = "auto"
) -> PooledIndex:
    """Create an empty index that records the shards' checkpoint and encoder settings (no model loaded).

    Queries are later encoded with that checkpoint and those settings, as the documents were.
    """
    from pooledir.pooled_index import PooledIndex

    shards_pooled_for(spec, config)
    PooledIndex.create(
        path, config=config, device=device, encoder=_RecordedEncoder(spec.checkpoint, spec.dim, spec.encoder)
    ).close()
    return PooledIndex.open(path, device=device)  # loads the encoder from the record when a query needs it


def build_index_from_shards(
    paths: Sequence[str | Path],
    index: PooledIndex,
    config: BuildConfig | None = None,
    *,
    resume: bool = False,
    show_progress: bool = True,
    verify: bool = True,
) -> BuildReport:
    """Add the documents of shard folders (in order) to ``index``, one committed chunk at a time.

    Shards pooled at the index's factor go in as they are; unpooled shards (factor 1) are pooled
    here. ``verify`` checks every shard file against the sha256 its header records.
    """
    config = config or BuildConfig()
    config.check()
    manifests, spec = read_shard_folders(paths)
    if spec.dim != index.dim:
        raise ShardError(f"the shards hold {spec.dim}-d vectors; the index holds {index.dim}-d ones")
    pooled = shards_pooled_for(spec, index.config)
    total = sum(m.documents for m in manifests)
    if config.limit is not None:
        total = min(total, config.limit)
    chunks = shard_chunks(manifests, config.chunk_docs, pooled, config.limit, verify)
    return _run(chunks, index, None, resume, show_progress, total)
