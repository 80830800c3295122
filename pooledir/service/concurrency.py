"""The concurrency rules one served index relies on: reads that never wait for writes, and batched query encoding.

* :class:`ReadSide`: reads share one loaded snapshot, pinned (an open sqlite read transaction) only
  while some read runs, so other processes can checkpoint the WAL; a read that finds a newer commit
  on disk (a write of this worker or of another one) loads it first, so it sees every write
  acknowledged before it was sent.
* :class:`QueryBatcher`: whatever queries arrive within ``batch_window_ms`` are encoded in one
  encoder call.

Both take small protocols, not the library's classes, so each is tested here with a stand-in.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

import numpy as np

from pooledir.encoder import check_texts

log = logging.getLogger(__name__)


class Snapshots(Protocol):
    """What :class:`ReadSide` needs of an index (a :class:`pooledir.PooledIndex` has it)."""

    @property
    def path(self) -> object:
        """Where the index is (for log lines)."""
        ...

    def is_stale(self) -> bool:
        """True when a newer commit than the loaded one is on disk."""
        ...

    def pin(self) -> None:
        """Load the newest commit and hold it (a read transaction)."""
        ...

    def release(self) -> None:
        """End the read transaction."""
        ...


class QueryEncoder(Protocol):
    """What :class:`QueryBatcher` needs of an encoder (a :class:`pooledir.ColBERTEncoder` has it)."""

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Query vectors, (queries, query tokens, dim)."""
        ...


IndexT = TypeVar("IndexT", bound=Snapshots)


class ReadSide(Generic[IndexT]):
    """The read side of one index: its own :class:`PooledIndex` (own sqlite connection), never behind a write.

    Reads share the loaded snapshot, which stays pinned (an open sqlite read transaction) only while
    some read runs: an idle worker holds no WAL frames, so a writer in any process can checkpoint.
    A read that finds a newer commit on disk (a write of this process or of another one) waits for
    the reads in flight, loads it, then runs: every read sees every write acknowledged before it
    began. Nothing here waits for a writer or for the folder's lock.
    """

    def __init__(self, index: IndexT) -> None:
        self.index = index
        self._cond = threading.Condition()
        self._readers = 0
        self._pinned = False
        self._exclusive = False  # one thread loads a newer commit; reads wait for it (briefly)

    @contextmanager
    def reading(self) -> Iterator[IndexT]:
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
    def exclusive(self) -> Iterator[None]:
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

    def __init__(self, encoder: QueryEncoder, window_ms: float, max_batch: int) -> None:
        self.encoder = encoder
        self.window = window_ms / 1000
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[tuple[list[str], Future[np.ndarray]]] = []
        self._cond = threading.Condition(self._lock)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._thread.start()

    def encode(self, queries: list[str]) -> np.ndarray:
        """Encode ``queries`` (validated first, so one bad query never fails its batch-mates)."""
        check_texts(queries, "query")
        fut: Future[np.ndarray] = Future()
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
                batch: list[tuple[list[str], Future[np.ndarray]]] = []
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
