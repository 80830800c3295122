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
import math
import re
import sqlite3
import threading
from dataclasses import dataclass, field
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

    Scores are FTS5's ``bm25()`` negated, so higher is better; equal scores: smaller doc_int first.
    ``where`` (metadata field -> value, checked by the caller) keeps only rows whose metadata equals
    every field. ``n_rows`` (the rows
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
            f"SELECT l.rowid, bm25({TABLE}) s FROM {TABLE} l JOIN docs d ON d.doc_int = l.rowid "
            f"WHERE {TABLE} MATCH ? AND {clauses} ORDER BY s, l.rowid LIMIT ?"
        )
        rows = conn.execute(sql, [*args, int(k)]).fetchall()
    else:
        # bm25() ordered by sqlite with the LIMIT (a top-k sorter), not FTS5's ORDER BY rank, which sorts
        # every match in a nested query first: 40% less time per query on SciFact (same scores)
        sql = f"SELECT rowid, bm25({TABLE}) s FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY s, rowid LIMIT ?"
        rows = conn.execute(sql, (match, int(k))).fetchall()
    doc_ints = np.array([r[0] for r in rows], dtype=np.int64)
    scores = -np.array([r[1] for r in rows], dtype=np.float32)
    return doc_ints, scores


def useful_words(conn: sqlite3.Connection, query_words: list[str], n_rows: int) -> list[str]:
    """The words whose every term is in fewer than half of the ``n_rows`` rows (all words if none is)."""
    return kept_words(query_words, _term_df(conn, query_words), n_rows)


def kept_words(query_words: list[str], term_df: dict[str, int], n_rows: int) -> list[str]:
    """:func:`useful_words`'s rule from given document frequencies (one index's, or summed over partitions)."""
    stems = {w: _stems(w) for w in query_words}
    kept = [
        w for w in query_words if stems[w] and all(0 < term_df.get(t, 0) and 2 * term_df[t] < n_rows for t in stems[w])
    ]
    return kept or query_words


def _term_df(conn: sqlite3.Connection, query_words: list[str]) -> dict[str, int]:
    """Rows holding each term of ``query_words`` (terms in no row are left out)."""
    terms = sorted({t for w in query_words for t in _stems(w)})
    if not terms:
        return {}
    conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{TABLE}_df USING fts5vocab(main, {TABLE}, row)")
    sql = f"SELECT term, doc FROM temp.{TABLE}_df WHERE term IN ({','.join('?' * len(terms))})"
    return dict(conn.execute(sql, terms).fetchall())


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


# -- BM25 with collection-wide statistics (an index split into partitions) -----------------------------------
#
# FTS5's bm25() reads its own table's row count, average length and document frequencies, so scores from
# two partitions are not comparable. Here the same formula (fts5_aux.c: k1 1.2, b 0.75, idf
# log((N - n + 0.5) / (n + 0.5)), 1e-6 where that is <= 0, one term per query phrase, phrases summed in
# query order) is computed from statistics summed over every partition: then each partition scores its
# rows as one index over all of them would.

K1, B = 1.2, 0.75


@dataclass(frozen=True)
class Stats:
    """What BM25 needs to know of the collection for one query's words; partitions' stats add up."""

    rows: int = 0  #: rows in the lexical table (BM25's N)
    tokens: int = 0  #: tokens in those rows (N * average length)
    docs: int = 0  #: stored rows of the index (``index.n_rows``), for :func:`kept_words`
    term_df: dict[str, int] = field(default_factory=dict)  #: rows holding each term of the query
    phrase_df: dict[str, int] = field(default_factory=dict)  #: rows holding each query word (a phrase of terms)

    def __add__(self, other: Stats) -> Stats:
        def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {t: a.get(t, 0) + b.get(t, 0) for t in a.keys() | b.keys()}

        return Stats(
            self.rows + other.rows,
            self.tokens + other.tokens,
            self.docs + other.docs,
            add(self.term_df, other.term_df),
            add(self.phrase_df, other.phrase_df),
        )


def local_stats(conn: sqlite3.Connection, text: str, docs: int) -> Stats:
    """Statistics of this table for the words of ``text``; ``docs`` is the index's document count."""
    query_words = words(text)
    rows, tokens = _totals(conn)
    term_df = _term_df(conn, query_words)
    phrase_df = {}
    for w in query_words:
        terms = _stems(w)
        if len(terms) == 1:
            phrase_df[w] = term_df.get(terms[0], 0)
        elif terms:  # a word FTS5 splits (``a_b``): rows holding its terms in a row, as FTS5 counts a phrase
            phrase_df[w] = len(_phrase_freqs(conn, terms)[0])
    return Stats(rows, tokens, docs, term_df, phrase_df)


def search_with(
    conn: sqlite3.Connection, text: str, k: int, stats: Stats, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` with collection-wide ``stats`` in place of this table's own: (doc_ints, scores), best first.

    ``allowed`` (doc_ints, sorted) keeps only those rows (a metadata filter). Ties: smaller doc_int first.
    """
    query_words = kept_words(words(text), stats.term_df, stats.docs)
    found = [(w, *_phrase_freqs(conn, _stems(w))) for w in query_words if _stems(w)]
    if not found or k <= 0 or stats.rows <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    rows = np.unique(np.concatenate([d for _, d, _ in found]))
    if allowed is not None:
        rows = rows[np.isin(rows, allowed)]
    length = _lengths(conn, rows)
    norm = K1 * (1 - B + B * length / (stats.tokens / stats.rows))
    score = np.zeros(len(rows))
    for w, doc_ints, tf in found:  # phrase by phrase, in query order: the sums FTS5 makes
        df = stats.phrase_df.get(w, 0)
        idf = math.log((stats.rows - df + 0.5) / (df + 0.5))
        freq = np.zeros(len(rows))
        at = np.searchsorted(rows, doc_ints)
        hit = (at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == doc_ints)
        freq[at[hit]] = tf[hit]
        score += (idf if idf > 0 else 1e-6) * (freq * (K1 + 1.0)) / (freq + norm)
    keep = score > 0  # rows the filter left that match none of the phrases
    rows, score = rows[keep], score[keep]
    order = np.lexsort((rows, -score))[: int(k)]
    return rows[order], score[order].astype(np.float32)


def _phrase_freqs(conn: sqlite3.Connection, terms: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(doc_ints, occurrences) of the phrase ``terms`` (consecutive tokens), doc_ints sorted."""
    conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{TABLE}_inst USING fts5vocab(main, {TABLE}, instance)")
    keys = None
    for j, term in enumerate(terms):
        at = np.array(
            conn.execute(f"SELECT doc, offset FROM temp.{TABLE}_inst WHERE term = ?", (term,)).fetchall(), np.int64
        ).reshape(-1, 2)
        k = (at[:, 0] << 32) + (at[:, 1] - j)  # where the phrase would start (negative: cannot match term 0)
        keys = k if keys is None else np.intersect1d(keys, k)
    if keys is None:  # no terms: a phrase of nothing occurs nowhere
        return np.empty(0, np.int64), np.empty(0, np.float64)
    doc_ints, counts = np.unique(keys >> 32, return_counts=True)
    return doc_ints, counts.astype(np.float64)


def _totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """(rows, tokens) of the table: FTS5's own "averages" record (id 1 of its data table), as bm25() reads them."""
    row = conn.execute(f"SELECT block FROM {TABLE}_data WHERE id = 1").fetchone()
    if row is None or not row[0]:
        return 0, 0
    rows, at = _varint(row[0], 0)
    tokens, _ = _varint(row[0], at)
    return rows, tokens


def _lengths(conn: sqlite3.Connection, doc_ints: np.ndarray) -> np.ndarray:
    """Tokens of each row (FTS5's docsize table), in the order given."""
    size: dict[int, int] = {}
    ids = doc_ints.tolist()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        sql = f"SELECT id, sz FROM {TABLE}_docsize WHERE id IN ({','.join('?' * len(chunk))})"
        size.update((r, _varint(sz, 0)[0]) for r, sz in conn.execute(sql, chunk))
    return np.array([size[d] for d in ids], dtype=np.float64)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """SQLite's varint (FTS5's records use it): the value and the offset after it."""
    value = 0
    for j in range(8):
        byte = data[at + j]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + j + 1
    return (value << 8) | data[at + 8], at + 9
