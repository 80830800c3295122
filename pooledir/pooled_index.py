"""A pooled multi-vector index on disk: encode → pool → segments, plus documents.

:class:`PooledIndex` is a facade: the folder, its segments and the commit
protocol are in :mod:`pooledir.index.folder` (layout described there), the
read side in :mod:`pooledir.index.snapshot`, the search algorithms in
:mod:`pooledir.search`. This class encodes and pools documents, checks input,
and turns internal numbers into :class:`Hit` objects.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pooledir import pipeline
from pooledir.corpus import Document, check_documents
from pooledir.device import faiss_gpu_available, resolve_device, use_gpu
from pooledir.errors import DocumentNotFoundError, IndexCorruptError, InputError
from pooledir.fusion import Fusion
from pooledir.index.folder import IndexFolder, ensure_layout
from pooledir.index.manifest import IndexConfig, Manifest, read_manifest, record_encoder
from pooledir.index.segments import describe_quantizer
from pooledir.index_info import IndexInfo, SegmentInfo
from pooledir.lexical import has_table
from pooledir.pipeline import WriteBatch
from pooledir.search import Hit, SearchParams, exact_search, search_embeddings
from pooledir.store import MAX_FILTER_FIELDS, DocStore, check_filter

if TYPE_CHECKING:
    from pooledir.encoder import ColBERTEncoder

__all__ = [
    "MAX_FILTER_FIELDS",
    "AddResult",
    "Hit",
    "IndexConfig",
    "IndexInfo",
    "PooledIndex",
    "SnapshotStats",
    "read_manifest",
]


@dataclass(frozen=True)
class AddResult:
    """What one :meth:`PooledIndex.add` did: counts, and seconds spent encoding, pooling and writing."""

    documents: int
    replaced: int
    vectors: int
    encode_s: float
    pool_s: float
    write_s: float


@dataclass(frozen=True)
class SnapshotStats:
    """Counts of the loaded snapshot, cheap to read (no file is opened; :meth:`PooledIndex.describe` has the rest).

    Attributes
    ----------
    commit : the commit the snapshot shows.
    rows : live stored rows (documents, or passages of split documents).
    segments : segment files the snapshot reads.
    stored_vectors : vectors in those segments, deleted ones not yet compacted away included.
    live_vectors : vectors of live rows.
    trained : whether the index has a trained quantizer (an IVF-PQ index past ``train_min_vectors``).
    trained_vectors : vectors the quantizer was trained for (0 untrained).
    """

    commit: int
    rows: int
    segments: int
    stored_vectors: int
    live_vectors: int
    trained: bool
    trained_vectors: int


class PooledIndex:
    """A pooled ColBERT index: create or open one, then add, delete, get and search.

    Use :meth:`create` and :meth:`open` rather than the constructor.
    """

    def __init__(self, path: Path, manifest: Manifest, device: str, encoder: Any = None) -> None:
        self.path = path
        self.manifest = manifest
        self.config = manifest.config
        self.dim = manifest.dim
        self.device = resolve_device(device)  # 'auto' becomes the device in use
        if encoder is not None and encoder.dim != self.dim:
            raise InputError(f"the encoder makes {encoder.dim}-d vectors; this index holds {self.dim}-d ones")
        self._encoder: Any = encoder  # a ColBERTEncoder, or a stand-in that records one (build.py, tests)
        self._backends: dict[str, str] = {}  # how an encoder loaded on first use runs (see open())
        self._folder = IndexFolder.open(path, self.config, self.dim, use_gpu=use_gpu(self.device))

    # -- opening ----------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | None = None,
        config: IndexConfig | None = None,
        device: str = "auto",
        encoder: Any = None,
    ) -> PooledIndex:
        """Create an empty index folder for ``checkpoint`` (or a ready ``encoder``)."""
        from pooledir.encoder import ColBERTEncoder

        config = config or IndexConfig()
        config.check()
        path = Path(path)
        if path.exists() and any(p.name != ".lock" for p in path.iterdir()):  # .lock: a build's claim on it
            raise InputError(f"{path} exists and is not empty; pick a new folder or delete it first")
        if encoder is None:
            if checkpoint is None:
                raise InputError("pass a checkpoint (folder or hub id) or an encoder")
            encoder = ColBERTEncoder(checkpoint, device=device)
        if config.pq_m is not None and encoder.dim % config.pq_m:  # else faiss fails only when it trains, much later
            from pooledir.index.segments import default_pq_m

            raise InputError(
                f"pq_m={config.pq_m} must divide the vector dimension {encoder.dim}; "
                f"pass a divisor such as {default_pq_m(encoder.dim)}"
            )
        if config.passage_stride is not None:
            from pooledir.passages import check_stride

            check_stride(config.passage_stride, encoder)
        path.mkdir(parents=True, exist_ok=True)
        checkpoint, record = record_encoder(encoder)
        manifest = Manifest(checkpoint=checkpoint, encoder=record, config=config)
        ensure_layout(path)
        DocStore.create(path / "docs.sqlite").close()
        manifest.write(path)
        return cls(path, manifest, device, encoder)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        device: str = "auto",
        encoder: Any = None,
        query_backend: str = "auto",
        document_backend: str = "torch",
    ) -> PooledIndex:
        """Open an index folder; raises :class:`IndexCorruptError` if its files disagree.

        ``query_backend``/``document_backend`` choose how the encoder loaded on first use runs
        (see :class:`~pooledir.encoder.ColBERTEncoder`); a ready ``encoder`` already has its own.
        """
        from pooledir.encoder import check_backends

        check_backends(query_backend, document_backend)
        backends = {"query_backend": query_backend, "document_backend": document_backend}
        if encoder is not None and (query_backend, document_backend) != ("auto", "torch"):
            raise InputError("pass either an encoder or the backends to load one with, not both")
        path = Path(path)
        manifest = read_manifest(path)
        index = cls(path, manifest, device, encoder)  # the folder checks docs.sqlite is there
        index._backends = backends
        return index

    def verify(self, full: bool = False) -> None:
        """Raise :class:`IndexCorruptError` if the loaded index's files are damaged (for a readiness probe).

        Cheap by default: one ``stat`` per segment file (a file changed since it was checked is read
        against its checksum again) and one read of the document store. ``full`` re-reads every
        segment file and runs sqlite's ``quick_check`` (O(index)).
        """
        self._folder.snapshot.verify(full)
        try:
            self._folder.store.get_meta("commit")
            if full:
                result = self._folder.store.conn.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(result)
        except sqlite3.OperationalError:
            raise  # the machine's problem (I/O, permissions), not a corrupt file
        except sqlite3.DatabaseError as e:
            raise IndexCorruptError(f"{self.path}/docs.sqlite is corrupt: {e}") from None

    def is_stale(self) -> bool:
        """True when another process has committed a write this object has not loaded."""
        return self._folder.is_stale()

    def refresh(self) -> bool:
        """Catch up with writes another process committed; returns True if anything was reloaded."""
        return self._folder.refresh()

    @property
    def commit(self) -> int:
        """The commit the loaded snapshot shows."""
        return self._folder.snapshot.commit

    def pin(self) -> None:
        """Hold a read transaction at the newest commit, its snapshot loaded, until :meth:`release`."""
        self._folder.store.pin()
        self._folder.refresh()  # pinned first: if the counter on disk still equals the snapshot's, so does the pin's

    def release(self) -> None:
        """End the read transaction that pins the snapshot: an idle reader then holds no sqlite WAL frames.

        Reads of the store (``get``, ``info``, hits' ids) must :meth:`pin` again first.
        """
        self._folder.store.unpin()

    def checkpoint(self) -> None:
        """Fold the sqlite WAL into the database and truncate it (best effort: gives up while others read)."""
        self._folder.store.checkpoint()

    @property
    def encoder(self) -> ColBERTEncoder:
        """The ColBERT encoder, loaded from the manifest's checkpoint on first use."""
        if self._encoder is None:
            from pooledir.encoder import encoder_for_index

            self._encoder = encoder_for_index(self.manifest, self.device, **self._backends)
            if self._encoder.dim != self.dim:
                raise IndexCorruptError(f"checkpoint dim {self._encoder.dim} != index dim {self.dim}")
        return cast("ColBERTEncoder", self._encoder)

    def close(self) -> None:
        """Release the segment mappings and the sqlite connections."""
        self._folder.close()

    def __enter__(self) -> PooledIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """Documents in the loaded snapshot; a document split into passages counts once (rows: :attr:`n_rows`)."""
        return self._documents(self.n_rows)

    @property
    def n_rows(self) -> int:
        """Stored rows of the loaded snapshot, what search ranks: a document, or one passage of a split document."""
        return self._folder.snapshot.n_docs

    def stats(self) -> SnapshotStats:
        """Counts of the loaded snapshot (call :meth:`refresh` first to see other processes' writes)."""
        snap = self._folder.snapshot
        return SnapshotStats(
            commit=snap.commit,
            rows=snap.n_docs,
            segments=len(snap.segments),
            stored_vectors=snap.n_stored,
            live_vectors=snap.n_live,
            trained=snap.quantizer is not None,
            trained_vectors=snap.trained_vectors,
        )

    @property
    def quantizer(self) -> Any:
        """The trained faiss IVF-PQ quantizer of the loaded snapshot (for reading), or None while untrained.

        :meth:`describe` says the same in words (``backend``: nlist, pq_m, ...).
        """
        return self._folder.snapshot.quantizer

    @property
    def doc_store(self) -> DocStore:
        """The document store (ids, texts, metadata and the lexical table) at the pinned snapshot: for reading.

        What the lexical lane searches; writes go through :meth:`add`/:meth:`write`/:meth:`delete`.
        """
        return self._folder.store

    def row_ids(self) -> list[str]:
        """External ids of every live stored row of the loaded snapshot (documents, or passages), in stored order."""
        return self._folder.store.ext_ids(self._folder.snapshot.live_docs())

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that are stored rows (with passages: a passage's id, e.g. ``doc#p0``)."""
        return set(self._folder.store.lookup(list(ids)))

    def _documents(self, rows: int) -> int:
        """The documents ``rows`` stored rows hold: fewer than the rows where documents were split into passages."""
        if self.config.passage_stride is None:
            return rows
        from pooledir.passages import count_documents

        return count_documents(self._folder.store, rows)

    # -- writing ----------------------------------------------------------------------------------------------
    def add(
        self,
        documents: Iterable[Document],
        embeddings: Sequence[np.ndarray] | None = None,
        pooled: bool = False,
        n_tokens: Sequence[int] | None = None,
        show_progress: bool = False,
    ) -> AddResult:
        """Add (or replace, by id) documents as one new segment; durable on return.

        ``embeddings`` (one (n_tokens, dim) array per document) skips encoding, e.g. to reuse
        cached vectors; with ``pooled=True`` they are already pooled (``n_tokens``: the counts
        before pooling, default the arrays' lengths). The write costs O(batch), whatever the
        index holds; an IVF-PQ index keeps vectors exact until it holds enough to train.
        Same as ``write(make_batch(...))`` (see :mod:`pooledir.pipeline`).
        """
        docs = check_documents(documents, "documents")
        self._folder.check_writable()  # before encoding, which may take minutes
        return self.write(self.make_batch(docs, embeddings, pooled, n_tokens, show_progress))

    def make_batch(
        self,
        documents: Iterable[Document],
        embeddings: Sequence[np.ndarray] | None = None,
        pooled: bool = False,
        n_tokens: Sequence[int] | None = None,
        show_progress: bool = False,
    ) -> WriteBatch:
        """Prepare (passages), encode and pool documents as this index does: the batch :meth:`write` commits.

        Reads nothing the index's writes change, so a server can run it outside its write lock.
        """
        docs = check_documents(documents, "documents")
        stride = self.config.passage_stride
        if embeddings is not None:
            pipeline.refuse_vectors_for_passages(stride)
        elif pooled:
            raise InputError("pooled=True needs the pooled embeddings")
        prepared = pipeline.prepare(docs, stride, self.encoder if stride is not None else None)
        spec = pipeline.PoolSpec.of(self.config)
        if embeddings is None:
            return pipeline.encode_and_pool(prepared, self.encoder, spec, self.device, show_progress)
        return pipeline.from_embeddings(
            prepared, embeddings, spec, self.device, pooled, n_tokens, show_progress, dim=self.dim
        )

    def write(self, batch: WriteBatch) -> AddResult:
        """Commit a batch from :meth:`make_batch` (or :mod:`pooledir.pipeline`) as one new segment; durable on return.

        Documents already stored are replaced; with passages, all of a document's old passages.
        """
        pipeline.check_batch(batch, self.config.passage_stride, self.dim)
        t0 = time.perf_counter()
        index_batch = batch.to_index_batch()
        if batch.passage_stride is not None:  # re-adding a document replaces all of its old passages
            self._folder.refresh()
            index_batch = replace(index_batch, replaces=tuple(self._stored_ids(batch.documents)))
        replaced = self._folder.upsert(index_batch)
        return AddResult(
            len(batch.documents), replaced, batch.n_vectors, batch.encode_s, batch.pool_s, time.perf_counter() - t0
        )

    def _stored_ids(self, ids: Sequence[str]) -> list[str]:
        """The rows that hold ``ids``: with passages, a split document's are its passages."""
        if self.config.passage_stride is None:
            return list(ids)
        from pooledir.passages import stored_ids

        return stored_ids(self._folder.store, ids)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by external id (tombstones, O(ids)); unknown ids raise before anything changes."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise InputError("no document ids given")
        self._folder.refresh()
        found = self._lookup_all(self._stored_ids(ids))
        self._folder.delete(list(found.values()))
        return len(ids)

    def _lookup_all(self, ids: list[str]) -> dict[str, int]:
        self._folder.refresh()
        found = self._folder.store.lookup(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DocumentNotFoundError(f"unknown document id(s): {', '.join(map(repr, missing[:5]))}{more}")
        return found

    def compact(self, retrain: bool | None = None) -> None:
        """Merge all segments into one, dropping deleted vectors; re-train when due (or when ``retrain``).

        A crash at any point leaves the previous segments valid: the new one is switched in by one commit.
        """
        self._folder.compact(retrain)

    def upgrade(self) -> bool:
        """Rewrite a format 2 index as format 3 in place (re-trained, every segment pq3); False if already 3."""
        done = self._folder.upgrade()
        self.manifest = read_manifest(self.path)
        return done

    def attach_segments(self, paths: Sequence[str | os.PathLike[str]]) -> int:
        """Attach segments built by :func:`pooledir.index.detached.build_segment` in one commit.

        Returns the number of documents attached; ids already in the index are replaced.
        """
        from pooledir.index.detached import attach

        return attach(self._folder, [Path(p) for p in paths])

    def train_quantizer(self, sample: np.ndarray, n_total: int) -> None:
        """Train the IVF-PQ quantizer of an index that holds no vectors yet on ``sample``, in one commit.

        For builds that write their segments elsewhere and attach them (:meth:`attach_segments`): ``n_total``
        is how many vectors those will hold (it sizes the IVF lists).
        """
        from pooledir.index.detached import train_for_attach

        train_for_attach(self._folder, sample, n_total)

    def install_quantizer(self, quantizer: Any, n_total: int) -> None:
        """Make a trained faiss quantizer this (still empty) index's, in one commit: partitions share one."""
        from pooledir.index.detached import install_quantizer

        install_quantizer(self._folder, quantizer, n_total)

    # -- reading ----------------------------------------------------------------------------------------------
    def get(self, id: str) -> Document:
        """The stored document with external id ``id``."""
        found = self._folder.store.lookup([id])
        if id not in found and self.config.passage_stride is not None:
            from pooledir.passages import parent_document

            return parent_document(self.get, id)
        if id not in found:
            raise DocumentNotFoundError(f"unknown document id {id!r}")
        row = self._folder.store.rows([found[id]])[0]
        return Document(row.id, row.text, row.metadata)

    def search(
        self,
        queries: str | Sequence[str],
        k: int | None = None,
        params: SearchParams | None = None,
        with_text: bool = False,
        filter: dict[str, Any] | None = None,
        mode: str = "dense",
        fusion: Fusion | None = None,
    ) -> list[list[Hit]]:
        """Search one query or a batch; returns one ranked list of :class:`Hit` per query (see search_embeddings).

        ``mode``: ``"dense"`` (MaxSim), ``"lexical"`` (BM25 over the stored text) or ``"hybrid"`` (both,
        fused by ``fusion``); see :mod:`pooledir.hybrid`. ``k`` defaults to ``params.k`` (10 without
        ``params``); passing both with different values raises :class:`InputError`.
        """
        from pooledir.encoder import check_texts

        if isinstance(queries, str):
            queries = [queries]
        queries = check_texts(queries, "query")  # before the encoder loads: that takes seconds
        params = resolve_k(k, params)
        params.check()
        if mode != "dense":
            from pooledir import hybrid

            return hybrid.search(self, queries, params, mode, with_text, filter, fusion)
        Q = self.encoder.encode_queries(queries)
        return self.search_embeddings(Q, params, with_text=with_text, filter=filter)

    def search_embeddings(
        self,
        Q: np.ndarray,
        params: SearchParams | None = None,
        with_text: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Search already-encoded queries (nq, Lq, dim) in the loaded snapshot.

        With ``filter`` (metadata field -> value), only documents whose metadata equals every field are
        ranked, each by exact MaxSim over its stored vectors. Each query gets ``min(k, documents that
        match)`` hits, whatever its length.
        """
        params = params or SearchParams()
        params.check()
        if filter:  # {} is no filter, as in _search_hits
            check_filter(filter)  # before any work: both lanes match it in sqlite
        if Q.ndim != 3 or Q.shape[2] != self.dim:
            raise InputError(f"query embeddings of shape {Q.shape} are not (nq, Lq, {self.dim})")
        if self.n_rows == 0:
            return [[] for _ in range(len(Q))]
        if self.config.passage_stride is not None:
            from pooledir.passages import search_parents

            def rows(p: SearchParams) -> list[list[Hit]]:
                return self._search_hits(Q, p, False, filter)

            return search_parents(rows, self.n_rows, self.get, params, with_text)
        return self._search_hits(Q, params, with_text, filter)

    def _search_hits(
        self, Q: np.ndarray, params: SearchParams, with_text: bool, filter: dict[str, Any] | None
    ) -> list[list[Hit]]:
        """One hit per stored row (document or passage), best first."""
        snap, store = self._folder.snapshot, self._folder.store
        if filter:
            ranked = exact_search(Q, store.matching(filter), snap.fetch, params.k)
        else:  # min(k, live documents) hits: exhaustive where the ANN candidates run out
            ranked = search_embeddings(Q, snap.sources(), snap.fetch, params, snap.live_docs())
        out = []
        for doc_ints, scores in ranked:
            if with_text:
                rows = store.rows(doc_ints)
                out.append([Hit(r.id, float(s), r.text, r.metadata) for r, s in zip(rows, scores)])
            else:
                out.append([Hit(i, float(s)) for i, s in zip(store.ext_ids(doc_ints), scores)])
        return out

    def info(self) -> dict[str, Any]:
        """Counts, sizes, segments and settings as JSON (``pooledir info --json``); typed: :meth:`describe`."""
        return self.describe().to_json()

    def describe(self) -> IndexInfo:
        """Counts, sizes, segments and settings of the loaded snapshot, for ``pooledir info`` and the service."""
        snap, store = self._folder.snapshot, self._folder.store
        counts = store.counts()
        files = [p for p in [*self.path.iterdir(), *(self.path / "segments").iterdir()] if p.is_file()]
        files = [p for p in files if not p.name.endswith(".tmp") and p.name != ".lock"]
        backend: dict[str, Any] = {"kind": self.config.backend, "dim": self.dim, "trained": snap.quantizer is not None}
        backend["codec"] = self._folder.pq_kind if self.config.backend == "ivfpq" else "flat"  # what new segments are
        if snap.quantizer is not None:
            backend |= describe_quantizer(snap.quantizer)
            backend["device"] = "gpu" if self.device != "cpu" and faiss_gpu_available() else "cpu"
        sizes = {str(p.relative_to(self.path)): p.stat().st_size for p in files}
        return IndexInfo(
            path=str(self.path),
            device=self.device,
            checkpoint=self.manifest.checkpoint,
            documents=self._documents(counts["documents"]),
            vectors_before_pooling=counts["tokens"],
            vectors=counts["vectors"],
            pool_factor=self.config.pool_factor,
            pool_threshold=self.config.pool_threshold,
            config=asdict(self.config),
            backend=backend,
            segments=tuple(SegmentInfo(s.seg_id, s.kind, s.n_vectors, s.n_live) for s in snap.segments),
            deleted_vectors=snap.n_stored - snap.n_live,
            trained_vectors=snap.trained_vectors,
            retrain_recommended=self._folder.retrain_recommended(),
            bytes=sizes,
            index_bytes=sum(sizes.values()),
            commit=snap.commit,
            lexical=has_table(store.conn),  # the lexical (FTS5) table is there: modes lexical and hybrid work
        )


def resolve_k(k: int | None, params: SearchParams | None) -> SearchParams:
    """The search's params: ``k`` fills ``params.k`` when only one is given; two different values are refused."""
    if params is None:
        return SearchParams() if k is None else SearchParams(k=k)
    if k is not None and k != params.k:
        raise InputError(f"k={k} and params.k={params.k} disagree; pass k in one of them")
    return params
