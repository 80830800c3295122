"""The document store and commit point: documents, segments and meta in stdlib sqlite3.

Each document gets a stable internal number (``doc_int``, never reused) beside
its external id, and says where its vectors are: ``segment`` and the first
local id ``seg_start`` there. The ``segments`` table lists the live segment
files; ``meta`` holds the commit counter and the current quantizer. One sqlite
transaction therefore switches documents, segments and quantizer together.

A reader pins a snapshot (:meth:`DocStore.pin`): one open read transaction,
so everything it reads (rows for hits, ``get``) is the commit its segments
came from, whatever other processes commit meanwhile (sqlite WAL).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias, TypeVar, overload

import numpy as np

from pooledir.corpus import check_utf8
from pooledir.errors import IndexCorruptError, InputError, NoSpaceError
from pooledir.lexical import ensure_table, has_table

#: internal document numbers: a list, or the int64 array a search ranks
DocInts: TypeAlias = Sequence[int] | np.ndarray

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    doc_int INTEGER PRIMARY KEY AUTOINCREMENT,
    ext_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    n_vectors INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    seg_start INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_segment ON docs (segment, seg_start);
CREATE TABLE IF NOT EXISTS segments (
    seg_id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    n_vectors INTEGER NOT NULL,
    n_docs INTEGER NOT NULL,
    quantizer INTEGER,
    exact INTEGER NOT NULL,
    touched INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
#: the tables every store has had since format 2: without them a file is not a pooledir store
REQUIRED_TABLES = ("docs", "segments", "meta")


@dataclass(frozen=True)
class DocRow:
    """A document as stored: what the encoder saw and what the index kept."""

    doc_int: int
    id: str
    text: str
    metadata: dict[str, Any]
    n_tokens: int
    n_vectors: int


@dataclass(frozen=True)
class SegmentRow:
    """A committed segment: ``segments/<seg_id>.faiss`` (+ ``.f16`` when ``exact``)."""

    seg_id: int
    kind: str  # "pq" or "flat"
    n_vectors: int
    n_docs: int
    quantizer: int | None
    exact: bool


@dataclass(frozen=True)
class NewDoc:
    """A row to insert: a document and where its vectors went."""

    id: str
    text: str
    metadata: dict[str, Any]
    n_tokens: int
    n_vectors: int
    segment: int
    seg_start: int


class DocStore:
    """sqlite3 database of one index; all writes go through :meth:`transaction`.

    ``DocStore(path)`` opens an existing store and never creates one: a missing, empty (0 bytes),
    unreadable or foreign file raises :class:`IndexCorruptError` before anything is written, so a
    damaged store is never mistaken for a new, empty index. :meth:`create` makes a new one. A store
    in a folder this process may not write (a read-only volume) opens read-only: ``read_only``.
    """

    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = path
        self.read_only = False
        if create:
            self.conn = self._connect()
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(SCHEMA)
        else:
            _check_store_file(path)
            self.read_only = not _writable(path)
            self.conn = self._connect()
            try:
                _check_tables(self.conn, path)
                if not self.read_only:
                    self._prepare()
            except BaseException:
                self.conn.close()
                raise
        self.conn.execute("PRAGMA synchronous=FULL")
        # the lexical lane (pooledir/lexical.py): its triggers write it in every transaction that changes docs;
        # a writable store gets it built once, a read-only one serves dense search alone without it
        self.lexical = has_table(self.conn) if self.read_only else ensure_table(self.conn)
        self._probe: sqlite3.Connection | None = None

    @classmethod
    def create(cls, path: Path) -> DocStore:
        """Make a new, empty store at ``path`` (which must not exist) and open it."""
        if path.exists() or path.is_symlink():
            raise InputError(f"{path} already exists; a new index needs a new folder")
        store = cls(path, create=True)
        store.checkpoint()  # the schema goes into the database file itself, not only its WAL
        return store

    def _connect(self) -> sqlite3.Connection:
        """A connection: read-write, or for a read-only store the first read-only mode sqlite can open.

        ``mode=ro`` reads a WAL left beside the file (when its -shm file is there); without them
        sqlite cannot make them in a read-only folder, and ``immutable=1`` reads the file alone.
        """
        if not self.read_only:
            return _sqlite_connect(str(self.path), uri=False)
        uri = "file:" + urllib.parse.quote(str(self.path.absolute()))
        for mode in ("mode=ro", "immutable=1"):
            conn = _sqlite_connect(f"{uri}?{mode}", uri=True)
            try:
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.OperationalError:
                conn.close()
                continue
            wal = self.path.with_name(self.path.name + "-wal")
            if mode.startswith("immutable") and wal.is_file() and wal.stat().st_size:
                log.warning("%s: its WAL cannot be read without a -shm file; reading the last checkpoint", self.path)
            return conn
        raise IndexCorruptError(f"{self.path} cannot be opened read-only; check its permissions")

    def _prepare(self) -> None:
        """Writable stores: WAL mode, and tables or columns added since the store was made."""
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA)
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(segments)")}
        if "touched" not in columns:  # made before the column: every segment counts as untouched since
            self.conn.execute("ALTER TABLE segments ADD COLUMN touched INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        """Close the connections; never raises, so a clean-up cannot mask the error that caused it."""
        try:
            self.unpin()
        except sqlite3.Error:
            pass  # a damaged or vanished database: closing ends the transaction anyway
        self.conn.close()
        if self._probe is not None:
            self._probe.close()

    # -- snapshots --------------------------------------------------------------------------------------------
    def pin(self) -> None:
        """Start a read transaction: later reads see this commit until :meth:`unpin`."""
        self.unpin()
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # a read takes the WAL snapshot

    def unpin(self) -> None:
        """End the pinned read transaction (before a write, or to load a newer commit)."""
        if self.conn.in_transaction:  # also one a Ctrl-C left open, cutting pin() after its BEGIN
            self.conn.execute("COMMIT")

    def latest_commit(self) -> int:
        """The newest commit on disk, read outside the pinned snapshot."""
        if self._probe is None:
            self._probe = self._connect()
        row = self._probe.execute("SELECT value FROM meta WHERE key = 'commit'").fetchone()
        return int(row[0]) if row else 0

    def end_transaction(self) -> None:
        """Roll back a transaction an interrupt left open (between BEGIN and COMMIT); never raises."""
        _roll_back(self.conn)

    def transaction(self) -> _Transaction:
        """``with store.transaction():`` commits on success, rolls back on any error."""
        self.unpin()
        return _Transaction(self.conn, self.path)

    # -- meta -------------------------------------------------------------------------------------------------
    @overload
    def get_meta(self, key: str, default: str) -> str: ...

    @overload
    def get_meta(self, key: str, default: None = None) -> str | None: ...

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """Read a meta value; ``default`` where there is none."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        """Write a meta value (inside the caller's transaction)."""
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def bump_commit(self) -> int:
        """Advance the commit counter (inside the caller's transaction); returns the new value."""
        n = int(self.get_meta("commit", "0")) + 1
        self.set_meta("commit", str(n))
        return n

    def next_segment_id(self) -> int:
        """A segment id never used before (inside the writer's lock)."""
        n = int(self.get_meta("next_segment", "1"))
        return n

    # -- segments ---------------------------------------------------------------------------------------------
    def segments(self) -> list[SegmentRow]:
        """The committed segments, oldest first."""
        rows = self.conn.execute(
            "SELECT seg_id, kind, n_vectors, n_docs, quantizer, exact FROM segments ORDER BY seg_id"
        )
        return [SegmentRow(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def add_segment(self, seg: SegmentRow) -> None:
        """Reference a segment file (inside the caller's transaction)."""
        self.conn.execute(
            "INSERT INTO segments (seg_id, kind, n_vectors, n_docs, quantizer, exact) VALUES (?,?,?,?,?,?)",
            (seg.seg_id, seg.kind, seg.n_vectors, seg.n_docs, seg.quantizer, int(seg.exact)),
        )
        self.set_meta("next_segment", str(max(seg.seg_id + 1, int(self.get_meta("next_segment", "1")))))

    def drop_segments(self, seg_ids: Iterable[int]) -> None:
        """Stop referencing segments (inside the caller's transaction)."""
        self.conn.executemany("DELETE FROM segments WHERE seg_id = ?", [(int(s),) for s in seg_ids])

    # -- documents --------------------------------------------------------------------------------------------
    def insert_many(self, docs: Sequence[NewDoc]) -> None:
        """Insert documents (inside the caller's transaction)."""
        self.conn.executemany(
            "INSERT INTO docs (ext_id, text, metadata, n_tokens, n_vectors, segment, seg_start) VALUES (?,?,?,?,?,?,?)",
            [
                (
                    d.id,
                    d.text,
                    json.dumps(d.metadata, ensure_ascii=False),
                    d.n_tokens,
                    d.n_vectors,
                    d.segment,
                    d.seg_start,
                )
                for d in docs
            ],
        )

    def move(self, doc_ints: np.ndarray, segment: int, seg_starts: np.ndarray) -> None:
        """Point documents at their new place after a merge (inside the caller's transaction)."""
        self.conn.executemany(
            "UPDATE docs SET segment = ?, seg_start = ? WHERE doc_int = ?",
            [(segment, int(s), int(d)) for d, s in zip(doc_ints, seg_starts)],
        )

    def delete(self, doc_ints: Iterable[int]) -> None:
        """Delete documents by internal number: their vectors become tombstones until compaction.

        Their segments are marked touched by the commit in progress (inside the caller's
        transaction), so another process's refresh re-reads only those segments' rows.
        """
        doc_ints = [int(d) for d in doc_ints]
        commit = int(self.get_meta("commit", "0")) + 1  # the value bump_commit gives this transaction
        for chunk in _chunks(doc_ints, 500):
            self.conn.execute(
                "UPDATE segments SET touched = ? WHERE seg_id IN "
                f"(SELECT DISTINCT segment FROM docs WHERE doc_int IN ({','.join('?' * len(chunk))}))",
                [commit, *chunk],
            )
        self.conn.executemany("DELETE FROM docs WHERE doc_int = ?", [(d,) for d in doc_ints])

    def touched_since(self, commit: int) -> set[int]:
        """Segments that lost documents in a commit after ``commit``."""
        return {r[0] for r in self.conn.execute("SELECT seg_id FROM segments WHERE touched > ?", (int(commit),))}

    def max_doc_int(self) -> int:
        """The largest internal number in use (-1: none)."""
        return int(self.conn.execute("SELECT COALESCE(MAX(doc_int), -1) FROM docs").fetchone()[0])

    def lookup(self, ids: Sequence[str]) -> dict[str, int]:
        """Map the known external ids among ``ids`` to their doc_int (an id sqlite cannot hold raises InputError)."""
        out: dict[str, int] = {}
        for i in ids:
            check_utf8(i, "a document id")
        for chunk in _chunks(list(ids), 500):
            q = f"SELECT ext_id, doc_int FROM docs WHERE ext_id IN ({','.join('?' * len(chunk))})"
            out.update(dict(self.conn.execute(q, chunk).fetchall()))
        return out

    def ids_starting_with(self, prefix: str) -> list[str]:
        """The stored external ids that start with ``prefix`` (a range scan of the unique id index)."""
        check_utf8(prefix, "a document id")
        hi = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # ids sort bytewise (BINARY), so the prefix is a range
        q = "SELECT ext_id FROM docs WHERE ext_id >= ? AND ext_id < ? ORDER BY ext_id"
        return [r[0] for r in self.conn.execute(q, (prefix, hi))]

    def ids_glob(self, pattern: str) -> list[str]:
        """The stored external ids that match the sqlite GLOB ``pattern`` (a scan of the id index)."""
        return [r[0] for r in self.conn.execute("SELECT ext_id FROM docs WHERE ext_id GLOB ?", (pattern,))]

    def rows(self, doc_ints: DocInts) -> list[DocRow]:
        """Rows for internal numbers, in the order given."""
        found: dict[int, DocRow] = {}
        for chunk in _chunks([int(d) for d in doc_ints], 500):
            q = (
                "SELECT doc_int, ext_id, text, metadata, n_tokens, n_vectors FROM docs "
                f"WHERE doc_int IN ({','.join('?' * len(chunk))})"
            )
            for r in self.conn.execute(q, chunk):
                found[r[0]] = DocRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5])
        return [found[int(d)] for d in doc_ints]

    def ext_ids(self, doc_ints: DocInts) -> list[str]:
        """External ids for internal numbers, in the order given."""
        found: dict[int, str] = {}
        for chunk in _chunks([int(d) for d in doc_ints], 500):
            q = f"SELECT doc_int, ext_id FROM docs WHERE doc_int IN ({','.join('?' * len(chunk))})"
            found.update(dict(self.conn.execute(q, chunk).fetchall()))
        return [found[int(d)] for d in doc_ints]

    def matching(self, where: dict[str, Any]) -> np.ndarray:
        """Internal numbers of the documents whose metadata equals every ``where`` field."""
        check_filter(where)
        clauses = " AND ".join("json_extract(metadata, ?) = ?" for _ in where)
        args: list[Any] = []
        for key, value in where.items():
            args += ['$."' + key.replace('"', '""') + '"', value]
        rows = self.conn.execute(f"SELECT doc_int FROM docs WHERE {clauses}", args).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def layout(self) -> np.ndarray:
        """(n, 4) int64: doc_int, segment, seg_start, n_vectors of every document, by segment then start."""
        rows = self.conn.execute("SELECT doc_int, segment, seg_start, n_vectors FROM docs ORDER BY segment, seg_start")
        return np.array(rows.fetchall(), dtype=np.int64).reshape(-1, 4)

    def segment_layout(self, segment: int) -> np.ndarray:
        """(n, 3) int64: doc_int, seg_start, n_vectors of one segment's documents, by start (uses the index)."""
        rows = self.conn.execute(
            "SELECT doc_int, seg_start, n_vectors FROM docs WHERE segment = ? ORDER BY seg_start", (int(segment),)
        )
        return np.array(rows.fetchall(), dtype=np.int64).reshape(-1, 3)

    def checkpoint(self) -> None:
        """Move committed pages from the WAL into the database and truncate the WAL (best effort).

        A bulk add commits in one transaction, which leaves a WAL as large as the
        documents beside the database. Readers in other processes pin snapshots: then the
        checkpoint gives up at once (no busy wait) and a later one folds the WAL.
        """
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            self.conn.execute("PRAGMA busy_timeout = 60000")

    def counts(self) -> dict[str, int]:
        """Documents, tokens before pooling and vectors after."""
        n, tok, vec = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_tokens), 0), COALESCE(SUM(n_vectors), 0) FROM docs"
        ).fetchone()
        return {"documents": n, "tokens": tok, "vectors": vec}


#: sqlite integers are signed 64-bit
_INT64 = (-(1 << 63), (1 << 63) - 1)


#: metadata fields one filter may name: each is one clause of one SQL expression (sqlite refuses ~1000)
MAX_FILTER_FIELDS = 64


def check_filter(where: Any) -> None:
    """Raise InputError unless ``where`` is a non-empty {field: str | int | float | bool} sqlite can match.

    Field names become JSON paths, so quotes, backslashes and control characters are refused rather than
    silently matching nothing; integers must fit sqlite's 64 bits and floats must be finite.
    """
    if not isinstance(where, dict) or not where:
        raise InputError(f"a filter is a non-empty object of metadata field -> value, got {where!r:.80}")
    if len(where) > MAX_FILTER_FIELDS:
        raise InputError(f"the filter names {len(where)} fields; pass at most {MAX_FILTER_FIELDS}")
    for key, value in where.items():
        check_utf8(key, "a filter field name")
        if not key or any(c in key for c in '"\\') or any(ord(c) < 32 for c in key):
            raise InputError(f"filter field {key!r:.80} is empty or has quotes, backslashes or control characters")
        if isinstance(value, str):
            check_utf8(value, f"filter value of {key!r:.40}")
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                raise InputError(f"filter value {value} of {key!r:.40} is outside the 64-bit integer range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InputError(f"filter value {value} of {key!r:.40} is not a finite number")
        else:
            raise InputError(f"filter value of {key!r:.40} is {type(value).__name__}; use a string, number or bool")


def _check_store_file(path: Path) -> None:
    """Raise IndexCorruptError unless ``path`` is a non-empty file this process can read.

    Checked before sqlite opens it: sqlite takes a 0-byte file for a new database (and deletes a WAL
    left beside it), which would make a damaged index look new and empty.
    """
    if not path.is_file():
        raise IndexCorruptError(f"{path} is missing or not a file; restore it from a backup or rebuild the index")
    if path.stat().st_size == 0:
        raise IndexCorruptError(
            f"{path} is empty (0 bytes): the index's documents are gone; restore it from a backup or rebuild the index"
        )
    if not os.access(path, os.R_OK):
        raise IndexCorruptError(f"{path} cannot be read (permission denied); fix its permissions")


def _writable(path: Path) -> bool:
    """True when this process may write the store and make files beside it (its WAL, the lock)."""
    return os.access(path.parent, os.W_OK | os.X_OK) and os.access(path, os.W_OK)


def _check_tables(conn: sqlite3.Connection, path: Path) -> None:
    """Raise IndexCorruptError unless the database has pooledir's tables (read only: nothing is created)."""
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:
        raise  # the machine's problem (I/O, locks), not the file's
    except sqlite3.DatabaseError as e:
        raise IndexCorruptError(f"{path} is corrupt: {e}") from None
    missing = [t for t in REQUIRED_TABLES if t not in names]
    if missing:
        raise IndexCorruptError(
            f"{path} is not a pooledir document store (no {', '.join(missing)} table); "
            "restore it from a backup or rebuild the index"
        )


class _Transaction:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error as e:
                _roll_back(self.conn)
                self._raise_full(e)
                raise
        _roll_back(self.conn)
        self._raise_full(exc)

    def _raise_full(self, e: BaseException | None) -> None:
        if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise NoSpaceError(
                f"no space left on device for {self.path}: nothing of this write was committed "
                "(free some space, then run the command again)"
            ) from e


def _roll_back(conn: sqlite3.Connection) -> None:
    """Roll back what is left: sqlite may have rolled back already (a full disk), which must not mask the error."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the first error is the one to report; an open transaction ends with the connection


def _sqlite_connect(database: str, uri: bool) -> sqlite3.Connection:
    """Autocommit (transactions are explicit), shared across threads, 60 s of waiting on another writer's lock."""
    return sqlite3.connect(database, isolation_level=None, check_same_thread=False, timeout=60, uri=uri)


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
