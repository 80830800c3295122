"""A pooled multi-vector index on disk: encode → pool → vector backend, plus documents.

An index is a folder::

    manifest.json        format version, config, checkpoint, counts (written atomically)
    docs.sqlite          documents + the current generation (the source of truth)
    vectors.<gen>.faiss  the vector backend of that generation
    exact.f16            optional float16 copy of every vector (append-only)
    .lock                serialises writers across processes

A write builds the next generation's faiss file beside the current one, then
one sqlite commit switches documents and generation together; a crash at any
point leaves the previous generation readable.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pooledir.corpus import Document, check_documents
from pooledir.encoder import ENCODER_SETTINGS
from pooledir.errors import DocumentNotFoundError, IndexCorruptError, InputError
from pooledir.index.base import MAX_VECTORS_PER_DOC, VectorBackend, vector_ids
from pooledir.index.flat import FlatBackend
from pooledir.index.ivfpq import IVFPQBackend
from pooledir.pooling import pool_embeddings
from pooledir.search import SearchParams, search_embeddings
from pooledir.store import DocStore

log = logging.getLogger(__name__)

FORMAT = "pooledir-index"
FORMAT_VERSION = 1
BACKENDS: dict[str, type[VectorBackend]] = {"ivfpq": IVFPQBackend, "flat": FlatBackend}


@dataclass(frozen=True)
class IndexConfig:
    """How an index stores vectors; fixed at creation and saved in the manifest.

    Attributes
    ----------
    backend : ``"ivfpq"`` (compressed, default) or ``"flat"`` (exact).
    pool_factor : shrink factor of each document's vectors (1 = no pooling).
    protected_tokens : leading vectors never pooled (1 = [CLS]).
    nlist, pq_m, pq_nbits : IVF-PQ shape; ``None`` = ≈4·√N lists and dim/8 sub-quantizers.
    keep_exact : also keep float16 vectors so MaxSim scores exactly (more disk).
    train_sample : vectors sampled to train IVF-PQ.
    """

    backend: str = "ivfpq"
    pool_factor: int = 2
    protected_tokens: int = 1
    nlist: int | None = None
    pq_m: int | None = None
    pq_nbits: int = 8
    keep_exact: bool = False
    train_sample: int = 262_144

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        if self.backend not in BACKENDS:
            raise InputError(f"backend={self.backend!r} is not one of {sorted(BACKENDS)}")
        if isinstance(self.pool_factor, bool) or not isinstance(self.pool_factor, int) or self.pool_factor < 1:
            raise InputError(f"pool_factor={self.pool_factor!r} must be an integer >= 1 (1 = no pooling)")
        if self.protected_tokens < 0:
            raise InputError(f"protected_tokens={self.protected_tokens} must be >= 0")
        if self.nlist is not None and self.nlist < 1:
            raise InputError(f"nlist={self.nlist} must be >= 1")
        if not 1 <= self.pq_nbits <= 16:
            raise InputError(f"pq_nbits={self.pq_nbits} must be between 1 and 16")
        if self.train_sample < 1:
            raise InputError(f"train_sample={self.train_sample} must be >= 1")


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = field(default=None)


def read_manifest(path: str | os.PathLike[str]) -> dict:
    """Read and check an index folder's manifest.json (format and version)."""
    path = Path(path)
    mf = path / "manifest.json"
    if not path.is_dir():
        raise InputError(f"no index at {path}: not a folder")
    if not mf.is_file():
        raise IndexCorruptError(f"{path} is not a pooledir index: manifest.json is missing")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexCorruptError(f"{mf} is corrupt: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"{mf} is not a pooledir manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexCorruptError(
            f"{mf} has format_version {manifest.get('format_version')}, this pooledir reads {FORMAT_VERSION}"
        )
    return manifest


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PooledIndex:
    """A pooled ColBERT index: create or open one, then add, delete, get and search.

    Use :meth:`create` and :meth:`open` rather than the constructor.
    """

    def __init__(self, path: Path, manifest: dict, store: DocStore, device: str, encoder=None) -> None:
        self.path = path
        self.manifest = manifest
        self.config = IndexConfig(**manifest["config"])
        self.dim = int(manifest["encoder"]["dim"])
        self.store = store
        self.device = device
        if encoder is not None and encoder.dim != self.dim:
            raise InputError(f"the encoder makes {encoder.dim}-d vectors; this index holds {self.dim}-d ones")
        self._encoder = encoder
        self.last_timings: dict[str, float] = {}
        self._load_state()

    # -- opening ----------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | None = None,
        config: IndexConfig | None = None,
        device: str = "auto",
        encoder=None,
    ) -> PooledIndex:
        """Create an empty index folder for ``checkpoint`` (or a ready ``encoder``)."""
        from pooledir.encoder import ColBERTEncoder

        config = config or IndexConfig()
        config.check()
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise InputError(f"{path} exists and is not empty; pick a new folder or delete it first")
        if encoder is None:
            if checkpoint is None:
                raise InputError("pass a checkpoint (folder or hub id) or an encoder")
            encoder = ColBERTEncoder(checkpoint, device=device)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "checkpoint": str(Path(encoder.path).resolve()),
            "encoder": {"dim": encoder.dim} | {k: getattr(encoder.settings, k) for k in ENCODER_SETTINGS},
            "config": asdict(config),
        }
        store = DocStore(path / "docs.sqlite")
        index = cls(path, manifest, store, device, encoder)
        index._write_manifest()
        return index

    @classmethod
    def open(cls, path: str | os.PathLike[str], device: str = "auto", encoder=None) -> PooledIndex:
        """Open an index folder; raises :class:`IndexCorruptError` if its files disagree."""
        import sqlite3

        path = Path(path)
        manifest = read_manifest(path)
        if not (path / "docs.sqlite").is_file():
            raise IndexCorruptError(f"{path}: docs.sqlite is missing")
        try:
            store = DocStore(path / "docs.sqlite")
        except sqlite3.DatabaseError as e:
            raise IndexCorruptError(f"{path}/docs.sqlite is corrupt: {e}") from None
        try:
            return cls(path, manifest, store, device, encoder)
        except (KeyError, TypeError) as e:
            store.close()
            raise IndexCorruptError(f"{path}/manifest.json lacks or mangles a field: {e}") from None
        except Exception:
            store.close()
            raise

    def _load_state(self) -> None:
        """(Re)load the backend of the current generation and the per-document tables."""
        import sqlite3

        try:
            self.generation = int(self.store.get_meta("generation", "0"))
        except sqlite3.DatabaseError as e:
            raise IndexCorruptError(f"{self.path}/docs.sqlite is corrupt: {e}") from None
        self.backend = self._read_backend(self.generation)
        self._load_tables()

    def _load_tables(self) -> None:
        """Per-document vector counts and exact-copy offsets, indexed by internal number."""
        import sqlite3

        try:
            doc_ints, n_vectors, exact = self.store.layout()
        except sqlite3.DatabaseError as e:
            raise IndexCorruptError(f"{self.path}/docs.sqlite is corrupt: {e}") from None
        size = int(doc_ints.max()) + 1 if len(doc_ints) else 0
        self._n_vectors = np.zeros(size, dtype=np.int64)
        self._n_vectors[doc_ints] = n_vectors
        self._exact_offset = np.full(size, -1, dtype=np.int64)
        self._exact_offset[doc_ints] = exact
        self._exact = None
        if self.backend.ntotal != int(n_vectors.sum()):
            raise IndexCorruptError(
                f"{self.path}: the vector file holds {self.backend.ntotal} vectors but the documents "
                f"own {int(n_vectors.sum())}; the index is mismatched"
            )

    def _faiss_path(self, generation: int) -> Path:
        return self.path / f"vectors.{generation}.faiss"

    def _new_backend(self) -> VectorBackend:
        c = self.config
        if c.backend == "flat":
            return FlatBackend(self.dim)
        return IVFPQBackend(self.dim, c.nlist, c.pq_m, c.pq_nbits, use_gpu=self.device != "cpu")

    def _read_backend(self, generation: int) -> VectorBackend:
        if generation == 0:
            return self._new_backend()
        fp = self._faiss_path(generation)
        if not fp.is_file():
            raise IndexCorruptError(f"{self.path}: {fp.name} is missing (generation {generation})")
        try:
            backend = BACKENDS[self.config.backend].load(fp, self.config.__dict__, use_gpu=self.device != "cpu")
        except RuntimeError as e:
            raise IndexCorruptError(f"{fp} is corrupt or truncated: {str(e).splitlines()[0][:200]}") from None
        if backend.dim != self.dim:
            raise IndexCorruptError(f"{fp} has dimension {backend.dim}, the manifest says {self.dim}")
        return backend

    def is_stale(self) -> bool:
        """True when another process has committed a write this object has not loaded."""
        return int(self.store.get_meta("generation", "0")) != self.generation

    def refresh(self) -> bool:
        """Catch up with writes another process committed; returns True if anything was reloaded."""
        if not self.is_stale():
            return False
        self._load_state()
        return True

    @property
    def encoder(self):
        """The ColBERT encoder, loaded from the manifest's checkpoint on first use."""
        if self._encoder is None:
            from pooledir.encoder import encoder_for_index

            self._encoder = encoder_for_index(self.manifest, self.device)
            if self._encoder.dim != self.dim:
                raise IndexCorruptError(f"checkpoint dim {self._encoder.dim} != index dim {self.dim}")
        return self._encoder

    def close(self) -> None:
        """Release the sqlite connection."""
        self.store.close()

    def __enter__(self) -> PooledIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(np.count_nonzero(self._n_vectors))

    # -- writing ----------------------------------------------------------------------------------------------
    @contextmanager
    def _writing(self):
        """Hold the folder's write lock; catch up with writes other processes made meanwhile."""
        with open(self.path / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.refresh()
            try:
                yield
            except BaseException:
                self._load_state()  # drop in-memory changes: the disk still has the last commit
                raise

    def _write_manifest(self) -> None:
        self.manifest["backend"] = self.backend.describe()
        self.manifest["counts"] = self.store.counts()
        self.manifest["generation"] = self.generation
        self.manifest["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _write_json(self.path / "manifest.json", self.manifest)

    def add(
        self,
        documents: Iterable[Document],
        embeddings: Sequence[np.ndarray] | None = None,
        show_progress: bool = False,
    ) -> int:
        """Add (or replace, by id) documents; returns how many were written.

        ``embeddings`` (one unpooled (n_tokens, dim) array per document) skips
        encoding, e.g. to reuse cached vectors. The first add trains IVF-PQ on
        a sample of its vectors; later adds reuse the trained index.
        Seconds spent encoding, pooling and writing are left in ``last_timings``.
        """
        docs = check_documents(documents, "documents")
        t0 = time.perf_counter()
        if embeddings is None:
            embeddings = self.encoder.encode_documents([d.text for d in docs], show_progress=show_progress)
        elif len(embeddings) != len(docs):
            raise InputError(f"got {len(embeddings)} embeddings for {len(docs)} documents")
        for d, e in zip(docs, embeddings):
            if e.ndim != 2 or e.shape[1] != self.dim or len(e) == 0:
                raise InputError(f"document {d.id!r}: embedding shape {e.shape} is not (n >= 1, {self.dim})")
        t1 = time.perf_counter()
        pooled = pool_embeddings(
            embeddings,
            self.config.pool_factor,
            self.config.protected_tokens,
            device=self.device,
            show_progress=show_progress,
        )
        t2 = time.perf_counter()
        counts = np.array([len(p) for p in pooled], dtype=np.int64)
        if counts.max() >= MAX_VECTORS_PER_DOC:
            raise InputError(f"a document has {counts.max()} vectors; at most {MAX_VECTORS_PER_DOC - 1} fit")
        flat = np.concatenate(pooled).astype(np.float32)
        with self._writing():
            if not self.backend.is_trained:
                rng = np.random.default_rng(0)
                n = min(len(flat), self.config.train_sample)
                self.backend.train(flat[np.sort(rng.choice(len(flat), n, replace=False))], n_total=len(flat))
            replaced = self.store.lookup([d.id for d in docs])
            exact_start = self._append_exact(pooled) if self.config.keep_exact else None

            def changes() -> None:
                # rows first, inside the open transaction, so vector ids can use the new doc numbers
                if replaced:
                    old = np.array(list(replaced.values()), dtype=np.int64)
                    self.store.delete(old[:, 0])
                    self.backend.remove(vector_ids(old[:, 0], old[:, 1]))
                new_ints, offset = [], exact_start
                for d, e, c in zip(docs, embeddings, counts):
                    new_ints.append(self.store.insert(d.id, d.text, d.metadata, len(e), int(c), offset))
                    offset = None if offset is None else offset + int(c)
                self.backend.add(vector_ids(np.array(new_ints), counts), flat)

            self._commit(changes)
        self.last_timings = {"encode_s": t1 - t0, "pool_s": t2 - t1, "write_s": time.perf_counter() - t2}
        return len(docs)

    def _commit(self, changes) -> None:
        """Apply ``changes`` (rows and backend) and switch to the next generation in one sqlite commit.

        The next generation's faiss file is written before the commit; on any
        error it is removed and the caller's ``_writing`` reloads the last commit.
        """
        new_gen = self.generation + 1
        try:
            with self.store.transaction():
                changes()
                self.backend.save(self._faiss_path(new_gen))
                self.store.set_meta("generation", str(new_gen))
        except BaseException:
            self._faiss_path(new_gen).unlink(missing_ok=True)
            raise
        old, self.generation = self.generation, new_gen
        self._faiss_path(old).unlink(missing_ok=True)
        self.store.checkpoint()
        self._load_tables()
        self._write_manifest()

    def _append_exact(self, pooled: Sequence[np.ndarray]) -> int:
        """Append float16 vectors to exact.f16 (durably); returns the first new row."""
        fp = self.path / "exact.f16"
        row_bytes = 2 * self.dim
        with open(fp, "ab") as f:
            size = f.seek(0, os.SEEK_END)
            if size % row_bytes:  # a torn tail from a crash: pad it away, nothing references it
                f.write(b"\0" * (row_bytes - size % row_bytes))
                size += row_bytes - size % row_bytes
            f.write(np.concatenate(pooled).astype(np.float16).tobytes())
            f.flush()
            os.fsync(f.fileno())
        return size // row_bytes

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by external id; unknown ids raise before anything changes."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise InputError("no document ids given")
        with self._writing():
            found = self.store.lookup(ids)
            missing = [i for i in ids if i not in found]
            if missing:
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise DocumentNotFoundError(f"unknown document id(s): {', '.join(map(repr, missing[:5]))}{more}")
            old = np.array(list(found.values()), dtype=np.int64)

            def changes() -> None:
                self.store.delete(old[:, 0])
                self.backend.remove(vector_ids(old[:, 0], old[:, 1]))

            self._commit(changes)
        return len(ids)

    # -- reading ----------------------------------------------------------------------------------------------
    def get(self, id: str) -> Document:
        """The stored document with external id ``id``."""
        found = self.store.lookup([id])
        if id not in found:
            raise DocumentNotFoundError(f"unknown document id {id!r}")
        row = self.store.rows([found[id][0]])[0]
        return Document(row.id, row.text, row.metadata)

    def _fetch(self, doc_ints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = self._n_vectors[doc_ints]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        if not self.config.keep_exact:
            return self.backend.reconstruct(vector_ids(doc_ints, counts)), offsets
        if self._exact is None:
            raw = np.memmap(self.path / "exact.f16", dtype=np.float16, mode="r")
            self._exact = raw[: len(raw) - len(raw) % self.dim].reshape(-1, self.dim)
        rows = vector_ids(np.zeros(len(doc_ints), np.int64), counts) + np.repeat(self._exact_offset[doc_ints], counts)
        return np.asarray(self._exact[rows], dtype=np.float32), offsets

    def search(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        params: SearchParams | None = None,
        with_text: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Search one query or a batch; returns one ranked list of :class:`Hit` per query (see search_embeddings)."""
        if isinstance(queries, str):
            queries = [queries]
        params = replace(params or SearchParams(), k=k)
        params.check(len(self))
        Q = self.encoder.encode_queries(list(queries))
        return self.search_embeddings(Q, params, with_text=with_text, filter=filter)

    def search_embeddings(
        self,
        Q: np.ndarray,
        params: SearchParams | None = None,
        with_text: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Search already-encoded queries (nq, Lq, dim).

        With ``filter`` (metadata field -> value), only documents whose metadata equals every field are
        ranked, each by exact MaxSim over its stored vectors; fewer than ``k`` come back if fewer match.
        """
        params = params or SearchParams()
        params.check(len(self))
        if Q.ndim != 3 or Q.shape[2] != self.dim:
            raise InputError(f"query embeddings of shape {Q.shape} are not (nq, Lq, {self.dim})")
        if filter:
            ranked = self._search_filtered(Q, params.k, filter)
        else:
            ranked = search_embeddings(Q, self.backend, self._fetch, params)
        out = []
        for doc_ints, scores in ranked:
            if with_text:
                rows = self.store.rows(doc_ints)
                out.append([Hit(r.id, float(s), r.text, r.metadata) for r, s in zip(rows, scores)])
            else:
                out.append([Hit(i, float(s)) for i, s in zip(self.store.ext_ids(doc_ints), scores)])
        return out

    def _search_filtered(self, Q: np.ndarray, k: int, filter: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact MaxSim over the documents matching ``filter``, in chunks to bound memory."""
        from pooledir.maxsim import maxsim

        docs = self.store.matching(filter)
        scores = np.empty((len(Q), len(docs)), dtype=np.float32)
        for start in range(0, len(docs), 1024):
            chunk = docs[start : start + 1024]
            vectors, offsets = self._fetch(chunk)
            scores[:, start : start + len(chunk)] = maxsim(Q, vectors, offsets)
        out = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:k]
            out.append((docs[top], row[top]))
        return out

    def info(self) -> dict[str, Any]:
        """Counts, sizes and settings, for ``pooledir info`` and the service."""
        counts = self.store.counts()
        files = [p for p in self.path.iterdir() if p.is_file() and not p.name.endswith(".tmp")]
        return {
            "path": str(self.path),
            "checkpoint": self.manifest["checkpoint"],
            "documents": counts["documents"],
            "vectors_before_pooling": counts["tokens"],
            "vectors": counts["vectors"],
            "pool_factor": self.config.pool_factor,
            "config": asdict(self.config),
            "backend": self.backend.describe(),
            "bytes": {p.name: p.stat().st_size for p in files},
            "index_bytes": sum(p.stat().st_size for p in files),
            "generation": self.generation,
        }
