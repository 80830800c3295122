"""Open indexes and the per-index concurrency rules the routes rely on.

* Reads (searches, lookups, stats) and writes (upsert, delete) run on two
  :class:`PooledIndex` objects over the same folder, each with its own sqlite
  connection. Snapshots are immutable: a read never waits for a write, in this
  process or another; a write waiting for the folder's lock holds nothing a
  read needs.
* Every read first loads the newest commit if the counter on disk moved (a
  write of this worker or of another one), so it sees every write
  acknowledged before it was sent; the read transaction that pins a snapshot
  is held only while reads run, so other processes can checkpoint the WAL.
* Writes are serialised per index and durable (the library commits to disk)
  before they return, so a 2xx answer means the document survives a crash.
* Concurrent queries are micro-batched: whatever arrives within
  ``batch_window_ms`` is encoded in one encoder call.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pooledir import (
    ColBERTEncoder,
    Document,
    PooledIndex,
    check_texts,
    encoder_for_index,
    encoder_key,
    read_manifest,
)
from pooledir.errors import IndexCorruptError, InputError

log = logging.getLogger(__name__)


class ReadSide:
    """The read side of one index: its own :class:`PooledIndex` (own sqlite connection), never behind a write.

    Reads share the loaded snapshot, which stays pinned (an open sqlite read transaction) only while
    some read runs: an idle worker holds no WAL frames, so a writer in any process can checkpoint.
    A read that finds a newer commit on disk (a write of this process or of another one) waits for
    the reads in flight, loads it, then runs: every read sees every write acknowledged before it
    began. Nothing here waits for a writer or for the folder's lock.
    """

    def __init__(self, index: PooledIndex) -> None:
        self.index = index
        self._cond = threading.Condition()
        self._readers = 0
        self._pinned = False
        self._exclusive = False  # one thread loads a newer commit; reads wait for it (briefly)

    @contextmanager
    def reading(self):
        """The index, at the newest commit, for the block."""
        if self._join():
            self._load()
        try:
            yield self.index
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers and not self._exclusive:
                    self._release()
                self._cond.notify_all()

    def _join(self) -> bool:
        """Count this read in; True when it must load the newest commit first (it then holds the load)."""
        with self._cond:
            while True:
                if self._exclusive:
                    self._cond.wait()
                elif self._pinned and not self.index.is_stale():
                    self._readers += 1
                    return False
                elif self._readers:  # the pinned commit is old: the reads in flight finish on it first
                    self._cond.wait()
                else:
                    self._exclusive = True
                    return True

    def _load(self) -> None:
        try:
            self.index.pin()
        except BaseException:
            with self._cond:
                self._release()
                self._exclusive = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._exclusive, self._pinned = False, True
            self._readers += 1
            self._cond.notify_all()

    def _release(self) -> None:
        """End the read transaction (under ``_cond``, no read in flight)."""
        self._pinned = False
        try:
            self.index.release()
        except sqlite3.Error:  # the next read pins afresh anyway
            log.warning("could not end the read transaction of %s", self.index.path, exc_info=True)

    @contextmanager
    def exclusive(self):
        """Hold off every read for the block (what loading a newer commit does)."""
        with self._cond:
            while self._exclusive or self._readers:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class QueryBatcher:
    """Collects queries from many threads and encodes them in one call per window."""

    def __init__(self, encoder: ColBERTEncoder, window_ms: float, max_batch: int) -> None:
        self.encoder = encoder
        self.window = window_ms / 1000
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[tuple[list[str], Future]] = []
        self._cond = threading.Condition(self._lock)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._thread.start()

    def encode(self, queries: list[str]) -> np.ndarray:
        """Encode ``queries`` (validated first, so one bad query never fails its batch-mates)."""
        check_texts(queries, "query")
        fut: Future = Future()
        with self._cond:
            self._pending.append((queries, fut))
            self._cond.notify()
        return fut.result()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
            time.sleep(self.window)  # let concurrent requests join this batch
            with self._cond:
                batch: list[tuple[list[str], Future]] = []
                total = 0
                while self._pending and (not batch or total + len(self._pending[0][0]) <= self.max_batch):
                    item = self._pending.pop(0)
                    batch.append(item)
                    total += len(item[0])
            texts = [q for qs, _ in batch for q in qs]
            try:
                Q = self.encoder.encode_queries(texts)
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            start = 0
            for qs, fut in batch:
                fut.set_result(Q[start : start + len(qs)])
                start += len(qs)

    def close(self) -> None:
        """Stop the batching thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()


class IndexHandle:
    """One served index: reads on one :class:`PooledIndex`, writes on another, so neither waits for the other.

    A write is prepared, encoded and pooled outside the write lock (concurrent upserts encode side by
    side), then committed under it: commits are serialised, in the order their encoding finished, and
    durable (the library commits to disk) before they return, so a 2xx answer means the document
    survives a crash. A write waiting for the folder's
    lock (another process compacting) holds nothing a read needs; the read side picks the commit up
    at its next read. Every ``checkpoint_every`` writes the sqlite WAL is folded into the database.
    """

    def __init__(self, name: str, index: PooledIndex, batcher: QueryBatcher | None, checkpoint_every: int = 100):
        self.name = name
        self.index = index
        self.reads = ReadSide(index)
        self.write_lock = threading.Lock()
        self.batcher = batcher
        self.checkpoint_every = checkpoint_every
        self._writer: PooledIndex | None = None
        self._writes = 0
        self._corrupt: tuple[int, str] | None = None  # (commit read when found, message)
        index.release()  # opening pinned the commit; an idle handle pins nothing

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Encode queries, through the micro-batcher when there is one."""
        if self.batcher is not None:
            return self.batcher.encode(queries)
        return self.index.encoder.encode_queries(queries)

    def search(self, queries: list[str], params, with_text: bool, filter: dict | None = None, mode: str = "dense"):
        """Encode (batched with other requests; not for lexical), then search the newest commit."""
        Q = self.encode_queries(queries) if mode != "lexical" else None
        if mode == "dense":
            return self.read(lambda index: index.search_embeddings(Q, params, with_text=with_text, filter=filter))
        from pooledir import hybrid

        return self.read(lambda index: hybrid.search(index, queries, params, mode, with_text, filter, Q=Q))

    def upsert(self, documents: Sequence[Document]) -> int:
        """Prepare, encode and pool outside the write lock (a long encode holds no other write up), then commit.

        Durable on return.
        """
        batch = self.index.make_batch(documents)  # reads only the settings, which no write changes
        return self._write(lambda writer: writer.write(batch).documents)

    def delete(self, ids: list[str]) -> int:
        """Delete; durable on return."""
        return self._write(lambda writer: writer.delete(ids))

    def read(self, fn):
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

    def problem(self) -> str | None:
        """Why this index cannot serve (a corrupt file found by a read, or now), else None."""
        try:
            self.read(lambda index: index.verify())  # cheap: a stat per segment file, one store read
        except IndexCorruptError:
            pass
        return self._corrupt[1] if self._corrupt is not None else None

    def _write(self, fn):
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
        """Close both sides."""
        self.index.close()
        if self._writer is not None:
            self._writer.close()


class Registry:
    """The indexes a service process serves, by name (their folder names)."""

    def __init__(self, handles: dict[str, IndexHandle]) -> None:
        self.handles = handles

    @classmethod
    def open(
        cls,
        paths: Sequence[Path],
        device: str,
        micro_batching: bool,
        window_ms: float,
        max_batch: int,
        checkpoint: Path | None = None,
        query_backend: str = "auto",
        document_backend: str = "torch",
        checkpoint_every: int = 100,
    ) -> Registry:
        """Open every index folder; names are folder names and must be distinct."""
        names = [Path(p).name for p in paths]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise InputError(f"two indexes share the name {sorted(dupes)[0]!r}; serve folders with distinct names")
        # indexes whose encoders would be identical share one, and their queries share a batcher
        encoders: dict[tuple, ColBERTEncoder] = {}
        batchers: dict[tuple, QueryBatcher] = {}
        handles: dict[str, IndexHandle] = {}
        try:
            for name, path in zip(names, paths):
                manifest = read_manifest(path)
                key = encoder_key(manifest, checkpoint)
                if key not in encoders:
                    encoders[key] = encoder_for_index(
                        manifest, device, checkpoint, query_backend=query_backend, document_backend=document_backend
                    )
                index = PooledIndex.open(path, device=device, encoder=encoders[key])
                if micro_batching and key not in batchers:
                    batchers[key] = QueryBatcher(encoders[key], window_ms, max_batch)
                handles[name] = IndexHandle(name, index, batchers.get(key), checkpoint_every)
        except BaseException:
            # a later index failed: what this call opened (indexes, batcher threads) is closed, not leaked
            for b in batchers.values():
                b.close()
            for h in handles.values():
                h.close()
            raise
        return cls(handles)

    def close(self) -> None:
        """Stop batchers and close every index."""
        for h in self.handles.values():
            if h.batcher:
                h.batcher.close()  # idempotent: shared batchers are closed once per index, harmlessly
            h.close()
