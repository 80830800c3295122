"""Open indexes and the per-index concurrency rules the routes rely on.

* Searches share a read lock; writes (upsert, delete) take the write lock, so
  a search never sees half a write. Encoding happens before the lock is taken,
  so a long upsert blocks searches only while vectors go in and files are
  written.
* Writes are serialised per index and durable (the library commits to disk)
  before they return, so a 2xx answer means the document survives a crash.
* Concurrent queries are micro-batched: whatever arrives within
  ``batch_window_ms`` is encoded in one encoder call.
"""

from __future__ import annotations

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
from pooledir.errors import InputError


class RWLock:
    """Many readers or one writer; a waiting writer holds off new readers so writes are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self):
        """Hold a shared lock for the block."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self):
        """Hold the exclusive lock for the block."""
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
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
                batch, total = [], 0
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
    """One served index: the library object plus its lock and query batcher."""

    def __init__(self, name: str, index: PooledIndex, batcher: QueryBatcher | None) -> None:
        self.name = name
        self.index = index
        self.lock = RWLock()
        self.write_lock = threading.Lock()  # one writer encodes at a time, in arrival order
        self.batcher = batcher

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Encode queries, through the micro-batcher when there is one."""
        if self.batcher is not None:
            return self.batcher.encode(queries)
        return self.index.encoder.encode_queries(queries)

    def refresh(self) -> None:
        """Pick up writes made by other worker processes (cheap when there are none)."""
        if self.read(lambda index: index.is_stale()):
            with self.lock.writing():
                self.index.refresh()

    def search(self, queries: list[str], params, with_text: bool, filter: dict | None = None, mode: str = "dense"):
        """Encode (batched with other requests; not for lexical), then search under the read lock."""
        Q = self.encode_queries(queries) if mode != "lexical" else None
        self.refresh()
        with self.lock.reading():  # search_embeddings checks params against the current document count
            if mode != "dense":
                from pooledir import hybrid

                return hybrid.search(self.index, queries, params, mode, with_text, filter, Q=Q)
            return self.index.search_embeddings(Q, params, with_text=with_text, filter=filter)

    def upsert(self, documents: Sequence[Document]) -> int:
        """Encode outside the lock, then add under the write lock; durable on return."""
        with self.write_lock:
            embeddings = self.index.encoder.encode_documents([d.text for d in documents])
            with self.lock.writing():
                return self.index.add(documents, embeddings=embeddings).documents

    def delete(self, ids: list[str]) -> int:
        """Delete under the write lock; durable on return."""
        with self.write_lock, self.lock.writing():
            return self.index.delete(ids)

    def read(self, fn):
        """Run ``fn(index)`` under the read lock (document lookups, stats)."""
        with self.lock.reading():
            return fn(self.index)


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
        query_backend: str = "torch",
        document_backend: str = "torch",
    ) -> Registry:
        """Open every index folder; names are folder names and must be distinct."""
        names = [Path(p).name for p in paths]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise InputError(f"two indexes share the name {sorted(dupes)[0]!r}; serve folders with distinct names")
        # indexes whose encoders would be identical share one, and their queries share a batcher
        encoders: dict[tuple, ColBERTEncoder] = {}
        batchers: dict[tuple, QueryBatcher] = {}
        handles = {}
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
            handles[name] = IndexHandle(name, index, batchers.get(key))
        return cls(handles)

    def close(self) -> None:
        """Stop batchers and close every index."""
        for h in self.handles.values():
            if h.batcher:
                h.batcher.close()  # idempotent: shared batchers are closed once per index, harmlessly
            h.index.close()
