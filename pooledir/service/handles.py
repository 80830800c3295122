"""What a route holds for one served index: the :class:`IndexHandle` protocol, and its local implementation.

Routes see only the protocol, so they never test which kind of handle they hold: :class:`LocalIndexHandle`
(``pooledir serve``: one index folder in this process) and :class:`pooledir.service.ray_serve.ShardedHandle`
(``pooledir serve --ray``: partitions behind Ray Serve deployments) both implement it.

The local handle's rules:

* Reads (searches, lookups, stats) and writes (upsert, delete) run on two :class:`PooledIndex`
  objects over the same folder, each with its own sqlite connection. Snapshots are immutable: a
  read never waits for a write, in this process or another; a write waiting for the folder's lock
  holds nothing a read needs (:class:`pooledir.service.concurrency.ReadSide`).
* Writes are serialised per index and durable (the library commits to disk) before they return,
  so a 2xx answer means the document survives a crash.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from pooledir.corpus import Document
from pooledir.errors import IndexCorruptError
from pooledir.index_info import IndexInfo
from pooledir.pooled_index import Hit, PooledIndex
from pooledir.search import SearchParams
from pooledir.service.concurrency import QueryBatcher, ReadSide

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """Why an index cannot serve now (``/readyz``), and which kind of why.

    ``corrupt``: a file failed verification; ``unreachable``: a part of the index did not answer (a Ray
    partition whose replica died or timed out).
    """

    kind: Literal["corrupt", "unreachable"]
    message: str


class IndexView(Protocol):
    """What a route may read of an index inside :meth:`IndexHandle.read`."""

    def __len__(self) -> int: ...

    def get(self, id: str, /) -> Document:
        """One stored document (:class:`pooledir.DocumentNotFoundError` when there is none)."""
        ...

    def describe(self) -> IndexInfo:
        """Counts, bytes, backend and settings."""
        ...


@runtime_checkable
class IndexHandle(Protocol):
    """One served index, as the routes use it."""

    @property
    def name(self) -> str:
        """The name in the URL."""
        ...

    @property
    def device(self) -> str:
        """The device queries are encoded on (resolved: never ``"auto"``)."""
        ...

    def search(
        self,
        queries: list[str],
        params: SearchParams,
        with_text: bool,
        filter: dict[str, Any] | None = None,
        mode: str = "dense",
    ) -> list[list[Hit]]:
        """Top-k hits per query, at the newest commit."""
        ...

    def upsert(self, documents: list[Document]) -> int:
        """Add or replace documents; durable on return. Returns how many."""
        ...

    def delete(self, ids: list[str]) -> int:
        """Delete documents (any unknown id: nothing deleted); durable on return. Returns how many."""
        ...

    def read(self, fn: Callable[[IndexView], T]) -> T:
        """``fn(view)`` on the newest commit (document lookups, counts, stats)."""
        ...

    def problem(self) -> Problem | None:
        """Why this index cannot serve now, else None (``/readyz``)."""
        ...

    def close(self) -> None:
        """Let go of what the handle holds (its batcher is the registry's to stop)."""
        ...


class LocalIndexHandle:
    """One served index: reads on one :class:`PooledIndex`, writes on another, so neither waits for the other.

    A write is prepared, encoded and pooled outside the write lock (concurrent upserts encode side by
    side), then committed under it: commits are serialised, in the order their encoding finished, and
    durable (the library commits to disk) before they return, so a 2xx answer means the document
    survives a crash. A write waiting for the folder's
    lock (another process compacting) holds nothing a read needs; the read side picks the commit up
    at its next read. Every ``checkpoint_every`` writes the sqlite WAL is folded into the database.
    """

    def __init__(
        self, name: str, index: PooledIndex, batcher: QueryBatcher | None, checkpoint_every: int = 100
    ) -> None:
        self.name = name
        self.index = index
        self.reads: ReadSide[PooledIndex] = ReadSide(index)
        self.write_lock = threading.Lock()
        self.batcher = batcher
        self.checkpoint_every = checkpoint_every
        self._writer: PooledIndex | None = None
        self._writes = 0
        self._corrupt: tuple[int, str] | None = None  # (commit read when found, message)
        index.release()  # opening pinned the commit; an idle handle pins nothing

    @property
    def device(self) -> str:
        """The index's device (resolved)."""
        return self.index.device

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Encode queries, through the micro-batcher when there is one."""
        if self.batcher is not None:
            return self.batcher.encode(queries)
        return self.index.encoder.encode_queries(queries)

    def search(
        self,
        queries: list[str],
        params: SearchParams,
        with_text: bool,
        filter: dict[str, Any] | None = None,
        mode: str = "dense",
    ) -> list[list[Hit]]:
        """Encode (batched with other requests; not for lexical), then search the newest commit."""
        if mode == "dense":
            Q = self.encode_queries(queries)
            return self.read(lambda index: index.search_embeddings(Q, params, with_text=with_text, filter=filter))
        from pooledir import hybrid

        dense_Q = self.encode_queries(queries) if mode != "lexical" else None
        return self.read(lambda index: hybrid.search(index, queries, params, mode, with_text, filter, Q=dense_Q))

    def upsert(self, documents: Sequence[Document]) -> int:
        """Prepare, encode and pool outside the write lock (a long encode holds no other write up), then commit.

        Durable on return.
        """
        batch = self.index.make_batch(documents)  # reads only the settings, which no write changes
        return self._write(lambda writer: writer.write(batch).documents)

    def delete(self, ids: list[str]) -> int:
        """Delete; durable on return."""
        return self._write(lambda writer: writer.delete(ids))

    def read(self, fn: Callable[[PooledIndex], T]) -> T:
        """Run ``fn(index)`` on the newest commit (searches, document lookups, stats)."""
        try:
            with self.reads.reading() as index:
                out = fn(index)
                commit = index.commit
        except IndexCorruptError as e:
            self._corrupt = (self.index.commit, str(e))
            raise
        if self._corrupt is not None and commit > self._corrupt[0]:
            self._corrupt = None  # a newer commit loaded and read fine
        return out

    def problem(self) -> Problem | None:
        """Why this index cannot serve (a corrupt file found by a read, or now), else None."""
        try:
            self.read(lambda index: index.verify())  # cheap: a stat per segment file, one store read
        except IndexCorruptError:
            pass
        return Problem("corrupt", self._corrupt[1]) if self._corrupt is not None else None

    def _write(self, fn: Callable[[PooledIndex], int]) -> int:
        with self.write_lock:
            if self._writer is None:
                self._writer = PooledIndex.open(self.index.path, device=self.index.device, encoder=self.index.encoder)
            try:
                return fn(self._writer)
            finally:
                self._after_write()

    def _after_write(self) -> None:
        """Unpin the writer's snapshot (a pinned reader stops every checkpoint) and fold the WAL now and then."""
        writer = self._writer
        if writer is None:  # the writer failed to open: nothing was written
            return
        try:
            writer.release()
            self._writes += 1
            if self.checkpoint_every and self._writes % self.checkpoint_every == 0:
                writer.checkpoint()
        except sqlite3.Error:  # best effort: the write itself is committed
            log.warning("could not checkpoint the WAL of %s", self.index.path, exc_info=True)

    def close(self) -> None:
        """Close both sides (the batcher, shared with other indexes, is the registry's to stop)."""
        self.index.close()
        if self._writer is not None:
            self._writer.close()
