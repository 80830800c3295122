"""The document store: ids, text and metadata in stdlib sqlite3.

Each document gets a stable internal number (``doc_int``, never reused, so
vector ids stay valid across deletes) beside its external id. The store also
holds the index's ``generation``, the number of the faiss file that matches
its rows, so one sqlite commit switches documents and vectors together.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    doc_int INTEGER PRIMARY KEY AUTOINCREMENT,
    ext_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    n_vectors INTEGER NOT NULL,
    exact_offset INTEGER
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class DocRow:
    """A document as stored: what the encoder saw and what the index kept."""

    doc_int: int
    id: str
    text: str
    metadata: dict[str, Any]
    n_tokens: int
    n_vectors: int


class DocStore:
    """sqlite3 database of documents; all writes go through :meth:`transaction`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def transaction(self) -> _Transaction:
        """``with store.transaction():`` commits on success, rolls back on any error."""
        return _Transaction(self.conn)

    # -- meta -------------------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """Read a meta value."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        """Write a meta value (inside the caller's transaction)."""
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- documents --------------------------------------------------------------------------------------------
    def insert(
        self, id: str, text: str, metadata: dict, n_tokens: int, n_vectors: int, exact_offset: int | None
    ) -> int:
        """Insert one document; returns its new internal number."""
        cur = self.conn.execute(
            "INSERT INTO docs (ext_id, text, metadata, n_tokens, n_vectors, exact_offset) VALUES (?,?,?,?,?,?)",
            (id, text, json.dumps(metadata, ensure_ascii=False), n_tokens, n_vectors, exact_offset),
        )
        return int(cur.lastrowid)

    def delete(self, doc_ints: Iterable[int]) -> None:
        """Delete documents by internal number."""
        self.conn.executemany("DELETE FROM docs WHERE doc_int = ?", [(int(d),) for d in doc_ints])

    def lookup(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Map the known external ids among ``ids`` to (doc_int, n_vectors)."""
        out: dict[str, tuple[int, int]] = {}
        for chunk in _chunks(list(ids), 500):
            q = f"SELECT ext_id, doc_int, n_vectors FROM docs WHERE ext_id IN ({','.join('?' * len(chunk))})"
            out.update({r[0]: (r[1], r[2]) for r in self.conn.execute(q, chunk)})
        return out

    def rows(self, doc_ints: Sequence[int]) -> list[DocRow]:
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

    def ext_ids(self, doc_ints: Sequence[int]) -> list[str]:
        """External ids for internal numbers, in the order given."""
        found: dict[int, str] = {}
        for chunk in _chunks([int(d) for d in doc_ints], 500):
            q = f"SELECT doc_int, ext_id FROM docs WHERE doc_int IN ({','.join('?' * len(chunk))})"
            found.update(dict(self.conn.execute(q, chunk).fetchall()))
        return [found[int(d)] for d in doc_ints]

    def matching(self, where: dict[str, Any]) -> np.ndarray:
        """Internal numbers of the documents whose metadata equals every ``where`` field."""
        if not where:
            raise ValueError("empty filter")
        clauses = " AND ".join("json_extract(metadata, ?) = ?" for _ in where)
        args: list[Any] = []
        for key, value in where.items():
            args += ['$."' + key.replace('"', '""') + '"', value]
        rows = self.conn.execute(f"SELECT doc_int FROM docs WHERE {clauses}", args).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(doc_ints, n_vectors, exact_offsets) of every document, for the in-memory tables."""
        rows = self.conn.execute("SELECT doc_int, n_vectors, COALESCE(exact_offset, -1) FROM docs").fetchall()
        arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
        return arr[:, 0], arr[:, 1], arr[:, 2]

    def checkpoint(self) -> None:
        """Move committed pages from the WAL into the database and truncate the WAL.

        A bulk add commits in one transaction, which leaves a WAL as large as the
        documents beside the database; without this the folder would be ~2x its real size
        until the last connection closes. Best effort: readers in other processes may keep it.
        """
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def counts(self) -> dict[str, int]:
        """Documents, tokens before pooling and vectors after."""
        n, tok, vec = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_tokens), 0), COALESCE(SUM(n_vectors), 0) FROM docs"
        ).fetchone()
        return {"documents": n, "tokens": tok, "vectors": vec}


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
