"""The lexical lane: an FTS5 table (BM25, ``porter unicode61``) kept inside ``docs.sqlite``.

The table ``docs_lex`` holds one row per document row (``rowid`` = ``doc_int``) with the text the
encoder saw (title + text, before truncation). Triggers on ``docs`` keep it in step, so every
upsert, delete and compaction changes both lanes in the same sqlite transaction, whoever writes
(an older pooledir too, once the triggers exist): a commit is durable in both lanes or in neither,
and a pinned reader sees both at the same commit.

Passage rows (``x#p3``, see :mod:`pooledir.passages`) store an empty text beside the whole document
on ``x#p0``; the table indexes each passage's own span of that text, so a passage is scored alone
(and a document by its best passage, like the dense lane).

An index made before this module has no table: :func:`ensure_table` builds it once, in one
transaction (a crash leaves no half-built table), on the first open that may write.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import threading
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TABLE = "docs_lex"
#: the FTS5 tokenizer: Unicode word splitting, case and diacritics folded, English Porter stemming
TOKENIZER = "porter unicode61"

# A passage row's text: its span of the whole document, which its own row (x#p0) or the parent's first
# passage row holds. Plain SQL so the triggers need no function registered by pooledir.
_PASSAGE = (
    "json_extract({r}.metadata, '$.parent_id') IS NOT NULL "
    "AND {r}.ext_id = json_extract({r}.metadata, '$.parent_id') || '#p' || json_extract({r}.metadata, '$.passage') "
    "AND json_extract({r}.metadata, '$.span[1]') IS NOT NULL"
)
_WHOLE = (
    "CASE WHEN {r}.text != '' THEN {r}.text ELSE "
    "(SELECT p.text FROM docs p WHERE p.ext_id = json_extract({r}.metadata, '$.parent_id') || '#p0') END"
)
_SPAN = (
    "substr(" + _WHOLE + ", json_extract({r}.metadata, '$.span[0]') + 1, "
    "json_extract({r}.metadata, '$.span[1]') - json_extract({r}.metadata, '$.span[0]'))"
)
_BODY = "CASE WHEN " + _PASSAGE + " THEN " + _SPAN + " ELSE {r}.text END"

SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(body, tokenize = '{TOKENIZER}');
CREATE TRIGGER IF NOT EXISTS docs_lex_insert AFTER INSERT ON docs BEGIN
    INSERT INTO {TABLE} (rowid, body) VALUES (new.doc_int, {_BODY.format(r="new")});
END;
CREATE TRIGGER IF NOT EXISTS docs_lex_delete AFTER DELETE ON docs BEGIN
    DELETE FROM {TABLE} WHERE rowid = old.doc_int;
END;
CREATE TRIGGER IF NOT EXISTS docs_lex_update AFTER UPDATE OF text, metadata ON docs BEGIN
    UPDATE {TABLE} SET body = {_BODY.format(r="new")} WHERE rowid = new.doc_int;
END;
"""

_TOKEN = re.compile(r"\w+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_table(conn: sqlite3.Connection) -> bool:
    """Whether the database holds the lexical table."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
    return row is not None


def ensure_table(conn: sqlite3.Connection) -> bool:
    """Create and fill the lexical table if missing (one transaction); False where the file is read-only.

    ``conn`` is in autocommit mode (``isolation_level=None``) with no transaction open.
    """
    if has_table(conn):
        return True
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not has_table(conn):  # another process may have built it while we waited for the lock
                _build(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.OperationalError as e:
        if "readonly" in str(e):
            log.warning("no lexical table, and the index is read-only: modes lexical and hybrid are unavailable")
            return False
        raise
    return True


def _build(conn: sqlite3.Connection) -> None:
    for statement in _statements(SCHEMA):
        conn.execute(statement)
    conn.execute(f"INSERT INTO {TABLE} (rowid, body) SELECT d.doc_int, {_BODY.format(r='d')} FROM docs d")
    log.info("built the lexical table of %d rows", conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])


def _statements(script: str) -> list[str]:
    """The statements of ``SCHEMA`` (executescript would commit the transaction we hold)."""
    out, current = [], ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


def words(text: str) -> list[str]:
    """The distinct words of ``text``, lower-cased, in order; lone surrogates (sqlite cannot store them) dropped."""
    return list(dict.fromkeys(t.lower() for t in _TOKEN.findall(_SURROGATE.sub(" ", text))))


def fts_query(text: str | list[str]) -> str | None:
    """An FTS5 query matching any word of ``text`` (OR), each quoted as a string; None if it has no words.

    Quoting makes FTS5's own syntax (quotes, ``AND``/``OR``/``NOT``, ``NEAR(``, ``*``, ``^``, ``:``,
    parentheses) plain terms. ``text`` may be the words already.
    """
    tokens = words(text) if isinstance(text, str) else text
    if not tokens:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in tokens)


def search(
    conn: sqlite3.Connection, text: str, k: int, where: dict[str, Any] | None = None, n_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """BM25 (FTS5's, k1 1.2, b 0.75) top ``k`` rows for one query: (doc_ints, scores), best first.

    Scores are FTS5's ``bm25()`` negated, so higher is better. ``where`` (metadata field -> value,
    checked by the caller) keeps only rows whose metadata equals every field. ``n_rows`` (the rows
    the table holds) lets the query skip words in half the rows or more: FTS5 gives those an idf of
    1e-6, so they change no score, but scoring every row they match is most of a query's time.
    """
    match = fts_query(useful_words(conn, words(text), n_rows) if n_rows else text)
    if match is None or k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if where:
        clauses = " AND ".join("json_extract(d.metadata, ?) = ?" for _ in where)
        args: list[Any] = [match]
        for key, value in where.items():
            args += ['$."' + key.replace('"', '""') + '"', value]
        sql = (
            f"SELECT l.rowid, l.rank FROM {TABLE} l JOIN docs d ON d.doc_int = l.rowid "
            f"WHERE {TABLE} MATCH ? AND {clauses} ORDER BY l.rank LIMIT ?"
        )
        rows = conn.execute(sql, [*args, int(k)]).fetchall()
    else:
        sql = f"SELECT rowid, rank FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY rank LIMIT ?"
        rows = conn.execute(sql, (match, int(k))).fetchall()
    doc_ints = np.array([r[0] for r in rows], dtype=np.int64)
    scores = -np.array([r[1] for r in rows], dtype=np.float32)
    return doc_ints, scores


def useful_words(conn: sqlite3.Connection, query_words: list[str], n_rows: int) -> list[str]:
    """The words whose every term is in fewer than half of the ``n_rows`` rows (all words if none is)."""
    stems = {w: _stems(w) for w in query_words}
    terms = sorted({t for ts in stems.values() for t in ts})
    if not terms:
        return query_words
    conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{TABLE}_df USING fts5vocab(main, {TABLE}, row)")
    df = dict(
        conn.execute(f"SELECT term, doc FROM temp.{TABLE}_df WHERE term IN ({','.join('?' * len(terms))})", terms)
    )
    kept = [w for w in query_words if stems[w] and all(0 < df.get(t, 0) and 2 * df[t] < n_rows for t in stems[w])]
    return kept or query_words


_tokenizer_lock = threading.Lock()
_tokenizer: sqlite3.Connection | None = None


@functools.lru_cache(maxsize=1 << 16)
def _stems(word: str) -> tuple[str, ...]:
    """The terms FTS5 indexes for ``word`` (usually one), from a private in-memory table."""
    global _tokenizer
    with _tokenizer_lock:
        if _tokenizer is None:
            _tokenizer = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            _tokenizer.execute(f"CREATE VIRTUAL TABLE t USING fts5(body, tokenize = '{TOKENIZER}')")
            _tokenizer.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        _tokenizer.execute("INSERT INTO t (rowid, body) VALUES (1, ?)", (word,))
        out = tuple(r[0] for r in _tokenizer.execute("SELECT term FROM v ORDER BY offset"))
        _tokenizer.execute("DELETE FROM t")
        return out


def tokenize(texts: list[str]) -> list[list[str]]:
    """The terms FTS5 indexes for each text (same tokenizer), in order: for a reference BM25 on the same tokens."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(body, tokenize = '{TOKENIZER}')")
        conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        rows = [(i, _SURROGATE.sub(" ", s)) for i, s in enumerate(texts)]
        conn.executemany("INSERT INTO t (rowid, body) VALUES (?, ?)", rows)
        out: list[list[str]] = [[] for _ in texts]
        for term, doc in conn.execute("SELECT term, doc FROM v ORDER BY doc, offset"):
            out[doc].append(term)
        return out
    finally:
        conn.close()
